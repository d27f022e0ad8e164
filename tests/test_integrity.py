"""Artefact integrity: content hashes, stale and damaged artefacts, up-front validation, the workspace lock.

A small CPU zoo (TF-IDF ridge + text-features LightGBM, 120 essays, 2 folds) is run once per module and copied
for each test that changes or damages it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from fb3stack.cli.main import main
from fb3stack.constants import TARGETS
from fb3stack.io import read_json

REPO = Path(__file__).resolve().parents[1]
CLI = "import sys; from fb3stack.cli.main import main; sys.exit(main(sys.argv[1:]))"


def write_zoo(root: Path, **blend_extra) -> Path:
    zoo = {
        "name": "small", "data": {"limit": 120, "limit_seed": 3}, "folds": {"n_folds": 2, "seed": 0},
        "members": [str(REPO / "configs/models/tfidf-ridge.yaml"), str(REPO / "configs/models/features-lgbm.yaml")],
        "blend": {"name": "b", "members": ["tfidf-ridge", "features-lgbm"],
                  "methods": [{"name": "mean", "kind": "mean"}, {"name": "nnls", "kind": "nnls"}], **blend_extra},
    }
    path = root / "zoo.yaml"
    path.write_text(yaml.safe_dump(zoo))
    return path


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def base_run(fb3_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("integrity")
    zoo = write_zoo(root)
    assert main(["run", str(zoo), "--workspace", str(root / "ws"), "--data-dir", str(fb3_dir)]) == 0
    return root


@pytest.fixture()
def run_copy(base_run, tmp_path) -> Path:
    """A private copy of the module's run (zoo.yaml + ws/)."""
    root = tmp_path / "run"
    shutil.copytree(base_run, root)
    write_zoo(root)  # zoo.yaml paths are absolute to the repo: unchanged
    return root


def predict(root: Path, fb3_dir: Path, out: Path, *extra: str) -> int:
    return main(["predict", "--workspace", str(root / "ws"), "--test", str(fb3_dir / "test.csv"), "--out", str(out),
                 *extra])


def manifests(ws: Path) -> dict[str, dict]:
    return {p.parent.name: read_json(p) for p in sorted((ws / "models").glob("*/manifest.json"))}


def test_retrained_member_never_reuses_old_test_predictions(run_copy, fb3_dir, tmp_path):
    """The issue's case: retrain tfidf-ridge with a new alpha; the submission must come from the new model."""
    ws = run_copy / "ws"
    before = pd.read_csv(ws / "submission.csv")
    old_hash = manifests(ws)["tfidf-ridge"]["content_hash"]
    assert main(["run", str(run_copy / "zoo.yaml"), "--workspace", str(ws), "--data-dir", str(fb3_dir),
                 "--set", "members.tfidf-ridge.alpha=100"]) == 0
    after = pd.read_csv(ws / "submission.csv")
    assert manifests(ws)["tfidf-ridge"]["content_hash"] != old_hash
    shutil.rmtree(ws / "predictions")
    assert predict(run_copy, fb3_dir, tmp_path / "fresh.csv") == 0
    pd.testing.assert_frame_equal(after, pd.read_csv(tmp_path / "fresh.csv"))
    assert not np.allclose(after[list(TARGETS)], before[list(TARGETS)])  # the new model's, not the old one's
    blend_manifest = read_json(ws / "blends" / "b" / "manifest.json")
    assert blend_manifest["member_hashes"]["tfidf-ridge"] == manifests(ws)["tfidf-ridge"]["content_hash"]


def test_execution_only_settings_retrain_nothing(run_copy, fb3_dir):
    ws = run_copy / "ws"
    before = manifests(ws)
    stamps = {p: p.stat().st_mtime_ns for p in (ws / "models").rglob("*.joblib")}
    assert main(["run", str(run_copy / "zoo.yaml"), "--workspace", str(ws), "--data-dir", str(fb3_dir),
                 "--set", "members.features-lgbm.num_threads=2", "--set", "members.*.seed=42"]) == 0
    assert manifests(ws) == before
    assert {p: p.stat().st_mtime_ns for p in (ws / "models").rglob("*.joblib")} == stamps
    assert yaml.safe_load((ws / "models/features-lgbm/config.yaml").read_text())["num_threads"] == 2


