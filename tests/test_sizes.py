"""Sizes and work before training: `fb3stack train --dry-run` (checkpoint sizes, jobs, tokens, time where a
throughput was measured, backbone availability and the exit code `run` would give)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
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
    assert any(x.strip().startswith("tiny-v3") and "tokenised" in x for x in out.splitlines())
    time = next(x for x in out.splitlines() if x.strip().startswith("tiny-v3") and "not measured" in x)
    assert "architecture not one of known.py's" in time or "no GPU named" in time  # no rate for a toy model
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


def _work(model_type: str = "bert", **kw: object):
    """8 essays of 10 tokens in 2 folds (each fold: 40 tokens trained, 40 validated), 6 layers, 2 epochs of 2
    steps (batch 2), an evaluation at each epoch end, 100 test tokens."""
    from fb3stack.base.sizes import member_work

    cfg = TransformerConfig(**{"name": "w", "kind": "transformer", "epochs": 2, "batch_size": 2, "eval_start": 0.0,
                               "evals_per_epoch": 1, **kw})
    return member_work(cfg, 6, model_type, np.full(8, 10.0), np.repeat([0, 1], 4), 100.0)


def test_work_counts_frozen_layers_once_with_the_prefix_cache_and_every_step_without():
    """Layer passes (forward 1, backward 2) by training's rule: 2 folds x 2 epochs x 40 tokens = 160 token-steps,
    2 folds x 2 evaluations x 40 tokens = 160 evaluated tokens, 80 essays' tokens in all."""
    plain = _work()
    assert (plain.prefix, plain.steps, plain.evaluation, plain.adversary) == (0, 160 * 6 * 3, 160 * 6, 0)
    assert plain.predict == 100 * 6 * 2  # every layer, every fold
    every_step = _work(freeze_layers=2, prefix_cache=False)  # frozen: forward only, in every step and evaluation
    assert not every_step.cached and every_step.prefix == 0
    assert every_step.steps == 160 * (4 * 3 + 2) and every_step.evaluation == 160 * 6
    assert every_step.predict == 100 * 6 * 2
    once = _work(freeze_layers=2)  # prefix cache: the 2 frozen layers once per essay, steps train the 4 others
    assert once.cached and once.prefix == 80 * 2
    assert once.steps == 160 * 4 * 3 and once.evaluation == 160 * 4
    assert once.predict == 100 * (2 + 4 * 2)  # one prefix pass per test essay serves both folds
    assert once.training == once.prefix + once.steps + once.evaluation < every_step.training < plain.training
    checkpointed = _work(freeze_layers=2, gradient_checkpointing=True)  # the trained layers' recompute
    assert checkpointed.steps == 160 * 4 * 4 and checkpointed.prefix == once.prefix
    other = _work("gpt2", freeze_layers=2)  # an architecture the cache does not cover: frozen layers every step
    assert not other.cached and other.steps == every_step.steps and other.prefix == 0


def test_work_counts_the_adversary_and_every_evaluation():
    # the adversary repeats the step (forward + backward) from adv_start_epoch on: here the second of 2 epochs
    fgm = _work(adversarial="fgm")
    assert fgm.adversary == 2 * 1 * 40 * 6 * 3 and fgm.steps == 160 * 6 * 3
    awp = _work(adversarial="awp", freeze_layers=2)  # with the prefix cache: the trained layers only
    assert awp.adversary == 2 * 1 * 40 * 4 * 3
    assert _work(adversarial="fgm", adv_start_epoch=2).adversary == 0  # never starts within 2 epochs
    # evaluations as the trainer schedules them: 2 per epoch from epoch 1.0 on = steps {2, 3, 4} = 3 per fold
    assert _work(evals_per_epoch=2, eval_start=1.0).evaluation == 2 * 3 * 40 * 6


def _kaggle_large(**kw: object) -> TransformerConfig:
    return TransformerConfig(**{"name": "l", "kind": "transformer", "max_len": 1024, "batch_size": 2, "amp": "fp16",
                                "gradient_checkpointing": True, **kw})


