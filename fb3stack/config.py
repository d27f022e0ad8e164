"""YAML → typed dataclasses, with `--set key=value` overrides.

Unknown keys and wrong types are errors that name the key path and the file, because a typo in a config
should not silently train the wrong model for hours. `to_dict` gives back plain data for config.yaml in the
run folder, so every artefact carries the exact settings that made it.
"""

from __future__ import annotations

import copy
import dataclasses
import glob
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
# scalar config types: the Python types accepted (a bool only for bool, though Python counts it an int) and what
# an error says was expected
_SCALARS = {bool: (bool, "true/false"), int: (int, "an integer"), float: ((int, float), "a number"),
           str: (str, "a string")}


class ConfigError(ValueError):
    """A config that cannot be turned into typed objects."""


def load_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, (dict, type(None))):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data or {}


def config_dir(source: str | os.PathLike | None) -> Path | None:
    """The folder of the YAML a config was read from (None for defaults or a config built in code)."""
    return Path(source).parent if source else None


def resolve_path(path: str | os.PathLike, base_dir: str | os.PathLike | None) -> Path:
    """Where an input file named in a YAML (member and blend YAMLs, OOF files, folds files) is.

    `~` is expanded, an absolute path used as is. A relative one is looked up beside the YAML (`base_dir`, see
    `config_dir`; None: the current folder) first, so a config means the same files from any folder (and when
    `fb3stack status` re-reads it from the workspace), then in the current folder, so paths relative to it
    (`--set members.0=my.yaml`) still work; in neither, the YAML-relative path, so the error names where it was
    expected. `workspace`, `data_dir` and a local `backbone` folder stay relative to the current folder, like the
    options that replace them (a workspace may not exist yet; a backbone may as well be a hub name).
    """
    p = Path(path).expanduser()
    if p.is_absolute() or base_dir is None:
        return p
    beside = Path(base_dir) / p
    return p if p.exists() and not beside.exists() else beside


def glob_paths(pattern: str, base_dir: str | os.PathLike | None) -> list[Path]:
    """Sorted matches of a glob pattern under `resolve_path`'s rule: the YAML's folder first, else the current
    folder (the first of the two with any match)."""
    p = Path(pattern).expanduser()
    tries = [p] if p.is_absolute() or base_dir is None else [Path(base_dir) / p, p]
    for t in tries:
        if hits := sorted(glob.glob(str(t))):
            return [Path(h) for h in hits]
    return []


def parse_override(item: str) -> tuple[list[str], Any]:
    """'a.b.c=3' → (['a', 'b', 'c'], 3); the value is parsed as YAML so numbers, lists and null work."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, _, raw = item.partition("=")
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"--set has an empty key: {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {item!r}: value is not valid YAML: {err}") from err
    return keys, value


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Return a copy of `data` with dotted-key overrides applied (nested mappings are created as needed)."""
    out = copy.deepcopy(data)
    for item in overrides or []:
        keys, value = parse_override(item)
        node = out
        for k in keys[:-1]:
            k = _slot(node, k, item)
            if isinstance(node, dict) and not isinstance(node.get(k), (dict, list)):
                node[k] = {}
            node = node[k]
        node[_slot(node, keys[-1], item)] = value
    return out


def _slot(node: dict | list, key: str, item: str) -> str | int:
    """`key` as a checked index when `node` is a list, else as a mapping key."""
    if not isinstance(node, list):
        return key
    if not key.lstrip("-").isdigit() or not -len(node) <= int(key) < len(node):
        raise ConfigError(f"--set {item!r}: {key!r} is not an index of a list of {len(node)}")
    return int(key)


