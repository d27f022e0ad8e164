"""Names shared by every layer: the six analytic traits and their score scale."""

TARGETS: tuple[str, ...] = ("cohesion", "syntax", "vocabulary", "phraseology", "grammar", "conventions")
ID_COL = "text_id"
TEXT_COL = "full_text"
FOLD_COL = "fold"
SCORE_MIN = 1.0
SCORE_MAX = 5.0
SCORE_STEP = 0.5
