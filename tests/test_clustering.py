"""Checks run against every clusterer (river's shared check suite, at batch size), then
OnlineKMeans' own."""

from __future__ import annotations

import numpy as np
import pytest

from stream.clustering import ClusterState, DenStream, OnlineKMeans, apply_delta
from stream.clustering.base import Clusterer, decay_factor, sum_rows_by

CLUSTERERS = [
    lambda: OnlineKMeans(threshold=0.6, max_clusters=50),
    lambda: OnlineKMeans(threshold=0.6, max_clusters=50, half_life=200.0),
    lambda: DenStream(eps=0.2, mu=4, beta=0.5, half_life=200.0, max_micro_clusters=100),
    lambda: DenStream(eps=0.2, mu=4, beta=0.5, half_life=None, offline_every=100),
]


def blobs(n: int, k: int, dim: int = 16, noise: float = 0.15, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, dim))
    y = rng.integers(0, k, n)
    X = centers[y] + noise * rng.normal(size=(n, dim))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X.astype(np.float32), y


def stream(c: Clusterer, X: np.ndarray, batch: int = 64) -> np.ndarray:
    return np.concatenate([c.learn_predict(X[i:i + batch]).cluster_ids for i in range(0, len(X), batch)])


@pytest.mark.parametrize("make", CLUSTERERS)
def test_check_result_shapes_and_types(make) -> None:
    X, _ = blobs(200, 4)
    res = make().learn_predict(X)
    assert res.cluster_ids.shape == (200,) and res.cluster_ids.dtype == np.int64
    assert res.similarity.shape == (200,) and np.all(res.similarity <= 1.0001)
    assert res.is_new_cluster.dtype == bool and res.is_outlier.dtype == bool


@pytest.mark.parametrize("make", CLUSTERERS)
def test_check_recovers_separated_blobs(make) -> None:
    from stream.evaluate import quality

    X, y = blobs(1000, 5)
    pred = stream(make(), X)
    assert quality(y, pred).nmi > 0.95


