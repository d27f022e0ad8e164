"""`fb3stack train <model.yaml|zoo.yaml>`: train zoo members on the shared folds, resuming what is done."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from fb3stack import dist
from fb3stack.base.executors import RayOptions, run_local, run_ray
from fb3stack.base.runner import resolve_members
from fb3stack.cli.common import add_run_options, log_to_workspace, save_resolved_config, text_table, writing
from fb3stack.config import ConfigError, RunConfig, config_dir, load_run_config, load_yaml, resolve_path
from fb3stack.workspace import Workspace, load_training_data, prepare

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one model YAML or every member of a zoo YAML, fold by fold")
    add_run_options(p, config_required=True)
    p.add_argument("--only", action="append", default=[], metavar="NAME", help="train only these members")
    p.add_argument("--folds", help="comma-separated folds to train (default: all); finalises when all are done")
    p.add_argument("--force-folds", action="store_true", help="rewrite folds.csv if its settings changed")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: one job after another in this process; ray: (member, fold) jobs in parallel")
    p.add_argument("--ray-address", help="existing Ray cluster ('auto', 'ray://host:10001'); default: local Ray")
    p.add_argument("--ray-gpus", type=float, help="GPUs per job (fractions allowed; default 1 for transformers "
                   "when the cluster has GPUs, else 0)")
    p.add_argument("--ray-cpus", type=float, default=1.0, help="CPUs per job")
    p.add_argument("--max-retries", type=int, default=2, help="Ray: reruns of a job whose worker died")
    p.add_argument("--dry-run", action="store_true", help="check every member's config and backbone (where it "
                   "comes from here), show each model's size, max_len, autocast, checkpoint and bundle sizes, and the "
                   "work (jobs, tokens, layer passes by the frozen-prefix rule, time measured or labelled est.); "
                   "train nothing, write nothing, download nothing; exit 2 when `run` would refuse")
    p.add_argument("--gpu", help="--dry-run: the GPU to time the work on, H100 (measured rows) or T4 (estimated "
                   "from them x the peak FLOP/s ratio); default: this machine's")
    p.set_defaults(func=run)


def load_train_config(path: str, overrides: list[str]) -> RunConfig:
    """A zoo YAML is used as is; a single model YAML becomes a one-member zoo with default data and folds."""
    raw = load_yaml(path)
    if "kind" in raw and "members" not in raw:
        run_keys = ("data", "folds", "workspace")
        is_run = [o.split("=", 1)[0].split(".")[0] in run_keys for o in overrides]
        cfg = load_run_config(None, [o for o, r in zip(overrides, is_run) if r])
        cfg.members = [str(Path(path).resolve())]
        cfg.member_overrides = {"*": [o for o, r in zip(overrides, is_run) if not r]}
        return cfg
    return load_run_config(path, overrides)


def run(args: argparse.Namespace) -> int:
    cfg = load_train_config(args.config, args.overrides)
    members = every = resolve_members(cfg)
    if args.only:
        unknown = set(args.only) - {m.name for m in members}
        if unknown:
            raise ConfigError(f"--only names unknown member(s) {sorted(unknown)}; have {[m.name for m in members]}")
        members = [m for m in members if m.name in args.only]
    if args.dry_run:
        return dry_run(members, cfg, args, every)
    loaded = load_training_data(cfg.data, args.data_dir)  # a wrong data folder or file creates no workspace
    dist.init()  # no-op unless launched by accelerate/torchrun
    with writing(Workspace.at(args.workspace or cfg.workspace), "train"):
        return _train(args, cfg, members, loaded)


def _train(args: argparse.Namespace, cfg: RunConfig, members: list, loaded: tuple) -> int:
    with dist.main_first():  # only the main process writes folds.csv; the others read it
        prep = prepare(cfg, args.data_dir, args.workspace, force_folds=args.force_folds, loaded=loaded)
    if dist.is_main():
        log_to_workspace(prep.workspace, "train")
        save_resolved_config(prep.workspace, cfg)
    folds = [int(k) for k in args.folds.split(",")] if args.folds else None
    if args.executor == "ray" and dist.is_distributed():
        raise ConfigError("--executor ray schedules whole jobs; launch it once, not under accelerate/torchrun")
    if args.executor == "ray":
        options = RayOptions(args.ray_address, args.ray_gpus, args.ray_cpus, args.max_retries)
        results = run_ray(members, prep, folds, options)
    else:
        results = run_local(members, prep, folds)
    for name, metrics in results.items():
        print(f"{name}: OOF MCRMSE {metrics['mcrmse']:.4f}  ->  {prep.workspace.model_dir(name)}")
    return 0


def dry_run(members: list, cfg: RunConfig, args: argparse.Namespace, every: list) -> int:
    """Build every member (transformers on the meta device), say where each backbone comes from, then the
    checkpoint sizes and the work; exit 2 when `run` would refuse (a backbone, the zoo's blend config or the
    data). `every`: all the zoo's members (the blend is checked against them, whatever --only picks)."""
    from fb3stack.base.runner import backbone_status, build_member
    from fb3stack.cli.run import check_zoo_blend
    from fb3stack.config import ConfigError

    refused = []
    if cfg.blend is not None:
        try:
            check_zoo_blend(cfg, every, args.workspace or cfg.workspace)
        except (ConfigError, ValueError) as err:
            refused.append(f"blend: {err}")
    statuses = backbone_status(members)
    described: dict[str, dict] = {}
    for m in members:
        try:
            described[m.name] = build_member(m).describe()
        except (ValueError, OSError) as err:  # ConfigError is a ValueError
            refused.append(f"{m.name}: {err}")
            described[m.name] = {"name": m.name, "kind": m.kind}
        mine = [s for s in statuses if s.key.startswith(f"members.{m.name}.")]
        described[m.name]["backbone here"] = ", ".join(s.where for s in mine)
    refused += [f"{s.key}: {s.error}" for s in statuses if s.error]
    hidden = ("n_params", "n_frozen")
    print(text_table([{k: v for k, v in d.items() if k not in hidden} for d in described.values()]))
    print("amp auto: bf16 on GPUs with native bf16 (compute capability >= 8.0), fp16 + GradScaler on older GPUs, "
          "on CPU bf16 where it is native (AVX512-BF16, AMX), else fp32; 'here' is what this machine would use. "
          "config_from 'known.py (not here)': the "
          "published config.json kept in fb3stack, since the backbone is neither a local folder nor cached here")
    print()
    print_sizes(members, described, cfg)
    print()
    refused += print_work(members, described, statuses, cfg, args)
    for line in refused:
        print(f"run would refuse: {line}", file=sys.stderr)
    return 2 if refused else 0


