"""Essays in, submission.csv out, from local files only.

Each member of the chosen blend is loaded from its folder (every fold's saved model), predicts the test
essays, and its fold-averaged predictions are cached under
`predictions/<test hash>/<member>-<content hash>.npz`, so a run that is stopped resumes with the members not
yet done and gives the same file as an uninterrupted one.

Nothing stale or damaged is used: the blend records the content hash (config + fold model files) of every
member it was fitted on; before a member is loaded its files are checked against their seals and its hash
against the blend's record (a retrained member makes the blend stale: refused, exit 2). The cache is keyed
by the content hash, so a retrained member never reuses the old model's predictions, and a damaged cache
file is recomputed.

A member that is an outside model (`{oof: ..., test: ...}` in the blend's members) has no models here: its test
predictions are read from the file the blend recorded (the bundle's copy from a bundle), refused unless its
sha256 is the one recorded when the blend was fitted, its ids are exactly the test CSV's and its values are
finite and on the score scale, and aligned to the test CSV by text_id (never by row order). All of that is
checked before any workspace member predicts.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from fb3stack.base.runner import SavedMember
from fb3stack.config import ConfigError
from fb3stack.constants import ID_COL, SCORE_MAX, SCORE_MIN, TARGETS, TEXT_COL
from fb3stack.data import check_same_ids, fingerprint, load_sample_submission, load_test
from fb3stack.io import check_writable, load_npz_checked, read_json, save_npz_checked, sha256_file, write_csv
from fb3stack.progress import progress
from fb3stack.workspace import (
    CorruptArtefactError,
    MissingArtefactError,
    StaleArtefactError,
    Workspace,
    find_blend,
    read_manifest,
    verify_folder,
)

if TYPE_CHECKING:
    from fb3stack.blend.fitted import FittedBlend

logger = logging.getLogger(__name__)


@dataclass
class PredictSources:
    """Where the models and the blend live: a workspace, or a bundle made by `fb3stack bundle`."""

    models_root: Path  # folder holding <member>/config.yaml + fold<k>/
    blend_dir: Path
    cache_root: Path  # where per-member test predictions are cached
    path_map: dict[str, str]  # config values to rewrite (bundle: backbone specs -> bundled folders)
    blend_name: str = ""  # the blend's own name (a bundle keeps it in bundle/blend/)
    files_root: Path | None = None  # what an outside member's relative test file is relative to (a bundle's root)

    def __post_init__(self) -> None:
        self.blend_name = self.blend_name or self.blend_dir.name

    @classmethod
    def from_workspace(cls, workspace: str | os.PathLike, blend: str | None = None,
                       cache_root: str | os.PathLike | None = None) -> PredictSources:
        root = Workspace.existing(workspace).root
        cache = Path(cache_root) if cache_root else root / "predictions"
        return cls(root / "models", find_blend(root, blend), cache, {})

    @classmethod
    def from_bundle(cls, bundle: str | os.PathLike, cache_root: str | os.PathLike | None = None) -> PredictSources:
        """A bundle is read as it is, never written: it is often a read-only dataset (/kaggle/input/...), so the
        prediction cache defaults to a folder of this user's under the system's temporary folder."""
        from fb3stack.submit.versions import check_versions

        root = Path(bundle).expanduser().resolve()
        if not (root / "bundle.json").is_file():
            raise MissingArtefactError(f"{root}: not a bundle (no bundle.json); pass the folder `fb3stack bundle "
                                       "--out` made (--bundle)")
        meta = read_json(root / "bundle.json")
        check_versions(meta.get("versions") or {}, f"bundle {root}")
        path_map = {spec: str(root / rel) for spec, rel in meta.get("paths", {}).items()}
        cache = Path(cache_root) if cache_root else default_cache()
        return cls(root / "models", root / "blend", cache, path_map, str(meta.get("blend") or "blend"), root)


def default_cache() -> Path:
    """Where `predict --bundle` caches member predictions unless --cache says: writable, outside the bundle and
    outside the submission's folder (on Kaggle everything in /kaggle/working becomes the notebook's output)."""
    uid = getattr(os, "getuid", lambda: None)()
    home = Path(tempfile.gettempdir()) / f"fb3stack-{uid if uid is not None else 'user'}"
    home.mkdir(mode=0o700, exist_ok=True)
    if uid is not None and home.stat().st_uid != uid:  # a shared /tmp: someone else's folder could plant predictions
        raise ConfigError(f"{home} belongs to another user; pass --cache DIR for the prediction cache")
    return home / "predictions"


def _rewrite(value: object, path_map: dict[str, str]) -> object:
    if isinstance(value, str):
        return path_map.get(value, value)
    if isinstance(value, list):
        return [_rewrite(v, path_map) for v in value]
    return value


def check_blend(blend_dir: Path) -> dict[str, str | None]:
    """The blend's files against their seal; returns the member content hashes it was fitted on."""
    problems = verify_folder(blend_dir)
    if problems:
        raise CorruptArtefactError(f"blend {blend_dir}: " + "; ".join(problems[:5])
                                   + ". Refit it (fb3stack blend / run).")
    hashes = (read_manifest(blend_dir) or {}).get("member_hashes")
    if not isinstance(hashes, dict):
        raise StaleArtefactError(f"{blend_dir}: its manifest records no member hashes (made by an older fb3stack); "
                                 "refit it (fb3stack blend / run)")
    return hashes


