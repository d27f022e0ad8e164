"""N-gram counts of essays, tokenised once and cached, from which each fold's TF-IDF is fitted exactly.

Tokenising (splitting an essay into its word and character n-grams) is the slow part of a TF-IDF fit and does
not depend on the fold: only which rows count (the vocabulary, document frequencies and IDF come from the
fold's training rows) does. `cached_counts` keeps, per analyser setting, the raw n-gram counts of every essay
seen so far (keyed by the text's SHA-1, over one growing vocabulary), so five folds and later runs in the
workspace tokenise each essay once. `fit_from_counts` then fits a real `TfidfVectorizer` from the training
rows' counts with scikit-learn's own vocabulary pruning and IDF code, giving the same vocabulary, IDF and
matrix as `fit_transform` on the texts (tests/test_cpu_members.py checks this).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer, TfidfVectorizer
from sklearn.preprocessing import normalize

from fb3stack.base.embeddings import text_keys
from fb3stack.io import atomic_path, sha256_json

logger = logging.getLogger(__name__)

COUNT_VERSION = "1"
STORE_FILE = "store.npz"
_PRUNING = ("min_df", "max_df", "max_features", "vocabulary", "dtype")  # fold-dependent or output-only


def analyser_params(vec: CountVectorizer) -> dict:
    """The settings that decide how a text becomes n-gram counts (not which n-grams a fold keeps)."""
    count_keys = CountVectorizer().get_params()
    return {k: v for k, v in vec.get_params().items() if k in count_keys and k not in _PRUNING}


def _pack_terms(terms: list[str]) -> np.ndarray:
    if any("\0" in t for t in terms):
        raise ValueError("an n-gram contains a NUL character; it cannot be stored")
    return np.frombuffer("\0".join(terms).encode("utf-8"), dtype=np.uint8)


def _unpack_terms(packed: np.ndarray) -> list[str]:
    return packed.tobytes().decode("utf-8").split("\0") if len(packed) else []


def cached_counts(texts: list[str], vec: CountVectorizer,
                  cache_dir: str | os.PathLike) -> tuple[sp.csr_matrix, dict[str, int]]:
    """(counts of `texts` over the store's vocabulary, term -> column), tokenising only texts not yet stored."""
    params = analyser_params(vec)
    store = Path(cache_dir) / f"v{COUNT_VERSION}-{sha256_json({k: str(v) for k, v in params.items()})[:16]}"
    keys = text_keys(texts)
    if (store / STORE_FILE).is_file():
        with np.load(store / STORE_FILE) as z:
            known_keys, terms = z["keys"], _unpack_terms(z["terms"])
            counts = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=(len(z["keys"]), len(terms)))
    else:
        known_keys, terms, counts = np.array([], dtype=keys.dtype), [], sp.csr_matrix((0, 0), dtype=np.int32)
    vocab = {t: i for i, t in enumerate(terms)}
    index = {k: i for i, k in enumerate(known_keys)}
    missing = sorted({k for k in keys if k not in index})
    if missing:
        first = {k: i for i, k in reversed(list(enumerate(keys)))}
        counter = CountVectorizer(**params, dtype=np.int32)
        new = counter.fit_transform([texts[first[k]] for k in missing]).tocsr()
        local_terms = counter.get_feature_names_out().tolist()
        for t in local_terms:
            if t not in vocab:
                vocab[t] = len(terms)
                terms.append(t)
        remap = np.array([vocab[t] for t in local_terms], dtype=np.int64)
        new = sp.csr_matrix((new.data, remap[new.indices], new.indptr), shape=(new.shape[0], len(terms)))
        counts.resize((counts.shape[0], len(terms)))
        counts = sp.vstack([counts, new]).tocsr()
        known_keys = np.concatenate([known_keys, np.array(missing)])
        index = {k: i for i, k in enumerate(known_keys)}
        # one atomically replaced file: keys, vocabulary and rows never out of step
        with atomic_path(store / STORE_FILE) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, keys=known_keys, terms=_pack_terms(terms), data=counts.data, indices=counts.indices,
                     indptr=counts.indptr)
        logger.info("tokenised %d new texts (%s %s); %d cached, vocabulary %d", len(missing), params["analyzer"],
                    params["ngram_range"], len(keys) - len(missing), len(terms))
    return counts[[index[k] for k in keys]], vocab


def fit_from_counts(vec: TfidfVectorizer, counts: sp.csr_matrix, vocab: dict[str, int]) -> sp.csr_matrix:
    """Fit `vec` (unfitted) on documents given as raw counts over `vocab`; returns their TF-IDF matrix, as
    `vec.fit_transform(texts)` would. Uses scikit-learn's own feature sorting/pruning and IDF code."""
    vec._validate_vocabulary()
    vec._check_params()
    x = counts.astype(vec.dtype).tocsr()
    if vec.binary:
        x.data.fill(1)
    n_doc = x.shape[0]
    max_doc = vec.max_df if isinstance(vec.max_df, int) else vec.max_df * n_doc
    min_doc = vec.min_df if isinstance(vec.min_df, int) else vec.min_df * n_doc
    vocabulary = dict(vocab)
    # sklearn builds its vocabulary from the training texts alone; terms absent from them have document
    # frequency 0 and are pruned below (min_df >= 1), and sorting first keeps the max_features tie order
    if min_doc < 1:
        raise ValueError("fit_from_counts needs min_df >= 1 document (terms of other rows must be pruned)")
    x = vec._sort_features(x, vocabulary)
    x = vec._limit_features(x, vocabulary, max_doc, min_doc, vec.max_features)
    vec.vocabulary_ = vocabulary
    vec._tfidf = TfidfTransformer(norm=vec.norm, use_idf=vec.use_idf, smooth_idf=vec.smooth_idf,
                                  sublinear_tf=vec.sublinear_tf)
    vec._tfidf.fit(x)
    return sp.csr_matrix(vec._tfidf.transform(x, copy=False))


def transform_from_counts(vec: TfidfVectorizer, counts: sp.csr_matrix, vocab: dict[str, int]) -> sp.csr_matrix:
    """`vec.transform(texts)` for documents given as raw counts over `vocab`, which must hold every term of
    vec's vocabulary (a column per term; extra columns are ignored)."""
    terms = sorted(vec.vocabulary_, key=vec.vocabulary_.get)  # vec's column order
    try:
        cols = np.array([vocab[t] for t in terms], dtype=np.int64)
    except KeyError as err:
        raise ValueError(f"the counts have no column for the fitted term {err.args[0]!r}") from err
    x = counts.tocsc()[:, cols].tocsr().astype(np.float64)
    if vec.binary:
        x.data.fill(1)
    if vec.sublinear_tf:
        x.data = np.log(x.data) + 1.0
    if vec.use_idf:
        x = x @ sp.diags(vec.idf_)
    if vec.norm:
        x = normalize(x, norm=vec.norm, copy=False)
    return sp.csr_matrix(x.astype(vec.dtype))
