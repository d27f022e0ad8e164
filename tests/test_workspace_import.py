"""`fb3stack import`: members trained in other workspaces, checked (folds, data, names, seals) and brought in
without a second copy; afterwards blend, status, run and bundle treat them as the workspace's own."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
import yaml

from fb3stack.cli.main import main
from fb3stack.io import read_json

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "configs" / "models"


def write_zoo(path: Path, members: list, data_dir: Path, seed: int = 0, limit: int = 90, blend: str | None = None
              ) -> Path:
    zoo = {"name": path.stem, "data": {"data_dir": str(data_dir), "limit": limit, "limit_seed": 1},
           "folds": {"n_folds": 3, "seed": seed}, "members": members}
    if blend:
        zoo["blend"] = blend
    path.write_text(yaml.safe_dump(zoo))
    return path


def tree_state(root: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mode of every file under `root` (logs/ left out: in one test process the log handlers of earlier
    in-process commands stay attached; a user's commands are separate processes): equal means untouched."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
            for p in sorted(root.rglob("*")) if p.is_file() and p.relative_to(root).parts[0] != "logs"}


def read_only(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fb3_dir) -> dict[str, Path]:
    """Workspaces trained separately: A (tfidf-ridge), B (features-lgbm), same folds; D: other folds."""
    root = tmp_path_factory.mktemp("import")
    out = {}
    for name, member, seed in (("a", "tfidf-ridge", 0), ("b", "features-lgbm", 0), ("d", "features-lgbm", 7)):
        zoo = write_zoo(root / f"{name}.yaml", [str(MODELS / f"{member}.yaml")], fb3_dir, seed=seed)
        assert main(["train", str(zoo), "--workspace", str(root / name)]) == 0
        out[name] = root / name
    (root / "blend.yaml").write_text(yaml.safe_dump({"name": "final", "members": ["tfidf-ridge", "features-lgbm"],
                                                     "methods": [{"name": "mean", "kind": "mean"},
                                                                 {"name": "nnls", "kind": "nnls"}]}))
    out["root"] = root
    return out


def test_import_links_read_only_sources_and_they_work_as_own(trained, fb3_dir, tmp_path, capsys):
    a, b, root = trained["a"], trained["b"], trained["root"]
    read_only(a)
    read_only(b)
    before = {s: tree_state(s) for s in (a, b)}
    ws = tmp_path / "c"
    assert main(["import", "--workspace", str(ws), str(a), str(b)]) == 0
    # no folds here yet: the sources' were taken
    assert (ws / "folds.csv").read_bytes() == (a / "folds.csv").read_bytes()
    src, dest = a / "models/tfidf-ridge/fold0/tfidf_ridge.joblib", ws / "models/tfidf-ridge/fold0/tfidf_ridge.joblib"
    if os.stat(src).st_dev == os.stat(ws).st_dev:  # one filesystem: hard links, no second copy on disk
        assert os.stat(src).st_ino == os.stat(dest).st_ino
    assert set(read_json(ws / "imports.json")) == {"tfidf-ridge", "features-lgbm"}

    # blend by name, a zoo that lists only one of them, status, bundle: all treat them as the workspace's own
    final = write_zoo(tmp_path / "final.yaml", [str(MODELS / "tfidf-ridge.yaml")], fb3_dir,
                      blend=str(root / "blend.yaml"))
    assert main(["run", str(final), "--workspace", str(ws)]) == 0
    assert (ws / "submission.csv").is_file() and (ws / "report.md").is_file()
    capsys.readouterr()
    assert main(["status", "--workspace", str(ws), "--json"]) == 0
    status = yaml.safe_load(capsys.readouterr().out)
    states = {m["member"]: m["state"] for m in status["members"]}
    assert states == {"tfidf-ridge": "done", "features-lgbm": "done"}
    assert [bl["state"] for bl in status["blends"]] == ["fresh"]
    assert main(["bundle", "--workspace", str(ws), "--dry-run"]) == 0
    assert "features-lgbm" in capsys.readouterr().out
    # a changed zoo entry for an imported member is refused, never retrained (nor moved aside)
    assert main(["run", str(final), "--workspace", str(ws), "--set", "members.tfidf-ridge.alpha=7"]) == 2
    assert "imported from" in capsys.readouterr().err
    assert not (ws / "models/.stale").exists()
    # importing again is a no-op; the read-only sources were never written
    assert main(["import", "--workspace", str(ws), str(a), str(b)]) == 0
    assert "already here" in capsys.readouterr().out
    assert {s: tree_state(s) for s in (a, b)} == before


def test_import_refuses_other_folds_naming_member(trained, tmp_path, capsys):
    ws = tmp_path / "c"
    assert main(["import", "--workspace", str(ws), str(trained["a"])]) == 0
    capsys.readouterr()
    assert main(["import", "--workspace", str(ws), str(trained["d"])]) == 2
    err = capsys.readouterr().err
    assert "'features-lgbm'" in err and "other folds" in err and "data" not in err.split("than")[0]
    assert not (ws / "models/features-lgbm").exists()


def test_import_refuses_other_data_and_two_members_of_one_name(trained, fb3_dir, tmp_path, capsys):
    other = write_zoo(tmp_path / "e.yaml", [str(MODELS / "features-lgbm.yaml")], fb3_dir, limit=80)
    assert main(["train", str(other), "--workspace", str(tmp_path / "e")]) == 0
    ws = tmp_path / "c"
    assert main(["import", "--workspace", str(ws), str(trained["a"])]) == 0
    capsys.readouterr()
    assert main(["import", "--workspace", str(ws), str(tmp_path / "e")]) == 2
    assert "other folds and data" in capsys.readouterr().err
    assert main(["import", "--workspace", str(tmp_path / "w2"), str(trained["b"]), str(trained["d"])]) == 2
    assert "two sources have a member 'features-lgbm'" in capsys.readouterr().err
    assert not (tmp_path / "w2" / "models").exists()  # refused before anything was written


def test_link_or_copy_falls_back_when_no_hard_link_is_possible(tmp_path, monkeypatch):
    import errno

    from fb3stack import workspace_import

    src = tmp_path / "model.bin"
    src.write_bytes(b"weights" * 1000)
    src.chmod(0o444)
    assert workspace_import.link_or_copy(src, tmp_path / "linked.bin") == "linked"
    assert os.stat(tmp_path / "linked.bin").st_ino == os.stat(src).st_ino

    def other_filesystem(*_args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(workspace_import.os, "link", other_filesystem)
    how = workspace_import.link_or_copy(src, tmp_path / "copy.bin")
    assert how in ("cloned", "copied")
    assert (tmp_path / "copy.bin").read_bytes() == src.read_bytes()
    assert os.stat(tmp_path / "copy.bin").st_ino != os.stat(src).st_ino
