"""Shared fixtures: the FB3 data, real where it is, generated where it is not.

- `fb3_dir` / `train_df`: the real files from ../shared/data (or $FB3STACK_SHARED_DATA) when present; otherwise
  a small generated stand-in (tests/synthetic_fb3.py), so every test of mechanics (poolers, training loops,
  folds, blending, resume, integrity) still runs without the data instead of silently skipping.
- `extras_dir`: the real extras (public OOFs, the public 4-fold split) or, with the generated stand-in, files of
  the same names and format over the generated essays (for the blend-input and blend mechanics tests).
- `real_fb3_dir` / `real_train_df`: only the real data; tests about its statistics (3911 essays, the mean
  predictor's MCRMSE, fold balance) skip with a reason without it. CI (`.ci/run`) refuses to
  run at all without the real data, so it never passes on the generated stand-in alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FB3STACK_SHARED_DATA", REPO.parent / "shared" / "data"))
FB3_DIR = SHARED_DATA / "fb3"
EXTRAS_DIR = SHARED_DATA / "extras"
HAVE_REAL_DATA = (FB3_DIR / "train.csv").is_file()


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real FB3 data not found at {path} (expected ../shared/data beside the repo)")
    return path


def pytest_report_header(config) -> str:  # noqa: ANN001 - pytest's Config
    where = FB3_DIR if HAVE_REAL_DATA else "NOT FOUND: data-dependent tests use a generated stand-in"
    return f"fb3stack test data: {where}"


@pytest.fixture(scope="session")
def real_fb3_dir() -> Path:
    """Folder with the real train.csv, test.csv and sample_submission.csv (skips without it)."""
    return _require(FB3_DIR / "train.csv").parent


@pytest.fixture(scope="session")
def fb3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real FB3 folder when present, else a generated one in the same format (600 train, 3 test essays)."""
    if HAVE_REAL_DATA:
        return FB3_DIR
    from synthetic_fb3 import make_fb3_like

    return make_fb3_like(tmp_path_factory.mktemp("fb3-generated"))


@pytest.fixture(scope="session")
def extras_dir(fb3_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if HAVE_REAL_DATA:
        return _require(EXTRAS_DIR)
    from synthetic_fb3 import make_extras_like

    return make_extras_like(tmp_path_factory.mktemp("extras-generated"), fb3_dir)


@pytest.fixture(scope="session")
def train_df(fb3_dir: Path):
    from fb3stack.data import load_train

    return load_train(fb3_dir / "train.csv")


@pytest.fixture(scope="session")
def real_train_df(real_fb3_dir: Path):
    from fb3stack.data import load_train

    return load_train(real_fb3_dir / "train.csv")
