"""Optional experiment tracking of transformer training, `tracking: none | tensorboard | mlflow`: accelerate's
trackers, writing under the fold's folder (no server, no network).

TensorBoard event files go to `<fold dir>/tensorboard/` (view with `tensorboard --logdir <workspace>/models`), MLflow
to a SQLite store `<fold dir>/mlruns/mlflow.db` (`mlflow ui --backend-store-uri sqlite:///<that file>`). Neither
package is a dependency of fb3stack; asking for one that is not installed fails at once, naming it.

    engine = Engine(model, ..., log_with=log_with(cfg.tracking), project_dir=fold_dir)
    start(engine.accelerator, cfg, run_name="deberta fold 0")
    log_eval(engine.accelerator, history_row, y_valid, preds)
    finish(engine.accelerator)

Under data parallelism accelerate tracks on the main process only: one run per fold, not one per rank.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

KINDS = ("none", "tensorboard", "mlflow")
PACKAGES = {"tensorboard": ("tensorboard",), "mlflow": ("mlflow", "sqlalchemy")}  # sqlalchemy: the SQLite store


class TrackingError(RuntimeError):
    """A tracking backend was asked for but cannot be used."""


def log_with(kind: str | None) -> str | None:
    """accelerate's `log_with` for `tracking: kind` (None: no tracking). A missing package fails here, naming it,
    where accelerate would only drop its tracker."""
    kind = (kind or "none").lower()
    if kind not in KINDS:
        raise TrackingError(f"tracking must be one of {list(KINDS)}, got {kind!r}")
    for module in PACKAGES.get(kind, ()):
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise TrackingError(f"tracking: {kind} needs the '{module}' package, which is not installed; "
                                f"pip install {module} (or set tracking: none)") from err
    return None if kind == "none" else kind


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {'a.b': 'value'} strings, as both backends take flat scalar parameters."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, str) else json.dumps(value, default=str)
    return out


def start(accelerator: Any, config: Any, run_name: str) -> None:
    """Start the trackers `accelerator` was built with, logging the resolved member `config` as hyperparameters."""
    from fb3stack.config import to_dict

    kinds, init_kwargs = {str(t) for t in accelerator.log_with}, {}
    if "mlflow" in kinds:
        import mlflow

        store = (Path(accelerator.project_dir) / "mlruns").resolve()
        store.mkdir(parents=True, exist_ok=True)
        # accelerate's tracker logs wherever mlflow's global tracking URI points, not to a folder it is given;
        # MLflow 3 keeps the ./mlruns file store in maintenance mode, so a SQLite file is the local offline store
        mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
        init_kwargs["mlflow"] = {"run_name": run_name, "logging_dir": (store / "artifacts").as_uri()}
    if kinds:
        # the project names TensorBoard's folder (<fold dir>/tensorboard) and MLflow's experiment
        accelerator.init_trackers("tensorboard" if "tensorboard" in kinds else "fb3stack",
                                  flatten(to_dict(config)), init_kwargs)


def log_eval(accelerator: Any, row: Mapping[str, Any], y_true: Any = None, y_pred: Any = None) -> None:
    """One evaluation row of the trainer's history (step, train_loss, lr, grad_norm, valid_mcrmse) under the chart
    names every backend shows, with the per-trait validation RMSE when `y_true`/`y_pred` are given."""
    if not accelerator.trackers:
        return
    from fb3stack.constants import TARGETS
    from fb3stack.metrics import rmse_per_trait

    values = {"train/loss": row.get("train_loss"), "train/lr": row.get("lr"), "train/grad_norm": row.get("grad_norm"),
              "valid/mcrmse": row.get("valid_mcrmse")}
    if y_true is not None and y_pred is not None:
        values.update({f"valid/rmse_{t}": v for t, v in zip(TARGETS, rmse_per_trait(y_true, y_pred))})
    # plain floats (TensorBoard's tracker skips numpy scalars); NaN stays out of the charts
    accelerator.log({k: float(v) for k, v in values.items() if v is not None and v == v}, step=int(row["step"]))


def finish(accelerator: Any) -> None:
    """Close the trackers; safe to call twice. Not `Accelerator.end_training`: it also destroys the process group,
    which the next fold's data-parallel training still needs."""
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers.clear()
