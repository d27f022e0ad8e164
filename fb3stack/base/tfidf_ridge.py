"""`tfidf-ridge`: word and character n-gram TF-IDF fitted inside each fold, then ridge regression.

The vectorisers learn their vocabulary and IDF weights from the fold's training rows only, so nothing of
the validation essays reaches the model. One multi-output ridge (shared alpha) or one ridge per trait.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import Ridge

from fb3stack.base.member import FoldResult, Member, MemberConfig
from fb3stack.constants import SCORE_MAX, SCORE_MIN, TARGETS, TEXT_COL

logger = logging.getLogger(__name__)

MODEL_FILE = "tfidf_ridge.joblib"


@dataclass
class TfidfRidgeConfig(MemberConfig):
    word_ngram_max: int = 2  # word n-grams 1..this; 0 disables the word vectoriser
    char_ngram_min: int = 2
    char_ngram_max: int = 5  # 0 disables the char vectoriser
    char_analyzer: str = "char_wb"
    min_df: int = 2
    max_features_word: int | None = 100_000
    max_features_char: int | None = 200_000
    sublinear_tf: bool = True
    lowercase: bool = False  # capitalisation errors are part of "conventions"
    alpha: float = 1.0
    per_trait_alpha: list[float] | None = None  # six alphas, one ridge per trait; None: one multi-output ridge


class TfidfRidgeMember(Member):
    config_cls = TfidfRidgeConfig
    config: TfidfRidgeConfig

    def vectorisers(self) -> list[TfidfVectorizer]:
        c = self.config
        out = []
        if c.word_ngram_max > 0:
            out.append(TfidfVectorizer(analyzer="word", ngram_range=(1, c.word_ngram_max), min_df=c.min_df,
                                       max_features=c.max_features_word, sublinear_tf=c.sublinear_tf,
                                       lowercase=c.lowercase, token_pattern=r"(?u)\b\w+\b", dtype=np.float32))
        if c.char_ngram_max > 0:
            out.append(TfidfVectorizer(analyzer=c.char_analyzer, ngram_range=(c.char_ngram_min, c.char_ngram_max),
                                       min_df=c.min_df, max_features=c.max_features_char,
                                       sublinear_tf=c.sublinear_tf, lowercase=c.lowercase, dtype=np.float32))
        if not out:
            raise ValueError(f"{c.name}: both word and char vectorisers are disabled")
        return out

    def fit_fold(self, train: pd.DataFrame, valid: pd.DataFrame, fold: int, fold_dir: Path) -> FoldResult:
        c = self.config
        vecs = self.vectorisers()
        texts = train[TEXT_COL].tolist()
        x = sp.hstack([v.fit_transform(texts) for v in vecs]).tocsr()
        y = train[list(TARGETS)].to_numpy()
        if c.per_trait_alpha is not None:
            if len(c.per_trait_alpha) != len(TARGETS):
                raise ValueError(f"{c.name}: per_trait_alpha needs {len(TARGETS)} values")
            models = [Ridge(alpha=a).fit(x, y[:, i]) for i, a in enumerate(c.per_trait_alpha)]
        else:
            models = [Ridge(alpha=c.alpha).fit(x, y)]
        bundle = {"vectorisers": vecs, "ridges": models}
        joblib.dump(bundle, fold_dir / MODEL_FILE)
        return FoldResult(self._apply(bundle, valid),
                          info={"n_features": int(x.shape[1])})

    @staticmethod
    def _apply(bundle: dict, df: pd.DataFrame) -> np.ndarray:
        texts = df[TEXT_COL].tolist()
        x = sp.hstack([v.transform(texts) for v in bundle["vectorisers"]]).tocsr()
        preds = np.column_stack([m.predict(x) for m in bundle["ridges"]])
        return np.clip(preds, SCORE_MIN, SCORE_MAX)

    def predict_fold(self, df: pd.DataFrame, fold_dir: Path) -> np.ndarray:
        return self._apply(joblib.load(Path(fold_dir) / MODEL_FILE), df)
