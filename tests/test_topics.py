"""Keywords, exemplars, emerging topics and drift: the definitions, the bounded memory, and
the Redis commit holding the same arithmetic as :func:`stream.topics.apply_topic_delta`."""

from __future__ import annotations

import random

import numpy as np
import pytest

from stream.clustering.base import Delta
from stream.contracts import TopicPartition
from stream.drift import DriftMonitor, js_divergence
from stream.services import Service
from stream.state import OffsetMove
from stream.state.memory import MemoryStore, load_snapshot
from stream.state.redis_store import RedisStore
from stream.topics import (
    TopicCard,
    TopicParams,
    TopicState,
    TopicTracker,
    add_terms,
    apply_topic_delta,
    ctfidf_keywords,
    roll,
)


def feed(tracker: TopicTracker, cids: list[int], ts: list[float], texts: list[str] | None = None,
         t: float | None = None, **kw):
    n = len(cids)
    texts = texts or [f"story{c} common word{c}" for c in cids]
    tokens = [s.split() for s in texts]
    ids = [f"d{tracker.t + i:.0f}" for i in range(n)]
    return tracker.learn(tokens, ids, texts, np.asarray(ts, np.float64), np.asarray(cids),
                         np.linspace(0.9, 0.5, n).astype(np.float32), t, **kw)


def test_keywords_pick_what_sets_a_cluster_apart() -> None:
    cards = {1: {"quake": 5.0, "city": 5.0, "rescue": 2.0}, 2: {"vote": 6.0, "city": 4.0},
             3: {"city": 5.0, "vote": 1.0, "budget": 3.0}}
    total = {"quake": 5.0, "city": 14.0, "rescue": 2.0, "vote": 7.0, "budget": 3.0}
    kw = ctfidf_keywords(cards, total, top_n=2)
    assert kw[1][0] == "quake" and kw[2][0] == "vote" and kw[3][0] == "budget"
    assert "city" not in kw[1]  # in every cluster: no information


def test_keyword_state_stops_growing_on_an_open_vocabulary() -> None:
    """200,000 documents, every one with two words never seen before: the state is bounded by
    clusters x keyword_capacity + vocabulary_capacity and stops growing."""
    p = TopicParams(keyword_capacity=16, vocabulary_capacity=512, n_exemplars=3)
    tracker = TopicTracker(p)
    rng = random.Random(0)
    n_clusters, batch, sizes = 40, 1000, []
    for b in range(200):
        cids = [rng.randrange(n_clusters) for _ in range(batch)]
        texts = [f"topic{c} w{b}x{i} v{rng.randrange(10**9)}" for i, c in enumerate(cids)]
        feed(tracker, cids, [float(b)] * batch, texts)
        sizes.append(tracker.state.size())
    bound = n_clusters * (p.keyword_capacity + p.n_exemplars) + p.vocabulary_capacity
    assert tracker.t == 200_000
    assert max(sizes) <= bound
    assert sizes[-1] == sizes[49] == max(sizes)  # full after a few batches, then flat
    assert len(tracker.state.all_terms) == p.vocabulary_capacity
    # the one word every document of a cluster shares survives the flood of new words
    assert all(f"topic{c}" in tracker.keywords([c])[c] for c in range(n_clusters))


def test_roll_folds_closed_and_empty_buckets_into_the_baseline() -> None:
    card = TopicCard()
    roll(card, 10, alpha=0.5)
    card.n = 4.0
    roll(card, 12, alpha=0.5)  # bucket 10 closed with 4, bucket 11 empty
    # mean: 0 -> 2 (after 4) -> 1 (after 0); var: 0 -> 0.5*(0+4*2)=4 -> 0.5*(4+(-2)*(-1))=3
    assert (card.bucket, card.n, card.mean, card.var) == (12, 0.0, 1.0, 3.0)
    roll(card, 11, alpha=0.5)  # a late bucket changes nothing
    assert (card.bucket, card.mean) == (12, 1.0)


