"""OnlineKMeans' long-stream maintenance: merges, fading, fixed k; and their announcement."""

from __future__ import annotations

import numpy as np
import pytest

from stream.clustering import ClusterState, OnlineKMeans, apply_delta
from stream.evaluate import follow_merges


def unit(rows: list[list[float]]) -> np.ndarray:
    X = np.asarray(rows, np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def test_near_duplicate_clusters_merge_into_the_older_and_the_merge_is_announced() -> None:
    # two clusters open apart (threshold 0.99 is strict) but their documents overlap a lot
    km = OnlineKMeans(threshold=0.99, merge_threshold=0.8, maintain_every=5)
    first = km.learn_predict(unit([[1, 0, 0], [1, 0, 0]]))
    second = km.learn_predict(unit([[1, 0.3, 0], [1, 0.3, 0]]))
    old_id, young_id = int(first.cluster_ids[0]), int(second.cluster_ids[0])
    assert old_id != young_id and km.n_clusters == 2
    third = km.learn_predict(unit([[0, 0, 1]]))  # crosses the maintenance mark
    assert third.merged.tolist() == [[young_id, old_id]]
    assert third.delta.merges.tolist() == [[young_id, old_id]]
    state = km.snapshot()
    assert old_id in state.ids and young_id not in state.ids
    assert int(state.counts[state.ids == old_id][0]) == 4  # counts add up
    assert float(state.weights.sum()) == pytest.approx(5.0)  # no weight lost or doubled
    # the retired id never comes back: documents of that story now get the older id
    again = km.learn_predict(unit([[1, 0.15, 0]]))
    assert int(again.cluster_ids[0]) == old_id


def test_unrelated_clusters_do_not_merge() -> None:
    km = OnlineKMeans(threshold=0.9, merge_threshold=0.5, maintain_every=1)
    km.learn_predict(unit([[1, 0, 0], [0, 1, 0], [0, 0, 1]]))
    res = km.learn_predict(unit([[1, 0, 0]]))
    assert len(res.merged) == 0 and km.n_clusters == 3


def test_average_linkage_keeps_two_loose_related_clusters_apart() -> None:
    """Centroids of two loose clusters can be close while their documents are not: the
    mean pairwise similarity (average linkage) is what decides."""
    a = unit([[1, 1, 0, 0], [1, -1, 0, 0]])  # loose cluster around e0
    b = unit([[1, 0, 1, 0], [1, 0, -1, 0]])  # another loose one around e0
    km = OnlineKMeans(threshold=0.0, merge_threshold=0.6, maintain_every=1000)
    km._alloc_arrays(4, 10)
    km.dim = 4
    km._k = 2
    km._ids[:2] = [0, 1]
    km._sums[:2] = [a.sum(0), b.sum(0)]
    km._weights[:2] = 2.0
    km._refresh_centroids(np.arange(2))
    centroid_cos = float(km._centroids[0] @ km._centroids[1])
    assert centroid_cos == pytest.approx(1.0)  # identical centroids ...
    assert km._merge_pairs().size == 0  # ... but documents 0.5 apart on average: no merge


def test_faded_clusters_are_removed_and_announced() -> None:
    km = OnlineKMeans(threshold=0.9, half_life=10.0, min_weight=0.2, maintain_every=10)
    first = km.learn_predict(unit([[1, 0, 0]]))
    old = int(first.cluster_ids[0])
    faded: list[int] = []
    for _ in range(6):  # 60 documents elsewhere: weight of the first is 0.5**6 < 0.2
        res = km.learn_predict(unit([[0, 1, 0]] * 10))
        faded += res.faded.tolist()
        assert res.delta.removed.tolist() == res.faded.tolist()
    assert faded == [old]
    assert old not in km.snapshot().ids


def test_fixed_k_keeps_k_slots_flags_outliers_and_fades_dead_clusters() -> None:
    """Spark's behaviour: with every slot taken, documents far from all centroids join the
    nearest one flagged as outliers; clusters nobody feeds fade and are announced; a freed
    slot is re-seeded by the next outliers with a new id."""
    rng = np.random.default_rng(0)
    E = np.eye(5)

    def batch(centres: list[int]) -> np.ndarray:
        X = E[centres] + 0.05 * rng.normal(size=(len(centres), 5))
        return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)

    km = OnlineKMeans(threshold=0.9, k=3, half_life=20.0, min_weight=0.3, maintain_every=10)
    for _ in range(10):
        km.learn_predict(batch([0, 1, 2] * 3))
    first = set(km.snapshot().ids.tolist())
    assert len(first) == 3
    moved = km.learn_predict(batch([3] * 10))  # a story no slot fits
    assert moved.is_outlier.all() and set(moved.cluster_ids.tolist()) <= first
    assert len(moved.delta.new_ids) == 0 and km.n_clusters == 3
    faded: list[int] = []
    for _ in range(15):
        faded += km.learn_predict(batch([3] * 10)).faded.tolist()
        assert km.n_clusters <= 3
    assert len(faded) >= 1 and set(faded) <= first
    assert not set(faded) & set(km.snapshot().ids.tolist())
    # a freed slot: a new story is seeded in it under an id never used before
    seeded = km.learn_predict(batch([4] * 5))
    assert len(seeded.delta.new_ids) == 1 and int(seeded.delta.new_ids[0]) not in first
    assert set(seeded.cluster_ids.tolist()) == set(seeded.delta.new_ids.tolist())
    assert km.n_clusters <= 3


def test_maintenance_deltas_keep_the_store_in_step() -> None:
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(5, 8))
    km = OnlineKMeans(threshold=0.8, merge_threshold=0.5, half_life=50.0, min_weight=0.5,
                      maintain_every=20)
    mirror = ClusterState.empty(8)
    merged = 0
    for _ in range(40):
        X = centres[rng.integers(0, 5, 16)] + 0.4 * rng.normal(size=(16, 8))
        X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
        res = km.learn_predict(X)
        merged += len(res.merged)
        mirror = apply_delta(mirror, res.delta, km.half_life)
    mine, theirs = km.snapshot().sorted(), mirror.sorted()
    assert merged > 0
    np.testing.assert_array_equal(mine.ids, theirs.ids)
    np.testing.assert_array_equal(mine.counts, theirs.counts)
    t = float(mine.n_docs)
    np.testing.assert_allclose(mine.weights_at(t, 50.0), theirs.weights_at(t, 50.0), rtol=1e-6)


def test_follow_merges_gives_the_id_a_consumer_ends_with() -> None:
    assert follow_merges([5, 6, 7, 8], [(6, 5), (8, 7)]) == [5, 5, 7, 7]


@pytest.mark.parametrize("bad", [dict(merge_threshold=1.5), dict(min_weight=-1.0),
                                 dict(maintain_every=0), dict(k=0)])
def test_bad_hyperparameters_are_refused_quoting_the_value(bad: dict) -> None:
    name, value = next(iter(bad.items()))
    with pytest.raises(ValueError, match=f"{name}={value}"):
        OnlineKMeans(**bad)
