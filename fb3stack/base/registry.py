"""Member kinds by name: fb3stack's own, imported lazily so a CPU-only user never imports what they do not use,
and those of installed plug-in packages (entry-point group `fb3stack.members`); see docs/extending.md."""

from __future__ import annotations

import os
from typing import Any

from fb3stack.base.member import Member, MemberConfig
from fb3stack.config import ConfigError, apply_overrides, from_dict, load_yaml, resolve_path
from fb3stack.plugins import Registry

MEMBER_KINDS: Registry[type[Member]] = Registry("member kind", "fb3stack.members", Member, builtins={
    "transformer": "fb3stack.base.transformer.member",
    "embed": "fb3stack.base.embed_svr",
    "embed-svr": "fb3stack.base.embed_svr",  # the old name of `embed`, kept so older configs still read
    "tfidf-ridge": "fb3stack.base.tfidf_ridge",
    "features-lgbm": "fb3stack.base.features_lgbm",
})
register_member = MEMBER_KINDS.register  # class decorator: @register_member("my-model")
member_class = MEMBER_KINDS.get
member_kinds = MEMBER_KINDS.names
# a renamed kind -> the name it had when members were first trained under it: config hashes use the old name,
# so a rename retrains nothing
HASHED_AS = {"embed": "embed-svr"}


def load_member_config(
    entry: str | os.PathLike | dict[str, Any], base_dir: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
) -> MemberConfig:
    """A model YAML path (relative to `base_dir`), or an inline mapping → the kind's typed config.

    An inline mapping may be `{include: model.yaml, set: {key: value}}` to reuse a model file with changes.
    """
    if isinstance(entry, dict) and "include" in entry:
        extra = set(entry) - {"include", "set"}
        if extra:
            raise ConfigError(f"member entry with 'include' takes only 'set' beside it, got {sorted(extra)}")
        path = resolve_path(entry["include"], base_dir)
        raw, where = {**load_yaml(path), **(entry.get("set") or {})}, str(path)
    elif isinstance(entry, dict):
        raw, where = dict(entry), "inline member"
    else:
        path = resolve_path(entry, base_dir)
        raw, where = load_yaml(path), str(path)
    raw = apply_overrides(raw, overrides)
    kind = raw.get("kind")
    if not isinstance(kind, str):
        raise ConfigError(f"{where}: member needs a 'kind', one of {member_kinds()}")
    cfg = from_dict(member_class(kind).config_cls, raw, where=where)
    if cfg.seeds is not None and (not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds)):
        raise ConfigError(f"{where}.seeds: a seed average needs one or more distinct seeds, got {cfg.seeds}")
    return cfg
