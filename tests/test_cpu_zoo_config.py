"""The shipped CPU zoos: their blend names their members, scores the LightGBM stacker, and members on one
backbone share one embedding pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from fb3stack.base.runner import resolve_members
from fb3stack.blend.config import BlendConfig, default_methods, load_blend_config, zoo_blend_config
from fb3stack.config import from_dict, load_run_config, to_dict

ZOOS = sorted((Path(__file__).resolve().parents[1] / "configs" / "zoo").glob("cpu*.yaml"))


@pytest.mark.parametrize("zoo", ZOOS, ids=lambda p: p.name)
def test_blend_names_the_zoo_members_and_scores_the_lgbm_stacker(zoo: Path) -> None:
    cfg = load_run_config(zoo, [])
    blend = zoo_blend_config(cfg)
    assert sorted(blend.members) == sorted(m.name for m in resolve_members(cfg))
    stackers = [m for m in blend.methods if m.kind == "lgbm"]
    assert stackers and all(m.meta for m in stackers) and blend.meta_features
    # the stackers come on top of the default list, so they compete with every weight method
    assert {m.name for m in default_methods()} <= {m.name for m in blend.methods}


def test_extra_methods_survive_a_save_and_reload() -> None:
    cfg = load_blend_config(Path(__file__).resolve().parents[1] / "configs" / "blends" / "default.yaml")
    again = from_dict(BlendConfig, {k: v for k, v in to_dict(cfg).items() if k != "source"})
    assert [m.name for m in again.methods] == [m.name for m in cfg.methods]


@pytest.mark.parametrize("zoo", ZOOS, ids=lambda p: p.name)
def test_members_on_one_backbone_share_their_embedding_store(zoo: Path) -> None:
    cfg = load_run_config(zoo, [])
    settings: dict[tuple, set] = {}
    for m in resolve_members(cfg):
        if m.kind in ("embed", "embed-svr"):
            key = (m.max_len, m.chunking, m.pooler, m.precision)
            for b in m.backbones:
                settings.setdefault(b, set()).add(key)
    assert settings and all(len(v) == 1 for v in settings.values()), settings
