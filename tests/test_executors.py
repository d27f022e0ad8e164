"""Ray executor: same artefacts as the local one, and a job whose worker dies is retried."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from length_member import LengthRidgeConfig

from fb3stack.base.executors import RayOptions, run_local, run_ray
from fb3stack.config import DataConfig, FoldsConfig, RunConfig
from fb3stack.workspace import prepare

ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'fb3stack[ray]')")
TESTS_DIR = str(Path(__file__).resolve().parent)


def _prep(fb3_dir, root):
    cfg = RunConfig(workspace=str(root), data=DataConfig(data_dir=str(fb3_dir), limit=240),
                    folds=FoldsConfig(n_folds=2, seed=3))
    return prepare(cfg)


@pytest.fixture(scope="module")
def local_ray():
    # the test members live in tests/: put them on the workers' import path
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": TESTS_DIR}},
             log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_zoo_matches_local_and_retries_a_killed_job(fb3_dir, tmp_path, local_ray):
    marker = tmp_path / "died-once"
    members = [LengthRidgeConfig(name="len-a", kind="length-ridge", alpha=1.0),
               LengthRidgeConfig(name="len-b", kind="length-ridge", alpha=30.0, die_once_marker=str(marker))]
    (tmp_path / "never").write_text("")  # the local run's member must not die
    local = run_local([LengthRidgeConfig(name="len-a", kind="length-ridge", alpha=1.0),
                       LengthRidgeConfig(name="len-b", kind="length-ridge", alpha=30.0,
                                         die_once_marker=str(tmp_path / "never"))],
                      _prep(fb3_dir, tmp_path / "local"))
    prep = _prep(fb3_dir, tmp_path / "ray")
    results = run_ray(members, prep, options=RayOptions(max_retries=2, cpus_per_job=1))
    assert marker.exists(), "the fold-1 worker of len-b should have been killed once"
    assert set(results) == {"len-a", "len-b"}
    for name in results:
        a = pd.read_parquet(tmp_path / "local" / "models" / name / "oof.parquet")
        b = pd.read_parquet(tmp_path / "ray" / "models" / name / "oof.parquet")
        pd.testing.assert_frame_equal(a, b)
        assert sorted(p.name for p in (tmp_path / "ray" / "models" / name).iterdir()) == sorted(
            p.name for p in (tmp_path / "local" / "models" / name).iterdir())
    assert results["len-a"]["mcrmse"] == pytest.approx(local["len-a"]["mcrmse"])
    assert not np.isnan(results["len-b"]["mcrmse"])
    # resume semantics unchanged: a second Ray run finds everything done and trains nothing
    marker.unlink()
    run_ray(members, prep, options=RayOptions(max_retries=0))
    assert not marker.exists()
