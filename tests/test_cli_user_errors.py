"""Every command, given a wrong workspace, blend, bundle, file or option, exits 2 with one line naming the thing and
what to do, before any expensive work, writing nothing; and what the user is shown agrees with itself.

The CLI runs as a subprocess, as a user runs it. One small CPU zoo (TF-IDF ridge + text-features LightGBM, 120
essays, 2 folds) is run once per module.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fb3stack.cli.main import main
from fb3stack.constants import TARGETS

REPO = Path(__file__).resolve().parents[1]
CLI = "import sys; from fb3stack.cli.main import main; sys.exit(main(sys.argv[1:]))"


def cli(*args: str, cwd: Path | None = None, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **(env or {})}
    return subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True, cwd=cwd, env=env,
                          **kwargs)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def zoo(fb3_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("user-errors")
    cfg = {
        "name": "small", "data": {"limit": 120, "limit_seed": 3}, "folds": {"n_folds": 2, "seed": 0},
        "members": [str(REPO / "configs/models/tfidf-ridge.yaml"), str(REPO / "configs/models/features-lgbm.yaml")],
        "blend": {"name": "b", "members": ["tfidf-ridge", "features-lgbm"],
                  "methods": [{"name": "mean", "kind": "mean"}, {"name": "nnls", "kind": "nnls"}]},
    }
    (root / "zoo.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(root / "zoo.yaml"), "--workspace", str(root / "ws"), "--data-dir", str(fb3_dir)]) == 0
    # a workspace holding two blends
    shutil.copytree(root / "ws", root / "ws2")
    shutil.copytree(root / "ws2/blends/b", root / "ws2/blends/c")
    test = pd.read_csv(fb3_dir / "test.csv")
    test.head(0).to_csv(root / "header_only.csv", index=False)
    sample = pd.read_csv(fb3_dir / "sample_submission.csv")
    sample.loc[0, "text_id"] = "NOT-IN-TEST-1"
    sample.to_csv(root / "other_sample.csv", index=False)
    assert main(["bundle", "--workspace", str(root / "ws"), "--out", str(root / "bundle"), "--no-wheels"]) == 0
    return root


# (arguments with {root}/{data} placeholders, a fragment the one error line must contain)
CASES = {
    "header-only test": (["predict", "--workspace", "{root}/ws", "--test", "{root}/header_only.csv", "--out",
                          "{root}/out.csv"], "has a header but no rows"),
    "predict, missing workspace": (["predict", "--workspace", "{root}/nope", "--test", "{data}/test.csv"],
                                   "no such workspace"),
    "bundle, missing workspace": (["bundle", "--workspace", "{root}/nope", "--out", "{root}/b2"],
                                  "no such workspace"),
    "status, missing workspace": (["status", "--workspace", "{root}/nope"], "no such workspace"),
    "report, missing workspace": (["report", "--workspace", "{root}/nope"], "no such workspace"),
    "blend, missing workspace": (["blend", "{root}/zoo.yaml", "--workspace", "{root}/nope", "--data-dir", "{data}"],
                                 "no such workspace"),
    "predict --blend nope": (["predict", "--workspace", "{root}/ws", "--test", "{data}/test.csv", "--blend", "nope"],
                             "fitted blends here: b"),
    "bundle --blend nope": (["bundle", "--workspace", "{root}/ws", "--out", "{root}/b2", "--blend", "nope"],
                            "--blend nope"),
    "report --blend nope": (["report", "--workspace", "{root}/ws", "--blend", "nope"], "--blend nope"),
    "predict, two blends": (["predict", "--workspace", "{root}/ws2", "--test", "{data}/test.csv", "--out",
                             "{root}/out.csv"], "--blend b or --blend c"),
    "bundle, two blends": (["bundle", "--workspace", "{root}/ws2", "--out", "{root}/b2"], "--blend b or --blend c"),
    "predict, not a bundle": (["predict", "--bundle", "{root}/ws", "--test", "{data}/test.csv"], "not a bundle"),
    "predict, sample ids differ": (["predict", "--workspace", "{root}/ws", "--test", "{data}/test.csv",
                                    "--sample-submission", "{root}/other_sample.csv", "--out", "{root}/out.csv"],
                                   "NOT-IN-TEST-1"),
    "predict, missing sample": (["predict", "--workspace", "{root}/ws", "--test", "{data}/test.csv",
                                 "--sample-submission", "{root}/nope.csv", "--out", "{root}/out.csv"],
                                "file not found"),
    "predict --out a folder": (["predict", "--workspace", "{root}/ws", "--test", "{data}/test.csv", "--out",
                                "{root}/ws"], "is a folder"),
    "predict -q, --blend with --bundle": (["predict", "-q", "--bundle", "{root}/bundle", "--blend", "b", "--test",
                                           "{data}/test.csv"], "a bundle holds one blend"),
    "bundle into the workspace": (["bundle", "--workspace", "{root}/ws", "--out", "{root}/ws/inside"],
                                  "inside the workspace"),
    "folds --from missing": (["folds", "{root}/zoo.yaml", "--workspace", "{root}/nope", "--data-dir", "{data}",
                              "--from", "{root}/nope.csv"], "folds file not found"),
    "train, missing data folder": (["train", "{root}/zoo.yaml", "--workspace", "{root}/nope", "--data-dir",
                                    "{root}/no-data"], "does not exist"),
    "train --only nope": (["train", "{root}/zoo.yaml", "--workspace", "{root}/nope", "--only", "nope", "--data-dir",
                           "{data}"], "unknown member"),
    "run, header-only test": (["run", "{root}/zoo.yaml", "--workspace", "{root}/nope", "--data-dir", "{data}",
                               "--test", "{root}/header_only.csv"], "has a header but no rows"),
    "status --set unknown member": (["status", "--workspace", "{root}/ws", "--set", "members.nope.alpha=3"],
                                    "unknown member"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_mistake_is_one_line_exit_2_and_writes_nothing(zoo, fb3_dir, case):
    args, fragment = CASES[case]
    args = [a.format(root=zoo, data=fb3_dir) for a in args]
    before = snapshot(zoo)
    res = cli(*args, cwd=zoo)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], res.stderr
    assert snapshot(zoo) == before  # no workspace created, no log, no prediction cache, no output file


def test_sample_ids_are_named_and_checked_before_any_member_predicts(zoo, fb3_dir):
    ws = zoo / "ws"
    shutil.rmtree(ws / "predictions")
    sample = pd.read_csv(fb3_dir / "sample_submission.csv")
    res = cli("predict", "--workspace", str(ws), "--test", str(fb3_dir / "test.csv"), "--sample-submission",
              str(zoo / "other_sample.csv"), "--out", str(zoo / "out.csv"))
    assert res.returncode == 2
    assert "1 id(s) here but not in the test file: NOT-IN-TEST-1" in res.stderr
    assert f"not here: {sample.loc[0, 'text_id']}" in res.stderr
    assert not (ws / "predictions").exists()  # refused before the first member was loaded


def test_predict_writes_beside_the_models_by_default_as_run_does(zoo, fb3_dir, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(zoo / "ws", ws)
    expected = pd.read_csv(ws / "submission.csv")
    (ws / "submission.csv").unlink()
    res = cli("predict", "-q", "--workspace", str(ws), "--test", str(fb3_dir / "test.csv"), "--sample-submission",
              str(fb3_dir / "sample_submission.csv"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert not (tmp_path / "submission.csv").exists()
    pd.testing.assert_frame_equal(pd.read_csv(ws / "submission.csv"), expected)
    assert res.stderr == ""  # -q after the command is honoured
    assert any(p.name.startswith("predict-") for p in (ws / "logs").iterdir())
    help_text = cli("predict", "--help").stdout
    assert "<workspace>/submission.csv" in " ".join(help_text.split())


def test_every_writing_command_logs_to_the_workspace(zoo, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(zoo / "ws", ws)
    shutil.rmtree(ws / "logs")
    assert main(["report", "--workspace", str(ws)]) == 0
    assert main(["bundle", "--workspace", str(ws), "--out", str(tmp_path / "b"), "--no-wheels"]) == 0
    assert sorted(p.name.split("-")[0] for p in (ws / "logs").iterdir()) == ["bundle", "report"]


def test_one_labelled_blend_score_in_status_report_and_run(zoo, fb3_dir, capsys):
    from fb3stack.report.gather import gather
    from fb3stack.status import collect

    ws = zoo / "ws"
    spec = json.loads((ws / "blends/b/spec.json").read_text())
    honest = spec["honest_mcrmse"]
    assert honest is not None
    blend = collect(ws, data_dir=fb3_dir)["blends"][0]
    assert blend["mcrmse"] == pytest.approx(honest) and blend["mcrmse_from"] == "selected-by-inner-CV"
    assert gather(ws, with_labels=False).blend.honest_score == pytest.approx(honest)
    assert main(["status", "--workspace", str(ws), "--data-dir", str(fb3_dir)]) == 0
    out = capsys.readouterr().out
    assert "honest MCRMSE" in out and f"{honest:.4f}" in out and "selected-by-inner-CV" in out
    assert f"honest MCRMSE {honest:.4f}" in (ws / "report.md").read_text()


def test_check_data_lists_every_bad_cell_and_says_what_it_did_not_check(fb3_dir, tmp_path):
    train = pd.read_csv(fb3_dir / "train.csv", dtype=str).head(60)
    bad = {(3, "cohesion"): "x", (7, "syntax"): "7", (10, "grammar"): "2.2", (12, "full_text"): " "}
    for (row, col), value in bad.items():
        train.loc[row, col] = value
    data = tmp_path / "data"
    data.mkdir()
    train.to_csv(data / "train.csv", index=False)
    res = cli("check-data", "--data-dir", str(data))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    listed = [line for line in res.stderr.splitlines() if line.startswith("  ")]
    assert len(listed) == 4
    for (row, col), _ in bad.items():
        assert any(f"row {row + 1} " in line and f"column '{col}'" in line for line in listed), res.stderr
    assert "test.csv: not checked" in res.stdout and "sample_submission.csv: not checked" in res.stdout
    # a file with many bad cells: the first MAX_LISTED, then how many more
    from fb3stack.data import MAX_LISTED

    train["vocabulary"] = "9"
    train.to_csv(data / "train.csv", index=False)
    res = cli("check-data", "--data-dir", str(data))
    assert "64 problem(s)" in res.stderr and f"... and {64 - MAX_LISTED} more" in res.stderr  # 60 + the 4 above


def test_outputs_get_the_umask_permissions_and_killed_writers_leftovers_go(tmp_path):
    from fb3stack.io import atomic_dir, write_text

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = os.uname().nodename
    leftovers = {"dead": tmp_path / f".out.{dead.pid}@{host}.abcd1234.tmp",
                 "older fb3stack": tmp_path / ".out.k2j3h4g5.tmp",
                 "live": tmp_path / f".out.{os.getpid()}@{host}.efgh5678.tmp",
                 "other host": tmp_path / f".out.{dead.pid}@elsewhere.ijkl9012.tmp"}
    for path in leftovers.values():
        path.mkdir()
    (tmp_path / f".sub.csv.{dead.pid}@{host}.mnop3456.tmp").write_text("half")
    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "x").write_text("x")
        write_text(tmp_path / "sub.csv", "a,b\n")
        assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
        assert (tmp_path / "sub.csv").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        write_text(tmp_path / "private.txt", "x")
        assert (tmp_path / "private.txt").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
    left = {p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")}
    assert left == {leftovers["live"].name, leftovers["other host"].name}


def test_bundle_is_portable_records_versions_and_is_never_written(zoo, fb3_dir, tmp_path):
    from fb3stack.submit.versions import RECORDED, library_versions

    bundle = tmp_path / "bundle"
    shutil.copytree(zoo / "bundle", bundle)
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["versions"] == library_versions() and set(meta["versions"]) == set(RECORDED)
    assert str(zoo) not in (bundle / "blend/spec.json").read_text()
    assert str(zoo) not in (bundle / "blend/config.yaml").read_text()
    assert "/kaggle/working/submission.csv" in (bundle / "README.md").read_text()
    assert "scikit-learn " in (bundle / "README.md").read_text()
    assert (zoo / "bundle").stat().st_mode & 0o077 == 0o055  # readable by a notebook running as another user
    for path in [bundle, *bundle.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)  # read-only, as an attached Kaggle dataset
    before = snapshot(bundle)
    work = tmp_path / "working"
    work.mkdir()
    env = {"TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    res = cli("predict", "--bundle", str(bundle), "--test", str(fb3_dir / "test.csv"), cwd=work, env=env)
    assert res.returncode == 0, res.stderr
    assert snapshot(bundle) == before
    assert list((tmp_path / "tmp").glob("fb3stack-*/predictions/*/*.npz"))  # the cache went to the temp folder
    pd.testing.assert_frame_equal(pd.read_csv(work / "submission.csv").sort_values("text_id", ignore_index=True),
                                  pd.read_csv(zoo / "ws/submission.csv").sort_values("text_id", ignore_index=True))
    # another minor version warns; another major version is refused before anything is predicted
    for path in [bundle, *bundle.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)
    versions = dict(meta["versions"])
    major, minor = versions["numpy"].split(".")[:2]
    meta["versions"] = {**versions, "numpy": f"{major}.{int(minor) + 1}.0"}
    (bundle / "bundle.json").write_text(json.dumps(meta))
    res = cli("predict", "--bundle", str(bundle), "--test", str(fb3_dir / "test.csv"), "--out",
              str(work / "minor.csv"), env=env)
    assert res.returncode == 0 and "predictions may differ slightly" in res.stderr
    meta["versions"] = {**versions, "scikit-learn": f"{int(versions['scikit-learn'].split('.')[0]) + 1}.0.0"}
    (bundle / "bundle.json").write_text(json.dumps(meta))
    res = cli("predict", "--bundle", str(bundle), "--test", str(fb3_dir / "test.csv"), "--out",
              str(work / "major.csv"), env=env)
    assert res.returncode == 2 and "other major versions" in res.stderr and "scikit-learn" in res.stderr
    assert not (work / "major.csv").exists() and "Traceback" not in res.stderr


def test_status_set_without_a_zoo_yaml_applies_to_run_config(zoo, fb3_dir, tmp_path):
    res = cli("status", "--workspace", str(zoo / "ws"), "--data-dir", str(fb3_dir), "--json", "--set",
              "members.tfidf-ridge.alpha=123")
    assert res.returncode == 0, res.stderr
    members = {m["member"]: m for m in json.loads(res.stdout)["members"]}
    assert members["tfidf-ridge"]["state"] == "stale"
    assert any("alpha: " in r and "-> 123" in r for r in members["tfidf-ridge"]["reasons"])
    assert members["features-lgbm"]["state"] == "done"
    bare = tmp_path / "bare"
    shutil.copytree(zoo / "ws", bare)
    (bare / "run_config.yaml").unlink()
    res = cli("status", "--workspace", str(bare), "--set", "members.tfidf-ridge.alpha=123")
    assert res.returncode == 2 and "no run_config.yaml to apply it to" in res.stderr


def test_status_json_into_a_closed_pipe_ends_quietly(zoo):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", CLI, "status", "--workspace", str(zoo / "ws"), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # as `| head` does once it has its lines
    err = proc.stderr.read().decode()
    proc.wait()
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_help_and_set_example_name_real_things():
    top = cli("--help").stdout
    assert "thin dispatcher" not in top and "check-data" in top
    run_help = " ".join(cli("run", "--help").stdout.split())
    example = run_help.split("members.", 1)[1].split(".", 1)[0]
    names = {yaml.safe_load(p.read_text())["name"] for p in (REPO / "configs/models").glob("*.yaml")}
    assert example in names


def test_report_md_shows_the_blend_table_as_report_html_does(zoo):
    md = (zoo / "ws/report.md").read_text()
    assert "nested_std" not in md  # one repeat of the members' folds: no spread, no column of zeros
    scores = {p.parent.name: json.loads(p.read_text())["mcrmse"] for p in (zoo / "ws/models").glob("*/metrics.json")}
    base = md.split("## Base layer", 1)[1].split("##", 1)[0]
    order = [line.split("|")[1].strip() for line in base.splitlines() if line.startswith("| ")][1:]
    assert order == sorted(scores, key=scores.get)  # best first, as report.html lists them
    methods = md.split("## Second layer", 1)[1]
    rows = [line.split("|") for line in methods.splitlines() if line.startswith("| ")][1:]  # header left out
    nested = [float(cells[4]) for cells in rows]
    assert nested == sorted(nested) and all(t in methods for t in TARGETS)  # best nested first, as in the html


def test_no_module_outside_the_cli_imports_from_it():
    for path in (REPO / "fb3stack").rglob("*.py"):
        if "cli" in path.relative_to(REPO / "fb3stack").parts or path.name == "__main__.py":  # the entry points
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("fb3stack.cli"), f"{path} imports {node.module}"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("fb3stack.cli") for a in node.names), path