def print_sizes(members: list, described: dict[str, dict], cfg: RunConfig) -> None:
    from fb3stack.base.sizes import transformer_size
    from fb3stack.config import to_dict
    from fb3stack.status import human_bytes
    from fb3stack.submit.bundle import BACKBONE_SKIP, backbone_folders, copied_bytes

    n_folds, rows, total, backbones = cfg.folds.n_folds, [], 0, {}
    for m in members:
        d = described[m.name]
        try:
            found = backbone_folders(to_dict(m))
        except FileNotFoundError:  # a missing backbone is reported with the refusals
            found = {}
        backbones.update({spec: copied_bytes(folder, BACKBONE_SKIP) for spec, folder in found.items()})
        if "n_params" not in d:
            rows.append({"member": m.name, "params": "", "per fold": "not estimated"})
            continue
        size = transformer_size(m, n_folds)
        n_seeds = len(m.seeds or [m.seed])  # a seed average stores every seed's folds (and frozen part)
        total += size.total * n_seeds
        rows.append({"member": m.name, "params": f"{d['n_params'] / 1e6:.1f}M", "frozen": f"{d['n_frozen'] / 1e6:.1f}M",
                     "stored": m.checkpoint_dtype, "folds": n_folds * n_seeds, "per fold": human_bytes(size.per_fold),
                     "once per member": human_bytes(size.shared * n_seeds),
                     "member total": human_bytes(size.total * n_seeds)})
    print(f"checkpoints ({n_folds} folds; weights only: tokenizer and config files not counted; CPU members' "
          "sklearn/LightGBM files not estimated):")
    print(text_table(rows))
    extra = sum(backbones.values())
    print(f"bundle: {human_bytes(total)} of transformer checkpoints"
          + (f" + {human_bytes(extra)} of backbone folders copied in ({', '.join(backbones)}; measured here)"
             if backbones else "")
          + f" = {human_bytes(total + extra)}, plus the wheels (a few MB)")


