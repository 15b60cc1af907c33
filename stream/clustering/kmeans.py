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

    Maintenance runs every ``maintain_every`` documents, before the batch that crosses the
    mark (on the one replica that holds the model's lease, when several workers share it:
    :meth:`~stream.clustering.base.Clusterer.set_maintenance_gate`), and reports what it did
    in the batch's delta and result:

    - **merging** near-duplicate clusters: two clusters whose documents have a mean
      pairwise similarity (average linkage) of at least ``merge_threshold`` are folded into
      the older one, most similar pair first. The younger id is retired and announced as
      merged into the older (``clusters_merged``): ids never change meaning otherwise.
    - **fading**: a cluster whose decayed weight fell below ``min_weight`` is removed
      (``cluster_faded``); this needs a ``half_life``.

    Two ways to bound the model:

    - threshold creation (``k=None``, the default): a cluster opens whenever a document is
      further than ``threshold`` from every centroid, up to ``max_clusters``.
    - fixed ``k`` (Spark's streaming k-means): at most ``k`` clusters; once they exist every
      document joins its nearest one (those below ``threshold`` are flagged as outliers).
      Clusters that die (fade below ``min_weight``) free their slot, and the next outliers
      re-seed it as a new cluster with a new id, as Spark replaces dying clusters.
      Beware: as in Spark, a cluster that keeps absorbing outliers drifts toward them, so
      its id can come to mean a newer story without any announcement. Use threshold
      creation (the default) where ids must keep their meaning.

    Parameters
    ----------
    threshold
        Cosine similarity needed to join an existing cluster.
    max_clusters
        Upper bound on live clusters (threshold creation).
    half_life
        Half-life of a cluster's weight, in documents; None for no decay.
    merge_threshold
        Average-linkage similarity at which two clusters merge; None disables merging.
    min_weight
        Decayed weight below which a cluster fades away (only with a ``half_life``).
    maintain_every
        Documents between maintenance passes.
    k
        Fixed number of clusters; None for threshold creation.

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
        merge_threshold: float | None = None,
        min_weight: float = 0.05,
        maintain_every: int = 1000,
        k: int | None = None,
        dim: int | None = None,
    ) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold={threshold} should be within [-1, 1]")
        if max_clusters < 1:
            raise ValueError(f"max_clusters={max_clusters} should be >= 1")
        if half_life is not None and half_life <= 0:
            raise ValueError(f"half_life={half_life} should be > 0 (or None for no decay)")
        if merge_threshold is not None and not -1.0 <= merge_threshold <= 1.0:
            raise ValueError(f"merge_threshold={merge_threshold} should be within [-1, 1] (or None)")
        if min_weight < 0:
            raise ValueError(f"min_weight={min_weight} should be >= 0")
        if maintain_every < 1:
            raise ValueError(f"maintain_every={maintain_every} should be >= 1")
        if k is not None and k < 1:
            raise ValueError(f"k={k} should be >= 1 (or None for threshold creation)")
        self.threshold = float(threshold)
        self.max_clusters = int(k if k is not None else max_clusters)
        self.half_life = half_life
        self.merge_threshold = merge_threshold
        self.min_weight = float(min_weight)
        self.maintain_every = int(maintain_every)
        self.k = k
        self._last_maintained = 0
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
        self._last_maintained = self.n_docs - self.n_docs % self.maintain_every

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

    # -- maintenance -----------------------------------------------------------------------
    def _merge_pairs(self) -> np.ndarray:
        """Row pairs (src, dst) to merge, by average linkage: the mean similarity between the
        documents of two clusters, ``sum_a . sum_b / (w_a w_b)``, read off the decayed sums
        (decay scales a sum and its weight alike, so it cancels). Unlike the centroid cosine
        it does not let two loose clusters of related stories merge. Pairs at or above
        ``merge_threshold`` are taken most similar first; the younger cluster (later
        created, then larger id) folds into the older, and a cluster that folds away
        receives nothing in the same pass."""
        k = self._k
        if self.merge_threshold is None or k < 2:
            return np.zeros((0, 2), np.int64)
        P = self._sums[:k] / np.maximum(self._weights[:k], 1e-12)[:, None].astype(np.float32)
        sim = P @ P.T
        a, b = np.nonzero(np.triu(sim >= self.merge_threshold, 1))
        if a.size == 0:
            return np.zeros((0, 2), np.int64)
        order = np.argsort(-sim[a, b], kind="stable")
        a, b = a[order], b[order]
        a_older = (self._created_t[a] < self._created_t[b]) | (
            (self._created_t[a] == self._created_t[b]) & (self._ids[a] < self._ids[b]))
        src, dst = np.where(a_older, b, a), np.where(a_older, a, b)
        gone = np.zeros(k, bool)
        took = np.zeros(k, bool)
        pairs = []
        for i, j in zip(src.tolist(), dst.tolist(), strict=True):  # candidate pairs only
            if gone[i] or gone[j] or took[i]:
                continue
            gone[i] = took[j] = True
            pairs.append((i, j))
        return np.asarray(pairs, np.int64).reshape(-1, 2)

    def _maintain(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """One maintenance pass at stream time ``t``: merge, then fade. Returns the merges as
        id pairs (src, dst) and the ids removed by fading."""
        k = self._k
        pairs = self._merge_pairs()
        keep = np.ones(k, bool)
        if pairs.size:
            src, dst = pairs[:, 0], pairs[:, 1]
            udst = np.unique(dst)
            fd = decay_factor(t - self._last_t[udst], self.half_life)
            self._sums[udst] *= fd[:, None].astype(np.float32)
            self._weights[udst] *= fd
            self._last_t[udst] = t
            fs = decay_factor(t - self._last_t[src], self.half_life)
            np.add.at(self._sums, dst, (self._sums[src] * fs[:, None]).astype(np.float32))
            np.add.at(self._weights, dst, self._weights[src] * fs)
            np.add.at(self._counts, dst, self._counts[src])
            np.minimum.at(self._created_t, dst, self._created_t[src])
            self._refresh_centroids(udst)
            keep[src] = False
        faded = np.zeros(k, bool)
        if self.half_life is not None and self.min_weight > 0:
            w = self._weights[:k] * decay_factor(t - self._last_t[:k], self.half_life)
            faded = keep & (w < self.min_weight)
            keep &= ~faded
        merges = np.stack([self._ids[pairs[:, 0]], self._ids[pairs[:, 1]]], axis=1) if pairs.size \
            else np.zeros((0, 2), np.int64)
        removed = self._ids[:k][faded].copy()
        if not keep.all():
            self._compact(keep)
        return merges, removed

    def _compact(self, keep: np.ndarray) -> None:
        rows = np.flatnonzero(keep)
        n = rows.size
        for arr in (self._ids, self._sums, self._centroids, self._weights, self._counts,
                    self._last_t, self._created_t):
            arr[:n] = arr[rows]
        self._k = n

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
        t = float(self.n_docs + n)
        merges, removed = np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
        if self.n_docs + n >= self._last_maintained + self.maintain_every:
            # at the batch's stream time, as apply_delta applies merges after the batch's sums
            # (decay is multiplicative, so the order of the two gives the same numbers)
            if self._may_maintain():
                merges, removed = self._maintain(t)
            self._last_maintained = (self.n_docs + n) - (self.n_docs + n) % self.maintain_every
        k = self._k
        if k:
            S = X @ self._centroids[:k].T
            best = S.argmax(axis=1)
            best_sim = S[np.arange(n), best]
        else:
            best = np.zeros(n, np.int64)
            best_sim = np.full(n, -np.inf, np.float32)
        rows = best.astype(np.int64)
        novel = np.flatnonzero(best_sim < self.threshold)
        if self.k is not None and k >= self.k:  # fixed k, all slots taken: outliers stay put
            novel = novel[:0]
        is_new = np.zeros(n, bool)
        is_outlier = best_sim < self.threshold if self.k is not None else np.zeros(n, bool)
        new_ids = np.zeros(0, np.int64)
        if novel.size:
            rows, over, new_rows = self._open_clusters(X, rows, best_sim, novel, t)
            is_outlier = over if self.k is None else (over | (is_outlier & (rows < k)))
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
            merges=merges,
            removed=removed,
        )
        return BatchResult(self._ids[rows].copy(), similarity.astype(np.float32), is_new,
                           is_outlier, delta, merged=merges, faded=removed)
