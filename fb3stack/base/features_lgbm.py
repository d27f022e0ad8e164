"""`features-lgbm`: hand-made text features (cached once per essay) and one LightGBM regressor per trait.

The features are label-free, so they are computed for all essays once and reused by every fold; the
boosters see only the fold's training rows. A fixed number of rounds is used rather than early stopping
on the validation fold, which would let the validation labels pick the model and flatter the OOF score.
Boosters are saved as LightGBM text model files, one per trait. Prediction computes the features of the
new essays once and applies every fold's boosters to them (`predict_folds`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fb3stack.base.member import FoldResult, Member, MemberConfig
from fb3stack.base.registry import register_member
from fb3stack.base.text_features import text_features
from fb3stack.constants import SCORE_MAX, SCORE_MIN, TARGETS, TEXT_COL
from fb3stack.io import read_json, write_json

logger = logging.getLogger(__name__)

COLUMNS_FILE = "features.json"


@dataclass
class FeaturesLGBMConfig(MemberConfig):
    num_threads: int = 2
    n_estimators: int = 400
    learning_rate: float = 0.03
    num_leaves: int = 15
    max_depth: int = -1
    min_child_samples: int = 20
    subsample: float = 0.8
    colsample_bytree: float = 0.7
    reg_lambda: float = 1.0


@register_member("features-lgbm")
class FeaturesLGBMMember(Member):
    config_cls = FeaturesLGBMConfig
    config: FeaturesLGBMConfig

    def features(self, df: pd.DataFrame) -> pd.DataFrame:
        cache = self.workspace.cache_dir("features") if self.workspace is not None else None
        return text_features(df[TEXT_COL].tolist(), cache)

    def params(self) -> dict:
        c = self.config
        return {"objective": "regression", "learning_rate": c.learning_rate, "num_leaves": c.num_leaves,
                "max_depth": c.max_depth, "min_data_in_leaf": c.min_child_samples, "bagging_fraction": c.subsample,
                "bagging_freq": 1, "feature_fraction": c.colsample_bytree, "lambda_l2": c.reg_lambda,
                "num_threads": c.num_threads, "seed": c.seed, "deterministic": True, "force_row_wise": True,
                "verbosity": -1}

    def fit_fold(self, train: pd.DataFrame, valid: pd.DataFrame, fold: int, fold_dir: Path) -> FoldResult:
        import lightgbm as lgb

        x_train, x_valid = self.features(train), self.features(valid)
        y = train[list(TARGETS)].to_numpy()
        boosters = {}
        for i, t in enumerate(TARGETS):
            data = lgb.Dataset(x_train, label=y[:, i], free_raw_data=True)
            boosters[t] = lgb.train(self.params(), data, num_boost_round=self.config.n_estimators)
            boosters[t].save_model(str(fold_dir / f"lgbm_{t}.txt"))
        write_json(fold_dir / COLUMNS_FILE, {"columns": list(x_train.columns)})
        imp = pd.DataFrame({t: b.feature_importance("gain") for t, b in boosters.items()}, index=x_train.columns)
        top = imp.mean(axis=1).sort_values(ascending=False).head(10).index.tolist()
        return FoldResult(self._apply(boosters, x_valid), info={"n_features": x_train.shape[1], "top_features": top})

    @staticmethod
    def _apply(boosters: dict, x: pd.DataFrame) -> np.ndarray:
        return np.clip(np.column_stack([boosters[t].predict(x) for t in TARGETS]), SCORE_MIN, SCORE_MAX)

    def _load_boosters(self, fold_dir: Path, columns: list[str]) -> dict:
        import lightgbm as lgb

        expected = read_json(fold_dir / COLUMNS_FILE)["columns"]
        if columns != expected:
            raise RuntimeError(f"{fold_dir}: fitted on features {expected}, this version computes {columns}")
        return {t: lgb.Booster(model_file=str(fold_dir / f"lgbm_{t}.txt")) for t in TARGETS}

    def predict_fold(self, df: pd.DataFrame, fold_dir: Path) -> np.ndarray:
        return self.predict_folds(df, [fold_dir])

    def predict_folds(self, df: pd.DataFrame, fold_dirs: list[Path]) -> np.ndarray:
        # the features are the slow part and the same for every fold: computed once, then each fold's boosters
        x = self.features(df)
        return np.mean([self._apply(self._load_boosters(Path(d), list(x.columns)), x) for d in fold_dirs], axis=0)