def print_work(members: list, described: dict[str, dict], statuses: list, cfg: RunConfig,
               args: argparse.Namespace) -> list[str]:
    """(member, fold) jobs, epochs, training tokens, the work in layer passes by training's rule (sizes.py) and
    the time it takes on the named GPU (measured rate, or an estimate labelled as one), with the prediction of
    FB3's hidden test set against Kaggle's notebook limit; returns refusals."""
    import numpy as np

    from fb3stack.base.sizes import (
        GPUS,
        HIDDEN_TEST_ESSAYS,
        KAGGLE_LIMIT_S,
        known_gpu,
        member_arch,
        member_model_type,
        member_work,
        token_lengths,
        training_rate,
    )
    from fb3stack.constants import FOLD_COL, ID_COL, TEXT_COL
    from fb3stack.data import DATA_ENV, DataError
    from fb3stack.folds import make_folds, read_folds
    from fb3stack.workspace import load_training_data

    try:
        data_dir, train = load_training_data(cfg.data, args.data_dir)
        ws_folds = Path(args.workspace or cfg.workspace) / "folds.csv"
        folds_file = ws_folds if ws_folds.is_file() else resolve_path(cfg.folds.file, config_dir(cfg.source)) \
            if cfg.folds.file else None
        folds = read_folds(folds_file, train) if folds_file else make_folds(train, cfg.folds.n_folds, cfg.folds.seed)
    except (DataError, ValueError) as err:
        print(f"work: not computed ({err})")
        named = args.data_dir or os.environ.get(DATA_ENV) or cfg.data.data_dir
        return [f"training data: {err}"] if named else []  # none named: a plan made away from the data
    fold_of = train[[ID_COL]].merge(folds, on=ID_COL)[FOLD_COL].to_numpy()
    n_folds = int(fold_of.max()) + 1
    gpu_name = args.gpu or _this_gpu()
    gpu = known_gpu(gpu_name)
    texts = train[TEXT_COL].tolist()
    work_rows, time_rows, predict_s, unpriced, estimated = [], [], 0.0, [], False
    for m in members:
        n_seeds = len(m.seeds or [m.seed])  # a seed average trains every fold once per seed
        row = {"member": m.name, "jobs": n_folds * n_seeds}
        d = described[m.name]
        if "n_params" not in d:
            work_rows.append(row)
            time_rows.append({"member": m.name, "time": "not estimated (not a transformer)"})
            continue
        available = all(s.where != "hub download" and not s.error for s in statuses
                        if s.key.startswith(f"members.{m.name}."))
        lengths, how = token_lengths(m, texts, available)
        work = member_work(m, d["layers"], member_model_type(m), lengths, fold_of,
                           HIDDEN_TEST_ESSAYS * float(lengths.mean()))
        per_fold = [lengths[fold_of != k].sum() * m.epochs for k in range(n_folds)]
        frozen = f"{work.frozen}/{work.layers}" + (", once" if work.cached else ", every step" if work.frozen else "")
        work_rows.append({**row, "epochs": m.epochs, "essays/fold": int(np.mean([(fold_of != k).sum()
                                                                                  for k in range(n_folds)])),
                          "tokens/fold": f"{np.mean(per_fold) / 1e6:.2f}M ({how})", "frozen": frozen,
                          "prefix": _si(work.prefix), "steps": _si(work.steps),
                          "adversary": _si(work.adversary), "evaluations": _si(work.evaluation),
                          "training": _si(work.training), "predict": _si(work.predict)})
        rate = training_rate(gpu.name if gpu else gpu_name, m, member_arch(m), d["layers"])
        if isinstance(rate, str):
            time_rows.append({"member": m.name, "time": rate})
            unpriced.append(m.name)
            continue
        seconds, estimated = n_seeds * work.training / rate.passes_per_s, estimated or not rate.measured
        predict_s += n_seeds * work.predict / rate.passes_per_s
        time_rows.append({"member": m.name, "passes/s": _si(rate.passes_per_s),
                          "time/fold": _hours(seconds / n_folds), "time": _hours(seconds),
                          "predict": _hours(work.predict / rate.passes_per_s), "rate from": rate.label})
    jobs = sum(int(r["jobs"]) for r in work_rows)
    print(f"work: {jobs} (member, fold) jobs on {len(train)} essays of {data_dir}, {n_folds} folds; tokens/fold = "
          "training tokens over all epochs (real tokens, max_len applied). Work = layer passes (k, M, G), all folds (a "
          "token through one encoder layer: forward 1, backward 2, checkpointing's recompute 1; embeddings, pooler "
          "and head not counted). steps: trained layers forward + backward, frozen layers forward only, in every "
          "step unless the prefix cache replays them ('once': freeze_layers + prefix_cache on a verified "
          "architecture; prefix = embeddings + frozen layers once per essay for the member); adversary: fgm/awp's "
          "second forward/backward from adv_start_epoch; evaluations: a forward over the fold's validation essays "
          "at each evaluation (early stopping not foreseen); training = their sum; predict: "
          f"{HIDDEN_TEST_ESSAYS:,} test essays (FB3's hidden test set, train.csv's mean length) through every fold, "
          "the prefix once per essay where cached")
    print(text_table(work_rows))
    print()
    peaks = "; ".join(f"{g.name} " + ", ".join(f"{p} {t:g}" for p, t in g.tflops.items()) for g in GPUS)
    print(f"time on {gpu.name if gpu else gpu_name or 'no GPU named (--gpu H100, --gpu T4)'} = work / rate, a rate "
          "in layer passes/s from a measured training step (tokens/s x layers x 3, x 4 with checkpointing; "
          "evaluation and prediction forwards charged at the same rate per pass, though faster without gradients). "
          "'measured': this exact shape measured on this GPU (benchmarks/results/gpu_check_h100_20261126_full.csv). "
          "'est.': an estimate, never a measurement: the nearest H100 row of the same architecture and max_len x "
          f"the ratio of datasheet dense tensor-core peaks, TFLOP/s ({peaks}); the H100 rows ran at 2-4% of peak, "
          "so it is an order of magnitude")
    print(text_table(time_rows))
    if gpu is not None:
        priced = [m.name for m in members if "n_params" in described[m.name] and m.name not in unpriced]
        verdict = "within" if predict_s <= KAGGLE_LIMIT_S else "OVER"
        head = f"prediction of ~{HIDDEN_TEST_ESSAYS:,} hidden test essays, every fold, on {gpu.name}"
        basis = "est., not measured on this GPU" if estimated else "at the measured training rate per pass"
        print(f"{head}: not estimated (no rate for any transformer member)" if not priced else
              f"{head}: {_hours(predict_s)} ({basis}) for {', '.join(priced)} = {predict_s / KAGGLE_LIMIT_S:.0%} of "
              f"Kaggle's 9 h notebook limit: {verdict}"
              + (f"; without {', '.join(unpriced)} (no rate)" if unpriced else "")
              + "; CPU members, model loading and tokenizing not counted")
    return []


def _si(n: float) -> str:
    """3 significant digits with k / M / G."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def _this_gpu() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"
