"""Property tests (hypothesis) of the clusterers and of apply_delta.

- Weight conservation: after any sequence of batches, merges and fades, the live weight
  plus the weight removed by fading equals the decayed sum of the inputs; counts add up;
  and the clusterer's own state equals the store mirror built with apply_delta from the
  deltas alone (the store and the local replica never diverge).
- Snapshot/restore mid-stream (directly and through the MemoryStore's npz file) gives the
  same assignments as not doing so.
- apply_delta's merge and removal algebra.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from stream.clustering.base import (
    BatchResult,
    Clusterer,
    ClusterState,
    Delta,
    apply_delta,
    decay_factor,
)
from stream.clustering.kmeans import OnlineKMeans
from stream.state.memory import load_snapshot, save_snapshot

try:
    from stream.clustering.denstream import DenStream
except Exception:  # pragma: no cover - written concurrently; absent or broken: skip it
    DenStream = None  # type: ignore[assignment,misc]

KINDS = [
    "kmeans",
    pytest.param("denstream", marks=pytest.mark.skipif(
        DenStream is None, reason="stream.clustering.denstream.DenStream does not import")),
]
# TOPICSTREAM_EXAMPLES=2000 for a longer hunt
SETTINGS = settings(max_examples=int(os.environ.get("TOPICSTREAM_EXAMPLES", "100")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- strategies ---------------------------------------------------------------------------------

# short half-lives (in documents) against streams of up to 512 documents, so that clusters fade
half_lives = st.one_of(st.none(), st.sampled_from([10.0, 20.0, 30.0, 50.0]),
                       st.integers(20, 200).map(float))


@st.composite
def streams(draw: st.DrawFn) -> list[np.ndarray]:
    """Batches of unit float32 rows around a few random unit centres; each batch draws from a
    random subset of them, so that clusters open, drift apart, merge and fade."""
    dim = draw(st.integers(4, 16))
    n_batches = draw(st.integers(1, 8))
    sizes = draw(st.lists(st.integers(1, 64), min_size=n_batches, max_size=n_batches))
    n_centres = draw(st.integers(1, 5))
    noise = draw(st.sampled_from([0.02, 0.1, 0.2, 0.35, 0.6]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_centres, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = []
    for n in sizes:
        active = rng.choice(n_centres, size=int(rng.integers(1, n_centres + 1)), replace=False)
        X = centres[rng.choice(active, size=n)] + noise * rng.normal(size=(n, dim))
        X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
        out.append(X.astype(np.float32))
    return out


@st.composite
def kmeans_params(draw: st.DrawFn) -> dict[str, Any]:
    return dict(
        # mostly strict thresholds: one story opens several clusters, which then merge
        threshold=draw(st.one_of(st.floats(0.3, 0.98), st.floats(0.85, 0.99))),
        max_clusters=draw(st.integers(2, 48)),
        half_life=draw(half_lives),
        merge_threshold=draw(st.one_of(st.none(), st.floats(0.2, 0.9), st.floats(0.2, 0.6))),
        min_weight=draw(st.sampled_from([0.0, 0.05, 0.3, 1.0, 2.5])),
        maintain_every=draw(st.integers(1, 50)),
        k=draw(st.one_of(st.none(), st.none(), st.integers(1, 8))),
    )


@st.composite
def denstream_params(draw: st.DrawFn) -> dict[str, Any]:
    mu = draw(st.floats(1.5, 6.0))
    beta = draw(st.floats(max(0.2, 1.05 / mu), 1.0))
    return dict(
        eps=draw(st.floats(0.02, 0.4)),
        mu=mu,
        beta=beta,
        half_life=draw(half_lives),
        max_micro_clusters=draw(st.integers(2, 64)),
        offline_every=draw(st.integers(1, 30)),
    )


def params_for(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    return kmeans_params() if kind == "kmeans" else denstream_params()


def make(kind: str, params: dict[str, Any]) -> Clusterer:
    if kind == "kmeans":
        return OnlineKMeans(**params)
    assert DenStream is not None
    return DenStream(**params)


# -- helpers ------------------------------------------------------------------------------------

def decayed_sums(state: ClusterState, t: float, half_life: float | None) -> np.ndarray:
    return state.sums.astype(np.float64) * decay_factor(t - state.last_t, half_life)[:, None]


def assert_same_model(mine: ClusterState, mirror: ClusterState, half_life: float | None) -> None:
    """The clusterer's state equals the store mirror, compared at the same stream time."""
    a, b = mine.sorted(), mirror.sorted()
    assert a.n_docs == b.n_docs
    t = float(a.n_docs)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.row_labels, b.row_labels)
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_array_equal(a.created_t, b.created_t)
    np.testing.assert_allclose(a.weights_at(t, half_life), b.weights_at(t, half_life),
                               rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(decayed_sums(a, t, half_life), decayed_sums(b, t, half_life),
                               rtol=1e-5, atol=1e-4)
    assert a.next_id == b.next_id


def expected_weight(doc_times: list[tuple[float, int]], t: float, half_life: float | None) -> float:
    """Sum over every document of ``0.5 ** ((t - t_doc) / half_life)``."""
    return float(sum(n * float(decay_factor(t - td, half_life)) for td, n in doc_times))


def check_names(prev: ClusterState, delta: Delta, half_life: float | None) -> ClusterState:
    """Merges and removals name clusters that exist when they apply; returns the state after
    steps 1-2 of apply_delta (touched rows and merges, not the removals)."""
    mid = apply_delta(prev, dataclasses.replace(delta, merges=np.zeros((0, 2), np.int64),
                                                removed=np.zeros(0, np.int64)), half_life)
    live = set(mid.ids.tolist())
    for src, dst in np.asarray(delta.merges).reshape(-1, 2).tolist():
        assert src != dst, f"self-merge {src}"
        assert src in live, f"merge names src {src}, not a live cluster"
        assert dst in live, f"merge names dst {dst}, not a live cluster"
        live.discard(src)
    removed = np.asarray(delta.removed).tolist()
    assert len(set(removed)) == len(removed), f"duplicate removals {removed}"
    for c in removed:
        assert c in live, f"removal names {c}, not a live cluster"
    return apply_delta(prev, dataclasses.replace(delta, removed=np.zeros(0, np.int64)), half_life)


def run_checked(clusterer: Clusterer, batches: list[np.ndarray]) -> list[BatchResult]:
    """Feed ``batches``, holding every invariant after each; returns the results."""
    hl = clusterer.half_life
    mirror = ClusterState.empty(batches[0].shape[1])
    removed_w, removed_n, t_prev = 0.0, 0, 0.0
    doc_times: list[tuple[float, int]] = []
    retired: set[int] = set()
    results = []
    for X in batches:
        labels_before = set(mirror.row_labels.tolist())
        res = clusterer.learn_predict(X)
        results.append(res)
        d = res.delta
        assert d.n_docs == len(X)
        t = float(mirror.n_docs + d.n_docs)
        doc_times.append((t, len(X)))
        # every document's weight is in exactly one touched row
        assert int(d.counts.sum()) == len(X)
        np.testing.assert_allclose(d.weights.sum(), len(X))
        assert len(np.unique(d.ids)) == len(d.ids)

        # announced retirements: merged (src, dst) and faded ids name known clusters
        merged = np.asarray(res.merged, np.int64).reshape(-1, 2)
        known = labels_before | set(d.row_labels.tolist()) | set(d.new_ids.tolist())
        for src, dst in merged.tolist():
            assert src != dst and src in known and dst in known, (src, dst, known)
            assert dst not in retired, f"merge into retired id {dst}"
        for c in np.asarray(res.faded).tolist():
            assert c in labels_before, f"faded id {c} was never a cluster"
        retired |= set(merged[:, 0].tolist()) | set(np.asarray(res.faded).tolist())
        # a retired id never labels a document again (this batch included: maintenance runs
        # before assignment, DenStream's offline step relabels before reporting)
        again = set(res.cluster_ids.tolist()) & retired
        assert not again, f"retired ids {again} came back"

        # the mirror: what a store holds after committing every delta
        mid = check_names(mirror, d, hl)
        gone = np.isin(mid.ids, d.removed)
        removed_w = removed_w * float(decay_factor(t - t_prev, hl)) + float(
            mid.weights_at(t, hl)[gone].sum())
        removed_n += int(mid.counts[gone].sum())
        mirror = apply_delta(mirror, d, hl)
        t_prev = t

        # conservation: nothing lost, nothing counted twice
        live_w = float(mirror.weights_at(t, hl).sum())
        want = expected_weight(doc_times, t, hl)
        assert live_w + removed_w == pytest.approx(want, rel=1e-6), (live_w, removed_w, want)
        assert int(mirror.counts.sum()) + removed_n == mirror.n_docs

        # the replica and the store never diverge
        snap = clusterer.snapshot()
        assert_same_model(snap, mirror, hl)
        assert set(res.cluster_ids.tolist()) <= set(snap.row_labels.tolist())
        assert not set(snap.row_labels.tolist()) & retired
    return results


# -- 1. weight conservation -------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@SETTINGS
@given(data=st.data())
def test_weight_is_conserved_and_the_replica_equals_the_store(kind: str, data: st.DataObject) -> None:
    params = data.draw(params_for(kind), label="params")
    batches = data.draw(streams(), label="batches")
    results = run_checked(make(kind, params), batches)
    # how often the generated streams reach each path (pytest --hypothesis-show-statistics)
    event(f"merged: {any(len(r.merged) for r in results)}")
    event(f"removed: {any(len(r.delta.removed) for r in results)}")
    event(f"relabel-only rows: {any((r.delta.counts == 0).any() for r in results)}")


def maintaining_stream(n_batches: int = 12, size: int = 13) -> list[np.ndarray]:
    """A fixed stream whose stories come and go in batches smaller than the maintenance
    period: clusters open, merge and fade between the marks."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 8))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    batches = []
    for b in range(n_batches):
        pick = rng.choice([b // 3 % 3, (b // 3 + 1) % 3], size=size)
        X = centres[pick] + 0.2 * rng.normal(size=(size, 8))
        batches.append((X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32))
    return batches


FIXED_PARAMS = {
    "kmeans": dict(threshold=0.95, merge_threshold=0.5, half_life=20.0, min_weight=1.0,
                   maintain_every=30),
    "denstream": dict(eps=0.1, mu=3.0, beta=0.5, half_life=20.0, offline_every=30),
}


@pytest.mark.parametrize("kind", KINDS)
def test_the_fixed_stream_merges_and_fades(kind: str) -> None:
    """Not vacuous: a stream like the generated ones does merge and fade."""
    res = run_checked(make(kind, FIXED_PARAMS[kind]), maintaining_stream())
    assert sum(len(r.merged) for r in res) > 0
    assert sum(len(r.delta.removed) for r in res) > 0


# -- 2. snapshot / restore ------------------------------------------------------------------------

def assert_same_results(a: list[BatchResult], b: list[BatchResult]) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        np.testing.assert_array_equal(ra.cluster_ids, rb.cluster_ids)
        np.testing.assert_array_equal(ra.is_new_cluster, rb.is_new_cluster)
        np.testing.assert_array_equal(ra.is_outlier, rb.is_outlier)
        np.testing.assert_allclose(ra.similarity, rb.similarity, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(ra.merged).reshape(-1, 2),
                                      np.asarray(rb.merged).reshape(-1, 2))
        np.testing.assert_array_equal(ra.faded, rb.faded)


def npz_round_trip(state: ClusterState) -> ClusterState:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "snap.npz"
        save_snapshot(path, state, {"in:0": state.n_docs})
        again, offsets, _ = load_snapshot(path)
    assert offsets == {"in:0": state.n_docs}
    return again


@pytest.mark.parametrize("kind", KINDS)
@SETTINGS
@given(data=st.data())
def test_snapshot_and_restore_mid_stream_changes_nothing(kind: str, data: st.DataObject) -> None:
    params = data.draw(params_for(kind), label="params")
    batches = data.draw(streams(), label="batches")
    split = data.draw(st.integers(0, len(batches)), label="split")
    a = make(kind, params)
    straight = [a.learn_predict(X) for X in batches]

    b = make(kind, params)
    for X in batches[:split]:
        b.learn_predict(X)
    state = b.snapshot()
    restores: list[Callable[[ClusterState], ClusterState]] = [lambda s: s, npz_round_trip]
    for through in restores:
        fresh = make(kind, params)
        fresh.restore(through(state))
        rest = [fresh.learn_predict(X) for X in batches[split:]]
        assert_same_results(straight[split:], rest)
        assert_same_model(fresh.snapshot(), a.snapshot(), params["half_life"])


@pytest.mark.parametrize("kind", KINDS)
def test_restore_at_every_split_of_a_maintaining_stream(kind: str) -> None:
    """Every split point of the fixed stream, most of them between maintenance marks: the
    restored clusterer keeps the maintenance (pruning, offline) clock of the straight run."""
    batches = maintaining_stream()
    params = FIXED_PARAMS[kind]
    a = make(kind, params)
    straight = [a.learn_predict(X) for X in batches]
    for split in range(1, len(batches)):
        b = make(kind, params)
        for X in batches[:split]:
            b.learn_predict(X)
        fresh = make(kind, params)
        fresh.restore(npz_round_trip(b.snapshot()))
        assert_same_results(straight[split:], [fresh.learn_predict(X) for X in batches[split:]])
        assert_same_model(fresh.snapshot(), a.snapshot(), params["half_life"])


# -- 3. apply_delta algebra ---------------------------------------------------------------------

def state_of(rows: dict[int, tuple[float, float, int]], dim: int = 3, n_docs: int = 100,
             labels: dict[int, int] | None = None) -> ClusterState:
    """Rows id -> (weight, last_t, count); sums are weight * a unit vector of the row."""
    ids = np.array(sorted(rows), np.int64)
    rng = np.random.default_rng(len(ids))
    vecs = rng.normal(size=(len(ids), dim))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    w = np.array([rows[c][0] for c in ids], np.float64)
    lab = np.array([(labels or {}).get(int(c), int(c)) for c in ids], np.int64)
    return ClusterState(
        dim=dim, ids=ids, sums=(vecs * w[:, None]).astype(np.float32), weights=w,
        counts=np.array([rows[c][2] for c in ids], np.int64),
        last_t=np.array([rows[c][1] for c in ids], np.float64),
        created_t=np.array([rows[c][1] - 5 for c in ids], np.float64), labels=lab,
        n_docs=n_docs, next_id=int(ids.max()) + 1 if len(ids) else 0)


def ops(dim: int, n_docs: int = 0, merges: Sequence[tuple[int, int]] = (),
        removed: Sequence[int] = ()) -> Delta:
    d = Delta.empty(dim)
    d.n_docs = n_docs
    d.merges = np.asarray(list(merges), np.int64).reshape(-1, 2)
    d.removed = np.asarray(list(removed), np.int64)
    return d


def same_rows(a: ClusterState, b: ClusterState, half_life: float | None) -> None:
    a, b = a.sorted(), b.sorted()
    assert a.n_docs == b.n_docs
    t = float(a.n_docs)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.row_labels, b.row_labels)
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_array_equal(a.created_t, b.created_t)
    np.testing.assert_allclose(a.weights_at(t, half_life), b.weights_at(t, half_life), rtol=1e-12)
    np.testing.assert_allclose(decayed_sums(a, t, half_life), decayed_sums(b, t, half_life),
                               rtol=1e-6, atol=1e-6)


HL = 40.0


def test_a_merge_chain_leaves_one_row_with_everything() -> None:
    # 1 -> 2 then 2 -> 3; row 4 is a micro-cluster labelled 1 (DenStream-like)
    s = state_of({1: (2.0, 90, 2), 2: (3.0, 80, 3), 3: (1.5, 100, 4), 4: (1.0, 95, 1)},
                 labels={4: 1})
    t = float(s.n_docs + 7)
    out = apply_delta(s, ops(3, n_docs=7, merges=[(1, 2), (2, 3)]), HL)
    assert out.ids.tolist() == [3, 4]
    assert out.row_labels.tolist() == [3, 3]  # the row labelled 1 followed the chain to 3
    assert out.counts.tolist() == [9, 1]
    top = s.weights_at(t, HL)[:3].sum()
    assert out.weights_at(t, HL)[0] == pytest.approx(top, rel=1e-12)
    np.testing.assert_allclose(decayed_sums(out, t, HL)[0], decayed_sums(s, t, HL)[:3].sum(0),
                               rtol=1e-6)
    assert out.created_t[0] == s.created_t[:3].min()
    assert out.last_t[0] == t
    # the same merges one per delta, or many-to-one into 3, give the same row
    step = apply_delta(apply_delta(s, ops(3, n_docs=7, merges=[(1, 2)]), HL), ops(3, merges=[(2, 3)]), HL)
    same_rows(out, step, HL)
    fan = apply_delta(s, ops(3, n_docs=7, merges=[(1, 3), (2, 3)]), HL)
    same_rows(out, fan, HL)


def test_a_merge_naming_a_missing_id_does_nothing() -> None:
    s = state_of({1: (2.0, 90, 2), 2: (3.0, 80, 3)})
    for merges in ([(7, 1)], [(1, 7)], [(7, 8)], [(1, 1)]):
        out = apply_delta(s, ops(3, merges=merges), HL)
        same_rows(out, s, HL)
        np.testing.assert_array_equal(out.weights, s.weights)  # not even decayed
        np.testing.assert_array_equal(out.last_t, s.last_t)


def test_a_removed_id_merges_nowhere() -> None:
    s = state_of({1: (2.0, 90, 2), 2: (3.0, 80, 3), 3: (1.0, 99, 1)})
    gone = apply_delta(s, ops(3, n_docs=4, removed=[1]), HL)
    assert gone.ids.tolist() == [2, 3]
    for merges in ([(1, 2)], [(2, 1)]):
        out = apply_delta(gone, ops(3, merges=merges), HL)
        same_rows(out, gone, HL)
    # within one delta merges come first: the merged-in weight leaves with a removed dst
    both = apply_delta(s, ops(3, n_docs=4, merges=[(1, 2)], removed=[2]), HL)
    assert both.ids.tolist() == [3]
    # and a removal naming an id merged away earlier in the same delta is a no-op
    twice = apply_delta(s, ops(3, n_docs=4, merges=[(1, 2)], removed=[1]), HL)
    same_rows(twice, apply_delta(s, ops(3, n_docs=4, merges=[(1, 2)]), HL), HL)


@settings(max_examples=100, deadline=None)
@given(
    n_rows=st.integers(1, 8),
    merges=st.lists(st.tuples(st.integers(0, 10), st.integers(0, 10)), max_size=12),
    removed=st.lists(st.integers(0, 10), max_size=4),
    half_life=half_lives,
    n_docs=st.integers(0, 50),
    seed=st.integers(0, 1000),
    shared_labels=st.booleans(),
)
def test_merges_in_any_order_neither_lose_nor_double_count(
        n_rows: int, merges: list[tuple[int, int]], removed: list[int], half_life: float | None,
        n_docs: int, seed: int, shared_labels: bool) -> None:
    """Whatever merges a delta names (stale, missing, repeated, chains, self-merges), the
    weight and counts at ``t`` are conserved; with labels = ids (k-means) no live row is
    labelled with a merged-away id."""
    rng = np.random.default_rng(seed)
    rows = {c: (float(rng.uniform(0.1, 5)), float(rng.integers(0, 100)), int(rng.integers(1, 9)))
            for c in range(n_rows)}
    # shared labels: several rows of one public cluster (DenStream-like)
    labels = {c: int(rng.integers(0, n_rows)) for c in range(n_rows)} if shared_labels else None
    s = state_of(rows, labels=labels)
    t = float(s.n_docs + n_docs)
    merged_only = apply_delta(s, ops(3, n_docs, merges), half_life)
    assert merged_only.weights_at(t, half_life).sum() == pytest.approx(
        s.weights_at(t, half_life).sum(), rel=1e-12)
    assert merged_only.counts.sum() == s.counts.sum()
    np.testing.assert_allclose(decayed_sums(merged_only, t, half_life).sum(0),
                               decayed_sums(s, t, half_life).sum(0), rtol=1e-5, atol=1e-5)
    # the merges that took effect: both ends live at the time
    live = set(range(n_rows))
    gone = set()
    for src, dst in merges:
        if src in live and dst in live and src != dst:
            live.discard(src)
            gone.add(src)
    assert set(merged_only.ids.tolist()) == live
    if not shared_labels:
        assert not set(merged_only.row_labels.tolist()) & gone
    # removals after the merges take exactly the named live rows' weight with them
    out = apply_delta(s, ops(3, n_docs, merges, removed), half_life)
    assert set(out.ids.tolist()) == live - set(removed)
    lost = merged_only.weights_at(t, half_life)[np.isin(merged_only.ids, removed)].sum()
    assert out.weights_at(t, half_life).sum() + lost == pytest.approx(
        s.weights_at(t, half_life).sum(), rel=1e-12)