def test_a_burst_emerges_once_and_a_steady_cluster_never() -> None:
    p = TopicParams(bucket_s=60.0, min_count=5, z_threshold=3.0, alpha=0.2)
    tracker = TopicTracker(p)
    # cluster 1: two documents a bucket for 30 buckets; cluster 2 appears in bucket 30
    for b in range(30):
        _, em = feed(tracker, [1, 1], [b * 60.0 + 1, b * 60.0 + 2])
        assert em == []
    ts = [30 * 60.0 + i for i in range(12)]
    _, em = feed(tracker, [1, 1] + [2] * 10, ts)
    assert [e.cluster_id for e in em] == [2]
    e = em[0]
    assert e.bucket_count == 5 and e.doc_index == 6  # the fifth document of cluster 2
    assert e.score == pytest.approx(5.0)  # a newborn cluster scores its count
    # announced once: more of it in the next bucket and the one after does not alert again
    for b in (31, 32):
        _, em = feed(tracker, [2] * 20, [b * 60.0] * 20)
        assert em == []
    # an old cluster whose rate jumps far above its baseline emerges too
    _, em = feed(tracker, [1] * 12, [33 * 60.0] * 12)
    assert [e.cluster_id for e in em] == [1] and em[0].baseline > 1.0


def test_candidates_close_to_an_announced_story_are_not_new() -> None:
    p = TopicParams(bucket_s=60.0, min_count=3, novelty=0.5)
    tracker = TopicTracker(p)
    C = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], np.float32)
    ids = np.array([7, 8, 9])

    def centroids():
        return ids, C

    _, em = feed(tracker, [7] * 3, [0.0] * 3, centroids=centroids)
    assert [e.cluster_id for e in em] == [7]
    _, em = feed(tracker, [8] * 3 + [9] * 3, [60.0] * 6, centroids=centroids)
    assert [e.cluster_id for e in em] == [9]  # 8 is a facet of 7 (cosine 0.8)


def test_merges_and_removals_follow_the_cards() -> None:
    p = TopicParams(bucket_s=60.0, min_count=3, n_exemplars=2)
    tracker = TopicTracker(p)
    feed(tracker, [1, 1, 1, 2, 2], [0.0] * 5)
    assert tracker.state.cards[1].alerted and not tracker.state.cards[2].alerted
    before = tracker.state
    feed(tracker, [3], [60.0], merged=np.array([[1, 2]]), faded=np.array([3]))
    cards = tracker.state.cards
    assert set(cards) == {2}  # 1 folded into 2; 3 faded
    assert cards[2].alerted and cards[2].size == 5 and len(cards[2].exemplars) == 2
    assert set(before.cards) == {1, 2}  # apply_topic_delta leaves its input alone


def test_memory_store_keeps_topics_in_its_snapshot(tmp_path) -> None:
    tracker = TopicTracker()
    delta, _ = feed(tracker, [0, 0, 1], [0.0, 1.0, 2.0])
    store = MemoryStore(half_life=5000.0, snapshot_path=tmp_path / "s.npz")
    tp = TopicPartition("in", 0)
    store.commit(Delta(3, np.array([0, 1]), np.ones((2, 2), np.float32), np.array([2.0, 1.0]),
                       np.array([2, 1])), [OffsetMove(tp, -1, 3)], delta)
    store.close()
    _, _, topics = load_snapshot(tmp_path / "s.npz")
    assert topics is not None and topics.to_json() == tracker.state.to_json()