def load_member(sources: PredictSources, name: str, expected: str | None) -> tuple[SavedMember, str]:
    """A blend member, verified: its files match their seals and its content hash is the one the blend
    was fitted on. Returns the member (backbone paths rewritten for a bundle) and its content hash."""
    model_dir = sources.models_root / name
    if not (model_dir / "config.yaml").is_file():
        raise MissingArtefactError(f"{model_dir}: member '{name}' of blend '{sources.blend_name}' has no saved model; "
                                   "train it (fb3stack train / run) or refit the blend without it")
    saved = SavedMember.load(model_dir)
    actual = saved.verify()  # before any path rewrite: the hash covers the config as trained
    if expected is None:
        raise StaleArtefactError(f"the blend has no content hash for member '{name}' (an OOF without models?); "
                                 "blend only complete workspace members to predict")
    if actual != expected:
        raise StaleArtefactError(
            f"member '{name}' changed since the blend was fitted (blend: {expected[:12]}, {model_dir}: "
            f"{actual[:12]}); its old predictions would be blended with new models. Refit the blend "
            "(fb3stack blend, or fb3stack run which does it) and predict again."
        )
    for field_name in vars(saved.config):
        setattr(saved.config, field_name, _rewrite(getattr(saved.config, field_name), sources.path_map))
    return saved, actual


def member_predictions(sources: PredictSources, members: list[str], test: pd.DataFrame,
                       expected: dict[str, str | None] | None = None) -> list[np.ndarray]:
    """(n, 6) fold-averaged predictions of each member, cached per (test set, member content) so a restart
    resumes and a retrained member is never served the old model's predictions."""
    expected = check_blend(sources.blend_dir) if expected is None else expected
    cache = sources.cache_root / fingerprint(test[[ID_COL, TEXT_COL]])[:16]
    # every member found and verified before the first one predicts: a missing or damaged one costs seconds
    loaded = [load_member(sources, name, expected.get(name)) for name in members]
    out = []
    bar = progress(list(zip(members, loaded)), desc=f"predict {len(test)} essays: members done", unit="member")
    for name, (saved, content) in bar:
        path = cache / f"{name}-{content[:16]}.npz"
        cached = load_npz_checked(path)
        if cached is not None and cached.get("preds", np.empty(0)).shape == (len(test), len(TARGETS)):
            logger.info("%s: cached test predictions of this exact model reused (%s)", name, path)
            out.append(cached["preds"])
            continue
        t0 = time.perf_counter()
        preds = np.asarray(saved.predict(test), dtype=np.float64)
        if preds.shape != (len(test), len(TARGETS)) or not np.isfinite(preds).all():
            raise ValueError(f"{name}: predictions of shape {preds.shape} with NaN/inf are unusable")
        save_npz_checked(path, preds=preds)
        logger.info("%s: predicted %d essays with %d folds in %.1f s", name, len(test), len(saved.fold_dirs),
                    time.perf_counter() - t0)
        out.append(preds)
    return out


def recorded_test_file(sources: PredictSources, blend: FittedBlend, name: str) -> tuple[Path, str]:
    """An outside member's test-prediction file as the blend recorded it, and the sha256 recorded with it."""
    record = blend.member_tests[name]
    path = Path(record["file"])
    if not path.is_absolute() and sources.files_root is not None:
        path = sources.files_root / path
    return path, str(record["sha256"])


