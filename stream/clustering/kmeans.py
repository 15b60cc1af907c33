"""Online spherical k-means with threshold creation, on decayed sufficient statistics."""

from __future__ import annotations

import numpy as np

from stream.clustering.base import (
    BatchResult,
    Clusterer,
    ClusterState,
    Delta,
    IdAllocator,
    check_batch,
    decay_factor,
    sum_rows_by,
)


class OnlineKMeans(Clusterer):
    """Spherical (cosine) online k-means whose clusters are created on demand.

    Each cluster is a decayed vector sum and weight; its centroid is the normalised sum. A
    batch is assigned at once against the centroids as they stood before it: a document
    joins its most similar cluster when the cosine is at least ``threshold``. The documents
    below it are clustered among themselves by the leader rule (in arrival order), opening
    new clusters up to ``max_clusters``; past that they join their nearest cluster and are
    flagged as outliers. Sums and weights are then updated with Spark streaming k-means'
    forgetful rule (Shindler et al.; Spark MLlib ``StreamingKMeans``) with a half-life
    counted in documents (see :mod:`stream.clustering.base`).

    Parameters
    ----------
    threshold
        Cosine similarity needed to join an existing cluster.
    max_clusters
        Upper bound on live clusters.
    half_life
        Half-life of a cluster's weight, in documents; None for no decay.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[1, 0], [0.99, 0.14], [0, 1]], dtype=np.float32)
    >>> km = OnlineKMeans(threshold=0.9)
    >>> km.learn_predict(X).cluster_ids.tolist()
    [0, 0, 1]
    >>> km.n_clusters
    2
    """

    name = "kmeans"

    def __init__(
        self,
        threshold: float = 0.4,
        max_clusters: int = 1000,
        half_life: float | None = None,
        dim: int | None = None,
    ) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold={threshold} should be within [-1, 1]")
        if max_clusters < 1:
            raise ValueError(f"max_clusters={max_clusters} should be >= 1")
        if half_life is not None and half_life <= 0:
            raise ValueError(f"half_life={half_life} should be > 0 (or None for no decay)")
        self.threshold = float(threshold)
        self.max_clusters = int(max_clusters)
        self.half_life = half_life
        self._allocate: IdAllocator | None = None
        self.dim = dim
        self.restore(ClusterState.empty(dim or 0))
        if dim is None:
            self.dim = None

    # -- state -----------------------------------------------------------------------------
    def _alloc_arrays(self, dim: int, capacity: int) -> None:
        self._ids = np.zeros(capacity, np.int64)
        self._sums = np.zeros((capacity, dim), np.float32)
        self._centroids = np.zeros((capacity, dim), np.float32)
        self._weights = np.zeros(capacity, np.float64)
        self._counts = np.zeros(capacity, np.int64)
        self._last_t = np.zeros(capacity, np.float64)
        self._created_t = np.zeros(capacity, np.float64)

    def restore(self, state: ClusterState) -> None:
        k = len(state)
        self.dim = state.dim if state.dim else None
        self._alloc_arrays(state.dim, max(self.max_clusters, k))
        self._k = k
        self._ids[:k] = state.ids
        self._sums[:k] = state.sums
        self._weights[:k] = state.weights
        self._counts[:k] = state.counts
        self._last_t[:k] = state.last_t
        self._created_t[:k] = state.created_t
        self._refresh_centroids(np.arange(k))
        self.n_docs = int(state.n_docs)
        self.next_id = int(state.next_id)
        self.version = int(state.version)

    def snapshot(self) -> ClusterState:
        k = self._k
        return ClusterState(
            dim=self.dim or 0,
            ids=self._ids[:k].copy(),
            sums=self._sums[:k].copy(),
            weights=self._weights[:k].copy(),
            counts=self._counts[:k].copy(),
            last_t=self._last_t[:k].copy(),
            created_t=self._created_t[:k].copy(),
            labels=self._ids[:k].copy(),
            n_docs=self.n_docs,
            next_id=self.next_id,
            version=self.version,
        )

    @property
    def n_clusters(self) -> int:
        return self._k

    def _refresh_centroids(self, rows: np.ndarray) -> None:
        s = self._sums[rows]
        norms = np.linalg.norm(s, axis=1, keepdims=True)
        self._centroids[rows] = s / np.maximum(norms, 1e-12)

    def _new_ids(self, n: int) -> np.ndarray:
        if self._allocate is not None:
            ids = np.asarray(self._allocate(n), dtype=np.int64)
        else:
            ids = np.arange(self.next_id, self.next_id + n, dtype=np.int64)
        self.next_id = max(self.next_id, int(ids.max()) + 1) if n else self.next_id
        return ids

    # -- learning --------------------------------------------------------------------------
    def _leaders(self, Xn: np.ndarray, budget: int) -> np.ndarray:
        """Leader clustering of the documents no cluster took: local group per row, -1 when
        the budget of new clusters ran out."""
        m = len(Xn)
        group = np.full(m, -1, np.int64)
        if budget <= 0 or m == 0:
            return group
        size = min(m, budget)
        sums = np.zeros((size, Xn.shape[1]), np.float32)
        norms = np.ones(size, np.float32)  # kept per group; only the touched one changes
        n_groups = 0
        for i in range(m):  # loops over novel documents only; vector work is one row op
            if n_groups:
                sims = (sums[:n_groups] @ Xn[i]) / norms[:n_groups]
                j = int(sims.argmax())
                if sims[j] >= self.threshold:
                    group[i] = j
                    sums[j] += Xn[i]
                    norms[j] = max(float(np.linalg.norm(sums[j])), 1e-12)
                    continue
            if n_groups < budget:
                group[i] = n_groups
                sums[n_groups] = Xn[i]
                norms[n_groups] = max(float(np.linalg.norm(Xn[i])), 1e-12)
                n_groups += 1
        return group

    def _open_clusters(self, X: np.ndarray, rows: np.ndarray, best_sim: np.ndarray,
                       novel: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Open clusters for the ``novel`` rows of ``X`` (no existing cluster took them).

        The novel documents are grouped by the leader rule; then every document of the batch
        moves to a new group when that group is more similar than its current cluster and
        above ``threshold`` (one reassignment pass, so that a story that breaks inside a
        batch gathers its documents even if some first passed an old cluster's threshold).
        Groups left empty are not opened. Returns the rows, the outlier flags (novel
        documents left without a cluster because ``max_clusters`` was reached) and the rows
        of the opened clusters.
        """
        k = self._k
        group = self._leaders(X[novel], self.max_clusters - k)
        placed = group >= 0
        labels = rows.copy()
        outlier = np.zeros(len(X), bool)
        outlier[novel[~placed]] = True
        if not placed.any():
            return labels, outlier, np.zeros(0, np.int64)
        _, gsums, _ = sum_rows_by(group[placed], X[novel[placed]])
        G = gsums / np.maximum(np.linalg.norm(gsums, axis=1, keepdims=True), 1e-12)
        labels[novel[placed]] = k + group[placed]
        S = X @ G.T
        j = S.argmax(axis=1)
        s = S[np.arange(len(X)), j]
        current = np.where(labels >= k, -np.inf, best_sim)
        move = (s >= self.threshold) & (s > current)
        # no old cluster to fall back on: over-budget documents join the nearest new one
        forced = outlier & ~move if k == 0 else np.zeros(len(X), bool)
        labels[move | forced] = k + j[move | forced]
        outlier &= ~move
        used = np.unique(labels[labels >= k])
        compact = np.full(int(used.max()) + 1, -1, np.int64)
        compact[used] = np.arange(k, k + used.size)
        labels[labels >= k] = compact[labels[labels >= k]]
        new_rows = np.arange(k, k + used.size)
        ids = self._new_ids(used.size)
        self._ids[new_rows] = ids
        self._sums[new_rows] = 0.0
        self._weights[new_rows] = 0.0
        self._counts[new_rows] = 0
        self._last_t[new_rows] = t
        self._created_t[new_rows] = t
        self._k = k + used.size
        return labels, outlier, new_rows

    def learn_predict(self, X: np.ndarray) -> BatchResult:
        X = check_batch(X, self.dim)
        n, d = X.shape
        if self.dim is None:
            self.dim = d
            self._alloc_arrays(d, self.max_clusters)
        k = self._k
        t = float(self.n_docs + n)
        if k:
            S = X @ self._centroids[:k].T
            best = S.argmax(axis=1)
            best_sim = S[np.arange(n), best]
        else:
            best = np.zeros(n, np.int64)
            best_sim = np.full(n, -np.inf, np.float32)
        rows = best.astype(np.int64)
        novel = np.flatnonzero(best_sim < self.threshold)
        is_new = np.zeros(n, bool)
        is_outlier = np.zeros(n, bool)
        new_ids = np.zeros(0, np.int64)
        if novel.size:
            rows, is_outlier, new_rows = self._open_clusters(X, rows, best_sim, novel, t)
            if new_rows.size:
                new_ids = self._ids[new_rows].copy()
                # the founder of a new cluster: its first document in batch order
                hit = np.flatnonzero(rows >= k)
                _, first = np.unique(rows[hit], return_index=True)
                is_new[hit[first]] = True
        # forgetful update of the touched clusters
        urows, dsums, dcounts = sum_rows_by(rows, X)
        f = decay_factor(t - self._last_t[urows], self.half_life)
        self._sums[urows] = self._sums[urows] * f[:, None].astype(np.float32) + dsums
        self._weights[urows] = self._weights[urows] * f + dcounts
        self._counts[urows] += dcounts
        self._last_t[urows] = t
        self._refresh_centroids(urows)
        self.n_docs += n
        self.version += 1
        similarity = np.einsum("ij,ij->i", X, self._centroids[rows])
        delta = Delta(
            n_docs=n,
            ids=self._ids[urows].copy(),
            sums=dsums,
            weights=dcounts.astype(np.float64),
            counts=dcounts.astype(np.int64),
            new_ids=new_ids,
        )
        return BatchResult(self._ids[rows].copy(), similarity.astype(np.float32), is_new,
                           is_outlier, delta)
