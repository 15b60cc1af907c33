"""Drift of the stream and of the model, per window of documents.

A :class:`DriftMonitor` watches every batch a worker clusters and closes a window every
``window`` documents. For each closed window it reports (:class:`DriftWindow`):

- ``similarity_mean``: mean cosine of the documents to the centroid they were assigned to
  (falls when the documents stop fitting the model);
- ``outlier_ratio`` and ``new_cluster_ratio``: shares of documents flagged as outliers and
  of documents that opened a cluster;
- ``centroid_movement``: weighted mean cosine distance between each cluster's centroid at
  the start and at the end of the window (clusters present at both ends, weighted by their
  weight at the end);
- ``divergence``: Jensen-Shannon divergence, in bits (0 to 1), between the cluster-share
  distributions of this window and the one before;
- ``embedding_shift``: cosine distance between the mean embedding of this window and of the
  one before;
- ``nmi``: NMI of the window's assignments against the documents' ``label`` when every
  document of the window carried one (None otherwise).

``drifted`` is True when ``divergence`` reaches ``threshold``: the worker then publishes a
``drift`` event. Windows count documents, not seconds, so a replay drifts as live traffic
did. The monitor holds one window of per-document numbers and two of aggregates: bounded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from stream.evaluate import quality

# ids, unit centroids (k, dim), weights of the clusterer's rows
Centroids = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class DriftWindow:
    index: int  # windows closed before this one
    docs: int
    similarity_mean: float
    outlier_ratio: float
    new_cluster_ratio: float
    centroid_movement: float | None  # None for the first window
    divergence: float | None
    embedding_shift: float | None
    nmi: float | None
    drifted: bool


def js_divergence(p: dict[int, float], q: dict[int, float]) -> float:
    """Jensen-Shannon divergence in bits between two count distributions over ids.

    >>> js_divergence({1: 5, 2: 5}, {1: 5, 2: 5})
    0.0
    >>> js_divergence({1: 3}, {2: 7})
    1.0
    """
    keys = sorted(set(p) | set(q))
    a = np.array([p.get(k, 0.0) for k in keys], np.float64)
    b = np.array([q.get(k, 0.0) for k in keys], np.float64)
    a, b = a / max(a.sum(), 1e-300), b / max(b.sum(), 1e-300)
    m = (a + b) / 2

    def kl(x: np.ndarray) -> float:
        nz = x > 0
        return float((x[nz] * np.log2(x[nz] / m[nz])).sum())

    return float(min(max((kl(a) + kl(b)) / 2, 0.0), 1.0))


def centroid_movement(before: Centroids, after: Centroids) -> float | None:
    """Weighted mean cosine distance of the rows present in both snapshots."""
    ids0, c0, _ = before
    ids1, c1, w1 = after
    common, i0, i1 = np.intersect1d(ids0, ids1, return_indices=True)
    if common.size == 0 or w1[i1].sum() <= 0:
        return None
    dist = 1.0 - np.einsum("ij,ij->i", c0[i0], c1[i1])
    return float(np.clip((dist * w1[i1]).sum() / w1[i1].sum(), 0.0, 2.0))


class DriftMonitor:
    """Windowed drift statistics of one worker (see the module docstring).

    Parameters
    ----------
    window
        Documents per window.
    threshold
        Jensen-Shannon divergence (bits) between consecutive windows that counts as drift.

    Examples
    --------
    >>> import numpy as np
    >>> m = DriftMonitor(window=4, threshold=0.5)
    >>> X = np.eye(2, dtype=np.float32)[[0, 0, 1, 1]]
    >>> ids = np.array([1, 1, 2, 2])
    >>> flags = np.zeros(4, bool)
    >>> m.observe(X, ids, np.ones(4), flags, flags)[0].divergence is None
    True
    >>> w = m.observe(X, ids + 10, np.ones(4), flags, flags)[0]
    >>> w.divergence, w.drifted
    (1.0, True)
    """

    def __init__(self, window: int = 1000, threshold: float = 0.5) -> None:
        if window < 2:
            raise ValueError(f"window={window} should be >= 2")
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold={threshold} should be > 0 and <= 1 (bits)")
        self.window = int(window)
        self.threshold = float(threshold)
        self.closed = 0
        self._reset()
        self._prev_shares: dict[int, float] | None = None
        self._prev_mean: np.ndarray | None = None
        self._prev_centroids: Centroids | None = None

    def _reset(self) -> None:
        self._n = 0
        self._sim = 0.0
        self._outliers = 0
        self._new = 0
        self._sum: np.ndarray | None = None
        self._shares: dict[int, float] = {}
        self._ids: list[np.ndarray] = []
        self._labels: list[str | None] = []

    def observe(self, X: np.ndarray, cluster_ids: np.ndarray, similarity: np.ndarray,
                is_outlier: np.ndarray, is_new: np.ndarray,
                labels: Sequence[str | None] | None = None,
                centroids: Callable[[], Centroids] | None = None) -> list[DriftWindow]:
        """Add one batch; returns the windows it closed (usually none, at most a few).

        ``centroids`` is called only when a window closes (it may copy the model)."""
        n = len(cluster_ids)
        labels = list(labels) if labels is not None else [None] * n
        out: list[DriftWindow] = []
        start = 0
        while start < n:
            take = min(n - start, self.window - self._n)
            sl = slice(start, start + take)
            self._add(X[sl], cluster_ids[sl], similarity[sl], is_outlier[sl], is_new[sl],
                      labels[sl])
            start += take
            if self._n >= self.window:
                out.append(self._close(centroids() if centroids is not None else None))
        return out

    def _add(self, X: np.ndarray, ids: np.ndarray, sim: np.ndarray, outlier: np.ndarray,
             new: np.ndarray, labels: list[str | None]) -> None:
        self._n += len(ids)
        self._sim += float(np.sum(sim, dtype=np.float64))
        self._outliers += int(np.count_nonzero(outlier))
        self._new += int(np.count_nonzero(new))
        s = X.sum(axis=0, dtype=np.float64)
        self._sum = s if self._sum is None else self._sum + s
        u, c = np.unique(ids, return_counts=True)
        for k, v in zip(u.tolist(), c.tolist(), strict=True):
            self._shares[k] = self._shares.get(k, 0.0) + v
        self._ids.append(np.asarray(ids))
        self._labels.extend(labels)

    def _close(self, centroids: Centroids | None) -> DriftWindow:
        n = max(self._n, 1)
        mean = self._sum if self._sum is not None else np.zeros(1)
        div = None if self._prev_shares is None else js_divergence(self._prev_shares, self._shares)
        shift = None
        if self._prev_mean is not None:
            na, nb = np.linalg.norm(self._prev_mean), np.linalg.norm(mean)
            if na > 0 and nb > 0:
                shift = float(1.0 - self._prev_mean @ mean / (na * nb))
        movement = None
        if centroids is not None and self._prev_centroids is not None:
            movement = centroid_movement(self._prev_centroids, centroids)
        nmi = None
        if self._labels and all(v is not None for v in self._labels):
            nmi = quality(self._labels, np.concatenate(self._ids).tolist()).nmi
        w = DriftWindow(self.closed, self._n, self._sim / n, self._outliers / n, self._new / n,
                        movement, div, shift, nmi, div is not None and div >= self.threshold)
        self.closed += 1
        self._prev_shares, self._prev_mean = self._shares, mean
        if centroids is not None:
            self._prev_centroids = centroids
        self._reset()
        return w
