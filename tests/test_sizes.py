"""Sizes and work before training: `fb3stack train --dry-run` (checkpoint sizes, jobs, tokens, time where a
throughput was measured, backbone availability and the exit code `run` would give)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers_tiny_deberta import build_hub_like_deberta_v3

from fb3stack.base.sizes import MEASURED, match_gpu, measured_throughput, member_arch, transformer_size
from fb3stack.base.transformer.config import TransformerConfig
from fb3stack.cli.main import main

REPO = Path(__file__).resolve().parents[1]


def test_checkpoint_sizes_from_the_config_alone_half_size_and_frozen_part_once():
    """The dry run's sizes come from the storage rule itself: fp16 by default (about 2 bytes a parameter), fp32 on
    request, and a frozen part stored once per member, from the published configs (no weights)."""
    base = TransformerConfig(name="b", kind="transformer", backbone="microsoft/deberta-v3-base")
    half, full = transformer_size(base, 5), transformer_size(replace(base, checkpoint_dtype="fp32"), 5)
    assert half.shared == 0 and 2 * 180e6 < half.per_fold < 2 * 190e6 and half.total == 5 * half.per_fold
    assert abs(full.per_fold / half.per_fold - 2) < 0.01
    xl = TransformerConfig(name="x", kind="transformer", backbone="microsoft/deberta-v2-xlarge", freeze_layers=12)
    frozen = transformer_size(xl, 5)
    assert frozen.shared > frozen.per_fold > 0 and frozen.total == 5 * frozen.per_fold + frozen.shared


def test_measured_throughputs_are_the_gpu_check_rows():
    csv = pd.read_csv(REPO / "benchmarks/results/gpu_check_h100_20261126_full.csv")
    rows = csv[csv["part"].isin([2, 4])]
    gpu = "NVIDIA H100 80GB HBM3"  # the machine section of the same run's markdown
    assert gpu in (REPO / "benchmarks/results/gpu_check_h100_20261126_full.md").read_text()
    want = {(gpu, r.model, int(r.max_len), r.precision, r.checkpointing == "on", int(r.batch_size)):
            round(float(r.tokens_per_s)) for r in rows.itertuples()}
    have = {(t.gpu, t.arch, t.max_len, t.precision, t.checkpointing, t.batch_size): round(t.tokens_per_s)
            for t in MEASURED}
    assert have == want


def test_time_only_for_a_measured_shape():
    large = TransformerConfig(name="l", kind="transformer", max_len=1024, batch_size=2, amp="fp16",
                              gradient_checkpointing=True)
    assert match_gpu("H100") == match_gpu("NVIDIA H100 80GB HBM3") is not None
    assert measured_throughput("H100", large, "deberta-v3-large").tokens_per_s == 3736
    assert member_arch(TransformerConfig(**{**vars(large), "backbone": "microsoft/deberta-v3-large"})) == \
        "deberta-v3-large"
    assert measured_throughput("T4", large, "deberta-v3-large") is None  # no T4 measured
    assert measured_throughput("H100", large, "deberta-v2-xlarge") is None
    longer = TransformerConfig(**{**vars(large), "max_len": 1536})
    assert measured_throughput("H100", longer, "deberta-v3-large") is None  # never extrapolated


def _zoo(tmp_path: Path, backbone: str, fb3_dir: Path) -> Path:
    member = {"name": "tiny-v3", "kind": "transformer", "backbone": backbone, "max_len": 64, "epochs": 2,
              "freeze_layers": 1, "device": "cpu", "amp": "none", "newline_token": None}
    zoo = {"name": "z", "workspace": str(tmp_path / "ws"), "data": {"data_dir": str(fb3_dir), "limit": 90},
           "folds": {"n_folds": 3, "seed": 0}, "members": [member, str(REPO / "configs/models/tfidf-ridge.yaml")]}
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump(zoo))
    return path


def test_dry_run_sizes_tokens_and_availability_of_a_local_backbone(tmp_path, fb3_dir, train_df, capsys):
    folder = build_hub_like_deberta_v3(tmp_path / "v3", train_df["full_text"].head(200))
    assert main(["train", str(_zoo(tmp_path, str(folder), fb3_dir)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.strip().startswith("tiny-v3") and " fp16 " in x)
    assert " 3 " in line  # half-size checkpoints by default, three folds
    work = next(x for x in out.splitlines() if x.strip().startswith("tiny-v3") and "tokenised" in x)
    assert "not measured" in work  # no GPU throughput measured here
    assert "local folder" in out and "30 (member, fold) jobs" not in out and "6 (member, fold) jobs" in out
    assert not (tmp_path / "ws").exists()  # a dry run writes nothing


def test_dry_run_offline_refuses_like_run_but_still_prints_sizes(tmp_path, fb3_dir, monkeypatch, capsys):
    from fb3stack.base.runner import _in_hub_cache

    name = "microsoft/deberta-v3-base"
    if _in_hub_cache(name):
        pytest.skip(f"{name} is in this machine's Hugging Face cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    zoo = _zoo(tmp_path, name, fb3_dir)
    assert main(["train", str(zoo), "--dry-run", "--gpu", "H100"]) == 2
    captured = capsys.readouterr()
    assert "run would refuse: members.tiny-v3.backbone" in captured.err and "HF_HUB_OFFLINE" in captured.err
    sizes = next(x for x in captured.out.splitlines() if x.strip().startswith("tiny-v3") and " fp16 " in x)
    assert "184.4M" in sizes or "184.3M" in sizes  # from the known.py config, marked as such
    assert "known.py (not here)" in captured.out and "(estimated)" in captured.out and "missing" in captured.out
    assert main(["run", str(zoo)]) == 2  # what the dry run predicted
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # online, run would download it: no refusal
    assert main(["train", str(zoo), "--dry-run"]) == 0
    assert "hub download" in capsys.readouterr().out


def test_dry_run_refuses_a_blend_run_would_refuse(tmp_path, fb3_dir, capsys):
    zoo = yaml.safe_load(_zoo(tmp_path, "microsoft/deberta-v3-base", fb3_dir).read_text())
    zoo["blend"] = {"name": "b", "members": ["tiny-v3", "ghost"], "methods": [{"name": "mean", "kind": "mean"}]}
    (tmp_path / "zoo.yaml").write_text(yaml.safe_dump(zoo))
    assert main(["train", str(tmp_path / "zoo.yaml"), "--dry-run", "--only", "tiny-v3"]) == 2
    err = capsys.readouterr().err
    assert "run would refuse: blend:" in err and "'ghost'" in err
    zoo["blend"]["members"] = ["tiny-v3", "tfidf-ridge"]  # --only does not hide the zoo's other members
    (tmp_path / "zoo.yaml").write_text(yaml.safe_dump(zoo))
    assert main(["train", str(tmp_path / "zoo.yaml"), "--dry-run", "--only", "tiny-v3"]) == 0
