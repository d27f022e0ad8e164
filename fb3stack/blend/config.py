"""The blend YAML as typed dataclasses (read with fb3stack.config.from_dict: unknown keys are errors)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fb3stack.config import ConfigError, RunConfig, apply_overrides, config_dir, from_dict, load_yaml, resolve_path


@dataclass
class MethodConfig:
    """One method to try: `kind` names a registered blend method (fb3stack.blend.methods.BLEND_METHODS: built in
    or a plug-in's, docs/extending.md), `params` its constructor args."""

    name: str
    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    meta: bool = False  # feed BlendConfig.meta_features to the method (only the LightGBM stacker uses them)


@dataclass
class OuterConfig:
    """How the nested CV's outer folds are made.

    auto: the members' fold column when they have one, else a seeded KFold; zoo: require the fold column;
    kfold: `repeats` seeded KFolds of `n_folds`; file: a folds CSV (text_id, fold) such as the public 4-fold split.
    """

    split: Literal["auto", "zoo", "kfold", "file"] = "auto"
    file: str | None = None
    n_folds: int = 5
    repeats: int = 1
    seed: int = 42


@dataclass
class SelectionConfig:
    """Member selection inside each outer fold (so its effect is part of the nested score)."""

    enabled: bool = False
    prune_corr: float | None = 0.999  # drop a member this correlated with a better one (mean over traits)
    forward: bool = True  # greedy forward selection by the training rows' error of the members' mean
    max_members: int | None = None
    min_gain: float = 0.0


@dataclass
class UncertaintyConfig:
    """How sure the table's gains are (fb3stack.blend.uncertainty): a paired bootstrap over essays of the held-out
    predictions, `bootstrap` resamples (0: off; otherwise >= 1000) seeded with `seed` (None: outer.seed), and the
    chosen method's nested score without each member (`leave_one_out`: one nested CV per member)."""

    bootstrap: int = 2000
    level: float = 0.95
    seed: int | None = None
    leave_one_out: bool = True

    def __post_init__(self) -> None:
        if self.bootstrap != 0 and self.bootstrap < 1000:
            raise ValueError(f"uncertainty.bootstrap must be 0 (off) or >= 1000 resamples, got {self.bootstrap}")
        if not 0.5 <= self.level < 1.0:
            raise ValueError(f"uncertainty.level must be in [0.5, 1), got {self.level}")


def default_methods() -> list[MethodConfig]:
    return [
        MethodConfig("mean", "mean"),
        MethodConfig("slsqp", "scipy", {"method": "SLSQP"}),
        MethodConfig("slsqp-shrink", "scipy", {"method": "SLSQP", "shrink": 0.03}),
        MethodConfig("slsqp-shared-shrink", "scipy", {"method": "SLSQP", "shrink": 0.01, "per_trait": False}),
        # shrink picked inside each fit by an inner CV, so nothing about it was tuned on the nested score
        MethodConfig("slsqp-shared-shrink-cv", "scipy", {"method": "SLSQP", "per_trait": False,
                                                       "shrink_grid": [0.0, 0.003, 0.01, 0.03, 0.1, 0.3]}),
        MethodConfig("nelder-mead", "scipy", {"method": "Nelder-Mead", "bounds": None, "maxiter": 50}),
        MethodConfig("nnls", "nnls"),
        MethodConfig("caruana", "hillclimb"),
        MethodConfig("caruana-negative", "hillclimb", {"allow_negative": True}),
        MethodConfig("caruana-bagged", "hillclimb", {"n_bags": 20, "per_trait": False}),
        MethodConfig("ridge-on-mean", "ridge", {"alpha": 100.0}),
        MethodConfig("ridge-cross-trait", "ridge", {"alpha": 3000.0, "cross_trait": True}),
    ]


@dataclass
class MemberFiles:
    """A model trained outside the workspace, as one blend member: its OOF file and the same model's predictions
    for the test essays (both CSV or parquet: text_id + six traits), `- {oof: a_oof.csv, test: a_test.csv}`.

    With `test`, `fb3stack predict` blends those predictions (aligned to the test CSV by text_id, checked against
    the sha256 recorded when the blend was fitted); without it the member is scored but the blend cannot predict.
    `name` defaults to the OOF file's name without its suffix and a trailing `_oof` / `_oof_df`."""

    oof: str
    test: str | None = None
    name: str | None = None


@dataclass
class BlendConfig:
    name: str = "blend"
    # workspace member names, OOF file paths or glob patterns, or {oof, test} file pairs of an outside model
    # (fb3stack.config.resolve_path: the YAML's folder, then the current folder)
    members: list[str | MemberFiles] = field(default_factory=list)
    methods: list[MethodConfig] = field(default_factory=default_methods)
    # appended to `methods`, so a YAML can add a method (e.g. the LightGBM stacker) and keep the default list
    extra_methods: list[MethodConfig] = field(default_factory=list)
    outer: OuterConfig = field(default_factory=OuterConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    meta_features: list[str] = field(default_factory=list)  # n_words, n_chars, n_paragraphs, n_sentences
    # also score "choose the method by inner CV" as one blender by the outer CV (the `selected-by-inner-CV` row):
    # the honest estimate of the chosen blend, since the best of many nested scores is itself optimistic
    honest_selection: bool = True
    uncertainty: UncertaintyConfig = field(default_factory=UncertaintyConfig)
    data_dir: str | None = None  # overridden by --data-dir and $FB3STACK_DATA
    train_file: str = "train.csv"
    source: str | None = None  # the YAML this was read from; set by load_blend_config

    def __post_init__(self) -> None:
        self.methods, self.extra_methods = [*self.methods, *self.extra_methods], []
        names = [m.name for m in self.methods]
        if len(set(names)) != len(names):
            raise ValueError(f"method names must be unique, got {names}")
        if not self.methods:
            raise ValueError("at least one method is needed")
        if self.outer.n_folds < 2 or self.outer.repeats < 1:
            raise ValueError("outer.n_folds must be >= 2 and outer.repeats >= 1")


def load_blend_config(path: str | os.PathLike, overrides: list[str] | None = None) -> BlendConfig:
    raw = apply_overrides(load_yaml(path), overrides)
    if "blend" in raw:  # a zoo YAML with an inline or referenced blend section (a blend YAML has no "blend" key)
        blend = raw["blend"]
        if isinstance(blend, str):
            return load_blend_config(resolve_path(blend, config_dir(path)), overrides)
        if not isinstance(blend, dict):
            raise ConfigError(f"{path}: 'blend' must be a mapping or a path to a blend YAML")
        raw = blend
    raw.pop("source", None)
    cfg = from_dict(BlendConfig, raw, where=str(path))
    cfg.source = str(Path(path).resolve())
    return cfg


def zoo_blend_config(cfg: RunConfig) -> BlendConfig:
    """A zoo's `blend`: a blend YAML path (relative to the zoo file) or an inline mapping. Used by `run` and by
    `status`, which judges the zoo's blend against it."""
    if isinstance(cfg.blend, str):
        return load_blend_config(resolve_path(cfg.blend, config_dir(cfg.source)))
    if not isinstance(cfg.blend, dict):
        raise ConfigError(f"{cfg.source}: 'blend' must be a blend YAML path or a mapping")
    blend = from_dict(BlendConfig, {k: v for k, v in cfg.blend.items() if k != "source"}, where=f"{cfg.source}:blend")
    blend.source = cfg.source
    return blend
