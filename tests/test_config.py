from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from fb3stack.config import (
    ConfigError,
    apply_overrides,
    config_dir,
    from_dict,
    glob_paths,
    load_run_config,
    resolve_path,
    to_dict,
)


@dataclass
class Inner:
    lr: float = 1e-3
    mode: Literal["a", "b"] = "a"


@dataclass
class Outer:
    name: str
    epochs: int = 3
    layers: list[int] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)
    path: str | None = None


def test_typed_loading_and_round_trip():
    cfg = from_dict(Outer, {"name": "x", "epochs": 5, "layers": [1, 2], "inner": {"lr": 2, "mode": "b"}})
    assert cfg.inner.lr == 2.0 and isinstance(cfg.inner.lr, float)
    assert from_dict(Outer, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "x", "epoch": 5}, r"unknown key\(s\) \['epoch'\]"),
        ({"name": "x", "epochs": "5"}, r"cfg\.epochs: expected an integer"),
        ({"name": "x", "epochs": True}, r"cfg\.epochs: expected an integer"),
        ({"name": "x", "inner": {"mode": "c"}}, r"cfg\.inner\.mode: 'c' is not one of \['a', 'b'\]"),
        ({"name": "x", "inner": {"lr": "fast"}}, r"cfg\.inner\.lr: expected a number"),
        ({"name": "x", "layers": [1, "two"]}, r"cfg\.layers\[1\]: expected an integer"),
        ({"name": "x", "inner": {"lr": True}}, r"cfg\.inner\.lr: expected a number, got bool True"),
        ({"name": 3}, r"cfg\.name: expected a string, got int 3"),
        ({"epochs": 1}, r"required key 'name' is missing"),
    ],
)
def test_bad_config_errors_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data, where="cfg")


def test_overrides_parse_yaml_values():
    out = apply_overrides({"a": {"b": 1}, "l": [1, 2]}, ["a.b=2.5", "a.c=[1, 2]", "d=null", "l.1=7", "e=text"])
    assert out == {"a": {"b": 2.5, "c": [1, 2]}, "d": None, "l": [1, 7], "e": "text"}
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["nokey"])
    data = {"m": [{"x": 1}]}  # list indices inside a path, and the input is left as it was
    assert apply_overrides(data, ["m.0.x=2", "m.-1.y=3"]) == {"m": [{"x": 2, "y": 3}]} and data == {"m": [{"x": 1}]}
    with pytest.raises(ConfigError, match="'1' is not an index of a list of 1"):
        apply_overrides(data, ["m.1.x=2"])


def test_run_config_file_overrides_and_member_overrides(tmp_path):
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump({"name": "z", "folds": {"n_folds": 4}, "members": ["m.yaml"]}))
    cfg = load_run_config(path, ["folds.seed=7", "data.limit=100", "members.tfidf.alpha=2", "members.*.seed=3"])
    assert (cfg.folds.n_folds, cfg.folds.seed, cfg.data.limit) == (4, 7, 100)
    assert cfg.member_overrides == {"tfidf": ["alpha=2"], "*": ["seed=3"]}
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['n_fold'\]"):
        load_run_config(path, ["folds.n_fold=3"])
    with pytest.raises(ConfigError, match="n_folds must be >= 2"):
        load_run_config(path, ["folds.n_folds=1"])


@pytest.fixture
def two_folders(tmp_path, monkeypatch):
    """A config folder and a different current folder, with files in one, the other, or both."""
    cfg_dir, cwd = tmp_path / "configs", tmp_path / "here"
    for folder, names in ((cfg_dir, ["both.yaml", "beside.yaml", "a_oof.csv"]), (cwd, ["both.yaml", "cwd.yaml",
                                                                                       "b_oof.csv"])):
        folder.mkdir()
        for name in names:
            (folder / name).write_text(f"where: {folder.name}\n")
    monkeypatch.chdir(cwd)
    return cfg_dir, cwd


def test_relative_paths_resolve_beside_the_yaml_first_then_in_the_current_folder(two_folders):
    cfg_dir, cwd = two_folders
    assert resolve_path("both.yaml", cfg_dir) == cfg_dir / "both.yaml"  # the YAML's neighbour wins
    assert resolve_path("beside.yaml", cfg_dir) == cfg_dir / "beside.yaml"
    assert resolve_path("cwd.yaml", cfg_dir).resolve() == cwd / "cwd.yaml"  # e.g. typed with --set
    assert resolve_path("missing.yaml", cfg_dir) == cfg_dir / "missing.yaml"  # the error names the expected place
    assert resolve_path("both.yaml", None).resolve() == cwd / "both.yaml"  # no YAML: the current folder
    assert resolve_path(cwd / "both.yaml", cfg_dir) == cwd / "both.yaml"
    assert resolve_path("~/x.yaml", cfg_dir).is_absolute()
    assert config_dir(str(cfg_dir / "zoo.yaml")) == cfg_dir and config_dir(None) is None
    assert glob_paths("*_oof.csv", cfg_dir) == [cfg_dir / "a_oof.csv"]
    assert [p.resolve() for p in glob_paths("b_*.csv", cfg_dir)] == [cwd / "b_oof.csv"]
    assert glob_paths("c_*.csv", cfg_dir) == []


def test_zoo_member_paths_follow_the_rule_whatever_the_current_folder(two_folders):
    from fb3stack.base.runner import resolve_members

    cfg_dir, cwd = two_folders
    for folder in (cfg_dir, cwd):
        (folder / "both.yaml").write_text(f"kind: tfidf-ridge\nname: tfidf-{folder.name}\n")
    (cfg_dir / "zoo.yaml").write_text("members: [both.yaml]\n")
    assert [m.name for m in resolve_members(load_run_config(cfg_dir / "zoo.yaml"))] == ["tfidf-configs"]
