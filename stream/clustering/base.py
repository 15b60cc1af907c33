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
A :class:`Delta` is what one batch changed: per touched cluster, the vector sum, weight and
document count of its documents and the cluster's label afterwards, plus the batch size;
then the merges (``src`` folded into ``dst``) and the removals (faded or pruned clusters)
that maintenance decided. :func:`apply_delta` is the one definition of how a delta changes a
state; the Redis store's Lua script implements the same arithmetic, and a test holds the two
together. Merges and removals name clusters by id, not by value: the store folds whatever it
holds for ``src`` at commit time, so a merge decided on a slightly stale replica still
neither loses nor double-counts weight.

Rows and labels
---------------
A row of the state is a cluster of the clusterer's own (a centroid for k-means, a
micro-cluster for DenStream). Its ``label`` is the public cluster id that documents placed
in it receive. For k-means the two are the same; DenStream groups micro-clusters into
clusters and several rows share a label. A label never changes meaning except through a
merge, which the clusterer reports (:attr:`BatchResult.merged`) so that the worker can
announce it as a ``clusters_merged`` event.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

IdAllocator = Callable[[int], np.ndarray]
# Asked when maintenance (merge, fade, prune, DenStream's offline step) is due: True when
# this replica may run it now (it holds the model's maintenance lease).
MaintenanceGate = Callable[[], bool]


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
    labels: np.ndarray | None = None  # (k,) int64, public cluster id of each row; None: ids
    n_docs: int = 0  # documents learnt: the stream clock
    next_id: int = 0  # next cluster id, for stores without a shared counter
    version: int = 0  # commits applied

    def __post_init__(self) -> None:
        if self.labels is None:
            self.labels = self.ids.copy()

    @property
    def row_labels(self) -> np.ndarray:
        """``labels`` as a definite array (the dataclass field is never None after init)."""
        assert self.labels is not None
        return self.labels

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
            labels=np.zeros(0, np.int64),
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
            self.last_t[order], self.created_t[order], self.row_labels[order], self.n_docs,
            self.next_id, self.version,
        )


@dataclass
class Delta:
    """What one batch changes in the state (see the module docstring)."""

    n_docs: int
    ids: np.ndarray  # (m,) int64, touched clusters, unique
    sums: np.ndarray  # (m, dim) float32
    weights: np.ndarray  # (m,) float64
    counts: np.ndarray  # (m,) int64
    new_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    labels: np.ndarray | None = None  # (m,) int64, label of each touched row after; None: ids
    merges: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))  # (src, dst)
    removed: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __post_init__(self) -> None:
        if self.labels is None:
            self.labels = self.ids.copy()

    @property
    def row_labels(self) -> np.ndarray:
        assert self.labels is not None
        return self.labels

    @classmethod
    def empty(cls, dim: int) -> Delta:
        return cls(0, np.zeros(0, np.int64), np.zeros((0, dim), np.float32),
                   np.zeros(0, np.float64), np.zeros(0, np.int64))


def apply_delta(state: ClusterState, delta: Delta, half_life: float | None) -> ClusterState:
    """Return ``state`` with ``delta`` applied at ``t = state.n_docs + delta.n_docs``.

    In this order:

    1. Touched rows: a row already present is decayed to ``t`` and the delta added; a row
       not present is created with the delta's values at ``t``. Each takes its delta label.
    2. Merges, in order: ``dst`` absorbs ``src`` (both decayed to ``t``; counts add; the
       earlier creation time stays), ``src`` is removed, and rows labelled ``src`` take
       ``dst``'s label. A merge naming a missing row does nothing.
    3. Removals: the rows named are dropped.

    ``next_id`` moves past every id seen.
    """
    t = float(state.n_docs + delta.n_docs)
    pos = {int(c): i for i, c in enumerate(state.ids)}
    rows = np.fromiter((pos.get(int(c), -1) for c in delta.ids), np.int64, len(delta.ids))
    old = rows >= 0
    sums, weights = state.sums.copy(), state.weights.copy()
    counts, last_t, labels = state.counts.copy(), state.last_t.copy(), state.row_labels.copy()
    if old.any():
        r = rows[old]
        top = np.maximum(last_t[r], t)
        f_old = decay_factor(top - last_t[r], half_life)
        f_new = decay_factor(top - t, half_life)
        sums[r] = (sums[r] * f_old[:, None] + delta.sums[old] * f_new[:, None]).astype(np.float32)
        weights[r] = weights[r] * f_old + delta.weights[old] * f_new
        counts[r] += delta.counts[old]
        last_t[r] = top
        labels[r] = delta.row_labels[old]
    fresh = ~old
    n_new = int(fresh.sum())
    next_id = max([state.next_id] + [int(c) + 1 for c in delta.ids])
    out = ClusterState(
        dim=state.dim,
        ids=np.concatenate([state.ids, delta.ids[fresh]]),
        sums=np.concatenate([sums, delta.sums[fresh].astype(np.float32)]),
        weights=np.concatenate([weights, delta.weights[fresh]]),
        counts=np.concatenate([counts, delta.counts[fresh]]),
        last_t=np.concatenate([last_t, np.full(n_new, t)]),
        created_t=np.concatenate([state.created_t, np.full(n_new, t)]),
        labels=np.concatenate([labels, delta.row_labels[fresh]]).astype(np.int64),
        n_docs=state.n_docs + delta.n_docs,
        next_id=next_id,
        version=state.version + 1,
    )
    if len(delta.merges) or len(delta.removed):
        out = _merge_and_remove(out, delta.merges, delta.removed, t, half_life)
    return out


