"""Optional experiment tracking for transformer training: `tracking: none | tensorboard | mlflow`.

Both backends write to a local folder (no server, no network): TensorBoard event files under
`<fold dir>/tensorboard/` (view with `tensorboard --logdir <workspace>/models`), an MLflow SQLite store
`<fold dir>/mlruns/mlflow.db` (view with `mlflow ui --backend-store-uri sqlite:///<that file>`). Neither package is
a dependency of fb3stack: they are imported only when asked for, with a clear error when missing.

    tracker = tracker_for(cfg, fold_dir, run_name="deberta fold 0")   # cfg.tracking: none | tensorboard | mlflow
    tracker.log_eval(history_row, y_valid, preds)    # or tracker.log(step, {"train/loss": 0.41, ...})
    tracker.close()
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

TrackingKind = Literal["none", "tensorboard", "mlflow"]
KINDS = ("none", "tensorboard", "mlflow")


class TrackingError(RuntimeError):
    """A tracking backend was asked for but cannot be used."""


class Tracker:
    """Does nothing: the default (`tracking: none`) and the interface the backends implement."""

    def log(self, step: int, values: Mapping[str, Any]) -> None:
        """Record numeric `values` at optimizer step `step`; non-numeric values are ignored."""

    def close(self) -> None:
        """Flush and release the backend; safe to call twice."""

    def log_eval(self, row: Mapping[str, Any], y_true: Any = None, y_pred: Any = None) -> None:
        """One evaluation row of the trainer's history (step, train_loss, lr, grad_norm, valid_mcrmse), with the
        per-trait validation RMSE computed from `y_true`/`y_pred` when given."""
        per_trait = None
        if y_true is not None and y_pred is not None:
            from fb3stack.constants import TARGETS
            from fb3stack.metrics import rmse_per_trait

            per_trait = dict(zip(TARGETS, (float(v) for v in rmse_per_trait(y_true, y_pred))))
        self.log(int(row["step"]), eval_values(row.get("train_loss"), row.get("lr"), row.get("grad_norm"),
                                               row.get("valid_mcrmse"), per_trait))

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def numeric(values: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in values.items():
        if isinstance(value, bool):
            value = float(value)
        try:
            f = float(value)
        except (TypeError, ValueError):
            continue
        if f == f:  # NaN stays out of the charts
            out[str(key)] = f
    return out


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {'a.b': 'value'} strings, as both backends take flat parameters."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, str) else json.dumps(value, default=str)
    return out


def _require(module: str, kind: str, install: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise TrackingError(f"tracking: {kind} needs the '{install}' package, which is not installed; "
                            f"pip install {install} (or set tracking: none)") from err


class TensorBoardTracker(Tracker):
    def __init__(self, logdir: Path, config: Mapping[str, Any] | None = None) -> None:
        _require("tensorboard", "tensorboard", "tensorboard")
        writer_mod = _require("torch.utils.tensorboard", "tensorboard", "tensorboard")
        self.logdir = Path(logdir)
        self.writer = writer_mod.SummaryWriter(log_dir=str(self.logdir))
        if config:
            text = "\n".join(f"    {k}: {v}" for k, v in flatten(config).items())  # indented = preformatted
            self.writer.add_text("config", text, 0)
        self._closed = False

    def log(self, step: int, values: Mapping[str, Any]) -> None:
        for key, value in numeric(values).items():
            self.writer.add_scalar(key, value, int(step))

    def close(self) -> None:
        if not self._closed:
            self.writer.flush()
            self.writer.close()
            self._closed = True


class MlflowTracker(Tracker):
    def __init__(self, store: Path, run_name: str, config: Mapping[str, Any] | None = None,
                 experiment: str = "fb3stack") -> None:
        mlflow = _require("mlflow", "mlflow", "mlflow")
        _require("sqlalchemy", "mlflow (its local SQLite store)", "sqlalchemy alembic")
        self.store = Path(store).resolve()
        self.store.mkdir(parents=True, exist_ok=True)
        # MLflow 3 keeps the ./mlruns file store in maintenance mode; a SQLite file is its local offline store
        self.client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{self.store / 'mlflow.db'}")
        found = self.client.get_experiment_by_name(experiment)
        exp_id = found.experiment_id if found else self.client.create_experiment(
            experiment, artifact_location=(self.store / "artifacts").as_uri())
        self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
        for key, value in flatten(config or {}).items():
            self.client.log_param(self.run_id, key[:250], value[:6000])
        self._closed = False

    def log(self, step: int, values: Mapping[str, Any]) -> None:
        for key, value in numeric(values).items():
            self.client.log_metric(self.run_id, key, value, step=int(step))

    def close(self) -> None:
        if not self._closed:
            self.client.set_terminated(self.run_id)
            self._closed = True


def make_tracker(kind: str | None, out_dir: str | os.PathLike, run_name: str = "run",
                 config: Mapping[str, Any] | None = None) -> Tracker:
    """The tracker `kind` asks for, writing under `out_dir`; `none`/None gives the no-op Tracker."""
    kind = (kind or "none").lower()
    if kind not in KINDS:
        raise TrackingError(f"tracking must be one of {list(KINDS)}, got {kind!r}")
    if kind == "none":
        return Tracker()
    out = Path(out_dir)
    if kind == "tensorboard":
        return TensorBoardTracker(out / "tensorboard", config)
    return MlflowTracker(out / "mlruns", run_name, config)


def tracker_for(cfg: Any, out_dir: str | os.PathLike, run_name: str) -> Tracker:
    """The tracker a member config asks for (`cfg.tracking`, default none), logging its resolved config.

    Under data parallelism only the main process tracks, so one run is recorded per fold, not one per rank.
    """
    from fb3stack import dist
    from fb3stack.config import to_dict

    kind = getattr(cfg, "tracking", "none")
    return make_tracker(kind if dist.is_main() else "none", out_dir, run_name, to_dict(cfg))


def eval_values(train_loss: float, lr: float, grad_norm: float, mcrmse: float,
                rmse_per_trait: Mapping[str, float] | None = None) -> dict[str, float]:
    """The standard names for one evaluation row, so every backend shows the same charts."""
    values = {"train/loss": train_loss, "train/lr": lr, "train/grad_norm": grad_norm, "valid/mcrmse": mcrmse}
    values.update({f"valid/rmse_{t}": v for t, v in (rmse_per_trait or {}).items()})
    return values
