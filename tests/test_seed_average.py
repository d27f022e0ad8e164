"""Seed averages (`seeds: [...]` on a member): each seed trained on the shared folds as a single-seed member of its
own (models/<name>/seed<s>/), their mean the member's OOF and predictions, per-seed scores shown, a seed added later
trained alone, a damaged seed retrained. The member is a tiny features-lgbm (bagging and feature sampling, so its
seeds really differ) on 300 real essays."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from fb3stack.base.executors import run_local
from fb3stack.base.features_lgbm import FeaturesLGBMConfig, FeaturesLGBMMember
from fb3stack.base.runner import SavedMember, config_hash, resolve_members
from fb3stack.cli.main import main
from fb3stack.config import ConfigError, DataConfig, FoldsConfig, RunConfig, load_yaml, to_dict
from fb3stack.constants import ID_COL, TARGETS
from fb3stack.data import load_test
from fb3stack.io import read_json, sha256_json
from fb3stack.metrics import mcrmse
from fb3stack.status import collect
from fb3stack.workspace import CorruptArtefactError, read_manifest, verify_folder

N_ESSAYS, N_FOLDS = 300, 3
LGBM = {"name": "lgbm", "kind": "features-lgbm", "n_estimators": 20, "num_threads": 1}


def lgbm(**changes: object) -> FeaturesLGBMConfig:
    return FeaturesLGBMConfig(**{**LGBM, **changes})


@pytest.fixture(scope="module")
def zoo_run(fb3_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`fb3stack run` on a zoo with a 2-seed features-lgbm and a plain tfidf-ridge, blended; tests copy its
    workspace before changing anything."""
    root = tmp_path_factory.mktemp("seeds")
    zoo = {"name": "seeds", "workspace": str(root / "ws"), "data": {"limit": N_ESSAYS},
           "folds": {"n_folds": N_FOLDS, "seed": 0},
           "members": [{**LGBM, "seeds": [1, 2]}, {"name": "tfidf", "kind": "tfidf-ridge", "alpha": 2.0}],
           "blend": {"name": "b", "members": ["lgbm", "tfidf"],
                     "methods": [{"name": "mean", "kind": "mean"},
                                 {"name": "slsqp", "kind": "scipy", "params": {"method": "SLSQP"}}]}}
    (root / "zoo.yaml").write_text(yaml.safe_dump(zoo))
    assert main(["run", str(root / "zoo.yaml"), "--data-dir", str(fb3_dir)]) == 0
    return root


@pytest.fixture()
def prep(zoo_run: Path, fb3_dir: Path, tmp_path: Path):
    """A copy of the run's workspace, prepared as `train` prepares it."""
    from fb3stack.workspace import prepare

    shutil.copytree(zoo_run / "ws", tmp_path / "ws", symlinks=True)
    return prepare(RunConfig(workspace=str(tmp_path / "ws"), data=DataConfig(data_dir=str(fb3_dir), limit=N_ESSAYS),
                             folds=FoldsConfig(n_folds=N_FOLDS, seed=0)))