def _merge_and_remove(state: ClusterState, merges: np.ndarray, removed: np.ndarray, t: float,
                      half_life: float | None) -> ClusterState:
    """Steps 2 and 3 of :func:`apply_delta` (a loop over merges, never over documents)."""
    keep = np.ones(len(state), bool)
    pos = {int(c): i for i, c in enumerate(state.ids)}
    labels = state.row_labels
    for src, dst in np.asarray(merges, np.int64).reshape(-1, 2).tolist():
        i, j = pos.get(src, -1), pos.get(dst, -1)
        if i < 0 or j < 0 or i == j or not keep[i] or not keep[j]:
            continue
        fi = decay_factor(t - state.last_t[i], half_life)
        fj = decay_factor(t - state.last_t[j], half_life)
        state.sums[j] = (state.sums[j] * fj + state.sums[i] * fi).astype(np.float32)
        state.weights[j] = state.weights[j] * fj + state.weights[i] * fi
        state.counts[j] += state.counts[i]
        state.last_t[j] = t
        state.created_t[j] = min(state.created_t[j], state.created_t[i])
        labels[labels == src] = labels[j]
        keep[i] = False
    for c in np.asarray(removed, np.int64).tolist():
        i = pos.get(int(c), -1)
        if i >= 0:
            keep[i] = False
    return ClusterState(
        state.dim, state.ids[keep], state.sums[keep], state.weights[keep], state.counts[keep],
        state.last_t[keep], state.created_t[keep], labels[keep], state.n_docs, state.next_id,
        state.version,
    )


@dataclass
class BatchResult:
    """What a clusterer says about one batch, row for row with its input."""

    cluster_ids: np.ndarray  # (n,) int64
    similarity: np.ndarray  # (n,) float32, cosine to the assigned centroid after the update
    is_new_cluster: np.ndarray  # (n,) bool, this document opened its cluster
    is_outlier: np.ndarray  # (n,) bool
    delta: Delta
    # public cluster ids that this batch's maintenance retired: (src, dst) pairs, src now
    # means dst (announced as clusters_merged), and ids whose last row faded (cluster_faded)
    merged: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    faded: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


class Clusterer(ABC):
    """Base class of topicstream's clusterers: learn and predict a whole batch at once.

    Subclasses take their hyperparameters in the constructor, validate them there, and keep
    their state in preallocated arrays; :meth:`snapshot` and :meth:`restore` move it in and
    out as a :class:`ClusterState`.
    """

    name: str = "clusterer"
    half_life: float | None = None
    next_id: int = 0

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

    def set_maintenance_gate(self, gate: MaintenanceGate | None) -> None:
        """Who may run maintenance: with several workers on one model, only the holder of
        the model's lease (see :class:`stream.state.lease.Lease`). When maintenance is due
        and the gate says no, this replica skips it until the next time it is due; the
        lease holder runs it and the others see its merges and removals when they refresh.
        None (the default): always."""
        self._gate = gate

    def _may_maintain(self) -> bool:
        gate: MaintenanceGate | None = getattr(self, "_gate", None)
        return gate is None or bool(gate())

    def _new_ids(self, n: int) -> np.ndarray:
        """``n`` new cluster ids: from the allocator when one is set, else from ``next_id``
        (which then moves past them either way)."""
        allocate: IdAllocator | None = getattr(self, "_allocate", None)
        if allocate is not None:
            ids = np.asarray(allocate(n), dtype=np.int64)
        else:
            ids = np.arange(self.next_id, self.next_id + n, dtype=np.int64)
        self.next_id = max(self.next_id, int(ids.max()) + 1) if n else self.next_id
        return ids


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
    """Sum the rows of ``X`` per label: (the distinct labels in ascending order, their
    float32 sums, their int64 counts), without a Python loop. ``labels`` holds one label per
    row of ``X``.

    Each label's first row is copied and the other rows are added with one 0/1 membership
    product over those rows only (BLAS), so the cost follows the rows that share a label:
    a model's state of 1,000 rows with distinct labels (k-means) is one gather, 0.15 ms
    against 3.3 ms for a product with the full 1,000 x 1,000 membership matrix (measured).
    Where even that product would be big, the sorted rows are summed with
    ``np.add.reduceat``.

    >>> uniq, sums, counts = sum_rows_by(np.array([7, 3, 7]), np.eye(3, dtype=np.float32))
    >>> uniq.tolist(), sums.tolist(), counts.tolist()
    ([3, 7], [[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]], [1, 2])
    """
    labels = np.asarray(labels)
    if labels.shape != (len(X),):
        raise ValueError(f"labels.shape={labels.shape} should be ({len(X)},): "
                         "one label per row of X")
    if labels.size == 0:
        return labels[:0], np.zeros((0, X.shape[1]), np.float32), np.zeros(0, np.int64)
    order = np.argsort(labels, kind="stable")
    r = labels[order]
    first = np.concatenate([[True], r[1:] != r[:-1]])
    starts = np.flatnonzero(first)
    counts = np.diff(np.concatenate([starts, [r.size]]))
    extra = np.flatnonzero(~first)
    seg = (np.cumsum(first) - 1)[extra]
    targets, inv = np.unique(seg, return_inverse=True)
    if targets.size * extra.size > 1 << 22:
        sums = np.add.reduceat(X[order], starts, axis=0).astype(np.float32, copy=False)
        return r[starts], sums, counts
    sums = X[order[starts]].astype(np.float32, copy=False)  # a gather: a new array
    if extra.size:
        M = np.zeros((targets.size, extra.size), np.float32)
        M[inv, np.arange(extra.size)] = 1.0
        sums[targets] += M @ X[order[extra]].astype(np.float32, copy=False)
    return r[starts], sums, counts
