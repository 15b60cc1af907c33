"""State stores against their contract; the Redis store on a real private redis-server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stream.clustering import OnlineKMeans, apply_delta
from stream.clustering.base import ClusterState, Delta
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


@pytest.fixture(params=["memory", "redis-rows", "redis-delta"])
def store(request, tmp_path: Path):
    if request.param == "memory":
        yield MemoryStore(half_life=50.0, snapshot_path=tmp_path / "state.npz")
    else:
        server: Service = request.getfixturevalue("redis_server")
        s = RedisStore(server.url, model="t", half_life=50.0,
                       write_rows=request.param == "redis-rows")
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


WAYS = pytest.mark.parametrize("write_rows", [False, True], ids=["delta", "rows"])


@WAYS
def test_redis_commit_is_apply_delta(redis_server: Service, write_rows: bool) -> None:
    """The Lua script and apply_delta are one definition: same state, to float32 rounding."""
    store = RedisStore(redis_server.url, model=f"lua-{write_rows}", half_life=30.0,
                       write_rows=write_rows)
    reference = ClusterState.empty(24)
    km = OnlineKMeans(threshold=0.7, half_life=30.0)
    km.set_id_allocator(store.allocate_ids)
    for i, X in enumerate(batches(seed=3)):
        res = km.learn_predict(X)
        store.commit(res.delta, [OffsetMove(TP, NO_OFFSET if i == 0 else i * 64, (i + 1) * 64)])
        reference = apply_delta(reference, res.delta, 30.0)
    assert_same_state(store.load_state(), reference)
    assert store.commits == ({"rows": 7, "delta": 1} if write_rows else {"rows": 0, "delta": 8})


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


def assert_store_is_mirror(stored: ClusterState | None, mirror: ClusterState) -> None:
    """Every field of every row: ids, labels and counts exactly, numbers to float rounding."""
    assert stored is not None
    a, b = stored.sorted(), mirror.sorted()
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.row_labels, b.row_labels)
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_allclose(a.weights, b.weights, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(a.sums, b.sums, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.last_t, b.last_t, rtol=0, atol=1e-9)
    np.testing.assert_allclose(a.created_t, b.created_t, rtol=0, atol=1e-9)
    assert (a.n_docs, a.version) == (b.n_docs, b.version)


def drifting(n_docs: int, size: int, dim: int, seed: int):
    """Unit rows around centres that come and go, so clusters open, merge and fade."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(10, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    for b in range(n_docs // size):
        live = [(b // 4 + j) % 10 for j in range(3)]
        X = centres[rng.choice(live, size)] + 0.25 * rng.normal(size=(size, dim))
        yield (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


@WAYS
@pytest.mark.parametrize("kind", ["kmeans", "denstream"])
def test_redis_commit_is_apply_delta_with_merges_and_removals(redis_server: Service,
                                                              kind: str, write_rows: bool) -> None:
    """Real clusterer deltas with frequent maintenance: merges (several into one dst),
    removals, and DenStream's relabel-only rows with zero sums; the store is compared with
    the apply_delta mirror after every commit."""
    hl = 40.0
    if kind == "kmeans":
        model = OnlineKMeans(threshold=0.85, merge_threshold=0.45, half_life=hl, min_weight=0.8,
                             maintain_every=25)
    else:
        denstream = pytest.importorskip("stream.clustering.denstream")
        model = denstream.DenStream(eps=0.12, mu=3.0, beta=0.5, half_life=hl, offline_every=10)
    store = RedisStore(redis_server.url, model=f"lua-{kind}-{write_rows}", half_life=hl,
                       write_rows=write_rows)
    model.set_id_allocator(store.allocate_ids)
    mirror = ClusterState.empty(12)
    seen = {"merges": 0, "many_to_one": 0, "removed": 0, "relabel_only": 0}
    expected = NO_OFFSET
    for X in drifting(3000, 50, 12, seed=7):
        res = model.learn_predict(X)
        d = res.delta
        seen["merges"] += len(d.merges)
        seen["many_to_one"] += int(len(d.merges) > len(np.unique(d.merges[:, 1])))
        seen["removed"] += len(d.removed)
        seen["relabel_only"] += int((d.counts == 0).sum())
        store.commit(d, [OffsetMove(TP, expected, mirror.n_docs + len(X))])
        expected = mirror.n_docs + len(X)
        mirror = apply_delta(mirror, d, hl)
        assert_store_is_mirror(store.load_state(), mirror)
    stored = store.load_state()
    assert stored is not None and stored.next_id == mirror.next_id
    assert_same_state(stored, model.snapshot())
    assert seen["removed"] > 0
    if kind == "kmeans":
        assert seen["merges"] > 0 and seen["many_to_one"] > 0
    else:
        assert seen["relabel_only"] > 0
    assert store.commits["rows"] == (59 if write_rows else 0)
    store.close()


def hand_delta(dim: int, n_docs: int, rows: dict[int, tuple[float, int, int]] | None = None,
               merges: list[tuple[int, int]] | None = None,
               removed: list[int] | None = None, seed: int = 0) -> Delta:
    """rows: id -> (weight, count, label); weight 0 with count 0 is a relabel-only row."""
    rows = rows or {}
    rng = np.random.default_rng(seed)
    ids = np.array(list(rows), np.int64)
    w = np.array([rows[c][0] for c in ids], np.float64)
    vec = rng.normal(size=(len(ids), dim))
    return Delta(
        n_docs=n_docs, ids=ids, sums=(vec * w[:, None]).astype(np.float32), weights=w,
        counts=np.array([rows[c][1] for c in ids], np.int64),
        labels=np.array([rows[c][2] for c in ids], np.int64),
        merges=np.asarray(merges or [], np.int64).reshape(-1, 2),
        removed=np.asarray(removed or [], np.int64),
    )


@WAYS
@pytest.mark.parametrize("half_life", [None, 25.0])
def test_redis_commit_is_apply_delta_on_hand_made_deltas(redis_server: Service,
                                                         half_life: float | None,
                                                         write_rows: bool) -> None:
    """The corner cases: shared labels (several rows of one public cluster), relabel-only
    rows with zero sums, many-to-one merges, a chain, merges naming missing, removed or the
    same id, removals of absent ids, and a delta that is only maintenance (no documents)."""
    dim = 5
    deltas = [
        # rows 1..6; rows 5 and 6 belong to clusters 1 and 2 (DenStream-like labels)
        hand_delta(dim, 20, {1: (4.0, 4, 1), 2: (3.0, 3, 2), 3: (5.0, 5, 3), 4: (2.0, 2, 4),
                             5: (4.0, 4, 1), 6: (2.0, 2, 2)}, seed=1),
        # relabel-only row 4 -> 3; many-to-one into 1; then a chain 1 -> 6; a removal of a
        # row that was merged into (3) and of an absent id
        hand_delta(dim, 7, {4: (0.0, 0, 3), 1: (1.0, 1, 1), 7: (2.0, 2, 7)},
                   merges=[(2, 1), (3, 1), (4, 1), (1, 6)], removed=[5, 99], seed=2),
        # merges naming a removed id, a missing id, the same id; removing what is gone
        hand_delta(dim, 3, {6: (1.0, 1, 6)}, merges=[(5, 6), (77, 6), (6, 77), (6, 6), (2, 7)],
                   removed=[5, 2], seed=3),
        # maintenance only, no documents: the older 6 (created at 20) folds into the younger
        # 7 (created at 27), which keeps the earlier creation time; absent ids removed
        hand_delta(dim, 0, merges=[(6, 7)], removed=[6, 99]),
        # documents again, into fresh and old rows; the fresh 8 absorbs the fresh 10 and the
        # old 7, and then a removal takes the fresh 11
        hand_delta(dim, 9, {8: (6.0, 6, 8), 9: (3.0, 3, 8), 10: (1.0, 1, 10), 7: (1.0, 1, 7),
                            11: (2.0, 2, 11)}, merges=[(10, 8), (7, 8)], removed=[11], seed=4),
    ]
    store = RedisStore(redis_server.url, model=f"hand-{half_life}-{write_rows}",
                       half_life=half_life, write_rows=write_rows)
    mirror = ClusterState.empty(dim)
    for i, d in enumerate(deltas):
        store.commit(d, [OffsetMove(TP, NO_OFFSET if i == 0 else i, i + 1)])
        mirror = apply_delta(mirror, d, half_life)
        assert_store_is_mirror(store.load_state(), mirror)
    assert mirror.ids.tolist() == [8, 9]
    assert mirror.row_labels.tolist() == [8, 8]
    assert mirror.created_t.tolist() == [20.0, 39.0]
    assert store.commits["rows"] == (4 if write_rows else 0)
    store.close()


@WAYS
def test_a_batch_of_another_width_is_refused_and_writes_nothing(redis_server: Service,
                                                                write_rows: bool) -> None:
    """Either way, a batch whose vectors are wider than the model's is refused (a model's
    encoder cannot change) and leaves the model, offsets included, as it was."""
    store = RedisStore(redis_server.url, model=f"dim-{write_rows}", half_life=None,
                       write_rows=write_rows)
    for i in range(3):
        store.commit(hand_delta(5, 4, {i: (4.0, 4, i)}, seed=i),
                     [OffsetMove(TP, NO_OFFSET if i == 0 else 4 * i, 4 * (i + 1))])
    before = store.load_state()
    with pytest.raises(ValueError, match="dim=5, this batch has dim=6"):
        store.commit(hand_delta(6, 4, {9: (4.0, 4, 9)}), [OffsetMove(TP, 12, 16)])
    assert_store_is_mirror(store.load_state(), before)
    assert store.load_offsets([TP]) == {TP: 12}
    assert store.commits["rows"] == (2 if write_rows else 0)
    store.close()


def test_two_writers_fall_back_to_the_delta_way_and_lose_nothing(redis_server: Service) -> None:
    """Two workers of one model commit in turns: each finds the model moved past its
    mirror (the rows way answers stale and writes nothing), so each batch goes as a delta;
    the stored model is every delta applied in commit order after every commit. A writer
    left alone reads the model again and goes back to the rows way."""
    hl = 40.0
    a = RedisStore(redis_server.url, model="two", half_life=hl)
    b = RedisStore(redis_server.url, model="two", half_life=hl)
    models = {}
    for name, store in (("a", a), ("b", b)):
        models[name] = OnlineKMeans(threshold=0.8, half_life=hl)
        models[name].set_id_allocator(store.allocate_ids)
    tps = {"a": TopicPartition("in", 0), "b": TopicPartition("in", 1)}
    offsets = {"a": NO_OFFSET, "b": NO_OFFSET}
    mirror = ClusterState.empty(12)
    order = ["a", "b"] * 4 + ["a"] * 4
    for name, X in zip(order, drifting(50 * len(order), 50, 12, seed=3), strict=True):
        store = a if name == "a" else b
        d = models[name].learn_predict(X).delta
        new = (offsets[name] if offsets[name] >= 0 else 0) + len(X)
        store.commit(d, [OffsetMove(tps[name], offsets[name], new)])
        offsets[name] = new
        mirror = apply_delta(mirror, d, hl)
        assert_store_is_mirror(a.load_state(), mirror)
    # a: the first commit (delta, then the model is read); three in turns, the mirror stale
    # (delta; the patience doubles to 2); alone: the first after b's (delta), two that
    # follow its own (delta, then the model is read), then one by rows. b: four by deltas.
    assert a.commits == {"rows": 1, "delta": 7}
    assert b.commits == {"rows": 0, "delta": 4}
    a.close()
    b.close()


def test_a_replaced_model_is_never_written_over(redis_server: Service) -> None:
    """An import that replaces the model, even at the very version a writer's mirror holds,
    makes that writer's next batch go as a delta onto the imported model."""
    hl = 40.0
    writer = RedisStore(redis_server.url, model="swap", half_life=hl)
    km = OnlineKMeans(threshold=0.8, half_life=hl)
    km.set_id_allocator(writer.allocate_ids)
    data = list(drifting(300, 50, 12, seed=5))
    for i, X in enumerate(data[:3]):
        writer.commit(km.learn_predict(X).delta,
                      [OffsetMove(TP, NO_OFFSET if i == 0 else 50 * i, 50 * (i + 1))])
    assert writer.commits == {"rows": 2, "delta": 1}
    held = writer.load_state()
    assert held is not None and held.version == 3
    other = OnlineKMeans(threshold=0.8, half_life=hl)
    for X in data[3:5]:
        other.learn_predict(X)
    imported = other.snapshot()
    imported.version = held.version  # the same version, another model
    RedisStore(redis_server.url, model="swap", half_life=hl).import_state(
        imported, None, None, force=True)
    d = km.learn_predict(data[5]).delta
    move = [OffsetMove(TP, 150, 200)]
    # the script itself refuses the rows (as when the import lands between the stamp's
    # read and the script), and writes nothing
    mirror = writer._mirror
    assert mirror is not None and writer._commit_rows(mirror, d, move, None) is None
    assert_store_is_mirror(writer.load_state(), imported)
    writer.commit(d, move)
    assert writer.commits == {"rows": 2, "delta": 2}
    assert_store_is_mirror(writer.load_state(), apply_delta(imported, d, hl))
    writer.close()


def test_maintenance_lease_has_one_holder_and_passes_on(redis_server: Service) -> None:
    from stream.state.lease import Lease

    a_store = RedisStore(redis_server.url, model="lease")
    b_store = RedisStore(redis_server.url, model="lease")
    now = [0.0]
    a = Lease(a_store, ttl_s=0.5, owner="a", clock=lambda: now[0])
    b = Lease(b_store, ttl_s=0.5, owner="b", clock=lambda: now[0])
    assert a() is True and b() is False
    now[0] = 0.1  # within ttl/3: answered from the last reply, no round trip
    a_store.r.delete(a_store.keys["lease"])
    assert a() is True and b() is False
    now[0] = 0.2  # a renews
    assert a() is True and b() is False
    import time

    time.sleep(0.6)  # a stops renewing: the lease expires in Redis and b takes it
    now[0] = 0.4
    assert b() is True
    now[0] = 0.6
    assert a() is False
    b.release()
    now[0] = 0.8
    assert a() is True
    a_store.close()
    b_store.close()


def test_kmeans_maintains_only_while_its_gate_allows() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 8)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    allowed = [False]
    km = OnlineKMeans(threshold=0.5, merge_threshold=0.0, maintain_every=100, half_life=50.0,
                      min_weight=0.5)
    km.set_maintenance_gate(lambda: allowed[0])
    for i in range(0, 400, 50):
        res = km.learn_predict(X[i:i + 50])
        assert not len(res.merged) and not len(res.faded)
    allowed[0] = True
    results = [km.learn_predict(X[i:i + 50]) for i in range(0, 400, 50)]
    assert any(len(r.merged) or len(r.faded) for r in results)