def test_execution_only_fields_are_declared_per_config_class():
    from fb3stack.base.embed_svr import EmbedSVRConfig
    from fb3stack.base.runner import config_hash
    from fb3stack.base.transformer.config import TransformerConfig

    t = TransformerConfig(name="t", kind="transformer")
    for key, value in [("num_threads", 16), ("device", "cpu"), ("eval_batch_size", 128), ("log_every", 1),
                       ("optimizer_impl", "foreach")]:
        assert config_hash(TransformerConfig(name="t", kind="transformer", **{key: value})) == config_hash(t), key
    assert config_hash(TransformerConfig(name="t", kind="transformer", lr=1e-4)) != config_hash(t)
    assert config_hash(TransformerConfig(name="t", kind="transformer", batch_size=16)) != config_hash(t)
    e = EmbedSVRConfig(name="e", kind="embed-svr")
    assert config_hash(EmbedSVRConfig(name="e", kind="embed-svr", batch_size=64, num_threads=8)) == config_hash(e)
    assert config_hash(EmbedSVRConfig(name="e", kind="embed-svr", max_len=256)) != config_hash(e)


def test_member_retrained_without_blend_is_refused_by_predict_and_bundle(run_copy, fb3_dir, tmp_path, capsys):
    ws = run_copy / "ws"
    assert main(["train", str(run_copy / "zoo.yaml"), "--workspace", str(ws), "--data-dir", str(fb3_dir),
                 "--only", "tfidf-ridge", "--set", "members.tfidf-ridge.alpha=30"]) == 0
    capsys.readouterr()
    assert predict(run_copy, fb3_dir, tmp_path / "sub.csv") == 2
    err = capsys.readouterr().err
    assert "tfidf-ridge" in err and "changed since the blend was fitted" in err
    assert not (tmp_path / "sub.csv").exists()
    assert main(["bundle", "--workspace", str(ws), "--out", str(tmp_path / "bundle"), "--no-wheels"]) == 2
    assert not (tmp_path / "bundle").exists()


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_fold_model_is_refused_then_retrained(run_copy, fb3_dir, tmp_path, capsys):
    ws = run_copy / "ws"
    reference = pd.read_csv(ws / "submission.csv")
    shutil.rmtree(ws / "predictions")  # so prediction has to load the models
    _truncate(ws / "models/tfidf-ridge/fold1/tfidf_ridge.joblib")
    capsys.readouterr()
    assert predict(run_copy, fb3_dir, tmp_path / "sub.csv") == 2
    err = capsys.readouterr().err
    assert "fold1/tfidf_ridge.joblib" in err and "truncated" in err
    assert main(["run", str(run_copy / "zoo.yaml"), "--workspace", str(ws), "--data-dir", str(fb3_dir)]) == 0
    assert len(list((ws / "models/.corrupt").iterdir())) == 1  # set aside, never loaded
    pd.testing.assert_frame_equal(pd.read_csv(ws / "submission.csv"), reference)


def test_truncated_oof_parquet_is_refused_then_rebuilt(run_copy, fb3_dir, capsys):
    ws = run_copy / "ws"
    oof_path = ws / "models/features-lgbm/oof.parquet"
    reference = pd.read_parquet(oof_path)
    _truncate(oof_path)
    capsys.readouterr()
    assert main(["blend", str(run_copy / "zoo.yaml"), "--workspace", str(ws), "--data-dir", str(fb3_dir)]) == 2
    assert "features-lgbm/oof.parquet" in capsys.readouterr().err
    assert main(["run", str(run_copy / "zoo.yaml"), "--workspace", str(ws), "--data-dir", str(fb3_dir)]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(oof_path), reference)


def test_damaged_caches_are_recomputed_not_used(run_copy, fb3_dir, tmp_path):
    ws = run_copy / "ws"
    reference = pd.read_csv(ws / "submission.csv")
    for store in [*(ws / "predictions").rglob("*.npz"), *(ws / "cache").rglob("store.npz")]:
        _truncate(store)
    assert predict(run_copy, fb3_dir, tmp_path / "sub.csv") == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "sub.csv"), reference)
    from fb3stack.io import load_npz_checked

    assert all(load_npz_checked(p) is not None for p in (ws / "predictions").rglob("*.npz"))