def random_deltas(rng: random.Random, tracker: TopicTracker, n_batches: int):
    """Batches over a few clusters with merges and removals, as a worker would send them."""
    out = []
    live = list(range(6))
    next_id = 6
    for b in range(n_batches):
        n = rng.randrange(1, 40)
        cids = [rng.choice(live) for _ in range(n)]
        texts = [" ".join(rng.choice(["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]) + str(rng.randrange(4))
                          for _ in range(rng.randrange(1, 6))) for _ in range(n)]
        ts = sorted(b * 40.0 + rng.random() * 80 for _ in range(n))
        merged = faded = None
        if b % 4 == 3 and len(live) > 3:
            src, dst = rng.sample(live, 2)
            merged = np.array([[src, dst]])
            live.remove(src)
            gone = rng.choice([c for c in live if c != dst])
            faded = np.array([gone])
            live.remove(gone)
            live += [next_id, next_id + 1]
            next_id += 2
            cids = [c if c in live else dst for c in cids]
        delta, _ = feed(tracker, cids, ts, texts, t=tracker.t + n, merged=merged, faded=faded)
        out.append((n, delta))
    return out


@pytest.mark.parametrize("write_rows", [False, True], ids=["delta", "rows"])
def test_redis_commit_is_apply_topic_delta(redis_server: Service, write_rows: bool) -> None:
    """Either way of the commit (Redis adds the delta in Lua, or stores the cards the
    store computed) leaves the cards apply_topic_delta gives."""
    p = TopicParams(keyword_capacity=5, vocabulary_capacity=12, n_exemplars=2, half_life=50.0,
                    bucket_s=60.0, min_count=3, alpha=0.3)
    tracker = TopicTracker(p)
    store = RedisStore(redis_server.url, model=f"topics-{write_rows}", half_life=50.0,
                       topic_params=p, write_rows=write_rows)
    mirror = TopicState()
    tp = TopicPartition("in", 0)
    offset, t = -1, 0
    for n, delta in random_deltas(random.Random(1), tracker, 40):
        empty = Delta(n, np.zeros(0, np.int64), np.zeros((0, 3), np.float32),
                      np.zeros(0), np.zeros(0, np.int64))
        store.commit(empty, [OffsetMove(tp, offset, offset + n + (offset < 0))], delta)
        offset = offset + n + (offset < 0)
        t += n
        mirror = apply_topic_delta(mirror, delta, t, p)
    stored = store.load_topics()
    store.close()
    assert store.commits["rows"] == (39 if write_rows else 0)  # all but the first
    assert stored is not None
    assert mirror.to_json() == tracker.state.to_json()  # the replica is the mirror
    assert set(stored.cards) == set(mirror.cards)
    assert stored.all_terms.keys() == mirror.all_terms.keys()
    np.testing.assert_allclose([stored.all_terms[k] for k in mirror.all_terms],
                               list(mirror.all_terms.values()), rtol=1e-9)
    for cid, want in mirror.cards.items():
        got = stored.cards[cid]
        assert got.terms.keys() == want.terms.keys(), cid
        np.testing.assert_allclose([got.terms[k] for k in want.terms], list(want.terms.values()),
                                   rtol=1e-9)
        assert [(i, x) for _, i, x in got.exemplars] == [(i, x) for _, i, x in want.exemplars]
        assert (got.bucket, got.alerted, got.size) == (want.bucket, want.alerted, want.size)
        # Redis' cjson writes numbers with 14 significant digits
        np.testing.assert_allclose([got.n, got.mean, got.var, got.born_ts, got.last_ts],
                                   [want.n, want.mean, want.var, want.born_ts, want.last_ts],
                                   rtol=1e-12, atol=1e-12)


def test_drift_windows() -> None:
    assert js_divergence({1: 1, 2: 1}, {1: 1, 2: 1}) == 0.0
    assert js_divergence({1: 1}, {2: 1}) == pytest.approx(1.0)
    m = DriftMonitor(window=100, threshold=0.5)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(250, 8)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    ids = np.repeat([1, 2], 125)
    out = m.observe(X, ids, np.full(250, 0.7, np.float32), np.arange(250) % 10 == 0,
                    np.arange(250) % 25 == 0, [str(i) for i in ids])
    assert [w.docs for w in out] == [100, 100]  # the rest waits for the next batch
    first, second = out
    assert first.divergence is None and not first.drifted
    # window 1: ids 1 only; window 2: 25 of id 1, 75 of id 2
    assert second.divergence == pytest.approx(js_divergence({1: 100}, {1: 25, 2: 75}))
    assert second.drifted and second.similarity_mean == pytest.approx(0.7)
    assert second.outlier_ratio == pytest.approx(0.1) and second.new_cluster_ratio == 0.04
    assert first.nmi == pytest.approx(1.0)


def test_add_terms_keeps_the_heaviest_with_ties_to_the_smaller_term() -> None:
    """The cut by sorted weights keeps what a full sort by (-weight, term) keeps, ties at the
    cut included (the Lua commit does the same; test_redis_commit_is_apply_topic_delta)."""
    rng = random.Random(3)
    for _ in range(300):
        terms = {f"t{rng.randrange(40)}": float(rng.randrange(1, 5)) for _ in range(rng.randrange(30))}
        extra = {f"t{rng.randrange(40)}": float(rng.randrange(1, 4)) for _ in range(rng.randrange(10))}
        cap = rng.randrange(1, 25)
        merged = dict(terms)
        for k, v in extra.items():
            merged[k] = merged.get(k, 0.0) + v
        want = dict(sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))[:cap])
        assert add_terms(terms, extra, cap) == want
