"""Member kinds and blend methods from another installed package (docs/extending.md, built and pip-installed here).

The plug-in is made of the code blocks of docs/extending.md, so the documented example is the one tested.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from fb3stack.base import Member, MemberConfig, register_member
from fb3stack.base.executors import RayOptions, job_gpus
from fb3stack.base.registry import MEMBER_KINDS, load_member_config, member_class, member_kinds
from fb3stack.blend.methods import BLEND_METHODS, make_method
from fb3stack.config import ConfigError
from fb3stack.constants import ID_COL, TARGETS

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "extending.md"
PLUGIN_MODULE = "fb3_wordcount"


def doc_block(lang: str) -> str:
    blocks = re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 1, f"docs/extending.md should have one {lang} block, has {len(blocks)}"
    return blocks[0]


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The documented package, installed for real (pip --target) into a folder that is on no path yet."""
    root = tmp_path_factory.mktemp("plugin")
    pkg = root / "fb3-wordcount"
    (pkg / PLUGIN_MODULE).mkdir(parents=True)
    (pkg / PLUGIN_MODULE / "__init__.py").write_text(doc_block("python"), encoding="utf-8")
    (pkg / "pyproject.toml").write_text(doc_block("toml"), encoding="utf-8")
    site = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                    "--quiet", "--disable-pip-version-check", "--target", str(site), str(pkg)],
                   check=True, timeout=300)
    assert (site / PLUGIN_MODULE / "__init__.py").is_file()
    return site


@pytest.fixture()
def clean_registries():
    """Whatever a test loads into the registries (or sys.modules) is gone after it."""
    saved = {r: dict(r._classes) for r in (MEMBER_KINDS, BLEND_METHODS)}
    yield
    for registry, classes in saved.items():
        registry._classes.clear()
        registry._classes.update(classes)
    sys.modules.pop(PLUGIN_MODULE, None)


def env_with(*paths: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, paths), str(REPO)])}


def test_plugin_kinds_are_unknown_until_installed_then_found(plugin_site, clean_registries, monkeypatch, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))  # on the path, and read by the lookups below, while still empty
    with pytest.raises(ConfigError, match=r"unknown member kind 'word-count-ridge'; known: \[.*'tfidf-ridge'"):
        load_member_config({"name": "w", "kind": "word-count-ridge"})
    with pytest.raises(ConfigError, match=r"unknown blend method 'median'; known: \[.*'scipy'"):
        make_method("median")
    assert "word-count-ridge" not in member_kinds()  # entry points read (and cached, were they cached) here
    shutil.copytree(plugin_site, site, dirs_exist_ok=True)  # installed now, into a folder already looked at
    assert {"word-count-ridge", "tfidf-ridge", "transformer"} <= set(member_kinds())
    cfg = load_member_config({"name": "w", "kind": "word-count-ridge", "alpha": 3.0})
    assert type(cfg).__name__ == "WordCountConfig" and cfg.alpha == 3.0
    assert member_class("word-count-ridge").__module__ == PLUGIN_MODULE
    assert "median" in BLEND_METHODS.names() and type(make_method("median")).__name__ == "MedianBlend"
    with pytest.raises(ConfigError, match="alpah"):  # the plug-in's config is as strict as a built-in's
        load_member_config({"name": "w", "kind": "word-count-ridge", "alpah": 3.0})


def test_plugin_member_and_blend_run_through_the_cli(plugin_site, fb3_dir, tmp_path):
    """`fb3stack run` in a fresh interpreter: the plug-in member trains, the plug-in method is scored and
    chosen, and the submission is predicted with both."""
    ws = tmp_path / "ws"
    zoo = {
        "name": "plugin", "workspace": str(ws),
        "data": {"limit": 120, "limit_seed": 1}, "folds": {"n_folds": 2, "seed": 0},
        "members": [{"name": "words", "kind": "word-count-ridge", "alpha": 1.0},
                    {"name": "words-flat", "kind": "word-count-ridge", "alpha": 1000.0}],
        "blend": {"name": "b", "members": ["words", "words-flat"], "honest_selection": False,
                  "methods": [{"name": "median", "kind": "median"}]},
    }
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump(zoo))
    proc = subprocess.run([sys.executable, "-m", "fb3stack", "run", str(path), "--data-dir", str(fb3_dir)],
                          env=env_with(plugin_site), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("words", "words-flat"):
        oof = pd.read_parquet(ws / "models" / name / "oof.parquet")
        assert list(oof.columns) == [ID_COL, "fold", *TARGETS] and len(oof) == 120
    flat = pd.read_parquet(ws / "models" / "words-flat" / "oof.parquet")[list(TARGETS)].to_numpy()
    sharp = pd.read_parquet(ws / "models" / "words" / "oof.parquet")[list(TARGETS)].to_numpy()
    assert flat.std(axis=0).mean() < sharp.std(axis=0).mean()  # alpha reached the plug-in's config
    table = pd.read_csv(ws / "blends" / "b" / "table.csv").set_index("name")
    assert table.loc["median", "kind"] == "median" and np.isfinite(table.loc["median", "nested"])
    sub = pd.read_csv(ws / "submission.csv")
    assert np.isfinite(sub[list(TARGETS)].to_numpy()).all()

    # without the package the same zoo is refused before anything runs, naming the kind and the known ones
    proc = subprocess.run([sys.executable, "-m", "fb3stack", "train", str(path), "--data-dir", str(fb3_dir)],
                          env=env_with(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "unknown member kind 'word-count-ridge'" in proc.stderr + proc.stdout and "tfidf-ridge" in proc.stderr


def test_naming_a_cpu_kind_imports_no_torch(plugin_site):
    code = ("import sys\n"
            "from fb3stack.base.registry import load_member_config, member_class, member_kinds\n"
            "from fb3stack.base.runner import build_member\n"
            "cfg = load_member_config({'name': 't', 'kind': 'tfidf-ridge'})\n"
            "build_member(cfg)\n"
            "member_class('word-count-ridge')  # a plug-in found by its entry point\n"
            "assert 'transformer' in member_kinds()\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], env=env_with(plugin_site), capture_output=True, text=True,
                         timeout=300, check=True).stdout
    assert out.strip() == "[]"


def test_registering_is_checked(clean_registries):
    @register_member("test-two-names")
    class One(Member):
        def fit_fold(self, train, valid, fold, fold_dir): ...  # noqa: ANN001, ANN202

        def predict_fold(self, df, fold_dir): ...  # noqa: ANN001, ANN202

    assert member_class("test-two-names") is One and One.config_cls is MemberConfig
    with pytest.raises(ValueError, match="already registered"):
        register_member("test-two-names")(type("Other", (One,), {}))
    with pytest.raises(ValueError, match="built into fb3stack"):
        register_member("tfidf-ridge")(type("Impostor", (One,), {}))
    with pytest.raises(TypeError, match="not a subclass of Member"):
        register_member("test-not-a-member")(dict)


def test_gpus_per_job_follow_the_member_class():
    tfidf = load_member_config({"name": "t", "kind": "tfidf-ridge"})
    assert member_class("transformer").wants_gpu and not member_class("tfidf-ridge").wants_gpu
    transformer = load_member_config({"name": "d", "kind": "transformer", "backbone": "x"})
    assert job_gpus(transformer, RayOptions(), has_gpu=True) == 1.0
    assert job_gpus(transformer, RayOptions(), has_gpu=False) == 0.0
    assert job_gpus(tfidf, RayOptions(), has_gpu=True) == 0.0
    assert job_gpus(tfidf, RayOptions(gpus_per_job=0.5), has_gpu=True) == 0.5
