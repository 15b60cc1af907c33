"""Macro topics: the clusters of a model grouped into a bounded number of broader topics.

A model holds hundreds or thousands of clusters; a reader wants a dozen headings. This
module groups the public clusters hierarchically, from the stored state alone:

1. Each public cluster (all rows carrying its label: one row for k-means, several
   micro-clusters for DenStream) gets a unit centroid (the sum of its rows' vector sums,
   decayed to the stream clock) and a weight (its decayed weight).
2. The ``max_leaves`` heaviest clusters are merged bottom-up by *weighted Ward linkage* on
   their centroids (:func:`agglomerate`: the merge that adds least to the weighted
   within-group sum of squares) down to ``max_macro_topics`` groups. Average linkage, with
   a ``max_distance`` at which merging stops, is the alternative; on news embeddings it
   chains into one group holding most clusters.
3. Every other (lighter) cluster joins the group of the leaf whose centroid is most similar
   to its own. Bounding the leaves keeps the cost at ``O(max_leaves^2)`` memory and
   ``O(max_leaves^2)`` work per merge step, whatever the number of clusters.
4. A macro topic's keywords are the class-based TF-IDF keywords of the sum of its (at most
   ``max_keyword_members`` heaviest) members' keyword sketches (each card decayed to the clock of the all-clusters sketch), weighed
   against the all-clusters sketch, with the macro topics as the classes.

Macro topics are **computed on read, not stored**: they are a pure function of the stored
clusterer state and topic cards, so every reader (the worker's board, ``topicstream board``,
``inspect --tree``, ``report``) derives the same ones from the same model version, and the
commit protocol (``commit.lua``) is unchanged. Readers cache them by model version
(:class:`stream.board.TopicBoard`). A macro topic's id is the id of its heaviest member
cluster, so it stays the same from one version to the next while that cluster leads it.

This module imports neither kafka nor redis.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from stream.clustering.base import ClusterState, decay_factor, sum_rows_by
from stream.topics import TopicState, _decayed, ctfidf_keywords

log = logging.getLogger(__name__)

DEFAULT_MAX_LEAVES = 256


@dataclass(frozen=True)
class PublicClusters:
    """The public clusters of a state, one row each, ids ascending.

    Attributes
    ----------
    ids
        Public cluster ids, ``(k,)`` int64.
    centroids
        Unit centroids, ``(k, dim)`` float32 (a zero row for a cluster of zero sum).
    weights
        Weights decayed to the stream clock ``t``, ``(k,)`` float64.
    sizes
        Documents ever assigned, ``(k,)`` int64.
    created, last
        Stream clock (documents) of the first and the latest update, ``(k,)`` float64.
    t
        The stream clock (``state.n_docs``).
    """

    ids: np.ndarray
    centroids: np.ndarray
    weights: np.ndarray
    sizes: np.ndarray
    created: np.ndarray
    last: np.ndarray
    t: float

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def public_clusters(state: ClusterState, half_life: float | None) -> PublicClusters:
    """Aggregate the rows of ``state`` by public label (see :class:`PublicClusters`).

    >>> s = ClusterState(2, np.array([0, 1, 2]), np.array([[2, 0], [0, 1], [0, 3]], np.float32),
    ...                  np.ones(3), np.array([2, 1, 3]), np.zeros(3), np.zeros(3),
    ...                  labels=np.array([5, 7, 7]), n_docs=6)
    >>> pc = public_clusters(s, None)
    >>> pc.ids.tolist(), pc.sizes.tolist(), pc.centroids.tolist()
    ([5, 7], [2, 4], [[1.0, 0.0], [0.0, 1.0]])
    """
    t = float(state.n_docs)
    f = decay_factor(t - state.last_t, half_life)
    sums = state.sums * f[:, None].astype(np.float32)
    ids, summed, _ = sum_rows_by(state.row_labels, sums)
    _, inv = np.unique(state.row_labels, return_inverse=True)
    k = len(ids)
    weights = np.bincount(inv, state.weights * f, k)
    sizes = np.bincount(inv, state.counts, k).astype(np.int64)
    created = np.full(k, np.inf)
    np.minimum.at(created, inv, state.created_t)
    last = np.full(k, -np.inf)
    np.maximum.at(last, inv, state.last_t)
    norms = np.linalg.norm(summed, axis=1, keepdims=True)
    centroids = (summed / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    return PublicClusters(ids.astype(np.int64), centroids, weights, sizes, created, last, t)


def agglomerate(X: np.ndarray, w: np.ndarray, n_groups: int, linkage: str = "ward",
                max_distance: float | None = None) -> np.ndarray:
    """Weighted bottom-up agglomeration of the unit rows of ``X``, updated by Lance-Williams.

    Parameters
    ----------
    X
        ``(n, dim)`` unit vectors.
    w
        ``(n,)`` positive weights (a row of weight ``w`` counts as ``w`` copies of it).
    n_groups
        Stop when this many groups are left (at least 1).
    linkage
        ``ward``: merge the two groups whose union adds least to the weighted within-group
        sum of squares, ``w_i w_j / (w_i + w_j) * ||m_i - m_j||^2`` for group means ``m``
        (``||a - b||^2 = 2 (1 - cos)`` for unit vectors), updated by
        ``d(k, i+j) = ((w_k + w_i) d(k, i) + (w_k + w_j) d(k, j) - w_k d(i, j)) / (w_k + w_i + w_j)``.
        ``average``: the ``w``-weighted mean cosine distance between the members of two
        groups, ``d(k, i+j) = (w_i d(k, i) + w_j d(k, j)) / (w_i + w_j)``. Average linkage
        chains on news embeddings (one group ends up holding most clusters, the rest are
        single stories); Ward's criterion keeps the groups' spread comparable.
    max_distance
        Also stop when the two closest groups are farther apart than this (in the linkage's
        own distance); None: merge down to ``n_groups``.

    Returns
    -------
    np.ndarray
        ``(n,)`` int64 group of each row, numbered ``0..g-1`` by first row, so the result does
        not depend on the merge order.

    >>> X = np.array([[1, 0], [0.99, 0.14], [0, 1], [0.1, 0.99]], np.float32)
    >>> X /= np.linalg.norm(X, axis=1, keepdims=True)
    >>> agglomerate(X, np.ones(4), 2).tolist(), agglomerate(X, np.ones(4), 2, "average").tolist()
    ([0, 0, 1, 1], [0, 0, 1, 1])
    """
    if n_groups < 1:
        raise ValueError(f"n_groups={n_groups} should be >= 1")
    if linkage not in ("ward", "average"):
        raise ValueError(f"linkage={linkage!r} should be 'ward' or 'average'")
    n = int(X.shape[0])
    if n == 0:
        return np.zeros(0, np.int64)
    X64 = np.asarray(X, np.float64)
    size = np.maximum(np.asarray(w, np.float64), 1e-12).copy()
    cos = X64 @ X64.T
    if linkage == "ward":
        D = np.maximum(2.0 - 2.0 * cos, 0.0) * np.outer(size, size) / np.add.outer(size, size)
    else:
        D = 1.0 - cos
    np.fill_diagonal(D, np.inf)
    parent = np.arange(n)  # representative of each row's group
    for _ in range(n - n_groups):
        i, j = divmod(int(np.argmin(D)), n)
        dij = D[i, j]
        if not np.isfinite(dij) or (max_distance is not None and dij > max_distance):
            break
        wi, wj = size[i], size[j]
        if linkage == "ward":
            row = ((size + wi) * D[i] + (size + wj) * D[j] - size * dij) / (size + wi + wj)
        else:
            row = (wi * D[i] + wj * D[j]) / (wi + wj)
        D[i], D[:, i] = row, row
        D[i, i] = np.inf
        D[j], D[:, j] = np.inf, np.inf
        size[i] = wi + wj
        parent[parent == j] = i
    _, first, labels = np.unique(parent, return_index=True, return_inverse=True)
    rank = np.empty_like(first)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[labels].astype(np.int64)


@dataclass(frozen=True)
class MacroTopic:
    """A group of clusters.

    Attributes
    ----------
    id
        The id of its heaviest member cluster.
    members
        Member cluster ids, heaviest first.
    weight
        Sum of its members' decayed weights.
    size
        Documents ever assigned to its members.
    keywords
        Class-based TF-IDF keywords of its members' merged keyword sketches.
    """

    id: int
    members: list[int]
    weight: float
    size: int
    keywords: list[str]

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "members": self.members, "weight": round(self.weight, 3),
                "size": self.size, "keywords": self.keywords}


def merged_terms(topics: TopicState | None, ids: np.ndarray, groups: np.ndarray,
                 half_life: float | None) -> dict[int, dict[str, float]]:
    """Per group, the sum of the keyword sketches of the member clusters ``ids`` (decayed to
    the clock of the all-clusters sketch). A loop over cards and their bounded terms, never
    over vector dimensions."""
    out: dict[int, dict[str, float]] = {}
    if topics is None:
        return out
    for cid, g in zip(ids.tolist(), groups.tolist(), strict=True):
        card = topics.cards.get(cid)
        if card is None:
            continue
        f = float(decay_factor(topics.all_t - card.t, half_life))
        acc = out.setdefault(g, {})
        for term, v in _decayed(card.terms, f).items():
            acc[term] = acc.get(term, 0.0) + v
    return out


def macro_topics(state: ClusterState, topics: TopicState | None, half_life: float | None,
                 max_macro_topics: int = 12, n_keywords: int = 8,
                 max_leaves: int = DEFAULT_MAX_LEAVES, max_distance: float | None = None,
                 clusters: PublicClusters | None = None,
                 max_keyword_members: int = 64) -> list[MacroTopic]:
    """Group the public clusters of ``state`` into at most ``max_macro_topics`` macro topics
    (see the module docstring), heaviest first.

    Parameters
    ----------
    state, topics
        The stored clusterer state and topic cards (``topics`` may be None: no keywords).
    half_life
        The model's half-life, in documents.
    max_macro_topics
        Most groups (>= 1).
    n_keywords
        Keywords per macro topic.
    max_leaves
        Heaviest clusters that are agglomerated; the others join their nearest leaf's group.
    max_distance
        None (the default): weighted Ward linkage down to ``max_macro_topics``; a cosine
        distance: weighted average linkage that also stops merging groups farther apart
        than it (see :func:`agglomerate`).
    clusters
        :func:`public_clusters` of ``state``, when the caller has it already.
    max_keyword_members
        A macro topic's keywords come from its heaviest members, this many at most.
    """
    if max_macro_topics < 1:
        raise ValueError(f"max_macro_topics={max_macro_topics} should be >= 1")
    if max_leaves < 1:
        raise ValueError(f"max_leaves={max_leaves} should be >= 1")
    pc = clusters if clusters is not None else public_clusters(state, half_life)
    k = len(pc)
    if k == 0:
        return []
    order = np.argsort(-pc.weights, kind="stable")
    leaves = order[:max_leaves]
    groups = np.empty(k, np.int64)
    groups[leaves] = agglomerate(pc.centroids[leaves], pc.weights[leaves], max_macro_topics,
                                 "ward" if max_distance is None else "average", max_distance)
    rest = order[max_leaves:]
    if rest.size:
        nearest = np.argmax(pc.centroids[rest] @ pc.centroids[leaves].T, axis=1)
        groups[rest] = groups[leaves][nearest]
    n_groups = int(groups.max()) + 1
    g_weight = np.bincount(groups, pc.weights, n_groups)
    g_size = np.bincount(groups, pc.sizes, n_groups).astype(np.int64)
    # keywords from the heaviest members of each group (at most max_keyword_members each):
    # the light tail adds little weight and would make the cost grow with the clusters
    by_group = order[np.argsort(groups[order], kind="stable")]  # heaviest first within a group
    g_of = groups[by_group]
    rank = np.arange(k) - np.searchsorted(g_of, g_of)
    top = by_group[rank < max_keyword_members]
    terms = merged_terms(topics, pc.ids[top], groups[top], half_life)
    keywords: Mapping[int, list[str]] = (
        ctfidf_keywords(terms, topics.all_terms, n_keywords, n_groups) if topics else {})
    out: list[MacroTopic] = []
    for g in np.argsort(-g_weight, kind="stable").tolist():
        rows = order[groups[order] == g]  # heaviest first
        members = pc.ids[rows].tolist()
        out.append(MacroTopic(int(members[0]), members, float(g_weight[g]), int(g_size[g]),
                              list(keywords.get(g, []))))
    log.debug("%d clusters -> %d macro topics", k, len(out))
    return out


def macro_of(macros: list[MacroTopic]) -> dict[int, int]:
    """Cluster id -> the id of its macro topic."""
    return {c: m.id for m in macros for c in m.members}
