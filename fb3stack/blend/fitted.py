"""A saved blend, loaded for prediction: the small stable API the offline-prediction step uses.

    blend = load_fitted_blend("workspace/blends/default")
    preds = blend.predict([member_preds[name] for name in blend.members], meta=test_df)  # (n, 6), clipped
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pandas as pd

from fb3stack.blend.inputs import meta_features
from fb3stack.blend.methods import Blender
from fb3stack.constants import SCORE_MAX, SCORE_MIN
from fb3stack.io import read_json
from fb3stack.workspace import MissingArtefactError

logger = logging.getLogger(__name__)

SPEC_FILE = "spec.json"
MODEL_FILE = "blender.joblib"


class BlendPredictError(MissingArtefactError):
    """A blend that cannot predict new essays: it includes external OOF files without their test predictions.
    A user error (the CLI's one `error:` line, exit 2): the missing thing is those files."""


@dataclass
class FittedBlend:
    blend_dir: Path
    spec: dict
    model: Blender

    @property
    def members(self) -> list[str]:
        """Member names in the order `predict` expects their predictions."""
        return list(self.spec["members"])

    @property
    def external_members(self) -> list[str]:
        """Members that are OOF files of outside models (with or without test predictions)."""
        return list(self.spec.get("external_members", []))

    @property
    def member_tests(self) -> dict[str, dict[str, str]]:
        """Outside member -> {"file": its test predictions, "sha256": their hash when the blend was fitted}; a
        relative file is the bundle's (fb3stack.submit.bundle)."""
        return dict(self.spec.get("member_tests") or {})

    @property
    def without_test(self) -> list[str]:
        """Outside members that have no test predictions: the blend cannot predict while it has any."""
        return [name for name in self.external_members if name not in self.member_tests]

    @property
    def can_predict(self) -> bool:
        return not self.without_test

    def check_can_predict(self) -> None:
        if not self.can_predict:
            raise BlendPredictError(
                f"{self.blend_dir}: this blend includes external OOF files without test predictions "
                f"{self.without_test}: they have no models to predict new essays, so the blend can be scored but "
                "not used for prediction. Give each as {oof: <its OOF file>, test: <its test predictions>} in the "
                "blend's members and blend again, or blend without them."
            )

    @property
    def meta_features(self) -> list[str]:
        return list(self.spec.get("meta_features", []))

    def predict(self, member_preds: list[np.ndarray], meta: pd.DataFrame | None = None) -> np.ndarray:
        """(n, 6) blended predictions, clipped, from each member's (n, 6) predictions in `members` order.

        `meta` is the essays' DataFrame (with full_text) when the blend uses meta-features.
        """
        self.check_can_predict()
        if len(member_preds) != len(self.members):
            raise ValueError(f"expected predictions of {len(self.members)} members {self.members}, "
                             f"got {len(member_preds)}")
        shapes = {np.asarray(p).shape for p in member_preds}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ValueError(f"member predictions must all be (n, 6); got shapes {sorted(shapes)}")
        meta_arr = None
        if self.meta_features:
            if meta is None:
                raise ValueError(f"this blend uses meta-features {self.meta_features}: pass the essays as meta")
            meta_arr = meta_features(meta, self.meta_features)
        out = self.model.predict(np.stack(member_preds), meta=meta_arr if self.spec.get("uses_meta") else None)
        lo, hi = self.spec.get("clip", [SCORE_MIN, SCORE_MAX])
        return np.clip(out, lo, hi)


def load_fitted_blend(blend_dir: str | os.PathLike) -> FittedBlend:
    blend_dir = Path(blend_dir)
    spec_path = blend_dir / SPEC_FILE
    if not spec_path.is_file():
        raise FileNotFoundError(f"{blend_dir}: no {SPEC_FILE}; run `fb3stack blend` first")
    spec = read_json(spec_path)
    model = joblib.load(blend_dir / spec.get("model_file", MODEL_FILE))
    blend = FittedBlend(blend_dir, spec, model)
    if not blend.can_predict:
        logger.warning("%s includes external OOF files without test predictions %s: it can be scored but cannot "
                       "predict new essays", blend_dir, blend.without_test)
    return blend
