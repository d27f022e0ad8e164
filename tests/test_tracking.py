"""Optional experiment tracking: the no-op default, clear errors for a missing package, and real local stores."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from fb3stack.base.transformer.engine import make_accelerator
from fb3stack.base.transformer.tracking import TrackingError, finish, flatten, log_eval, log_with, start

CONFIG = {"name": "m", "lr": 2e-5, "pooler": {"kind": "mean"}, "tracking": "x"}


def _track(kind: str, folder, run_name: str = "m fold 0") -> None:
    """Three evaluation rows, the way the trainer logs them, through an accelerator built for `kind`."""
    accelerator = make_accelerator(torch.device("cpu"), None, 1, log_with(kind), folder)
    start(accelerator, CONFIG, run_name)
    y = np.full((8, 6), 3.0)
    for step in (1, 2, 3):
        row = {"step": step, "train_loss": 1.0 / step, "lr": 1e-5 * step, "valid_mcrmse": 0.6 - 0.01 * step,
               "grad_norm": float("nan") if step == 2 else np.float32(0.5)}  # an fp16 overflow's norm is NaN
        log_eval(accelerator, row, y, y + np.arange(6) * 0.1 * step)  # trait k is off by 0.1 k step
    finish(accelerator)
    finish(accelerator)  # a second finish is harmless


def test_none_is_a_no_op(tmp_path):
    assert log_with("none") is None and log_with(None) is None
    _track("none", tmp_path)
    assert not any(tmp_path.iterdir())  # writes nothing


def test_unknown_kind_is_refused():
    with pytest.raises(TrackingError, match="one of"):
        log_with("wandb")


@pytest.mark.parametrize("kind, module", [("tensorboard", "tensorboard"), ("mlflow", "mlflow")])
def test_missing_package_names_it(monkeypatch, kind, module):
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError, as when not installed
    with pytest.raises(TrackingError, match=f"pip install {module}"):
        log_with(kind)


def test_config_is_flat():
    assert flatten(CONFIG) == {"name": "m", "lr": "2e-05", "pooler.kind": "mean", "tracking": "x"}


def test_tensorboard_writes_scalars_and_config(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _track("tensorboard", tmp_path)
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3]
    assert loss[1].value == pytest.approx(0.5)
    assert [e.step for e in acc.Scalars("train/grad_norm")] == [1, 3]  # NaN stays out of the charts
    assert acc.Scalars("valid/rmse_syntax")[0].value == pytest.approx(0.1)
    assert acc.Scalars("valid/rmse_conventions")[2].value == pytest.approx(1.5)
    [hparams] = (tmp_path / "tensorboard").glob("*/hparams.yml")  # the config, also in the HPARAMS tab
    assert "pooler.kind: mean" in hparams.read_text()


@pytest.mark.slow  # MLflow creates its SQLite schema (~10 s)
def test_mlflow_local_store(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    _track("mlflow", tmp_path, run_name="m/fold0")
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("fb3stack").experiment_id])[0]
    assert run.info.run_name == "m/fold0" and run.data.params["pooler.kind"] == "mean"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "valid/mcrmse")] == [1, 2, 3]
    assert run.info.status == "FINISHED"
