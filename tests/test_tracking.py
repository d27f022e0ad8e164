"""Optional experiment tracking: the no-op default, clear errors for a missing package, and real local stores."""

from __future__ import annotations

import builtins
import sys

import pytest

from fb3stack.base.transformer.tracking import (
    Tracker,
    TrackingError,
    eval_values,
    flatten,
    make_tracker,
    numeric,
    tracker_for,
)

CONFIG = {"name": "m", "lr": 2e-5, "pooler": {"kind": "mean"}, "tracking": "x"}


def _rows(tracker: Tracker) -> None:
    for step in (1, 2, 3):
        tracker.log(step, eval_values(1.0 / step, 1e-5 * step, 0.5, 0.6 - 0.01 * step, {"cohesion": 0.55}))
    tracker.close()
    tracker.close()  # a second close is harmless (the trainer's finally and an early stop may both close)


def test_none_is_a_no_op(tmp_path):
    tracker = make_tracker("none", tmp_path)
    assert type(tracker) is Tracker
    _rows(tracker)
    assert not any(tmp_path.iterdir())  # writes nothing
    assert type(make_tracker(None, tmp_path)) is Tracker


def test_unknown_kind_is_refused(tmp_path):
    with pytest.raises(TrackingError, match="one of"):
        make_tracker("wandb", tmp_path)


@pytest.mark.parametrize("kind, module", [("tensorboard", "tensorboard"), ("mlflow", "mlflow")])
def test_missing_package_names_it(tmp_path, monkeypatch, kind, module):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == module or name.startswith(module + "."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    for name in [n for n in sys.modules if n == module or n.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(TrackingError, match=f"pip install {module}"):
        make_tracker(kind, tmp_path)


def test_values_are_numeric_and_config_is_flat():
    assert numeric({"a": 1, "b": "x", "c": float("nan"), "d": True}) == {"a": 1.0, "d": 1.0}
    assert flatten(CONFIG) == {"name": "m", "lr": "2e-05", "pooler.kind": "mean", "tracking": "x"}


def test_tensorboard_writes_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _rows(make_tracker("tensorboard", tmp_path, config=CONFIG))
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3]
    assert loss[1].value == pytest.approx(0.5)
    assert "valid/rmse_cohesion" in acc.Tags()["scalars"]


@pytest.mark.slow  # MLflow creates its SQLite schema (~10 s)
def test_mlflow_local_store(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    _rows(make_tracker("mlflow", tmp_path, run_name="m/fold0", config=CONFIG))
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("fb3stack").experiment_id])[0]
    assert run.data.params["pooler.kind"] == "mean"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "valid/mcrmse")] == [1, 2, 3]
    assert run.info.status == "FINISHED"


def test_tracker_for_a_member_config_and_history_rows(tmp_path):
    from dataclasses import dataclass

    import numpy as np

    @dataclass
    class Cfg:
        name: str = "m"
        tracking: str = "tensorboard"

    @dataclass
    class Untracked:
        name: str = "m"

    assert type(tracker_for(Untracked(), tmp_path / "u", "m fold 0")) is Tracker  # configs without the key
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    y = np.full((8, 6), 3.0)
    preds = y + np.arange(6) * 0.1  # trait k is off by 0.1 k
    tracker = tracker_for(Cfg(), tmp_path, "m fold 0")
    tracker.log_eval({"step": 5, "train_loss": 0.3, "lr": 1e-5, "grad_norm": 2.0, "valid_mcrmse": 0.25}, y, preds)
    tracker.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert acc.Scalars("valid/rmse_syntax")[0].value == pytest.approx(0.1)
    assert acc.Scalars("valid/rmse_conventions")[0].value == pytest.approx(0.5)
    assert [e.step for e in acc.Scalars("train/grad_norm")] == [5]
