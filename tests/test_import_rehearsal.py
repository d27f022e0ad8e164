"""The Kaggle recipe on small data, through the CLI as a user runs it: a tiny hub-shaped DeBERTa-v3 member trained
in one workspace, a CPU member in another (same folds), both imported into a third from read-only folders,
blended, bundled, the bundle made read-only and predicted from: the same submission as one workspace that
trained everything. The full rehearsal (fresh venv, pip install --no-index, no network) is
benchmarks/import_rehearsal.py."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pandas as pd
import yaml
from helpers_tiny_deberta import build_hub_like_deberta_v3
from test_workspace_import import read_only, tree_state, write_zoo

from fb3stack.cli.main import main

REPO = Path(__file__).resolve().parents[1]


def tiny_v3_member(backbone: Path) -> dict:
    return {"name": "tiny-v3", "kind": "transformer", "backbone": str(backbone), "max_len": 64, "batch_size": 8,
            "eval_batch_size": 16, "epochs": 1, "lr": 2e-3, "head_lr": 5e-3, "pooler": "mean", "loss": "smoothl1",
            "device": "cpu", "amp": "none", "warmup_ratio": 0.0, "adversarial": "none", "eval_every": 0}


def safetensors_data_bytes(path: Path) -> int:
    """Bytes of tensor data in a safetensors file (its size less the 8-byte length and the JSON header)."""
    with open(path, "rb") as fh:
        (header,) = struct.unpack("<Q", fh.read(8))
    return path.stat().st_size - 8 - header


def test_members_trained_apart_import_blend_bundle_predict_read_only(tmp_path, fb3_dir, train_df, capsys,
                                                                   monkeypatch):
    # a blend of both members, so the bundle carries a transformer and a CPU member: on 60 essays the tf-idf member
    # alone would beat every blend, and the saved blend would then be that member only (the best-member candidate)
    monkeypatch.setattr("fb3stack.blend.run.candidate_specs", lambda cfg, n_members: list(cfg.methods))
    v3 = build_hub_like_deberta_v3(tmp_path / "tiny-v3-hub", train_df["full_text"].head(200))
    tfidf = str(REPO / "configs/models/tfidf-ridge.yaml")
    blend = tmp_path / "blend.yaml"
    blend.write_text(yaml.safe_dump({"name": "final", "members": ["tiny-v3", "tfidf-ridge"],
                                     "methods": [{"name": "mean", "kind": "mean"}, {"name": "nnls", "kind": "nnls"}]}))
    kw = {"limit": 60}
    gpu_zoo = write_zoo(tmp_path / "gpu.yaml", [tiny_v3_member(v3)], fb3_dir, **kw)
    cpu_zoo = write_zoo(tmp_path / "cpu.yaml", [tfidf], fb3_dir, **kw)
    assert main(["train", str(gpu_zoo), "--workspace", str(tmp_path / "ws-gpu")]) == 0
    assert main(["train", str(cpu_zoo), "--workspace", str(tmp_path / "ws-cpu")]) == 0

    # the dry run's checkpoint size is what training wrote (tensor bytes of model.safetensors)
    capsys.readouterr()
    assert main(["train", str(gpu_zoo), "--dry-run", "--workspace", str(tmp_path / "ws-gpu")]) == 0
    from fb3stack.base.runner import resolve_members
    from fb3stack.base.sizes import transformer_size
    from fb3stack.config import load_run_config

    size = transformer_size(resolve_members(load_run_config(str(gpu_zoo)))[0], 3)
    written = [safetensors_data_bytes(tmp_path / f"ws-gpu/models/tiny-v3/fold{k}/model.safetensors") for k in range(3)]
    assert written == [size.per_fold] * 3

    for src in ("ws-gpu", "ws-cpu"):
        read_only(tmp_path / src)
    before = {s: tree_state(tmp_path / s) for s in ("ws-gpu", "ws-cpu")}
    ws = tmp_path / "ws-final"
    assert main(["import", "--workspace", str(ws), str(tmp_path / "ws-gpu"), str(tmp_path / "ws-cpu")]) == 0
    final_zoo = write_zoo(tmp_path / "final.yaml", [tfidf], fb3_dir, blend=str(blend), **kw)
    assert main(["run", str(final_zoo), "--workspace", str(ws)]) == 0
    assert {s: tree_state(tmp_path / s) for s in ("ws-gpu", "ws-cpu")} == before

    bundle = tmp_path / "bundle"
    assert main(["bundle", "--workspace", str(ws), "--out", str(bundle), "--no-wheels"]) == 0
    assert json.loads((bundle / "bundle.json").read_text())["members"] == ["tiny-v3", "tfidf-ridge"]
    read_only(bundle)
    bundle_before = tree_state(bundle)
    test = fb3_dir / "test.csv"
    # --cache to a writable folder: until predict keeps its cache out of the bundle by default (issue 21 item 5)
    assert main(["predict", "--bundle", str(bundle), "--test", str(test), "--out", str(tmp_path / "sub.csv"),
                 "--cache", str(tmp_path / "cache")]) == 0
    assert tree_state(bundle) == bundle_before

    # one workspace that trained everything gives the same submission
    every = write_zoo(tmp_path / "every.yaml", [tiny_v3_member(v3), tfidf], fb3_dir, blend=str(blend), **kw)
    assert main(["run", str(every), "--workspace", str(tmp_path / "ws-one"), "--out", str(tmp_path / "one.csv")]) == 0
    ours, ref = pd.read_csv(tmp_path / "sub.csv"), pd.read_csv(tmp_path / "one.csv")
    assert list(ours["text_id"]) == list(ref["text_id"])
    assert (ours.drop(columns="text_id") - ref.drop(columns="text_id")).abs().max().max() <= 2e-3