def test_t4_rate_is_an_estimate_from_the_h100_row_times_the_peak_ratio(monkeypatch):
    from fb3stack.base import sizes
    from fb3stack.base.sizes import training_rate

    h100 = training_rate("H100", _kaggle_large(), "deberta-v3-large", 24)
    assert h100.measured and h100.label.startswith("measured") and h100.passes_per_s == 3736 * 24 * 4
    t4 = training_rate("Tesla T4", _kaggle_large(), "deberta-v3-large", 24)
    assert not t4.measured and t4.label.startswith("est. from H100 x peak ratio") and "measured" not in t4.label
    assert t4.row == h100.row and t4.passes_per_s == pytest.approx(h100.passes_per_s * 65 / 989.4)
    assert training_rate("T4", _kaggle_large(amp="auto"), "deberta-v3-large", 24).passes_per_s == t4.passes_per_s
    emulated = training_rate("T4", _kaggle_large(amp="bf16"), "deberta-v3-large", 24)  # no bf16 tensor cores
    assert emulated == "not measured (bf16 has no tensor-core peak on T4)"
    doubled = tuple(replace(g, tflops={"fp16": 130.0}) if g.name == sizes.T4 else g for g in sizes.GPUS)
    monkeypatch.setattr(sizes, "GPUS", doubled)
    assert training_rate("T4", _kaggle_large(), "deberta-v3-large", 24).passes_per_s == \
        pytest.approx(2 * t4.passes_per_s)  # scales with the peak ratio
    # a shape the H100 did not run: the nearest row of the same architecture and max_len, its differences named
    base = training_rate("T4", _kaggle_large(batch_size=4), "deberta-v3-base", 12)
    assert base.row.batch_size == 8 and base.row.precision == "fp16" and not base.row.checkpointing
    assert "no checkpointing" in base.label and "batch 8" in base.label
    assert "no H100 row of deberta-v3-large at max_len 1536" in training_rate("T4", _kaggle_large(max_len=1536),
                                                                              "deberta-v3-large", 24)
    assert "A100: no peak FLOP/s known" in training_rate("A100", _kaggle_large(), "deberta-v3-large", 24)


def test_dry_run_times_on_a_t4_are_labelled_estimates_with_prediction_against_9_hours(tmp_path, fb3_dir,
                                                                                    monkeypatch, capsys):
    from fb3stack.base import sizes

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # a hub backbone: its published config, nothing downloaded
    zoo = yaml.safe_load(_zoo(tmp_path, "microsoft/deberta-v3-base", fb3_dir).read_text())
    zoo["members"][0].update(max_len=512, batch_size=8, device="auto", amp="auto")  # an H100-measured shape
    (tmp_path / "zoo.yaml").write_text(yaml.safe_dump(zoo))
    times = {}
    for gpu in ("H100", "T4"):
        assert main(["train", str(tmp_path / "zoo.yaml"), "--dry-run", "--gpu", gpu]) == 0
        out = capsys.readouterr().out
        times[gpu] = next(x for x in out.splitlines() if x.strip().startswith("tiny-v3") and "M (" not in x
                          and ("measured (" in x or "est." in x))
        prediction = next(x for x in out.splitlines() if x.startswith("prediction of ~2,700 hidden test essays"))
        assert "of Kaggle's 9 h notebook limit: within" in prediction and "tiny-v3" in prediction
        work = next(x for x in out.splitlines() if x.strip().startswith("tiny-v3") and "M (" in x)
        assert "1/12, once" in work  # one frozen layer, computed once per essay
    assert "measured (H100, this shape)" in times["H100"] and "est." not in times["H100"]
    assert "est. from H100 x peak ratio" in times["T4"] and "measured (" not in times["T4"]
    assert "(est., not measured on this GPU)" in prediction
    monkeypatch.setattr(sizes, "HIDDEN_TEST_ESSAYS", 10**8)
    assert main(["train", str(tmp_path / "zoo.yaml"), "--dry-run", "--gpu", "T4"]) == 0
    assert "of Kaggle's 9 h notebook limit: OVER" in capsys.readouterr().out
