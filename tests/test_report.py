"""report.html: self-contained (figures embedded, no outside address), every applicable figure, honest row marked."""

from __future__ import annotations

import base64
import json
import re
import shutil
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from length_member import LengthRidgeConfig

from fb3stack.base.executors import run_local
from fb3stack.blend.config import BlendConfig, MethodConfig
from fb3stack.blend.run import run_blend
from fb3stack.cli.main import main
from fb3stack.config import DataConfig, FoldsConfig, RunConfig
from fb3stack.report.gather import explain_blend, gather
from fb3stack.submit.report import write_report
from fb3stack.workspace import Workspace, prepare

PNG = b"\x89PNG\r\n\x1a\n"


class Parsed(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[dict] = []
        self.links: list[str] = []
        self.sections: list[str] = []
        self.highlighted: list[str] = []
        self._in_hl = False
        self._first_cell = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append({**a, "section": self.sections[-1] if self.sections else None})
        for key in ("href", "src", "action"):
            if key in a and tag != "img":
                self.links.append(a[key])
        if tag == "section":
            self.sections.append(a["id"])
        if tag == "tr":
            self._in_hl, self._first_cell = a.get("class") == "hl", True

    def handle_data(self, data):
        if self._in_hl and self._first_cell and data.strip():
            self.highlighted.append(data.strip())
            self._first_cell = False


def parse(path) -> tuple[str, Parsed]:
    text = path.read_text(encoding="utf-8")
    p = Parsed()
    p.feed(text)
    return text, p


def assert_self_contained(text: str, p: Parsed) -> None:
    assert p.imgs, "no figure"
    for im in p.imgs:
        assert im["src"].startswith("data:image/png;base64,"), im["src"][:40]
        assert base64.b64decode(im["src"].split(",", 1)[1]).startswith(PNG)
        assert im.get("alt")
    assert all(link.startswith("#") for link in p.links), p.links
    # nothing that a browser would fetch: no scheme, no protocol-relative address, no CSS url()
    assert not re.search(r"https?:|ftp:|src=[\"']//|url\(|@import", text)


def _history(steps: int) -> pd.DataFrame:
    s = np.arange(1, steps + 1)
    return pd.DataFrame({"step": s * 10, "epoch": s / 2, "train_loss": 1 / s, "valid_mcrmse": 0.6 - 0.01 * s,
                         "lr": 1e-4 / s, "grad_norm": 1.0, "best": True, "seconds": s * 3.0})


@pytest.fixture(scope="module")
def ws(fb3_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("report") / "ws"
    cfg = RunConfig(workspace=str(root), data=DataConfig(data_dir=str(fb3_dir), limit=300),
                    folds=FoldsConfig(n_folds=3, seed=0))
    prep = prepare(cfg)
    for name, alpha in (("len-a", 1.0), ("len-b", 300.0)):
        run_local([LengthRidgeConfig(name=name, kind="length-ridge", alpha=alpha)], prep)
    blend = BlendConfig(name="b", members=["len-a", "len-b"],
                        methods=[MethodConfig("mean", "mean"), MethodConfig("slsqp", "scipy", {"method": "SLSQP"})])
    run_blend(blend, root, fb3_dir)
    return prep.workspace


def test_report_html_is_self_contained_with_every_figure(ws, fb3_dir):
    md = write_report(ws, ws.blend_dir("b"), None, {"train": 3.0, "total": 75.0}, data_dir=fb3_dir)
    text, p = parse(md.with_suffix(".html"))
    assert_self_contained(text, p)
    by_section = {}
    for im in p.imgs:
        by_section.setdefault(im["section"], []).append(im["alt"])
    assert by_section == {
        "members": ["member leaderboard"], "diversity": ["member correlation heatmaps"], "blend": ["blend weights"],
        "methods": ["blend methods", "gain intervals", "leave one member out"],
        "errors": ["residuals against true score", "residuals against essay length"],
        "distributions": ["score distributions"],
    }
    assert text.count('class="guide"') == len(p.imgs)  # a reading guide per figure
    assert "No member wrote a history.csv" in text  # the CPU members have no training curves, and it says so
    headline = re.search(r'<div class="headline">(.*?)</div>', text).group(1)
    best = min(("len-a", "len-b"), key=lambda n: json.loads((ws.model_dir(n) / "metrics.json").read_text())["mcrmse"])
    assert "honest MCRMSE" in headline and f"best member {best}" in headline and "wall time 1 min 15 s" in headline
    assert "report.html" in md.read_text()


def test_training_curves_and_selected_by_inner_cv_row(ws, fb3_dir, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(ws.root, root)
    for k in range(3):
        _history(6 + k).to_csv(root / "models" / "len-a" / f"fold{k}" / "history.csv", index=False)
    table = pd.read_csv(root / "blends" / "b" / "table.csv").set_index("name")
    spec = json.loads((root / "blends" / "b" / "spec.json").read_text())
    assert main(["report", "--workspace", str(root), "--data-dir", str(fb3_dir)]) == 0
    text, p = parse(root / "report.html")
    assert_self_contained(text, p)
    assert [im["alt"] for im in p.imgs if im["section"] == "training"] == ["training curves of len-a"]
    data = gather(root, fb3_dir)
    # the blend's own selected-by-inner-CV row (the choice of method scored by the outer CV) is the headline
    honest = table.loc["selected-by-inner-CV", "nested"]
    assert (data.blend.honest_name, data.blend.honest_score) == ("selected-by-inner-CV", pytest.approx(honest))
    assert spec["honest_mcrmse"] == pytest.approx(honest)
    assert "selected-by-inner-CV" in p.highlighted and data.blend.chosen in p.highlighted
    assert f"honest MCRMSE {honest:.4f}" in text


def test_report_without_labels_still_written_with_a_note(ws, tmp_path, monkeypatch):
    root = tmp_path / "ws"
    shutil.copytree(ws.root, root)
    (root / "run_config.yaml").unlink(missing_ok=True)
    monkeypatch.delenv("FB3STACK_DATA", raising=False)
    assert main(["report", "--workspace", str(root)]) == 0
    text, p = parse(root / "report.html")
    assert_self_contained(text, p)
    assert "labels not available" in text
    assert not [im for im in p.imgs if im["section"] in ("errors", "distributions")]


@pytest.mark.parametrize("kind, params, title", [
    ("ridge", {"alpha": 10.0}, "ridge coefficients"),
    ("lgbm", {"n_estimators": 10, "min_child_samples": 10}, "share of splits"),
])
def test_stacker_explanations(ws, fb3_dir, tmp_path, kind, params, title, monkeypatch):
    root = tmp_path / "ws"
    shutil.copytree(ws.root, root)
    # the stacker is the only candidate, so it is saved even where one length member alone would score better
    monkeypatch.setattr("fb3stack.blend.run.candidate_specs", lambda cfg, n_members: list(cfg.methods))
    run_blend(BlendConfig(name="s", members=["len-a", "len-b"], methods=[MethodConfig("st", kind, params)]), root,
              fb3_dir)
    spec = pd.read_json(root / "blends" / "s" / "spec.json", typ="series").to_dict()
    what, df = explain_blend(root / "blends" / "s", spec)
    assert title in what and list(df.columns) == ["cohesion", "syntax", "vocabulary", "phraseology", "grammar",
                                                  "conventions"]
    if kind == "ridge":
        assert list(df.index) == ["len-a", "len-b"] and np.isfinite(df.to_numpy()).all()
    else:
        np.testing.assert_allclose(df.sum(axis=0).to_numpy(), 1.0)
    assert Workspace(root).blend_dir("s").is_dir()
