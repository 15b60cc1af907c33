"""Warm start: the topics of a history file as the initial state of the online clusterer.

``topicstream bootstrap --dataset HISTORY`` reads a file of past documents (last week's), encodes
them with the configured encoder (and reducer), clusters them in one batch with DEC
(:mod:`stream.clustering.dec`: an autoencoder of the embeddings trained here, k-means on its
codes, then DEC's refinement), and writes the clusters into the model's store as if the
online k-means had streamed the history and found them: one centroid per DEC cluster, its
vector sum and weight decayed to the end of the history on the clusterer's clock, plus a
topic card per cluster (keywords, exemplars) built by the same tracker the worker uses. A
new deployment then starts with the topics of the past instead of from nothing, and labels
its first documents with them.

How many clusters
-----------------
DEC needs ``k``. Unless given (``--k``), it is the number of clusters of 5 or more documents
that the online clusterer itself (same encoder, threshold and settings) finds when it streams
the history: a rule that reads no labels.

What is written
---------------
A document whose cosine to its DEC cluster's centroid is below the clusterer's join
``threshold`` is left out of that cluster (the online clusterer would not have put it there;
:func:`prune_members`). Cluster ids ``0 .. k-1`` (empty DEC clusters dropped), ``n_docs`` = the history's documents,
``next_id`` past the last id; the offsets of the model are left as they are (the history is
not the input topic). Like ``state import``, it refuses a model that already has state
unless ``force``. Only the ``kmeans`` clusterer takes a bootstrap: DenStream's micro-clusters
have radii that a batch clustering does not give.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stream.batcher import InputRules, decode_batch
from stream.clustering.base import Clusterer, ClusterState, decay_factor, sum_rows_by
from stream.clustering.dec import DecResult, fit_dec
from stream.contracts import Document
from stream.source import FileSource
from stream.topics import TopicParams, TopicState, TopicTracker

log = logging.getLogger(__name__)

MIN_SIZE = 5  # documents a cluster of the online pass needs to count toward k


@dataclass
class History:
    """The valid documents of a history file, in file order, and how many lines were bad."""

    docs: list[Document]
    bad: int


def read_history(path: str | Path, rules: InputRules, limit: int | None = None) -> History:
    """Decode a JSONL or CSV file as the worker decodes its input (same rules); bad records
    are counted and skipped."""
    source = FileSource(path)
    docs: list[Document] = []
    bad = 0
    try:
        while not source.exhausted and (limit is None or len(docs) < limit):
            good, wrong = decode_batch(source.poll(0, 1024), rules)
            docs.extend(good)
            bad += len(wrong)
    finally:
        source.close()
    return History(docs[:limit] if limit else docs, bad)


def online_k(clusterer: Clusterer, X: np.ndarray, batch_size: int,
             min_size: int = MIN_SIZE) -> int:
    """The number of clusters of ``min_size`` or more documents that ``clusterer`` finds when
    it streams ``X`` (ids followed through its announced merges): DEC's ``k`` by default."""
    from stream.bench import run_clusterer
    from stream.evaluate import follow_merges

    preds, merges, _ = run_clusterer(clusterer, X, batch_size)
    sizes = np.unique(np.asarray(follow_merges(preds, merges)), return_counts=True)[1]
    return max(1, int(np.sum(sizes >= min_size)))


def autoencoder_net(X: np.ndarray, code_dim: int, minutes: float, seed: int,
                    progress: bool = False) -> Any:
    """Train an autoencoder on ``X`` (:mod:`encoders.reducer`, not saved) and return its
    encoder network, the ``f`` that DEC refines."""
    import torch

    from encoders.reducer import train_reducer

    result = train_reducer("ae", X, None, code_dim=min(code_dim, X.shape[1]), minutes=minutes,
                           seed=seed, progress=progress, device="cpu")
    model = result.model
    return torch.nn.Sequential(copy.deepcopy(model.encoder), copy.deepcopy(model.mu))


def fit_history(X: np.ndarray, k: int, *, code_dim: int = 64, ae_minutes: float = 1.0,
                dec_minutes: float = 1.0, seed: int = 0, progress: bool = False) -> DecResult:
    """Autoencoder, then DEC with ``k`` clusters, on the history's embeddings ``X``."""
    import torch

    torch.manual_seed(seed)
    net = autoencoder_net(X, code_dim, ae_minutes, seed, progress)
    return fit_dec(X, net, k, minutes=dec_minutes, seed=seed)


