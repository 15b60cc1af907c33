"""Hashing encoder: word and bigram feature hashing with online IDF, no weights."""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import numpy as np

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)?", re.UNICODE)


class HashingEncoder:
    """Feature hashing of words and word bigrams, weighted by an online IDF, projected to a
    dense L2-normalised vector.

    Each term is hashed once with CRC-32 (stable across processes and machines: never use
    Python's ``hash()``, which is salted per process). The low bits pick one of
    ``n_features`` buckets whose document frequencies give the IDF; other bits pick the output
    dimension and a sign, so that inner products are preserved in expectation (the hashing
    trick of Weinberger et al., ICML 2009). Term frequencies are sublinear (``1 + log tf``).

    Parameters
    ----------
    dim
        Output dimension.
    n_features
        Buckets for document-frequency counting (a power of two).
    bigrams
        Also hash adjacent word pairs.
    idf
        Weight terms by the online IDF; without it the encoding of a text never changes,
        whatever was seen before (the same on every worker).

    Notes
    -----
    The IDF is learnt from the stream as it is encoded, so the same text can be encoded a
    little differently early and late in a stream, and by two workers that have seen
    different documents. That is the price of needing no fitted vocabulary.

    Examples
    --------
    >>> enc = HashingEncoder(dim=64)
    >>> X = enc.encode(["rover finds ice on mars", "ice found on mars by rover", "port strike"])
    >>> X.shape, X.dtype
    ((3, 64), dtype('float32'))
    >>> bool(X[0] @ X[1] > X[0] @ X[2])
    True
    """

    def __init__(self, dim: int = 1024, n_features: int = 1 << 20, bigrams: bool = True,
                 idf: bool = True) -> None:
        if dim < 2:
            raise ValueError(f"dim={dim} should be >= 2")
        if n_features < 2 or n_features & (n_features - 1):
            raise ValueError(f"n_features={n_features} should be a power of two >= 2")
        self.dim = dim
        self.n_features = n_features
        self.bigrams = bigrams
        self.idf = idf
        self.name = f"hashing-{dim}" if idf else f"hashing-tf-{dim}"
        self.default_threshold = 0.15  # cosine to join a cluster, chosen on news.jsonl
        self.df = np.zeros(n_features, dtype=np.float64)
        self.n_docs = 0
        self.device = "cpu"
        self.tokens_seen = 0

    def _hash_terms(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        hashes: list[int] = []
        doc_index: list[int] = []
        crc = zlib.crc32
        for i, text in enumerate(texts):
            words = _WORD.findall(text.lower())
            terms = words
            if self.bigrams:
                terms = words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]
            hashes.extend(crc(t.encode("utf-8")) for t in terms)
            doc_index.extend([i] * len(terms))
        return np.asarray(hashes, dtype=np.uint64), np.asarray(doc_index, dtype=np.int64)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        n = len(texts)
        out = np.zeros((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        h, doc = self._hash_terms(texts)
        self.tokens_seen += int(h.size)
        if h.size:
            feature = (h & np.uint64(self.n_features - 1)).astype(np.int64)
            # term frequency per (document, feature)
            pair = doc * self.n_features + feature
            uniq, tf = np.unique(pair, return_counts=True)
            udoc, ufeat = uniq // self.n_features, uniq % self.n_features
            weight = 1.0 + np.log(tf)
            if self.idf:  # online IDF: this batch counts as seen
                np.add.at(self.df, ufeat, 1.0)
                self.n_docs += n
                weight = weight * (np.log((1.0 + self.n_docs) / (1.0 + self.df[ufeat])) + 1.0)
            # independent bits of the feature pick the output slot and the sign
            mixed = (ufeat.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)
            slot = (mixed % np.uint64(self.dim)).astype(np.int64)
            sign = 1.0 - 2.0 * ((mixed >> np.uint64(31)) & np.uint64(1)).astype(np.float64)
            flat = np.bincount(udoc * self.dim + slot, weights=sign * weight, minlength=n * self.dim)
            out[:] = flat.reshape(n, self.dim)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        empty = norms[:, 0] == 0
        if empty.any():  # a text with no word characters: a fixed unit vector, not NaN
            out[empty, 0] = 1.0
            norms[empty] = 1.0
        out /= norms
        return out
