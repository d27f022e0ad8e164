"""Who runs the (member, fold) jobs: this process one after another, or a Ray cluster in parallel.

Every job is independent and idempotent (`runner.train_fold` skips a finished fold), so an executor only
has to run them somewhere and call `finalize_member` when a member's folds are all done. The resume
semantics are the same whichever executor ran a fold. With Ray, the workspace must be on a filesystem that
every node sees (the fold folders are written there); the training data travels with the jobs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from fb3stack import dist
from fb3stack.base.member import MemberConfig
from fb3stack.base.registry import member_class
from fb3stack.base.runner import (
    begin_member,
    check_fold,
    finalize_member,
    fold_done,
    member_is_complete,
    seed_members,
    train_fold,
)
from fb3stack.io import read_json
from fb3stack.progress import progress
from fb3stack.workspace import Prepared

logger = logging.getLogger(__name__)

def pending_jobs(members: Sequence[MemberConfig], prep: Prepared, folds: Sequence[int] | None = None
                 ) -> list[tuple[MemberConfig, int]]:
    """(member, fold) pairs still to train; also archives stale members before any job starts. A seed average's
    jobs are its seeds' (one single-seed member each, `runner.seed_members`): only the folds a seed lacks."""
    jobs = []
    for m in members:
        if member_is_complete(m, prep) and folds is None:
            logger.info("%s: up to date, skipped", m.name)
            continue
        model_dir = begin_member(m, prep)  # serially here, so parallel jobs never race on archiving
        todo = folds if folds is not None else range(prep.n_folds)
        for unit in seed_members(m):
            unit_dir = model_dir if unit is m else begin_member(unit, prep)
            jobs += [(unit, k) for k in todo if not check_fold(unit_dir, k, unit)]
    return jobs


def finish(members: Sequence[MemberConfig], prep: Prepared) -> dict[str, dict]:
    results: dict[str, dict] = {}
    if not dist.is_main():  # data-parallel helper processes write nothing
        return results
    for m in members:
        model_dir = prep.workspace.model_dir(m.name)
        units = [prep.workspace.model_dir(u.name) for u in seed_members(m)]
        if all(fold_done(unit, k) for unit in units for k in range(prep.n_folds)):
            done = member_is_complete(m, prep) and (model_dir / "oof.parquet").is_file()
            results[m.name] = read_json(model_dir / "metrics.json") if done else finalize_member(m, prep)
    return results


def run_local(members: Sequence[MemberConfig], prep: Prepared, folds: Sequence[int] | None = None
              ) -> dict[str, dict]:
    """Train the pending (member, fold) jobs here, one after another; {name: metrics} of each finished member."""
    for m, k in progress(pending_jobs(members, prep, folds), desc="train (member, fold) jobs", unit="job",
                         eta=False):
        train_fold(m, prep, k)
    return finish(members, prep)


@dataclass
class RayOptions:
    address: str | None = None  # None: start a local Ray; "auto" or "ray://host:10001": an existing cluster
    gpus_per_job: float | None = None  # None: 1 if the cluster has GPUs and the kind wants one (wants_gpu)
    cpus_per_job: float = 1.0
    max_retries: int = 2  # a job whose worker dies (OOM, preemption, kill) is run again
    num_cpus: int | None = None  # for a local Ray only


def job_gpus(member: MemberConfig, options: RayOptions, has_gpu: bool) -> float:
    """GPUs a (member, fold) job asks Ray for: the option when given, else one for a kind that wants a GPU."""
    if options.gpus_per_job is not None:
        return options.gpus_per_job
    return float(has_gpu and member_class(member.kind).wants_gpu)


def _ray_train_fold(member: MemberConfig, prep: Prepared, fold: int) -> str:
    return str(train_fold(member, prep, fold))


def run_ray(members: Sequence[MemberConfig], prep: Prepared, folds: Sequence[int] | None = None,
            options: RayOptions | None = None) -> dict[str, dict]:
    try:
        import ray
    except ImportError as err:
        raise RuntimeError("the ray executor needs Ray: pip install 'fb3stack[ray]'") from err
    options = options or RayOptions()
    started_here = not ray.is_initialized()
    if started_here:
        kwargs = {"address": options.address} if options.address else {"num_cpus": options.num_cpus}
        ray.init(**kwargs, include_dashboard=False, log_to_driver=True)
    try:
        jobs = pending_jobs(members, prep, folds)
        has_gpu = ray.cluster_resources().get("GPU", 0) > 0
        prep_ref = ray.put(prep)
        remote = ray.remote(_ray_train_fold)
        refs = {}
        for m, k in jobs:
            gpus = job_gpus(m, options, has_gpu)
            task = remote.options(num_gpus=gpus, num_cpus=options.cpus_per_job, max_retries=options.max_retries,
                                  retry_exceptions=False, name=f"{m.name}/fold{k}")
            refs[task.remote(m, prep_ref, k)] = (m.name, k)
        logger.info("submitted %d (member, fold) jobs to Ray", len(refs))
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            name, k = refs[done[0]]
            ray.get(done[0])  # re-raises a job's error once its retries are spent
            logger.info("%s fold %d finished on Ray (%d jobs left)", name, k, len(pending))
    finally:
        if started_here:
            ray.shutdown()
    return finish(members, prep)
