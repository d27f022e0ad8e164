"""Names shared by every layer: the six analytic traits and their score scale."""

TARGETS: tuple[str, ...] = ("cohesion", "syntax", "vocabulary", "phraseology", "grammar", "conventions")
ID_COL = "text_id"
TEXT_COL = "full_text"
FOLD_COL = "fold"
SCORE_MIN = 1.0
SCORE_MAX = 5.0
SCORE_STEP = 0.5
# what an outside model's test predictions may hold: a point beyond the 1-5 scale either side (real OOFs reach
# 0.71 and 5.21); anything further is another scale or a column mix-up, refused before it reaches a submission
PREDICTION_RANGE = (SCORE_MIN - 1.0, SCORE_MAX + 1.0)