def test_bundle_carries_and_checks_the_hashes(run_copy, fb3_dir, tmp_path, capsys):
    ws = run_copy / "ws"
    bundle = tmp_path / "bundle"
    assert main(["bundle", "--workspace", str(ws), "--out", str(bundle), "--no-wheels"]) == 0
    meta = read_json(bundle / "bundle.json")
    assert meta["member_hashes"] == {n: m["content_hash"] for n, m in manifests(ws).items()}
    out = tmp_path / "sub.csv"
    args = ["predict", "--bundle", str(bundle), "--test", str(fb3_dir / "test.csv"), "--out", str(out), "--cache",
            str(tmp_path / "cache")]
    assert main(args) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out), pd.read_csv(ws / "submission.csv"))
    shutil.rmtree(tmp_path / "cache")
    target = bundle / "models/features-lgbm/fold0/lgbm_cohesion.txt"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit: same size, other content
    target.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(args) == 2
    assert "lgbm_cohesion.txt does not match its recorded sha256" in capsys.readouterr().err


def test_unknown_blend_method_fails_fast_with_its_key_path(fb3_dir, tmp_path, capsys):
    zoo = write_zoo(tmp_path)
    raw = yaml.safe_load(zoo.read_text())
    raw["blend"]["methods"].append({"name": "magic", "kind": "telepathy"})
    zoo.write_text(yaml.safe_dump(raw))
    t0 = time.perf_counter()
    assert main(["run", str(zoo), "--workspace", str(tmp_path / "ws"), "--data-dir", str(fb3_dir)]) == 2
    assert time.perf_counter() - t0 < 30  # before any data is read or model trained (seconds, not hours)
    err = capsys.readouterr().err
    assert "blend.methods[2].kind" in err and "telepathy" in err
    assert not (tmp_path / "ws").exists()  # nothing written
    raw["blend"]["methods"][-1] = {"name": "nn", "kind": "nnls", "params": {"shrinkk": 1}}
    zoo.write_text(yaml.safe_dump(raw))
    assert main(["run", str(zoo), "--workspace", str(tmp_path / "ws"), "--data-dir", str(fb3_dir)]) == 2
    assert "blend.methods[2].params" in capsys.readouterr().err


def test_bad_member_key_and_backbone_fail_before_training(fb3_dir, tmp_path, capsys):
    zoo = write_zoo(tmp_path)
    raw = yaml.safe_load(zoo.read_text())
    raw["members"].append({"name": "svr", "kind": "embed-svr", "backbones": [str(tmp_path / "no-such-model")]})
    zoo.write_text(yaml.safe_dump(raw))
    assert main(["run", str(zoo), "--workspace", str(tmp_path / "ws"), "--data-dir", str(fb3_dir)]) == 2
    assert "members.svr.backbones[0]" in capsys.readouterr().err
    raw["members"][-1] = {"name": "svr", "kind": "embed-svr", "regresor": "svr"}
    zoo.write_text(yaml.safe_dump(raw))
    assert main(["run", str(zoo), "--workspace", str(tmp_path / "ws"), "--data-dir", str(fb3_dir)]) == 2
    assert "regresor" in capsys.readouterr().err
    assert not (tmp_path / "ws").exists()


def test_blend_reuses_the_runs_own_data_settings(fb3_dir, tmp_path):
    """on_bad_score: warn keeps an off-grid score for training; the blend must not re-read train.csv strictly."""
    data = tmp_path / "data"
    shutil.copytree(fb3_dir, data, ignore=shutil.ignore_patterns("*.zip"))
    train = pd.read_csv(data / "train.csv")
    ids = pd.read_csv(fb3_dir / "train.csv", usecols=["text_id"])["text_id"]
    from fb3stack.data import subsample

    chosen = subsample(train, 120, 3)["text_id"].iloc[0]
    train.loc[ids == chosen, "cohesion"] = 3.25
    train.to_csv(data / "train.csv", index=False)
    zoo = write_zoo(tmp_path)
    raw = yaml.safe_load(zoo.read_text())
    raw["data"]["on_bad_score"] = "warn"
    zoo.write_text(yaml.safe_dump(raw))
    assert main(["run", str(zoo), "--workspace", str(tmp_path / "ws"), "--data-dir", str(data)]) == 0
    assert (tmp_path / "ws" / "submission.csv").is_file()


