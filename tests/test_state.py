"""State stores against their contract; the Redis store on a real private redis-server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stream.clustering import OnlineKMeans, apply_delta
from stream.clustering.base import ClusterState
from stream.contracts import TopicPartition
from stream.services import Service
from stream.state import NO_OFFSET, CommitRejected, OffsetMove
from stream.state.memory import MemoryStore
from stream.state.redis_store import RedisStore, model_keys, redact

TP = TopicPartition("in", 0)


def batches(n_batches: int = 8, size: int = 64, dim: int = 24, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(12, dim))
    for _ in range(n_batches):
        X = centers[rng.integers(0, 12, size)] + 0.3 * rng.normal(size=(size, dim))
        yield (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def feed(store, half_life: float | None = 50.0) -> OnlineKMeans:
    km = OnlineKMeans(threshold=0.7, half_life=half_life)
    km.set_id_allocator(store.allocate_ids)
    expected = NO_OFFSET
    for i, X in enumerate(batches()):
        res = km.learn_predict(X)
        new = (i + 1) * len(X)
        store.commit(res.delta, [OffsetMove(TP, expected, new)])
        expected = new
    return km


def assert_same_state(a: ClusterState, b: ClusterState) -> None:
    a, b = a.sorted(), b.sorted()
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.sums, b.sums, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.weights, b.weights, rtol=1e-9)
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_allclose(a.last_t, b.last_t)
    assert a.n_docs == b.n_docs


@pytest.fixture(params=["memory", "redis"])
def store(request, tmp_path: Path):
    if request.param == "memory":
        yield MemoryStore(half_life=50.0, snapshot_path=tmp_path / "state.npz")
    else:
        server: Service = request.getfixturevalue("redis_server")
        s = RedisStore(server.url, model="t", half_life=50.0)
        yield s
        s.close()


def test_store_holds_what_the_clusterer_learnt(store) -> None:
    km = feed(store)
    assert_same_state(store.load_state(), km.snapshot())
    assert store.load_offsets([TP]) == {TP: 512}
    assert store.load_state().n_docs == 512


def test_compare_and_set_refuses_a_stale_commit(store) -> None:
    feed(store)
    before = store.load_state()
    km = OnlineKMeans(threshold=0.7)
    res = km.learn_predict(next(batches(1, seed=9)))
    with pytest.raises(CommitRejected) as info:
        store.commit(res.delta, [OffsetMove(TP, 448, 600)])  # another worker already moved it to 512
    assert info.value.found == 512 and info.value.expected == 448
    after = store.load_state()
    assert after.n_docs == before.n_docs and after.version == before.version  # nothing applied
    assert store.load_offsets([TP]) == {TP: 512}


def test_a_partition_never_committed_must_be_expected_absent(store) -> None:
    km = OnlineKMeans(threshold=0.7)
    res = km.learn_predict(next(batches(1)))
    with pytest.raises(CommitRejected):
        store.commit(res.delta, [OffsetMove(TP, 0, 64)])
    store.commit(res.delta, [OffsetMove(TP, NO_OFFSET, 64)])
    assert store.load_offsets([TP, TopicPartition("in", 1)]) == {TP: 64}


def test_ids_are_unique_across_calls(store) -> None:
    a, b = store.allocate_ids(3), store.allocate_ids(2)
    assert len(set(a.tolist()) | set(b.tolist())) == 5


def test_redis_commit_is_apply_delta(redis_server: Service) -> None:
    """The Lua script and apply_delta are one definition: same state, to float32 rounding."""
    store = RedisStore(redis_server.url, model="lua", half_life=30.0)
    reference = ClusterState.empty(24)
    km = OnlineKMeans(threshold=0.7, half_life=30.0)
    km.set_id_allocator(store.allocate_ids)
    for i, X in enumerate(batches(seed=3)):
        res = km.learn_predict(X)
        store.commit(res.delta, [OffsetMove(TP, NO_OFFSET if i == 0 else i * 64, (i + 1) * 64)])
        reference = apply_delta(reference, res.delta, 30.0)
    assert_same_state(store.load_state(), reference)


def test_redis_state_survives_a_restart_with_aof(redis_aof: Service) -> None:
    store = RedisStore(redis_aof.url, model="aof", half_life=None)
    km = feed(store, half_life=None)
    store.close()
    redis_aof.restart()
    again = RedisStore(redis_aof.url, model="aof")
    assert_same_state(again.load_state(), km.snapshot())
    assert again.load_offsets([TP]) == {TP: 512}


def test_memory_snapshot_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "snap.npz"
    store = MemoryStore(half_life=50.0, snapshot_path=path)
    km = feed(store)
    store.close()
    again = MemoryStore(half_life=50.0, snapshot_path=path)
    assert_same_state(again.load_state(), km.snapshot())
    assert again.load_offsets([TP]) == {TP: 512}


def test_keys_share_one_hash_tag_and_urls_are_redacted() -> None:
    keys = model_keys("news")
    assert all("{news}" in k for k in keys.values())
    with pytest.raises(ValueError):
        model_keys("a{b}")
    assert redact("redis://user:s3cret@host:6379/0") == "redis://user:***@host:6379/0"
    assert "s3cret" not in redact("rediss://:s3cret@host:6380")