def from_dict(cls: type[T], data: Any, where: str = "config") -> T:
    """Build dataclass `cls` from plain data, checking keys and types recursively."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} for {cls.__name__}; allowed: {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: required key '{name}' is missing for {cls.__name__}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from err


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        classes = [a for a in args if dataclasses.is_dataclass(a)]
        if isinstance(value, dict) and len(classes) == 1:  # a mapping can only mean the dataclass: name its error
            return from_dict(classes[0], value, where)
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where)
            except ConfigError:
                pass  # the next type may fit; the error below names them all
        raise ConfigError(f"{where}: {value!r} matches none of {[_type_name(a) for a in args]}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(vt, v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is float and isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads 2e-3 (no dot) as a string; it is what people type
    if tp in _SCALARS:
        accepted, what = _SCALARS[tp]
        if not isinstance(value, accepted) or (isinstance(value, bool) and tp is not bool):
            raise ConfigError(f"{where}: expected {what}, got {type(value).__name__} {value!r}")
        return float(value) if tp is float else value
    raise ConfigError(f"{where}: unsupported config type {tp!r}")


def to_dict(obj: Any, results_only: bool = False) -> Any:
    """Dataclass → plain dict/list/scalars for YAML. `results_only` leaves out, at every nesting level, the fields
    a config class declares execution-only (its `execution_only` class attribute): settings such as threads,
    device or eval batch size that change how fast or where something runs, never its result."""
    if dataclasses.is_dataclass(obj):
        skip = getattr(type(obj), "execution_only", ()) if results_only else ()
        return {f.name: to_dict(getattr(obj, f.name), results_only) for f in dataclasses.fields(obj)
                if f.name not in skip and not _left_out(obj, f)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v, results_only) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v, results_only) for k, v in obj.items()}
    return obj


OMIT_IF_DEFAULT = "omit_if_default"  # field metadata: a field added later, left out of to_dict while at its default


def _left_out(obj: Any, f: dataclasses.Field) -> bool:
    """A field marked `metadata={OMIT_IF_DEFAULT: True}` and still at its default: it is not written or hashed, so
    adding such a field to a config class changes no existing config.yaml and no config hash."""
    return bool(f.metadata.get(OMIT_IF_DEFAULT)) and getattr(obj, f.name) == f.default


def result_dict(obj: Any) -> Any:
    """What a result hash is made of: `to_dict` without the execution-only fields."""
    return to_dict(obj, results_only=True)


# ----------------------------------------------------------------------------------------------------------------
# The run-level config: data, folds, workspace and the list of zoo members.


@dataclass
class DataConfig:
    data_dir: str | None = None  # overridden by --data-dir and $FB3STACK_DATA
    train_file: str = "train.csv"
    test_file: str = "test.csv"
    sample_submission_file: str = "sample_submission.csv"
    on_bad_score: Literal["error", "warn"] = "error"  # scores outside [1, 5] or off the 0.5 grid
    limit: int | None = None  # a reproducible random subset of essays, for quick runs
    limit_seed: int = 0


@dataclass
class FoldsConfig:
    n_folds: int = 5
    seed: int = 42
    file: str | None = None  # import an external folds CSV (text_id, fold) instead of making one


@dataclass
class RunConfig:
    """What a zoo YAML holds: shared data and folds, the workspace, the members and the blend."""

    name: str = "zoo"
    workspace: str = "workspace"
    data: DataConfig = field(default_factory=DataConfig)
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    # each member is a path to a model YAML (relative to this file) or an inline mapping
    members: list[Any] = field(default_factory=list)
    # the second layer: a path to a blend YAML or an inline mapping (see fb3stack.blend)
    blend: Any = None
    source: str | None = None  # where this config was read from; set by load_run_config
    # `--set members.<name>.<key>=value` (or members.*.<key>) overrides, applied when members are resolved
    member_overrides: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.folds.n_folds < 2:
            raise ValueError(f"folds.n_folds must be >= 2, got {self.folds.n_folds}")


def load_run_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a zoo YAML (or defaults when `path` is None) and apply `--set` overrides."""
    raw = load_yaml(path) if path else {}
    run_level, per_member = split_member_overrides(overrides)
    raw = apply_overrides(raw, run_level)
    raw.pop("source", None)
    raw.pop("member_overrides", None)
    cfg = from_dict(RunConfig, raw, where=str(path) if path else "defaults")
    cfg.source = str(Path(path).resolve()) if path else None
    cfg.member_overrides = per_member
    return cfg


def split_member_overrides(overrides: list[str] | None) -> tuple[list[str], dict[str, list[str]]]:
    """Separate `members.<name>.key=v` (name not an index) from run-level overrides."""
    run_level: list[str] = []
    per_member: dict[str, list[str]] = {}
    for item in overrides or []:
        parts = item.split("=", 1)[0].split(".")
        if len(parts) >= 3 and parts[0] == "members" and not parts[1].lstrip("-").isdigit():
            per_member.setdefault(parts[1], []).append(item.split(".", 2)[2])
        else:
            run_level.append(item)
    return run_level, per_member