@pytest.mark.parametrize("make", CLUSTERERS)
def test_check_delta_round_trip(make) -> None:
    """The delta of a batch, applied to the state before it, gives the state after it."""
    X, _ = blobs(600, 6, seed=1)
    c = make()
    for i in range(0, 400, 50):
        c.learn_predict(X[i:i + 50])
    before = c.snapshot()
    res = c.learn_predict(X[400:500])
    after = c.snapshot().sorted()
    applied = apply_delta(before, res.delta, c.half_life).sorted()
    np.testing.assert_array_equal(applied.ids, after.ids)
    np.testing.assert_allclose(applied.sums, after.sums, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(applied.weights, after.weights, rtol=1e-9)
    np.testing.assert_array_equal(applied.counts, after.counts)
    assert applied.n_docs == after.n_docs == 500


@pytest.mark.parametrize("make", CLUSTERERS)
def test_check_snapshot_restore_gives_same_assignments(make) -> None:
    X, _ = blobs(800, 6, seed=2)
    a, b = make(), make()
    stream(a, X[:400]), stream(b, X[:400])
    c = make()
    c.restore(b.snapshot())
    np.testing.assert_array_equal(stream(a, X[400:]), stream(c, X[400:]))


@pytest.mark.parametrize("make", CLUSTERERS)
def test_check_rejects_bad_input(make) -> None:
    c = make()
    with pytest.raises(ValueError, match="X.ndim=1 should be 2"):
        c.learn_predict(np.zeros(4, np.float32))
    c.learn_predict(np.eye(4, dtype=np.float32))
    with pytest.raises(ValueError, match=r"X.shape\[1\]=3 should be 4"):
        c.learn_predict(np.zeros((2, 3), np.float32))


def test_assignment_and_creation() -> None:
    km = OnlineKMeans(threshold=0.9)
    r = km.learn_predict(np.array([[1, 0, 0], [0, 1, 0]], np.float32))
    assert r.cluster_ids.tolist() == [0, 1] and r.is_new_cluster.all()
    r = km.learn_predict(np.array([[0.99, 0.1, 0], [0, 0, 1]], np.float32))
    assert r.cluster_ids.tolist() == [0, 2]
    assert r.is_new_cluster.tolist() == [False, True]
    assert r.delta.new_ids.tolist() == [2]
    assert km.snapshot().counts.tolist() == [2, 1, 1]


def test_novel_documents_of_one_batch_share_a_new_cluster() -> None:
    km = OnlineKMeans(threshold=0.9)
    r = km.learn_predict(np.array([[1, 0], [0.999, 0.04], [0, 1]], np.float32))
    assert r.cluster_ids.tolist() == [0, 0, 1]
    assert r.is_new_cluster.tolist() == [True, False, True]


def test_max_clusters_flags_outliers() -> None:
    km = OnlineKMeans(threshold=0.99, max_clusters=2)
    r = km.learn_predict(np.eye(3, dtype=np.float32))
    assert km.n_clusters == 2
    assert r.is_outlier.tolist() == [False, False, True]


def test_decay_halves_weight_per_half_life() -> None:
    km = OnlineKMeans(threshold=0.5, half_life=10.0)
    km.learn_predict(np.tile(np.array([[1, 0]], np.float32), (10, 1)))  # cluster 0, weight 10 at t=10
    km.learn_predict(np.tile(np.array([[0, 1]], np.float32), (10, 1)))  # t=20
    s = km.snapshot()
    w = s.weights_at(20, 10.0)
    assert w[0] == pytest.approx(5.0) and w[1] == pytest.approx(10.0)
    km.learn_predict(np.array([[1, 0]], np.float32))  # t=21: cluster 0 decayed 11 docs, then +1
    s = km.snapshot()
    assert s.weights[0] == pytest.approx(10 * 0.5 ** 1.1 + 1)
    assert s.counts.tolist() == [11, 10]


def test_decay_factor() -> None:
    assert decay_factor(10, 10.0) == pytest.approx(0.5)
    assert decay_factor(10, None) == 1.0


def sums_by_loop(labels: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    uniq = np.array(sorted(set(labels.tolist())), np.int64)
    sums = np.array([X[labels == u].sum(axis=0) for u in uniq], np.float64).reshape(len(uniq), X.shape[1])
    return uniq, sums, np.array([np.count_nonzero(labels == u) for u in uniq], np.int64)


@pytest.mark.parametrize("n_labels, per_label", [
    (50, 3),  # the membership product over the extra rows
    (2100, 2),  # 2,100 labels x 2,100 extra rows: past the product's bound, np.add.reduceat
    (400, 1),  # every label once: the first-row gather alone
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sum_rows_by_matches_a_loop(n_labels: int, per_label: int, dtype: type) -> None:
    rng = np.random.default_rng(n_labels)
    labels = rng.permutation(np.repeat(rng.choice(10 ** 6, n_labels, replace=False), per_label))
    X = rng.normal(size=(labels.size, 5)).astype(dtype)
    uniq, sums, counts = sum_rows_by(labels, X)
    want = sums_by_loop(labels, X)
    assert sums.dtype == np.float32 and counts.dtype == np.int64
    np.testing.assert_array_equal(uniq, want[0])
    np.testing.assert_allclose(sums, want[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(counts, want[2])


def test_sum_rows_by_empty_and_mismatched_input() -> None:
    uniq, sums, counts = sum_rows_by(np.zeros(0, np.int64), np.zeros((0, 3), np.float32))
    assert uniq.shape == (0,) and sums.shape == (0, 3) and counts.shape == (0,)
    with pytest.raises(ValueError, match=r"labels.shape=\(2,\) should be \(3,\)"):
        sum_rows_by(np.array([1, 2]), np.zeros((3, 4), np.float32))


def test_constructor_validates() -> None:
    with pytest.raises(ValueError, match="threshold=2 should be within"):
        OnlineKMeans(threshold=2)
    with pytest.raises(ValueError, match="max_clusters=0 should be >= 1"):
        OnlineKMeans(max_clusters=0)
    with pytest.raises(ValueError, match="half_life=0 should be > 0"):
        OnlineKMeans(half_life=0)


def test_id_allocator_is_used() -> None:
    km = OnlineKMeans(threshold=0.9)
    km.set_id_allocator(lambda n: np.arange(100, 100 + n))
    assert km.learn_predict(np.eye(2, dtype=np.float32)).cluster_ids.tolist() == [100, 101]


def test_empty_state_restore() -> None:
    km = OnlineKMeans()
    km.restore(ClusterState.empty(8))
    assert km.n_clusters == 0
    assert km.learn_predict(np.eye(8, dtype=np.float32)[:2]).cluster_ids.shape == (2,)


def test_a_story_breaking_inside_a_batch_gathers_its_documents() -> None:
    km = OnlineKMeans(threshold=0.5)
    km.learn_predict(np.array([[1, 0, 0]], np.float32))
    x1 = np.array([0.3, 1, 0], np.float32)  # cosine 0.29 to cluster 0: opens a cluster
    x2 = np.array([0.6, 1, 0], np.float32)  # cosine 0.51 to cluster 0, 0.97 to x1's cluster
    X = np.stack([x1, x2]) / np.linalg.norm(np.stack([x1, x2]), axis=1, keepdims=True)
    r = km.learn_predict(X)
    assert r.cluster_ids.tolist() == [1, 1]
    assert r.is_new_cluster.tolist() == [True, False]
    assert km.snapshot().counts.tolist() == [1, 2]


def test_over_budget_documents_of_a_first_batch_join_the_nearest_new_cluster() -> None:
    km = OnlineKMeans(threshold=0.99, max_clusters=2)
    X = np.array([[1, 0, 0], [0, 1, 0], [0.2, 0.98, 0.05]], np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    r = km.learn_predict(X)
    assert r.cluster_ids.tolist() == [0, 1, 1]
    assert r.is_outlier.tolist() == [False, False, True]
    assert km.snapshot().counts.tolist() == [1, 2]
