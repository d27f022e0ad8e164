"""Shared fixtures: the real FB3 data from ../shared/data (skipped with a reason where it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FB3STACK_SHARED_DATA", REPO.parent / "shared" / "data"))
FB3_DIR = SHARED_DATA / "fb3"
EXTRAS_DIR = SHARED_DATA / "extras"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real FB3 data not found at {path} (expected ../shared/data beside the repo)")
    return path


@pytest.fixture(scope="session")
def fb3_dir() -> Path:
    """Folder with the real train.csv, test.csv and sample_submission.csv."""
    return _require(FB3_DIR / "train.csv").parent


@pytest.fixture(scope="session")
def extras_dir() -> Path:
    return _require(EXTRAS_DIR)


@pytest.fixture(scope="session")
def train_df(fb3_dir: Path):
    from fb3stack.data import load_train

    return load_train(fb3_dir / "train.csv")