@pytest.fixture()
def fits(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(seed, fold) of every features-lgbm fold trained from here on."""
    done: list[tuple[int, int]] = []
    original = FeaturesLGBMMember.fit_fold

    def counting(self, train, valid, fold, fold_dir):  # noqa: ANN001, ANN202
        done.append((self.config.seed, fold))
        return original(self, train, valid, fold, fold_dir)

    monkeypatch.setattr(FeaturesLGBMMember, "fit_fold", counting)
    return done


def oof_values(model_dir: Path) -> np.ndarray:
    return pd.read_parquet(model_dir / "oof.parquet")[list(TARGETS)].to_numpy()


def seed_dir(ws_root: Path, seed: int) -> Path:
    return ws_root / "models" / "lgbm" / f"seed{seed}"


def test_member_oof_and_predictions_are_exactly_the_mean_of_its_seeds(zoo_run: Path, fb3_dir: Path) -> None:
    ws = zoo_run / "ws"
    model_dir = ws / "models" / "lgbm"
    seeds = [oof_values(seed_dir(ws, s)) for s in (1, 2)]
    assert not np.allclose(seeds[0], seeds[1], atol=1e-3)  # the seeds differ, so a mean is not any one of them
    assert np.array_equal(oof_values(model_dir), np.mean(seeds, axis=0))
    oof = pd.read_parquet(model_dir / "oof.parquet")
    for s in (1, 2):  # same essays, same folds, in the same order
        assert oof[[ID_COL, "fold"]].equals(pd.read_parquet(seed_dir(ws, s) / "oof.parquet")[[ID_COL, "fold"]])

    # what the blend was fitted on: the mean, under the member's content hash
    from fb3stack.blend.inputs import load_members, workspace_label_ids
    from fb3stack.data import load_train
    from fb3stack.workspace import Workspace

    labels = workspace_label_ids(Workspace(ws), load_train(fb3_dir / "train.csv"))
    blended = {m.name: m for m in load_members(["lgbm", "tfidf"], labels, Workspace(ws))}["lgbm"]
    mean_by_id = oof.set_index(ID_COL).loc[labels[ID_COL], list(TARGETS)].to_numpy()
    assert np.array_equal(blended.preds, mean_by_id)
    manifest = read_manifest(model_dir)
    assert blended.content_hash == manifest["content_hash"]
    assert read_manifest(ws / "blends" / "b")["member_hashes"]["lgbm"] == manifest["content_hash"]

    # what predict sees: the mean of each seed's own prediction (each seed: the mean of its folds)
    test = load_test(fb3_dir / "test.csv")
    saved = SavedMember.load(model_dir)
    assert saved.verify() == manifest["content_hash"]
    each = [SavedMember.load(seed_dir(ws, s)).predict(test) for s in (1, 2)]
    assert not np.allclose(each[0], each[1], atol=1e-4)
    np.testing.assert_allclose(saved.predict(test), np.mean(each, axis=0), rtol=0, atol=1e-12)
    assert len(saved.fold_dirs) == 2 * N_FOLDS


def test_bundle_carries_every_seed_and_predicts_as_the_workspace(zoo_run: Path, fb3_dir: Path, tmp_path: Path
                                                                 ) -> None:
    ws = zoo_run / "ws"
    out = tmp_path / "bundle"
    assert main(["bundle", "--workspace", str(ws), "--out", str(out), "--no-wheels"]) == 0
    for s in (1, 2):
        for k in range(N_FOLDS):
            assert not verify_folder(out / "models" / "lgbm" / f"seed{s}" / f"fold{k}", frozenset({"embeddings.npy"}))
        assert (out / "models" / "lgbm" / f"seed{s}" / "manifest.json").is_file()
    sub = tmp_path / "sub.csv"
    assert main(["predict", "--bundle", str(out), "--test", str(fb3_dir / "test.csv"), "--out", str(sub),
                 "--cache", str(tmp_path / "cache")]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(sub), pd.read_csv(ws / "submission.csv"))
    # the bundle's member predictions for the seed average: the mean of the workspace seeds'
    from fb3stack.submit.predict import PredictSources, member_predictions

    test = load_test(fb3_dir / "test.csv")
    got = member_predictions(PredictSources.from_bundle(out, tmp_path / "cache2"), ["lgbm"], test)[0]
    each = [SavedMember.load(seed_dir(ws, s)).predict(test) for s in (1, 2)]
    np.testing.assert_allclose(got, np.mean(each, axis=0), rtol=0, atol=1e-12)


def test_per_seed_scores_in_metrics_status_and_report(zoo_run: Path, fb3_dir: Path, capsys: pytest.CaptureFixture
                                                      ) -> None:
    ws = zoo_run / "ws"
    metrics = read_json(ws / "models" / "lgbm" / "metrics.json")
    seed_scores = {s: read_json(seed_dir(ws, s) / "metrics.json")["mcrmse"] for s in (1, 2)}
    assert {m["seed"]: m["mcrmse"] for m in metrics["seeds"]} == seed_scores
    truth = pd.read_csv(fb3_dir / "train.csv").set_index(ID_COL)
    oof = pd.read_parquet(ws / "models" / "lgbm" / "oof.parquet").set_index(ID_COL)
    assert metrics["mcrmse"] == pytest.approx(mcrmse(truth.loc[oof.index, list(TARGETS)].to_numpy(),
                                                     oof[list(TARGETS)].to_numpy()))
    assert len(metrics["folds"]) == N_FOLDS

    status = collect(ws, data_dir=fb3_dir)
    row = {r["member"]: r for r in status["members"]}["lgbm"]
    assert row["state"] == "done" and row["folds"] == ["done"] * N_FOLDS
    assert row["mcrmse"] == metrics["mcrmse"]
    assert {r["seed"]: (r["state"], r["mcrmse"]) for r in row["seeds"]} == {s: ("done", v)
                                                                             for s, v in seed_scores.items()}
    assert main(["status", "--workspace", str(ws), "--data-dir", str(fb3_dir)]) == 0
    printed = capsys.readouterr().out
    for s, score in seed_scores.items():
        line = next(x for x in printed.splitlines() if f"lgbm/seed{s}" in x)
        assert f"{score:.4f}" in line and "done" in line

    report = (ws / "report.md").read_text(encoding="utf-8")
    lgbm_line = next(x for x in report.splitlines() if x.startswith("| lgbm"))
    assert all(f"{s}: {v:.4f}" in lgbm_line for s, v in seed_scores.items())
    assert "1: " in (ws / "report.html").read_text(encoding="utf-8").split("seeds (MCRMSE each)", 1)[1][:4000]


def test_adding_a_seed_trains_only_that_seed_and_removing_one_drops_it(prep, fits: list) -> None:  # noqa: ANN001
    ws = prep.workspace.root
    before = {s: read_manifest(seed_dir(ws, s))["content_hash"] for s in (1, 2)}
    member_hash = read_manifest(ws / "models" / "lgbm")["content_hash"]

    run_local([lgbm(seeds=[1, 2])], prep)
    assert fits == []  # up to date

    run_local([lgbm(seeds=[1, 2, 3])], prep)
    assert fits == [(3, k) for k in range(N_FOLDS)]
    assert {s: read_manifest(seed_dir(ws, s))["content_hash"] for s in (1, 2)} == before  # reused, not retrained
    manifest = read_manifest(ws / "models" / "lgbm")
    assert manifest["seeds"] == [1, 2, 3] and manifest["content_hash"] != member_hash  # it covers the seed list
    assert np.array_equal(oof_values(ws / "models" / "lgbm"),
                          np.mean([oof_values(seed_dir(ws, s)) for s in (1, 2, 3)], axis=0))

    fits.clear()
    run_local([lgbm(seeds=[1, 3])], prep)
    assert fits == []
    assert np.array_equal(oof_values(ws / "models" / "lgbm"),
                          np.mean([oof_values(seed_dir(ws, s)) for s in (1, 3)], axis=0))
    assert len(SavedMember.load(ws / "models" / "lgbm").fold_dirs) == 2 * N_FOLDS  # seed 2 is not predicted
    status = collect(ws, RunConfig(workspace=str(ws), data=DataConfig(data_dir=str(prep.data_dir), limit=N_ESSAYS),
                                   folds=FoldsConfig(n_folds=N_FOLDS, seed=0), members=[{**LGBM, "seeds": [1, 3]}]))
    row = {r["member"]: r for r in status["members"]}["lgbm"]
    assert row["state"] == "done"
    assert [(r["member"], r["state"]) for r in row["seeds"]] == [("lgbm/seed1", "done"), ("lgbm/seed3", "done"),
                                                                  ("lgbm/seed2", "unused")]

    run_local([lgbm(seeds=[1, 2, 3])], prep)  # listed again: its folder is used again
    assert fits == []
    assert read_manifest(ws / "models" / "lgbm")["seed_hashes"] == [before[1], before[2],
                                                                     read_manifest(seed_dir(ws, 3))["content_hash"]]


def test_a_single_seed_member_is_kept_when_seeds_are_set_and_back(prep, fits: list) -> None:  # noqa: ANN001
    ws = prep.workspace.root
    seed1 = read_manifest(seed_dir(ws, 1))["content_hash"]
    # seeds -> seed: the seed's folder becomes the member (the average, with seed 2, archived), nothing trains
    run_local([lgbm(seed=1)], prep)
    assert fits == []
    manifest = read_manifest(ws / "models" / "lgbm")
    assert manifest["content_hash"] == seed1 and "seeds" not in manifest
    assert not (ws / "models" / "lgbm" / "seed2").exists() and list((ws / "models" / ".stale").iterdir())
    # a member without `seeds` is what it always was: no `seeds` in its files or in its config hash
    cfg = lgbm(seed=1)
    assert "seeds" not in load_yaml(ws / "models" / "lgbm" / "config.yaml")
    old_rule = {k: v for k, v in to_dict(cfg).items() if k not in type(cfg).execution_only}
    assert "seeds" not in old_rule and config_hash(cfg) == sha256_json(old_rule) == manifest["config_hash"]

    # seed -> seeds: the single-seed member becomes seed 1, only seed 2 trains
    run_local([lgbm(seeds=[1, 2])], prep)
    assert fits == [(2, k) for k in range(N_FOLDS)]
    assert read_manifest(seed_dir(ws, 1))["content_hash"] == seed1
    assert read_manifest(ws / "models" / "lgbm")["seeds"] == [1, 2]
    assert np.array_equal(oof_values(ws / "models" / "lgbm"),
                          np.mean([oof_values(seed_dir(ws, s)) for s in (1, 2)], axis=0))


def test_a_damaged_seed_is_retrained_not_used(prep, fits: list, fb3_dir: Path) -> None:  # noqa: ANN001
    ws = prep.workspace.root
    model_file = seed_dir(ws, 2) / "fold1" / "lgbm_grammar.txt"
    model_file.write_bytes(model_file.read_bytes()[:-200])  # truncated
    with pytest.raises(CorruptArtefactError, match="lgbm/seed2"):
        SavedMember.load(ws / "models" / "lgbm").verify()
    assert main(["predict", "--workspace", str(ws), "--test", str(fb3_dir / "test.csv"),
                 "--out", str(ws / "again.csv")]) == 2  # refused, never predicted from the damaged seed

    run_local([lgbm(seeds=[1, 2])], prep)
    assert fits == [(2, 1)]  # that seed's fold alone
    assert [p.name.startswith("lgbm-seed2-fold1-") for p in (ws / "models" / ".corrupt").iterdir()] == [True]
    assert not list((ws / "models" / "lgbm").glob(".*"))  # nothing set aside inside the member's folder
    SavedMember.load(ws / "models" / "lgbm").verify()

    fits.clear()  # a seed's oof.parquet altered: rebuilt from its folds, and the mean with it
    seed_oof = seed_dir(ws, 1) / "oof.parquet"
    altered = pd.read_parquet(seed_oof)
    altered[list(TARGETS)] += 0.5
    altered.to_parquet(seed_oof)
    run_local([lgbm(seeds=[1, 2])], prep)
    assert fits == []
    assert not np.array_equal(oof_values(seed_dir(ws, 1)), altered[list(TARGETS)].to_numpy())
    assert np.array_equal(oof_values(ws / "models" / "lgbm"),
                          np.mean([oof_values(seed_dir(ws, s)) for s in (1, 2)], axis=0))


@pytest.mark.parametrize(("member", "message"), [
    ({**LGBM, "seeds": []}, "one or more distinct seeds"),
    ({**LGBM, "seeds": [1, 1]}, "one or more distinct seeds"),
    ({**LGBM, "seeds": [1, "x"]}, r"member\.seeds: \[1, .x.\]"),
    ({**LGBM, "name": "a/b"}, "plain folder name"),
])
def test_bad_seed_lists_and_names_are_config_errors(member: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_members(RunConfig(members=[member]))


def test_a_seed_is_the_single_seed_member_with_that_seed() -> None:
    from fb3stack.base.runner import seed_members

    avg = lgbm(seeds=[5, 6])
    seeds = seed_members(avg)
    assert [(c.name, c.seed, c.seeds) for c in seeds] == [("lgbm/seed5", 5, None), ("lgbm/seed6", 6, None)]
    assert config_hash(seeds[0]) == config_hash(lgbm(seed=5))  # the same settings: the same hash
    assert config_hash(avg) == config_hash(lgbm(seeds=[7]))  # the seed list is left to the content hash
    assert config_hash(avg) != config_hash(lgbm(seeds=[5, 6], n_estimators=30))
    assert config_hash(avg) != config_hash(lgbm())
    assert seed_members(lgbm()) == [lgbm()]
    assert dataclasses.asdict(avg)["seeds"] == [5, 6] and to_dict(avg)["seeds"] == [5, 6]


def test_dry_run_counts_every_seeds_jobs(tmp_path: Path, fb3_dir: Path, capsys: pytest.CaptureFixture) -> None:
    zoo = {"name": "z", "workspace": str(tmp_path / "ws"), "data": {"data_dir": str(fb3_dir), "limit": 90},
           "folds": {"n_folds": N_FOLDS, "seed": 0},
           "members": [{**LGBM, "seeds": [1, 2]}, {"name": "tfidf", "kind": "tfidf-ridge"}]}
    (tmp_path / "zoo.yaml").write_text(yaml.safe_dump(zoo))
    assert main(["train", str(tmp_path / "zoo.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{2 * N_FOLDS + N_FOLDS} (member, fold) jobs" in out
    assert not (tmp_path / "ws").exists()
