"""What every clusterer shares: the state as plain arrays, the batch delta, and decay.

Clock and decay
---------------
Stream time is the number of documents learnt so far (``n_docs``): a batch of ``n``
documents learnt when ``n_docs`` was ``t0`` happens at ``t = t0 + n``. Every cluster keeps
its vector sum and weight *as of* its ``last_t``; decay is applied lazily when the cluster
is next touched, ``factor = 0.5 ** ((t - last_t) / half_life)`` (Spark streaming k-means'
half-life, in documents). Decay scales a sum and its weight alike, so it never moves a
centroid: it only changes how much the next documents move it. Because the clock is a
document count, replays and backfills decay exactly as live traffic does.

The delta
---------
A :class:`Delta` is what one batch added: per touched cluster, the vector sum, weight and
document count of its documents, plus the batch size. :func:`apply_delta` is the one
definition of how a delta changes a state; the Redis store's Lua script implements the same
arithmetic, and a test holds the two together.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

IdAllocator = Callable[[int], np.ndarray]


def decay_factor(dt: np.ndarray | float, half_life: float | None) -> np.ndarray:
    """``0.5 ** (dt / half_life)``; no decay when ``half_life`` is None."""
    dt = np.asarray(dt, dtype=np.float64)
    if half_life is None:
        return np.ones_like(dt)
    return np.power(0.5, np.maximum(dt, 0.0) / half_life)


@dataclass
class ClusterState:
    """A clusterer's state as plain numbers: no pickle is ever needed to store or read it.

    Row ``i`` of every array describes cluster ``ids[i]``.
    """

    dim: int
    ids: np.ndarray  # (k,) int64
    sums: np.ndarray  # (k, dim) float32, decayed vector sums as of last_t
    weights: np.ndarray  # (k,) float64, decayed weights as of last_t
    counts: np.ndarray  # (k,) int64, documents ever assigned (not decayed)
    last_t: np.ndarray  # (k,) float64, stream time of the last update
    created_t: np.ndarray  # (k,) float64, stream time of creation
    n_docs: int = 0  # documents learnt: the stream clock
    next_id: int = 0  # next cluster id, for stores without a shared counter
    version: int = 0  # commits applied

    @classmethod
    def empty(cls, dim: int) -> ClusterState:
        return cls(
            dim=dim,
            ids=np.zeros(0, np.int64),
            sums=np.zeros((0, dim), np.float32),
            weights=np.zeros(0, np.float64),
            counts=np.zeros(0, np.int64),
            last_t=np.zeros(0, np.float64),
            created_t=np.zeros(0, np.float64),
        )

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def weights_at(self, t: float, half_life: float | None) -> np.ndarray:
        """Weights decayed to stream time ``t``."""
        return self.weights * decay_factor(t - self.last_t, half_life)

    def sorted(self) -> ClusterState:
        order = np.argsort(self.ids, kind="stable")
        return ClusterState(
            self.dim, self.ids[order], self.sums[order], self.weights[order], self.counts[order],
            self.last_t[order], self.created_t[order], self.n_docs, self.next_id, self.version,
        )


@dataclass
class Delta:
    """What one batch adds to the state (see the module docstring)."""

    n_docs: int
    ids: np.ndarray  # (m,) int64, touched clusters, unique
    sums: np.ndarray  # (m, dim) float32
    weights: np.ndarray  # (m,) float64
    counts: np.ndarray  # (m,) int64
    new_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @classmethod
    def empty(cls, dim: int) -> Delta:
        return cls(0, np.zeros(0, np.int64), np.zeros((0, dim), np.float32),
                   np.zeros(0, np.float64), np.zeros(0, np.int64))


def apply_delta(state: ClusterState, delta: Delta, half_life: float | None) -> ClusterState:
    """Return ``state`` with ``delta`` applied at ``t = state.n_docs + delta.n_docs``.

    A cluster already present is decayed to ``t`` and the delta added; a cluster not present
    is created with the delta's values at ``t``. ``next_id`` moves past every id seen.
    """
    t = float(state.n_docs + delta.n_docs)
    pos = {int(c): i for i, c in enumerate(state.ids)}
    rows = np.fromiter((pos.get(int(c), -1) for c in delta.ids), np.int64, len(delta.ids))
    old = rows >= 0
    sums, weights = state.sums.copy(), state.weights.copy()
    counts, last_t = state.counts.copy(), state.last_t.copy()
    if old.any():
        r = rows[old]
        top = np.maximum(last_t[r], t)
        f_old = decay_factor(top - last_t[r], half_life)
        f_new = decay_factor(top - t, half_life)
        sums[r] = (sums[r] * f_old[:, None] + delta.sums[old] * f_new[:, None]).astype(np.float32)
        weights[r] = weights[r] * f_old + delta.weights[old] * f_new
        counts[r] += delta.counts[old]
        last_t[r] = top
    fresh = ~old
    n_new = int(fresh.sum())
    next_id = max([state.next_id] + [int(c) + 1 for c in delta.ids])
    return ClusterState(
        dim=state.dim,
        ids=np.concatenate([state.ids, delta.ids[fresh]]),
        sums=np.concatenate([sums, delta.sums[fresh].astype(np.float32)]),
        weights=np.concatenate([weights, delta.weights[fresh]]),
        counts=np.concatenate([counts, delta.counts[fresh]]),
        last_t=np.concatenate([last_t, np.full(n_new, t)]),
        created_t=np.concatenate([state.created_t, np.full(n_new, t)]),
        n_docs=state.n_docs + delta.n_docs,
        next_id=next_id,
        version=state.version + 1,
    )


@dataclass
class BatchResult:
    """What a clusterer says about one batch, row for row with its input."""

    cluster_ids: np.ndarray  # (n,) int64
    similarity: np.ndarray  # (n,) float32, cosine to the assigned centroid after the update
    is_new_cluster: np.ndarray  # (n,) bool, this document opened its cluster
    is_outlier: np.ndarray  # (n,) bool
    delta: Delta


class Clusterer(ABC):
    """Base class of topicstream's clusterers: learn and predict a whole batch at once.

    Subclasses take their hyperparameters in the constructor, validate them there, and keep
    their state in preallocated arrays; :meth:`snapshot` and :meth:`restore` move it in and
    out as a :class:`ClusterState`.
    """

    name: str = "clusterer"
    half_life: float | None = None

    @abstractmethod
    def learn_predict(self, X: np.ndarray) -> BatchResult:
        """Assign each row of the ``(n, dim)`` float32 array ``X`` and learn from it."""

    @abstractmethod
    def snapshot(self) -> ClusterState:
        """The whole state, as plain arrays (a copy)."""

    @abstractmethod
    def restore(self, state: ClusterState) -> None:
        """Replace the state (e.g. with the one just read from the store)."""

    @property
    @abstractmethod
    def n_clusters(self) -> int: ...

    def set_id_allocator(self, allocate: IdAllocator | None) -> None:
        """Where new cluster ids come from (a shared counter when several workers run)."""
        self._allocate = allocate


def check_batch(X: np.ndarray, dim: int | None) -> np.ndarray:
    """Validate once at the public method: a 2-D float array of the model's width."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X.ndim={X.ndim} should be 2 (an (n, dim) array)")
    if dim is not None and X.shape[1] != dim:
        raise ValueError(f"X.shape[1]={X.shape[1]} should be {dim}, the model's dimension")
    if not np.issubdtype(X.dtype, np.floating):
        raise ValueError(f"X.dtype={X.dtype} should be a float type")
    return np.ascontiguousarray(X, dtype=np.float32)


def sum_rows_by(labels: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum the rows of ``X`` per label: (unique labels, sums, counts), without a Python loop."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    uniq, starts, counts = np.unique(sorted_labels, return_index=True, return_counts=True)
    sums = np.add.reduceat(X[order], starts, axis=0) if len(X) else np.zeros((0, X.shape[1]), X.dtype)
    return uniq, sums.astype(np.float32, copy=False), counts