def check_recorded_test_file(path: Path, expected: str, name: str, blend_name: str) -> None:
    """The file must still be the one the blend was fitted with (a rerun notebook may have rewritten it)."""
    if not path.is_file():
        raise MissingArtefactError(f"{path}: the test predictions of member '{name}' of blend '{blend_name}' are not "
                                   "there (recorded when the blend was fitted); put them back or blend again")
    actual = sha256_file(path)
    if actual != expected:
        raise StaleArtefactError(
            f"{path}: the test predictions of member '{name}' changed since blend '{blend_name}' was fitted "
            f"(sha256 {expected[:12]} then, {actual[:12]} now); they may be another model's than the OOF the weights "
            "were fitted on. Write that model's OOF and test files of one run and blend again (fb3stack blend)")


def external_test_predictions(sources: PredictSources, blend: FittedBlend, test: pd.DataFrame,
                              test_path: str | os.PathLike, given: dict[str, Path] | None = None
                              ) -> dict[str, np.ndarray]:
    """(n, 6) test predictions of each outside member, in the test CSV's row order (matched by text_id).

    `given` (`predict --member-test NAME=FILE`) replaces a member's recorded file with predictions the same
    model just made for this test CSV (a code competition's hidden test essays): checked like the recorded one
    except for the hash, since it is new by design."""
    from fb3stack.blend.inputs import read_test_predictions

    blend.check_can_predict()
    given = dict(given or {})
    unknown = sorted(set(given) - set(blend.member_tests))
    if unknown:
        raise ConfigError(f"--member-test {unknown[0]}: not an outside member of blend '{sources.blend_name}' "
                          f"(its outside members with test predictions: {sorted(blend.member_tests) or 'none'})")
    out = {}
    for name in blend.member_tests:
        if name in given:
            path = given[name]
            logger.info("member '%s': test predictions from %s (--member-test)", name, path)
        else:
            path, expected = recorded_test_file(sources, blend, name)
            check_recorded_test_file(path, expected, name, sources.blend_name)
        df = read_test_predictions(path)
        check_same_ids(df, test, path, test_path, hint=f"These are predictions of member '{name}' for other essays: "
                       "predict this test file with that model and pass them with --member-test NAME=FILE")
        out[name] = df.set_index(ID_COL).loc[test[ID_COL].to_numpy(), list(TARGETS)].to_numpy(dtype=np.float64)
    return out


def order_like_sample(sub: pd.DataFrame, sample: pd.DataFrame | None) -> pd.DataFrame:
    """Rows and columns in the order of sample_submission.csv (its ids were checked against the test file)."""
    if sample is None:
        return sub
    return sub.set_index(ID_COL).loc[sample[ID_COL]].reset_index()[list(sample.columns)]


@dataclass
class TestInputs:
    """The essays to predict and the sample submission to follow, checked against each other."""

    test: pd.DataFrame
    sample: pd.DataFrame | None


def check_inputs(test_path: str | os.PathLike, out_path: str | os.PathLike,
                 sample_path: str | os.PathLike | None = None) -> TestInputs:
    """Everything about the files that needs no model: the test file, the sample submission's ids against it,
    and that the output can be written. Seconds, before any member is loaded."""
    test = load_test(test_path)
    sample = load_sample_submission(sample_path) if sample_path is not None else None
    if sample is not None:
        check_same_ids(sample, test, sample_path, test_path)
    check_writable(out_path)
    return TestInputs(test, sample)


def predict_submission(sources: PredictSources, test_path: str | os.PathLike, out_path: str | os.PathLike,
                       sample_path: str | os.PathLike | None = None, inputs: TestInputs | None = None,
                       member_tests: dict[str, Path] | None = None) -> pd.DataFrame:
    """The checks that need no model first (`check_inputs`, unless already done; the blend, the outside
    members' test predictions and each workspace member's files), then the members predict, then the blend."""
    from fb3stack.blend import load_fitted_blend

    inputs = inputs or check_inputs(test_path, out_path, sample_path)
    test = inputs.test
    expected = check_blend(sources.blend_dir)  # before the blend's pickle is loaded
    blend = load_fitted_blend(sources.blend_dir)
    outside = external_test_predictions(sources, blend, test, test_path, member_tests)
    workspace_members = [name for name in blend.members if name not in outside]
    predicted = dict(zip(workspace_members, member_predictions(sources, workspace_members, test, expected)))
    preds = [outside[name] if name in outside else predicted[name] for name in blend.members]
    final = np.clip(blend.predict(preds, test), SCORE_MIN, SCORE_MAX)
    sub = pd.DataFrame(final, columns=list(TARGETS))
    sub.insert(0, ID_COL, test[ID_COL].to_numpy())
    sub = order_like_sample(sub, inputs.sample)
    write_csv(out_path, sub)
    logger.info("wrote %s (%d essays, blend '%s' of %s)", out_path, len(sub), sources.blend_name,
                ", ".join(blend.members))
    return sub