def clusters_from_labels(X: np.ndarray, labels: np.ndarray, half_life: float | None
                         ) -> tuple[ClusterState, np.ndarray]:
    """The k-means state the online clusterer would hold had it put document ``i`` of ``X``
    (stream time ``i + 1``) in cluster ``labels[i]``: per cluster, the decayed vector sum and
    weight as of the end (time ``n``), the documents, and the time of its first document.
    Ids are ``0 .. k-1`` in order of first appearance; empty labels are dropped, and a
    document labelled ``-1`` is in no cluster (it only counts toward ``n_docs``). Returns the
    state and each document's row in it (-1 for none)."""
    n = len(X)
    labels = np.asarray(labels, np.int64)
    kept = np.flatnonzero(labels >= 0)
    uniq, first = np.unique(labels[kept], return_index=True)
    first = kept[first]
    order = np.argsort(first, kind="stable")  # ids in order of first appearance
    remap = np.full(int(uniq.max()) + 1 if len(uniq) else 0, -1, np.int64)
    remap[uniq[order]] = np.arange(len(uniq))
    rows = np.full(n, -1, np.int64)
    rows[kept] = remap[labels[kept]]
    k = len(uniq)
    w = decay_factor(n - np.arange(1, n + 1, dtype=np.float64), half_life)[kept]
    # every row 0..k-1 has a member, so sum_rows_by's unique labels are exactly 0..k-1
    _, sums, counts = sum_rows_by(rows[kept], X[kept] * w[:, None].astype(np.float32))
    weights = np.bincount(rows[kept], weights=w, minlength=k)
    ids = np.arange(k, dtype=np.int64)
    state = ClusterState(
        dim=int(X.shape[1]), ids=ids, sums=sums, weights=weights,
        counts=counts.astype(np.int64), last_t=np.full(k, float(n)),
        created_t=(first[order] + 1).astype(np.float64), labels=ids.copy(), n_docs=n,
        next_id=k)
    return state, rows


def prune_members(X: np.ndarray, labels: np.ndarray, threshold: float) -> np.ndarray:
    """``labels`` with ``-1`` for every document whose cosine to its cluster's centroid is
    below ``threshold``: the online clusterer would not have put it there (it opens a
    cluster below its join threshold), and a batch clustering that must place every
    document drags the centroids toward such outliers. Centroids are computed once, from
    all members."""
    labels = np.asarray(labels, np.int64)
    uniq, sums, _ = sum_rows_by(labels, X)
    cent = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    sims = np.einsum("ij,ij->i", X, cent[np.searchsorted(uniq, labels)])
    return np.where(sims >= threshold, labels, -1)


def topic_cards(docs: Sequence[Document], X: np.ndarray, state: ClusterState,
                rows: np.ndarray, params: TopicParams, batch_size: int = 256) -> TopicState:
    """Topic cards of the bootstrapped clusters: the worker's :class:`TopicTracker` fed the
    history batch by batch with the clusters' ids and each document's cosine to its
    centroid (no emerging alerts are published: nothing listens yet)."""
    centroids = state.sums / np.maximum(np.linalg.norm(state.sums, axis=1, keepdims=True), 1e-12)
    tracker = TopicTracker(params)
    for s in range(0, len(docs), batch_size):
        part = np.arange(s, min(s + batch_size, len(docs)))
        part = part[rows[part] >= 0]
        if not len(part):
            continue
        sims = np.einsum("ij,ij->i", X[part], centroids[rows[part]]).astype(np.float32)
        picked = [docs[i] for i in part.tolist()]
        tracker.learn([d.tokens for d in picked], [d.id for d in picked],
                      [d.text for d in picked], np.array([d.ts for d in picked]),
                      state.ids[rows[part]], sims, t=float(min(s + batch_size, len(docs))))
    return tracker.state


@dataclass
class Bootstrap:
    """A bootstrapped model, ready for :func:`stream.state.export.import_store`."""

    state: ClusterState
    topics: TopicState
    k: int
    dec: DecResult
    seconds: float


def bootstrap(docs: Sequence[Document], X: np.ndarray, k: int, *, half_life: float | None,
              threshold: float, params: TopicParams, code_dim: int = 64,
              ae_minutes: float = 1.0, dec_minutes: float = 1.0, seed: int = 0,
              progress: bool = False) -> Bootstrap:
    """DEC on the history's embeddings, members below the clusterer's join ``threshold`` to
    their centroid left out (:func:`prune_members`), then the clusterer state and topic
    cards it implies."""
    t0 = time.monotonic()
    dec = fit_history(X, k, code_dim=code_dim, ae_minutes=ae_minutes, dec_minutes=dec_minutes,
                      seed=seed, progress=progress)
    state, rows = clusters_from_labels(X, prune_members(X, dec.labels, threshold), half_life)
    topics = topic_cards(docs, X, state, rows, params)
    return Bootstrap(state, topics, len(state), dec, time.monotonic() - t0)


__all__ = ["Bootstrap", "History", "bootstrap", "clusters_from_labels", "fit_history",
           "online_k", "prune_members", "read_history", "topic_cards"]
