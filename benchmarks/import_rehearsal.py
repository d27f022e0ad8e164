"""Rehearse the Kaggle recipe for a zoo trained in several notebooks: members trained in separate workspaces,
imported read-only into a last one, blended, bundled, and predicted offline from a read-only bundle.

    .venv/bin/python benchmarks/import_rehearsal.py [--limit 300] [--work DIR]

1. a tiny DeBERTa-v3 shaped like the hub's (config.json without dtype, fp16 pytorch_model.bin, spm.model; built
   from a config by tests/helpers_tiny_deberta.py, random weights) is fine-tuned in workspace `ws-gpu` ("notebook
   1"); the CPU members (tfidf-ridge, features-lgbm, embed-ridge-minilm) train in `ws-cpu` ("notebook 2"); same
   data and folds settings;
2. both are made read-only (chmod -R a-w) and imported into `ws-final` ("the last notebook"), which runs a zoo
   listing no member (the blend names all four): blend, predict, report; the sources are hashed before and after;
3. `fb3stack bundle`, the bundle made read-only, installed with `pip install --no-index` into a fresh venv holding
   only what a Kaggle GPU image has (benchmarks/bundle_rehearsal.py), predicted with the network off;
4. reference: one workspace `ws-one` that trained all four members itself, with the same blend.

The submission from the bundle must match the reference within 2e-3. One row goes to
benchmarks/results/import_rehearsal.csv (times, bundle size, differences, whether the sources and the bundle
stayed byte-identical). Predict is run as the bundle's README says, with no --cache: its prediction cache goes to a
private temporary folder by default, never into the bundle.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO / "tests"))

from bundle_rehearsal import OFFLINE, fb3, kaggle_venv  # noqa: E402
from common import load_average, machine_info, save_csv  # noqa: E402
from helpers_tiny_deberta import build_hub_like_deberta_v3  # noqa: E402

MODELS = REPO / "configs" / "models"
CPU_MEMBERS = [str(MODELS / "tfidf-ridge.yaml"), str(MODELS / "features-lgbm.yaml"),
               {"include": str(MODELS / "embed-ridge-minilm.yaml"), "set": {"max_len": 128}}]


def tiny_v3(backbone: Path) -> dict:
    return {"name": "tiny-deberta-v3", "kind": "transformer", "backbone": str(backbone), "max_len": 128,
            "batch_size": 8, "eval_batch_size": 32, "epochs": 2, "lr": 2e-3, "head_lr": 5e-3, "pooler": "mean",
            "device": "cpu", "amp": "none", "warmup_ratio": 0.0, "adversarial": "none", "eval_every": 0}


def zoo(path: Path, members: list, data_dir: Path, limit: int, blend: Path | None = None) -> Path:
    cfg = {"name": path.stem, "data": {"data_dir": str(data_dir), "limit": limit, "limit_seed": 3},
           "folds": {"n_folds": 3, "seed": 42}, "members": members}
    if blend:
        cfg["blend"] = str(blend)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.relative_to(root).parts[0] != "logs":
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def timed(row: dict, key: str, args: list[str]) -> None:
    """Wall seconds and CPU seconds (user + system of the command's processes: what the 2 shared cores' load
    does not inflate) of one fb3stack command."""
    t, cpu = time.perf_counter(), _children_cpu()
    fb3(args)
    row[key] = round(time.perf_counter() - t, 1)
    row[key.replace("_s", "_cpu_s")] = round(_children_cpu() - cpu, 1)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def size_mb(root: Path) -> float:
    return round(sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) / 2**20, 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "fb3"))
    p.add_argument("--limit", type=int, default=300, help="training essays (data.limit)")
    p.add_argument("--work", help="scratch folder (default: temporary, removed)")
    p.add_argument("--out", default="import_rehearsal.csv")
    args = p.parse_args()
    data_dir = Path(args.data_dir).resolve()
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="fb3-import-"))
    work.mkdir(parents=True, exist_ok=True)
    row: dict[str, object] = {**machine_info(), "limit": args.limit, "n_folds": 3, "as_root": os.geteuid() == 0}
    try:
        texts = pd.read_csv(data_dir / "train.csv")["full_text"].head(400)
        v3 = build_hub_like_deberta_v3(work / "tiny-deberta-v3-hub", texts)
        names = ["tiny-deberta-v3", "tfidf-ridge", "features-lgbm", "embed-ridge-minilm"]
        blend = work / "blend.yaml"
        blend.write_text(yaml.safe_dump({"name": "final", "members": names}))  # the default methods
        timed(row, "train_gpu_ws_s", ["train", str(zoo(work / "gpu.yaml", [tiny_v3(v3)], data_dir, args.limit)),
                                      "--workspace", str(work / "ws-gpu")])
        timed(row, "train_cpu_ws_s", ["train", str(zoo(work / "cpu.yaml", CPU_MEMBERS, data_dir, args.limit)),
                                      "--workspace", str(work / "ws-cpu")])
        sources = [work / "ws-gpu", work / "ws-cpu"]
        subprocess.run(["chmod", "-R", "a-w", *map(str, sources)], check=True)
        before = [tree_hash(s) for s in sources]
        final = work / "ws-final"
        timed(row, "import_s", ["import", "--workspace", str(final), *map(str, sources)])
        src_file = sources[0] / "models/tiny-deberta-v3/fold0/model.safetensors"
        row["imported_by_hard_link"] = os.stat(src_file).st_ino == os.stat(
            final / "models/tiny-deberta-v3/fold0/model.safetensors").st_ino
        # the last notebook's zoo trains nothing: the blend names the imported members
        timed(row, "final_run_s", ["run", str(zoo(work / "final.yaml", [], data_dir, args.limit, blend)),
                                   "--workspace", str(final)])
        row["sources_untouched"] = [tree_hash(s) for s in sources] == before

        bundle = work / "bundle"
        timed(row, "bundle_s", ["bundle", "--workspace", str(final), "--out", str(bundle)])
        row["bundle_mb"] = size_mb(bundle)
        row["bundle_models_mb"] = size_mb(bundle / "models")
        subprocess.run(["chmod", "-R", "a-w", str(bundle)], check=True)
        bundle_before = tree_hash(bundle)

        timed(row, "reference_run_s", ["run", str(zoo(work / "every.yaml", [tiny_v3(v3), *CPU_MEMBERS], data_dir,
                                                      args.limit, blend)), "--workspace", str(work / "ws-one"),
                                       "--out", str(work / "one.csv")])

        venv = work / "kaggle-venv"
        kaggle_venv(venv)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "FB3STACK_DATA")}
        env.update(OFFLINE, HF_HOME=str(work / "empty-hf-home"), PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}")
        t = time.perf_counter()
        install = subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "--no-index", "--find-links",
                                  str(bundle / "wheels"), "fb3stack"], capture_output=True, text=True, env=env)
        row["pip_install_s"], row["pip_install_rc"] = round(time.perf_counter() - t, 1), install.returncode
        kaggle = work / "kaggle-working"
        kaggle.mkdir()
        t = time.perf_counter()
        pred = subprocess.run([str(venv / "bin/fb3stack"), "predict", "--bundle", str(bundle), "--test",
                               str(data_dir / "test.csv"), "--sample-submission",
                               str(data_dir / "sample_submission.csv"), "--out", "submission.csv"],
                              capture_output=True, text=True, env=env, cwd=kaggle)
        row["predict_s"], row["predict_rc"] = round(time.perf_counter() - t, 1), pred.returncode
        if install.returncode or pred.returncode:
            print(install.stderr[-2000:], pred.stderr[-3000:], file=sys.stderr)
        row["bundle_untouched"] = tree_hash(bundle) == bundle_before
        if pred.returncode == 0:
            ours = pd.read_csv(kaggle / "submission.csv")
            for key, ref in (("vs_one_workspace", work / "one.csv"), ("vs_final_workspace", final / "submission.csv")):
                other = pd.read_csv(ref)
                assert list(other["text_id"]) == list(ours["text_id"])
                row[f"max_abs_diff_{key}"] = float((ours.drop(columns="text_id")
                                                    - other.drop(columns="text_id")).abs().max().max())
    finally:
        if not args.work:
            subprocess.run(["chmod", "-R", "u+w", str(work)], check=False)
            shutil.rmtree(work, ignore_errors=True)
    row["load_1min_end"] = round(load_average(), 2)
    path = save_csv([row], args.out)
    print(row)
    print(f"-> {path}")
    ok = (row.get("predict_rc") == 0 and row.get("sources_untouched") and row.get("bundle_untouched")
          and float(row.get("max_abs_diff_vs_one_workspace", 1)) <= 2e-3)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
