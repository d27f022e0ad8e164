"""Hand-made text features of an essay, for the gradient-boosting member; computed once per text and cached.

Features are per essay and label-free, so computing them for every essay up front leaks nothing across
folds. Groups: lengths, sentence and paragraph statistics, lexical diversity (TTR, root TTR, MTLD),
readability (textstat), punctuation and capitalisation habits, and spelling errors (pyspellchecker's
word-frequency dictionary). The cache store is keyed by the text's SHA-1 and FEATURE_VERSION, so editing the
feature code (and bumping the version) never reuses stale columns.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from fb3stack.io import load_npz_checked, save_npz_checked

logger = logging.getLogger(__name__)

FEATURE_VERSION = "1"
STORE_FILE = "store.npz"
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")
_PUNCT = {"comma": ",", "period": ".", "question": "?", "exclaim": "!", "apostrophe": "'", "quote": '"',
          "semicolon": ";", "colon": ":", "dash": "-", "paren": "("}


@functools.lru_cache(maxsize=1)
def _textstat():  # noqa: ANN202 - the textstat module, set up for offline use
    """textstat counts syllables with nltk's CMU dictionary, which it downloads on first use; offline we fall
    back to its own pyphen hyphenation (textstat's path for words missing from the dictionary)."""
    import nltk
    import textstat
    from textstat.backend.counts import _count_syllables

    try:
        nltk.data.find("corpora/cmudict")
    except LookupError:
        _count_syllables.get_cmudict = lambda lang: None
    textstat.set_lang("en_US")
    return textstat


@functools.lru_cache(maxsize=1)
def _spell():  # noqa: ANN202 - a pyspellchecker English dictionary
    from spellchecker import SpellChecker

    return SpellChecker(language="en")


def mtld(tokens: list[str], threshold: float = 0.72) -> float:
    """Measure of Textual Lexical Diversity (McCarthy & Jarvis 2010): mean of forward and backward passes."""
    def one_pass(seq: list[str]) -> float:
        factors, types, count = 0.0, set(), 0
        for tok in seq:
            types.add(tok)
            count += 1
            if len(types) / count <= threshold:
                factors, types, count = factors + 1, set(), 0
        if count:
            factors += (1 - len(types) / count) / (1 - threshold)
        return len(seq) / factors if factors else float(len(seq))
    if not tokens:
        return 0.0
    return (one_pass(tokens) + one_pass(tokens[::-1])) / 2


def _essay_features(text: str, misspelt: set[str]) -> dict[str, float]:
    ts = _textstat()
    words = _WORD.findall(text)
    lower = [w.lower() for w in words]
    n_words = max(len(words), 1)
    sentences = [s for s in _SENT_SPLIT.split(text.strip()) if _WORD.search(s)]
    sent_len = np.array([len(_WORD.findall(s)) for s in sentences] or [0])
    paragraphs = [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    word_len = np.array([len(w) for w in words] or [0])
    n_chars = max(len(text), 1)
    feats = {
        "n_chars": len(text), "n_words": len(words), "n_unique_words": len(set(lower)),
        "n_sentences": len(sentences), "n_paragraphs": len(paragraphs),
        "sent_len_mean": sent_len.mean(), "sent_len_std": sent_len.std(), "sent_len_max": sent_len.max(),
        "words_per_paragraph": len(words) / max(len(paragraphs), 1),
        "word_len_mean": word_len.mean(), "word_len_std": word_len.std(),
        "long_word_ratio": float((word_len >= 7).mean()),
        "ttr": len(set(lower)) / n_words, "root_ttr": len(set(lower)) / np.sqrt(n_words), "mtld": mtld(lower),
        "flesch_reading_ease": ts.flesch_reading_ease(text), "flesch_kincaid_grade": ts.flesch_kincaid_grade(text),
        "gunning_fog": ts.gunning_fog(text), "coleman_liau": ts.coleman_liau_index(text),
        "automated_readability": ts.automated_readability_index(text),
        "dale_chall": ts.dale_chall_readability_score(text),
        "difficult_word_ratio": ts.difficult_words(text) / n_words,
        "syllables_per_word": ts.syllable_count(text) / n_words,
        "upper_char_ratio": sum(c.isupper() for c in text) / n_chars,
        "lower_sentence_start_ratio": float(np.mean([s.lstrip()[:1].islower() for s in sentences] or [0])),
        "lowercase_i_ratio": words.count("i") / n_words,
        "all_caps_word_ratio": sum(w.isupper() and len(w) > 1 for w in words) / n_words,
        "space_before_punct": len(re.findall(r"\s[,.!?;:]", text)) / n_words,
        "no_space_after_punct": len(re.findall(r"[,.!?;:][A-Za-z]", text)) / n_words,
        "double_space": text.count("  ") / n_words,
        "misspelt_ratio": sum(w in misspelt for w in lower) / n_words,
        "misspelt_unique_ratio": len(set(lower) & misspelt) / max(len(set(lower)), 1),
    }
    for name, char in _PUNCT.items():
        feats[f"punct_{name}"] = text.count(char) / n_words
    return feats


def compute_features(texts: list[str]) -> pd.DataFrame:
    """One row of float features per text, in the given order (no caching)."""
    from fb3stack.progress import progress as tqdm

    vocab = {w.lower() for t in texts for w in _WORD.findall(t)}
    # one dictionary lookup over the union of words is far cheaper than one per essay
    misspelt = {w for w in _spell().unknown(vocab) if len(w) > 1}
    rows = [_essay_features(t, misspelt) for t in tqdm(texts, desc="text features", leave=False)]
    return pd.DataFrame(rows, dtype=np.float64)


def text_features(texts: list[str], cache_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Features of `texts`, reading known texts from the cache store and computing only the new ones.

    Note: the misspelling set is built from the words of the texts being computed, but whether a word is
    misspelt is a dictionary lookup of that word alone, so a cached row does not depend on its batch.
    """
    if cache_dir is None:
        return compute_features(list(texts))
    store = Path(cache_dir) / f"v{FEATURE_VERSION}"
    keys = np.array([hashlib.sha1(t.encode("utf-8")).hexdigest() for t in texts])
    z = load_npz_checked(store / STORE_FILE)  # None when absent or damaged: recomputed, never half-used
    if z is not None:
        known_keys, known, columns = z["keys"], z["values"], z["columns"].tolist()
    else:
        known_keys, known, columns = np.array([], dtype=keys.dtype), None, None
    index = {k: i for i, k in enumerate(known_keys)}
    missing = sorted({k for k in keys if k not in index})
    if missing:
        first = {k: i for i, k in reversed(list(enumerate(keys)))}
        new = compute_features([texts[first[k]] for k in missing])
        columns = list(new.columns)
        known = new.to_numpy() if known is None else np.concatenate([known, new.to_numpy()])
        known_keys = np.concatenate([known_keys, np.array(missing)])
        index = {k: i for i, k in enumerate(known_keys)}
        # one atomically replaced file, so parallel fold jobs never leave keys and rows out of step
        save_npz_checked(store / STORE_FILE, keys=known_keys, values=known, columns=np.array(columns))
        logger.info("computed text features for %d new texts; %d cached", len(missing), len(keys) - len(missing))
    return pd.DataFrame(known[[index[k] for k in keys]], columns=columns)
