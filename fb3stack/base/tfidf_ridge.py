"""`tfidf-ridge`: word and character n-gram TF-IDF fitted inside each fold, then ridge regression.

The vectorisers learn their vocabulary and IDF weights from the fold's training rows only, so nothing of
the validation essays reaches the model. One multi-output ridge (shared alpha), one ridge per trait with
given alphas, or (`alphas`) one alpha per trait chosen by leave-one-out CV on the fold's training rows.

Prediction tokenises the new essays once: every fold's vectoriser uses the same analyser and differs only in
vocabulary and IDF, so one count matrix over the union of the folds' vocabularies serves all folds, each
taking its columns and applying its own tf/IDF weighting and normalisation (the same numbers as its own
`transform`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import Ridge

from fb3stack.base.member import FoldResult, Member, MemberConfig
from fb3stack.base.ngram_counts import analyser_params, cached_counts, fit_from_counts, transform_from_counts
from fb3stack.base.registry import register_member
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
    alphas: list[float] | None = None  # a grid: each trait's alpha picked by leave-one-out CV on training rows


@register_member("tfidf-ridge")
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
        x, x_valid = self._fit_vectorisers(vecs, train[TEXT_COL].tolist(), valid[TEXT_COL].tolist())
        y = train[list(TARGETS)].to_numpy()
        info: dict = {}
        if c.alphas is not None:
            from sklearn.linear_model import RidgeCV

            cv = RidgeCV(alphas=c.alphas, alpha_per_target=True).fit(x, y)
            chosen = [float(a) for a in np.atleast_1d(cv.alpha_)]
            # refit plain ridges with the chosen alphas: same solution, and the saved model stays the same type
            models = [Ridge(alpha=a).fit(x, y[:, i]) for i, a in enumerate(chosen)]
            info["alphas"] = chosen
        elif c.per_trait_alpha is not None:
            if len(c.per_trait_alpha) != len(TARGETS):
                raise ValueError(f"{c.name}: per_trait_alpha needs {len(TARGETS)} values")
            models = [Ridge(alpha=a).fit(x, y[:, i]) for i, a in enumerate(c.per_trait_alpha)]
        else:
            models = [Ridge(alpha=c.alpha).fit(x, y)]
        bundle = {"vectorisers": vecs, "ridges": models}
        joblib.dump(bundle, fold_dir / MODEL_FILE)
        preds = _ridge_predict(models, x_valid)
        return FoldResult(preds, info={"n_features": int(x.shape[1]), **info})

    def _fit_vectorisers(self, vecs: list[TfidfVectorizer], train: list[str],
                         valid: list[str]) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """Fit on `train` only; TF-IDF matrices of train and valid. With a workspace, from cached n-gram
        counts (each essay tokenised once for all folds and later runs), else from the texts."""
        xs, xv = [], []
        for v in vecs:
            if self.workspace is None:
                xs.append(v.fit_transform(train))
                xv.append(v.transform(valid))
                continue
            counts, vocab = cached_counts(train + valid, v, self.workspace.cache_dir("ngrams"))
            xs.append(fit_from_counts(v, counts[:len(train)], vocab))
            xv.append(transform_from_counts(v, counts[len(train):], vocab))
        return sp.hstack(xs).tocsr(), sp.hstack(xv).tocsr()

    @staticmethod
    def _apply(bundle: dict, df: pd.DataFrame) -> np.ndarray:
        texts = df[TEXT_COL].tolist()
        x = sp.hstack([v.transform(texts) for v in bundle["vectorisers"]]).tocsr()
        return _ridge_predict(bundle["ridges"], x)

    def predict_fold(self, df: pd.DataFrame, fold_dir: Path) -> np.ndarray:
        return self._apply(joblib.load(Path(fold_dir) / MODEL_FILE), df)

    def predict_folds(self, df: pd.DataFrame, fold_dirs: list[Path]) -> np.ndarray:
        bundles = [joblib.load(Path(d) / MODEL_FILE) for d in fold_dirs]
        texts = df[TEXT_COL].tolist()
        per_fold: list[list[sp.csr_matrix]] = [[] for _ in bundles]
        for j in range(len(bundles[0]["vectorisers"])):
            vecs = [b["vectorisers"][j] for b in bundles]
            for k, x in enumerate(shared_transform(vecs, texts)):
                per_fold[k].append(x)
        return np.mean([_ridge_predict(b["ridges"], sp.hstack(xs).tocsr()) for b, xs in zip(bundles, per_fold)],
                       axis=0)


def _ridge_predict(ridges: list[Ridge], x: sp.csr_matrix) -> np.ndarray:
    preds = np.column_stack([m.predict(x) for m in ridges])
    return np.clip(preds, SCORE_MIN, SCORE_MAX)


def shared_transform(vecs: list[TfidfVectorizer], texts: list[str]) -> list[sp.csr_matrix]:
    """`[v.transform(texts) for v in vecs]` with the texts tokenised once (the vectorisers must share their
    analyser settings, as one member's fold vectorisers do)."""
    params = analyser_params(vecs[0])
    if any(analyser_params(v) != params for v in vecs[1:]):
        raise ValueError("shared_transform needs vectorisers with the same analyser settings")
    union = sorted(set().union(*(v.vocabulary_ for v in vecs)))
    column = {term: i for i, term in enumerate(union)}
    counts = CountVectorizer(**params, vocabulary=column, dtype=np.int32).transform(texts)
    return [transform_from_counts(v, counts, column) for v in vecs]
