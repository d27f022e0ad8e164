"""`fb3stack status`: members x folds done / missing / stale and why, blend freshness, read-only."""

from __future__ import annotations

import json
import shutil

import length_member  # noqa: F401 - registers the length-ridge kind used by the zoo below
import pytest
import yaml

from fb3stack.cli.main import main
from fb3stack.status import collect


def snapshot(root):
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")}


@pytest.fixture()
def zoo(fb3_dir, tmp_path):
    (tmp_path / "len.yaml").write_text("name: len\nkind: length-ridge\nalpha: 1.0\n")
    (tmp_path / "len2.yaml").write_text("name: len2\nkind: length-ridge\nalpha: 50.0\n")
    cfg = {"name": "t", "workspace": str(tmp_path / "ws"), "data": {"limit": 240}, "folds": {"n_folds": 3, "seed": 0},
           "members": ["len.yaml", "len2.yaml"], "blend": "b.yaml"}
    blend = {"name": "b", "members": ["len", "len2"], "methods": [{"name": "mean", "kind": "mean"}]}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(blend))
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--data-dir", str(fb3_dir)]) == 0
    assert main(["blend", str(tmp_path / "b.yaml"), "--workspace", str(tmp_path / "ws"), "--data-dir",
                 str(fb3_dir)]) == 0
    return path


def by_name(status, key="members", field="member"):
    return {row[field]: row for row in status[key]}


def test_status_marks_a_member_stale_after_its_config_changes(zoo, fb3_dir, capsys):
    ws = zoo.parent / "ws"
    before = snapshot(ws)
    status = collect(ws, data_dir=fb3_dir)  # compared with the workspace's run_config.yaml and today's member YAMLs
    assert status["problems"] == []
    members = by_name(status)
    assert members["len"]["state"] == "done" and members["len"]["folds"] == ["done"] * 3
    assert members["len"]["mcrmse"] > 0
    assert by_name(status, "blends", "blend")["b"]["state"] == "fresh"

    (zoo.parent / "len.yaml").write_text("name: len\nkind: length-ridge\nalpha: 2.0\n")
    status = collect(ws, data_dir=fb3_dir)
    members = by_name(status)
    assert members["len"]["state"] == "stale" and members["len"]["folds"] == ["stale"] * 3
    assert members["len"]["reasons"] == ["settings changed: alpha: 1.0 -> 2.0"]  # which setting, not a hash
    assert members["len2"]["state"] == "done"  # the other member is untouched
    blend = by_name(status, "blends", "blend")["b"]
    assert blend["state"] == "stale" and "member len is not up to date" in blend["reasons"]

    assert main(["status", "--workspace", str(ws), "--data-dir", str(fb3_dir), "--json"]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert by_name(as_json)["len"]["state"] == "stale"
    assert main(["status", "--workspace", str(ws), "--data-dir", str(fb3_dir)]) == 0
    plain = capsys.readouterr().out  # captured: not a terminal, so plain aligned text
    row = next(line for line in plain.splitlines() if line.strip().startswith("len "))
    assert row.split()[1:5] == ["length-ridge", "stale", "stale", "stale"] and "alpha: 1.0 -> 2.0" in row
    assert "\x1b[" not in plain  # no terminal colour codes when piped
    assert snapshot(ws) == before  # status wrote nothing


def test_status_missing_fold_blend_config_change_and_extra_member(zoo, fb3_dir):
    ws = zoo.parent / "ws"
    shutil.rmtree(ws / "models" / "len2" / "fold1")
    (ws / "models" / "old").mkdir()
    blend_yaml = zoo.parent / "b.yaml"
    raw = yaml.safe_load(blend_yaml.read_text())
    raw["methods"].append({"name": "slsqp", "kind": "scipy"})
    blend_yaml.write_text(yaml.safe_dump(raw))
    status = collect(ws, data_dir=fb3_dir)  # run_config.yaml's source leads to zoo.yaml, and from it to b.yaml
    len2 = by_name(status)["len2"]
    assert len2["folds"] == ["done", "missing", "done"] and len2["state"] == "2/3 folds"
    assert by_name(status)["old"]["state"] == "extra"
    reasons = by_name(status, "blends", "blend")["b"]["reasons"]
    assert any(r.startswith("settings changed: ") and "methods[slsqp].kind: (unset) -> scipy" in r
               for r in reasons), reasons
    assert "member len2 is not up to date" in reasons
    assert status["disk_total"] == sum(d["bytes"] for d in status["disk"]) > 0


def test_status_of_a_missing_workspace_is_an_error(tmp_path, capsys):
    assert main(["status", "--workspace", str(tmp_path / "nope")]) == 2
    assert "no such workspace" in capsys.readouterr().err
    assert not (tmp_path / "nope").exists()


def test_status_lists_cached_predictions_by_model_and_says_unknown_without_data(zoo, fb3_dir, tmp_path, monkeypatch):
    ws = zoo.parent / "ws"
    out = tmp_path / "sub.csv"
    assert main(["predict", "--workspace", str(ws), "--blend", "b", "--test", str(fb3_dir / "test.csv"),
                 "--out", str(out)]) == 0
    preds = collect(ws, data_dir=fb3_dir)["predictions"]
    assert sorted(p["member"] for p in preds) == ["len", "len2"] and {p["state"] for p in preds} == {"ok"}
    # retrain len: its cached test predictions belong to the old model and are reported as unused
    (zoo.parent / "len.yaml").write_text("name: len\nkind: length-ridge\nalpha: 3.0\n")
    assert main(["train", str(zoo), "--data-dir", str(fb3_dir)]) == 0
    states = {p["member"]: p["state"] for p in collect(ws, data_dir=fb3_dir)["predictions"]}
    assert states == {"len": "for another model (unused)", "len2": "ok"}
    # no data at hand: the blend cannot be compared, so its state is unknown, not stale
    monkeypatch.delenv("FB3STACK_DATA", raising=False)
    blend = by_name(collect(ws, data_dir=tmp_path / "nowhere"), "blends", "blend")["b"]
    assert blend["state"] == "unknown"


def test_status_after_run_finds_the_data_the_run_used(zoo, fb3_dir, monkeypatch):
    """`fb3stack run` records its data folder; a later `status` with no --data-dir and no $FB3STACK_DATA judges
    the members and the blend against it instead of calling the blend unknown."""
    ws = zoo.parent / "ws"
    assert main(["run", str(zoo), "--data-dir", str(fb3_dir)]) == 0
    monkeypatch.delenv("FB3STACK_DATA", raising=False)
    status = collect(ws, data_dir=None)
    assert status["problems"] == []
    assert by_name(status, "blends", "blend")["b"]["state"] == "fresh"
