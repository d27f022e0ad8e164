"""Bring members trained in other workspaces into this one (`fb3stack import`), e.g. one Kaggle notebook per
large member, whose outputs are read-only inputs of the last notebook.

A member is imported only when it was trained on exactly this workspace's folds and data: its manifest's
`folds_hash` must be the sha256 of this workspace's folds.csv and its `data_hash` the one in folds.json (a
workspace with no folds yet takes the first source's). It must be complete and intact (`SavedMember.verify`:
every fold's seal and the content hash), and its name must be new here, or name the very same model.

Files are hard-linked where the filesystem allows (no second copy on disk; a read-only source stays untouched,
since a workspace replaces files by rename and never writes into one in place: fb3stack.io.atomic_path /
atomic_dir), else cloned (reflink), else copied. The member folder is built under a temporary name and renamed
into models/<name> when complete; `imports.json` records where each member came from. Afterwards the member is
the workspace's own for blend, predict, report and bundle; `train`/`run` never retrain it: one whose zoo entry
no longer matches it is refused, not retrained (it was trained elsewhere).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from fb3stack.io import atomic_dir, read_json, sha256_file, write_json
from fb3stack.workspace import (
    IMPORTS,
    CorruptArtefactError,
    Workspace,
    imported_members,
    lock_holder,
    read_manifest,
)

logger = logging.getLogger(__name__)

FICLONE = 0x40049409  # linux/fs.h: share the source's blocks (btrfs, xfs, ...): a copy that takes no space


@dataclass
class Imported:
    name: str
    source: Path
    files: dict[str, int] = field(default_factory=lambda: {"linked": 0, "cloned": 0, "copied": 0})
    bytes: int = 0
    already: bool = False  # the same model was imported before: nothing done


class ImportRefused(ValueError):
    """A source cannot be imported (other folds or data, a name clash, an incomplete or damaged member)."""


def _folds_identity(root: Path) -> tuple[str, str] | None:
    """(sha256 of folds.csv, data_hash of folds.json), or None when the workspace has no folds yet."""
    csv, meta = root / "folds.csv", root / "folds.json"
    if not (csv.is_file() and meta.is_file()):
        return None
    return sha256_file(csv), str(read_json(meta).get("data_hash"))


def link_or_copy(src: Path, dest: Path) -> str:
    """Hard link, else a reflink clone, else a copy (with its mode and times); returns which."""
    try:
        os.link(src, dest)
        return "linked"
    except OSError as err:  # another filesystem (EXDEV), protected_hardlinks (EPERM), too many links ...
        logger.debug("%s: no hard link (%s)", src, err)
    try:
        with open(src, "rb") as fin, open(dest, "wb") as fout:
            fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
        shutil.copystat(src, dest)
        return "cloned"
    except OSError:
        dest.unlink(missing_ok=True)
    shutil.copy2(src, dest)
    return "copied"


def source_members(src: Path) -> list[str]:
    models = src / "models"
    return sorted(p.name for p in models.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if models.is_dir() else []


def check_source(src: Path, names: list[str], want: tuple[str, str]) -> None:
    """Each member: complete, intact, trained on the folds and data `want` names; else ImportRefused."""
    from fb3stack.base.runner import SavedMember

    for name in names:
        model_dir = src / "models" / name
        manifest = read_manifest(model_dir) or {}
        differs = [what for what, key, value in (("folds", "folds_hash", want[0]), ("data", "data_hash", want[1]))
                   if manifest.get(key) != value]
        if differs:
            raise ImportRefused(f"{model_dir}: member '{name}' was trained on other "
                               + " and ".join(differs) + " than this workspace ("
                               + "; ".join(f"{k}: {str(manifest.get(k))[:12]} here {v[:12]}" for k, v in
                                           (("folds_hash", want[0]), ("data_hash", want[1])) if manifest.get(k) != v)
                               + "); train it on the same folds (import them first, or `fb3stack folds --from`)")
        try:
            SavedMember.load(model_dir).verify()
        except (CorruptArtefactError, FileNotFoundError, ValueError) as err:
            raise ImportRefused(f"member '{name}' of {src} cannot be imported: {err}") from err


def import_members(workspace: str | os.PathLike, sources: list[str | os.PathLike], only: list[str] | None = None
                   ) -> list[Imported]:
    """Check every source member first, then bring them in; nothing is written when anything is refused."""
    ws = Workspace.at(workspace)
    srcs = [Path(s).expanduser().resolve() for s in sources]
    for src in srcs:
        if not (src / "models").is_dir():
            raise ImportRefused(f"{src}: not a workspace (no models/ folder)")
        if _folds_identity(src) is None:
            raise ImportRefused(f"{src}: has no folds.csv and folds.json, so its folds cannot be checked")
        holder = lock_holder(Workspace(src))
        if holder is not None:
            raise ImportRefused(f"{src} is being written by `fb3stack {holder.get('command')}` "
                                f"(pid {holder.get('pid')}); import it when that has finished")
    picked: dict[str, Path] = {}
    for src in srcs:
        for name in source_members(src):
            if only and name not in only:
                continue
            if name in picked:
                raise ImportRefused(f"two sources have a member '{name}': {picked[name]} and {src}; a workspace holds "
                                   "one member of a name (import one of them, with --only)")
            picked[name] = src
    if only and set(only) - set(picked):
        raise ImportRefused(f"--only names no member of the sources: {sorted(set(only) - set(picked))}")
    if not picked:
        raise ImportRefused(f"no members to import in {[str(s) for s in srcs]}")
    own = _folds_identity(ws.root)
    want = own or _folds_identity(srcs[0])
    for src in srcs:
        check_source(src, [n for n, s in picked.items() if s == src], want)
    out = [_existing(ws, name, src) for name, src in picked.items()]
    if own is None:  # take the sources' folds (checked above to be the ones every member was trained on)
        for item in ("folds.csv", "folds.json"):
            shutil.copy2(srcs[0] / item, ws.root / item)
            (ws.root / item).chmod(0o644)
        logger.info("folds.csv and folds.json taken from %s", srcs[0])
    records = imported_members(ws.root)
    for item in out:
        if not item.already:
            _bring(ws, item)
        records[item.name] = {"source": str(item.source), "content_hash": _content(item.source / "models" / item.name),
                              "imported_at": dt.datetime.now(dt.timezone.utc).isoformat(), **item.files}
    write_json(ws.root / IMPORTS, records)
    return out


def _content(model_dir: Path) -> str:
    return str((read_manifest(model_dir) or {}).get("content_hash"))


def _existing(ws: Workspace, name: str, src: Path) -> Imported:
    """A member of this name already here: fine when it is the same model (re-import), refused otherwise."""
    here = ws.model_dir(name)
    item = Imported(name, src)
    if here.exists():
        if _content(here) != _content(src / "models" / name):
            raise ImportRefused(f"{here} already holds a member '{name}' (content {_content(here)[:12]}), {src} "
                                f"another ({_content(src / 'models' / name)[:12]}); a workspace holds one member of a "
                                "name")
        item.already = True
    return item


def _bring(ws: Workspace, item: Imported) -> None:
    src_dir = item.source / "models" / item.name
    with atomic_dir(ws.model_dir(item.name)) as tmp:
        tmp.chmod(0o755)  # mkdtemp makes it private
        for path in sorted(src_dir.rglob("*")):
            rel = path.relative_to(src_dir)
            if any(part.endswith(".tmp") for part in rel.parts):
                continue  # a fold left half-written by a killed run in the source
            dest = tmp / rel
            if path.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
            elif path.is_file():
                dest.parent.mkdir(parents=True, exist_ok=True)
                item.files[link_or_copy(path, dest)] += 1
                item.bytes += path.stat().st_size
    logger.info("%s imported from %s (%s)", item.name, item.source,
                ", ".join(f"{n} files {how}" for how, n in item.files.items() if n))
