from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from fb3stack.config import ConfigError, apply_overrides, from_dict, load_run_config, to_dict


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
