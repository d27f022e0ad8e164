"""A small generated stand-in for the FB3 files, for tests that need essays and scores but not the real ones.

The scores follow a hidden writing quality that also shapes the text (length, vocabulary range, spelling,
capitalisation, punctuation), so models learn something from it, like from real essays; nothing about the
real data's statistics should be asserted on it (those tests use the `real_*` fixtures and skip without it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fb3stack.constants import TARGETS

BASIC = ("i think that people should go to school because it is good for them and they can learn a lot "
         "of things the teacher says we have to do our work every day my friends like to play games after "
         "class but some students do not want to study so they get bad grades in the end it is important "
         "to help other people when they need it also parents want their children to be happy").split()
ADVANCED = ("moreover consequently although nevertheless significant perspective opportunity environment "
            "responsibility development community experience knowledge essential beneficial challenging "
            "independent technology communication furthermore therefore however particularly especially "
            "consider believe demonstrate achieve improve encourage influence require contribute "
            "valuable effective creative academic curriculum extracurricular motivation decision").split()


def _misspell(word: str, rng: np.random.Generator) -> str:
    if len(word) < 4:
        return word
    i = int(rng.integers(1, len(word) - 1))
    return word[:i] + word[i + 1] + word[i] + word[i + 2:]


def essay(quality: float, rng: np.random.Generator) -> str:
    """One essay whose surface features follow `quality` (about -2 .. 2)."""
    # real essays run 150-600 words; no essay here is shorter than about 60 words (past a 64-token max_len)
    n_sent = int(np.clip(14 + 4 * quality + rng.normal(0, 2.5), 8, 36))
    p_adv = float(np.clip(0.15 + 0.12 * quality, 0.0, 0.6))
    p_typo = float(np.clip(0.08 - 0.04 * quality, 0.0, 0.2))
    sentences = []
    for _ in range(n_sent):
        n = int(np.clip(rng.normal(14 + 2 * quality, 4), 7, 35))
        words = [str(rng.choice(ADVANCED if rng.random() < p_adv else BASIC)) for _ in range(n)]
        words = [_misspell(w, rng) if rng.random() < p_typo else w for w in words]
        if rng.random() < 0.5 + 0.2 * quality and n > 8:
            words[n // 2] += ","
        first = words[0].capitalize() if rng.random() < 0.7 + 0.15 * quality else words[0]
        end = "." if rng.random() < 0.8 + 0.1 * quality else ""
        sentences.append(" ".join([first, *words[1:]]) + end)
    paragraphs = [" ".join(sentences[i:i + 4]) for i in range(0, len(sentences), 4)]
    return "\n\n".join(paragraphs)


def make_fb3_like(folder: Path, n_train: int = 600, n_test: int = 3, seed: int = 0) -> Path:
    """Write train.csv, test.csv and sample_submission.csv in the FB3 format into `folder`."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)

    def ids(n: int) -> list[str]:
        return [f"{x:012X}" for x in rng.choice(16**12, size=n, replace=False)]

    quality = rng.normal(0, 1, n_train)
    trait_skill = quality[:, None] * 0.7 + rng.normal(0, 0.45, (n_train, len(TARGETS)))
    scores = np.clip(np.round((3.0 + 0.6 * trait_skill) * 2) / 2, 1.0, 5.0)
    train = pd.DataFrame({"text_id": ids(n_train), "full_text": [essay(q, rng) for q in quality]})
    for k, t in enumerate(TARGETS):
        train[t] = scores[:, k]
    train.to_csv(folder / "train.csv", index=False)
    test = pd.DataFrame({"text_id": ids(n_test), "full_text": [essay(q, rng) for q in rng.normal(0, 1, n_test)]})
    test.to_csv(folder / "test.csv", index=False)
    sample = pd.DataFrame({"text_id": test["text_id"], **{t: 3.0 for t in TARGETS}})
    sample.to_csv(folder / "sample_submission.csv", index=False)
    return folder


PUBLIC_OOF_NAMES = ("deberta3b_s0", "deberta3b_s12", "deberta3b_s42", "debertav3l_s42_pl1", "robertal_s12",
                    "robertal_s42_pl1", "longformerl_s12")


def make_extras_like(folder: Path, fb3_folder: Path, seed: int = 1) -> Path:
    """Stand-ins for ../shared/data/extras over the generated train.csv: a 4-fold split file and public-style
    OOF files (text_id + six traits = truth + member-specific noise) under the public files' names."""
    rng = np.random.default_rng(seed)
    train = pd.read_csv(fb3_folder / "train.csv")
    folder.mkdir(parents=True, exist_ok=True)
    folds = pd.DataFrame({"text_id": train["text_id"], "fold": rng.permutation(np.arange(len(train)) % 4)})
    folds.to_csv(folder / "folds_yomura_4fold_seed42_multilabelstrat.csv", index=False)
    (folder / "oof_sunpnwt12").mkdir(exist_ok=True)
    truth = train[list(TARGETS)].to_numpy()
    shared = rng.normal(0, 0.35, truth.shape)  # members err alike, as real ones do
    for name in PUBLIC_OOF_NAMES:
        preds = 0.6 * truth + 0.4 * truth.mean(0) + shared + rng.normal(0, 0.2, truth.shape)
        oof = pd.DataFrame(preds.astype(np.float32), columns=list(TARGETS))
        oof.insert(0, "text_id", train["text_id"])
        oof.sample(frac=1.0, random_state=int(rng.integers(1 << 30))).to_csv(
            folder / "oof_sunpnwt12" / f"{name}_oof_df.csv", index=False)
    return folder