def test_second_writer_is_refused_and_a_killed_holder_does_not_block(run_copy, fb3_dir, capsys):
    ws = run_copy / "ws"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from fb3stack.workspace import Workspace, workspace_lock\n"
         "with workspace_lock(Workspace.at(sys.argv[1]), 'train'):\n print('locked', flush=True); time.sleep(600)",
         str(ws)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])})
    try:
        assert holder.stdout.readline().strip() == "locked"
        capsys.readouterr()
        assert main(["run", str(run_copy / "zoo.yaml"), "--workspace", str(ws), "--data-dir", str(fb3_dir)]) == 2
        err = capsys.readouterr().err
        assert "in use by `fb3stack train`" in err and f"pid {holder.pid}" in err
        assert main(["blend", str(run_copy / "zoo.yaml"), "--workspace", str(ws), "--data-dir", str(fb3_dir)]) == 2
        # read-only commands still work while it is held
        assert main(["check-data", "--data-dir", str(fb3_dir)]) == 0
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    finally:
        if holder.poll() is None:
            holder.kill()
    assert (ws / ".fb3stack.lock").exists()  # SIGKILL left it behind ...
    assert main(["run", str(run_copy / "zoo.yaml"), "--workspace", str(ws), "--data-dir", str(fb3_dir)]) == 0
    assert not (ws / ".fb3stack.lock").exists()  # ... and the next run took it over and released it


def test_two_concurrent_runs_one_refused_nothing_corrupted(base_run, fb3_dir, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(base_run, root)
    ws = root / "ws"
    shutil.rmtree(ws / "models")  # both would have to train
    shutil.rmtree(ws / "predictions")
    args = ["run", str(root / "zoo.yaml"), "--workspace", str(ws), "--data-dir", str(fb3_dir)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    results = [(p.wait(), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    refused = next(err for rc, err in results if rc == 2)
    assert "is in use by `fb3stack run`" in refused
    reference = pd.read_csv(base_run / "ws" / "submission.csv")
    pd.testing.assert_frame_equal(pd.read_csv(ws / "submission.csv"), reference)
    from fb3stack.base.runner import SavedMember

    for name in ("tfidf-ridge", "features-lgbm"):
        SavedMember.load(ws / "models" / name).verify()  # every file matches its seal


def test_lock_of_a_dead_or_reused_pid_is_taken_over_but_another_hosts_is_respected(tmp_path):
    import json
    import socket

    from fb3stack.workspace import Workspace, WorkspaceBusyError, lock_holder, workspace_lock

    ws = Workspace.at(tmp_path / "ws")
    lock = ws.root / ".fb3stack.lock"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for info in ({"pid": dead.pid, "host": socket.gethostname()},  # process gone
                 {"pid": os.getpid(), "host": socket.gethostname(), "proc_start": "1"}):  # pid reused since
        lock.write_text(json.dumps({**info, "command": "run"}))
        assert lock_holder(ws) is None
        with workspace_lock(ws, "train"):
            assert json.loads(lock.read_text())["pid"] == os.getpid()
        assert not lock.exists()
    lock.write_text(json.dumps({"pid": 1, "host": "another-host", "command": "run", "started_at": "t"}))
    with pytest.raises(WorkspaceBusyError, match="another-host"):
        with workspace_lock(ws, "train"):
            pass
    assert lock.exists()  # not ours to remove


def test_embed_kind_renamed_old_name_still_reads_and_retrains_nothing(tmp_path):
    """`embed-svr` fits a ridge as often as an SVR, so the kind is now `embed`; the old name still reads, to the
    same class, and hashes as before, so members trained under it stay fresh."""
    from fb3stack.base.embed_svr import EmbedSVRConfig, EmbedSVRMember
    from fb3stack.base.registry import load_member_config, member_class
    from fb3stack.base.runner import config_hash

    assert member_class("embed") is member_class("embed-svr") is EmbedSVRMember
    (tmp_path / "old.yaml").write_text("name: e\nkind: embed-svr\nregressor: ridge_cv\n")
    old = load_member_config(tmp_path / "old.yaml")
    assert isinstance(old, EmbedSVRConfig)
    assert config_hash(EmbedSVRConfig(name="e", kind="embed", regressor="ridge_cv")) == config_hash(old)
    for path in (REPO / "configs/models").glob("embed-*.yaml"):
        assert yaml.safe_load(path.read_text())["kind"] == "embed", path
