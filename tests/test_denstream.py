"""DenStream against the paper's definitions (Cao et al., SDM 2006), in cosine space."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stream.clustering import BatchResult, ClusterState, Delta, DenStream, apply_delta
from stream.clustering.base import decay_factor
from stream.clustering.denstream import _components, cosine_radius


def unit(*rows: list[float]) -> np.ndarray:
    X = np.asarray(rows, np.float32)
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def at_angle(deg: float, dim: int = 2) -> np.ndarray:
    """Unit vector at ``deg`` degrees in the plane of the first two axes."""
    v = np.zeros(dim, np.float32)
    v[0], v[1] = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return v


def blobs(n: int, k: int, dim: int = 16, noise: float = 0.3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, dim))
    X = centers[rng.integers(0, k, n)] + noise * rng.normal(size=(n, dim))
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def assert_same_state(a: ClusterState, b: ClusterState) -> None:
    a, b = a.sorted(), b.sorted()
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.sums, b.sums, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.weights, b.weights, rtol=1e-9)
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_array_equal(a.row_labels, b.row_labels)
    np.testing.assert_array_equal(a.last_t, b.last_t)
    np.testing.assert_array_equal(a.created_t, b.created_t)
    assert a.n_docs == b.n_docs


# -- radius --------------------------------------------------------------------------------
def test_cosine_radius_is_the_weighted_mean_distance_to_the_centre() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        X = rng.normal(size=(int(rng.integers(1, 30)), 12))
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        a = rng.uniform(0.05, 2.0, len(X))  # decayed weights of the members
        cf1, w = (a[:, None] * X).sum(0), a.sum()
        c = cf1 / np.linalg.norm(cf1)
        by_definition = float((a * (1.0 - X @ c)).sum() / w)
        assert float(cosine_radius(cf1, w)) == pytest.approx(by_definition, abs=1e-12)


def test_micro_cluster_radius_matches_its_decayed_members() -> None:
    """A micro-cluster's state gives the radius of its points with their decayed weights."""
    half_life = 5.0
    ds = DenStream(eps=0.3, mu=4, beta=0.5, half_life=half_life)
    X = unit([1, 0.1, 0], [1, -0.1, 0.05], [1, 0, -0.1], [1, 0.05, 0.1])
    times = []
    for i, x in enumerate(X):
        ds.learn_predict(x[None, :])
        times.append(i + 1.0)
    s = ds.snapshot()
    assert len(s) == 1 and s.counts.tolist() == [4]
    a = decay_factor(s.n_docs - np.asarray(times), half_life)
    c = (a[:, None] * X).sum(0)
    c /= np.linalg.norm(c)
    by_definition = float((a * (1.0 - X @ c)).sum() / a.sum())
    assert s.weights[0] == pytest.approx(a.sum())
    assert float(cosine_radius(s.sums[0], s.weights[0])) == pytest.approx(by_definition, abs=1e-6)


def test_a_document_joins_only_when_the_radius_after_adding_it_fits() -> None:
    ds = DenStream(eps=0.05, mu=4, beta=0.5, half_life=None)
    ds.learn_predict(np.tile(at_angle(0), (3, 1)))  # one micro-cluster, w=3, radius 0
    # radius after adding x at angle a: 1 - |3 e0 + x| / 4; fits up to about 36 degrees
    for deg, joins in ((30.0, True), (45.0, False)):
        x = at_angle(deg)
        expected = float(cosine_radius(3 * at_angle(0) + x, 4.0)) <= 0.05
        assert expected == joins
        probe = DenStream(eps=0.05, mu=4, beta=0.5, half_life=None)
        probe.restore(ds.snapshot())
        r = probe.learn_predict(x[None, :])
        assert (r.delta.new_ids.size == 0) == joins


# -- decay, promotion ----------------------------------------------------------------------
def test_decay_halves_weight_per_half_life() -> None:
    ds = DenStream(eps=0.1, mu=4, beta=0.5, half_life=10.0)
    ds.learn_predict(np.tile(at_angle(0), (10, 1)))  # t=10, weight 10
    ds.learn_predict(np.tile(at_angle(90), (10, 1)))  # t=20
    s = ds.snapshot()
    assert s.weights_at(20, 10.0).tolist() == pytest.approx([5.0, 10.0])
    ds.learn_predict(at_angle(0)[None, :])  # t=21: decayed 11 documents, then +1
    s = ds.snapshot()
    assert s.weights[0] == pytest.approx(10 * 0.5 ** 1.1 + 1)
    assert s.counts.tolist() == [11, 10]


def test_outlier_micro_cluster_is_promoted_at_beta_mu() -> None:
    ds = DenStream(eps=0.1, mu=6, beta=0.5, half_life=None)  # beta * mu = 3
    x = at_angle(0)[None, :]
    flags = [bool(ds.learn_predict(x).is_outlier[0]) for _ in range(4)]
    assert flags == [True, True, False, False]
    assert ds.potential().tolist() == [True]
    assert ds.snapshot().weights.tolist() == [4.0]


def test_promotion_counts_the_decayed_weight() -> None:
    ds = DenStream(eps=0.1, mu=6, beta=0.5, half_life=10.0)  # beta * mu = 3, Tp = 6
    x = at_angle(0)[None, :]
    ds.learn_predict(np.tile(x, (2, 1)))  # weight 2 at t=2
    ds.learn_predict(np.tile(at_angle(90)[None, :], (3, 1)))  # t=5
    r = ds.learn_predict(x)  # t=6: 2 * 2^-0.4 + 1 < 3, still an outlier (undecayed: 3)
    assert r.is_outlier.tolist() == [True]
    s = ds.snapshot()
    assert s.weights[0] == pytest.approx(2 * 0.5 ** 0.4 + 1)
    assert not ds.potential()[0]


def test_nearest_potential_micro_cluster_is_tried_before_outliers() -> None:
    ds = DenStream(eps=0.2, mu=4, beta=0.5, half_life=None)  # beta * mu = 2
    ds.restore(ClusterState(  # p at 0 (weight 2), o at 40 (weight 1)
        dim=2, ids=np.array([0, 1]), sums=np.stack([2 * at_angle(0), at_angle(40)]),
        weights=np.array([2.0, 1.0]), counts=np.array([2, 1]), last_t=np.full(2, 3.0),
        created_t=np.zeros(2), n_docs=3, next_id=2))
    assert ds.potential().tolist() == [True, False]
    r = ds.learn_predict(at_angle(25)[None, :])  # nearer the o-micro, fits the p-micro
    assert r.cluster_ids.tolist() == [0]
    assert ds.snapshot().weights.tolist() == [3.0, 1.0]


def test_novel_documents_of_a_batch_group_by_the_radius_test() -> None:
    """Documents that fit no micro-cluster are grouped as the paper's one-document step
    would: a document joins the nearest new group when the radius after adding it is at
    most eps, though it is farther than eps from the group's centre."""
    eps = 0.1
    ds = DenStream(eps=eps, mu=4, beta=0.5, half_life=None)
    X = np.stack([at_angle(0), at_angle(0), at_angle(30), at_angle(100)])
    assert 1 - math.cos(math.radians(30)) > eps  # farther than eps from the centre
    assert float(cosine_radius(X[:3].sum(0), 3.0)) <= eps  # but the radius fits
    r = ds.learn_predict(X)
    s = ds.snapshot()
    assert s.counts.tolist() == [3, 1] and ds.n_micro_clusters == 2
    assert r.cluster_ids.tolist()[:3] == [0, 0, 0]
    assert r.is_new_cluster.tolist() == [True, False, False, True]


def test_grouping_of_novel_documents_matches_one_document_at_a_time() -> None:
    """The Gram-matrix grouping of novel documents equals the plain sequential rule: each
    document, in order, joins the group whose centre is nearest if the radius after adding
    it is at most eps, else opens a group while the budget lasts."""
    ds = DenStream(eps=0.2, half_life=None)
    rng = np.random.default_rng(3)
    scattered = rng.normal(size=(200, 256))  # far apart: most documents open groups
    scattered[100:140] = scattered[:40] + 0.2 * rng.normal(size=(40, 256))  # and some join
    scattered = (scattered / np.linalg.norm(scattered, axis=1, keepdims=True)).astype(np.float32)
    tight = blobs(120, 3, dim=8, noise=0.05, seed=4)  # groups of many documents
    # pairs at cosines around the least that lets a second document join a first (0.28)
    base = rng.normal(size=(100, 256))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    other = rng.normal(size=(100, 256))
    other -= (other * base).sum(1, keepdims=True) * base
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    cos = np.linspace(0.2, 0.5, 100)[:, None]
    pairs = np.concatenate([base, cos * base + np.sqrt(1 - cos ** 2) * other]).astype(np.float32)
    cases = [(blobs(150, 12, dim=24, noise=0.5, seed=seed), budget)
             for seed, budget in ((0, 100), (1, 7), (2, 0))]
    cases += [(scattered, 200), (scattered, 50), (tight, 120), (tight, 2), (pairs, 200)]
    for X, budget in cases:
        sums: list[np.ndarray] = []
        counts: list[int] = []
        expect = []
        for x in X.astype(np.float64):
            g = -1
            if sums:
                sims = [float(s @ x) / np.linalg.norm(s) for s in sums]
                j = int(np.argmax(sims))
                if float(cosine_radius(sums[j] + x, counts[j] + 1.0)) <= 0.2 + 1e-6:
                    g = j
            if g < 0 and len(sums) < budget:
                g = len(sums)
                sums.append(np.zeros_like(x))
                counts.append(0)
            if g >= 0:
                sums[g] = sums[g] + x
                counts[g] += 1
            expect.append(g)
        assert ds._leaders(X @ X.T, budget).tolist() == expect
    # both ways through the grouping were taken: groups of one and groups of many
    groups = ds._leaders(scattered @ scattered.T, 200)
    sizes = np.bincount(groups)
    assert (sizes == 1).sum() > 100 and sizes.max() >= 2
    assert np.bincount(ds._leaders(tight @ tight.T, 120)).max() > 20
    joined = ds._leaders(pairs @ pairs.T, 200)[100:] < 100
    assert 0 < joined.sum() < 100  # some pairs near the bound join, some do not


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precision_products_give_the_fp32_clusters(precision: str) -> None:
    """bf16 (the product of the batch with the centres) and int8 (every product of the
    step) round similarities by about 2**-8; on a stream of separated topics the
    micro-clusters and labels are those of the float32 products."""
    X = blobs(2000, 20, dim=64, noise=0.3, seed=6)
    runs = []
    for p in ("fp32", precision):
        ds = DenStream(eps=0.15, half_life=1000.0, precision=p)
        assert (ds._int8 is not None) == (p == "int8")
        ids = np.concatenate([ds.learn_predict(X[i:i + 200]).cluster_ids
                              for i in range(0, len(X), 200)])
        runs.append((ids, ds.n_micro_clusters))
    (a, ka), (b, kb) = runs
    assert ka == kb
    assert (a == b).mean() >= 0.99


def test_int8_centres_stay_in_step_through_prunes_evictions_and_restore() -> None:
    """The int8 copy of the centres is the quantised float32 centres after every batch: rows
    updated, relabelled, evicted for new ones, pruned, and after a restore."""
    from stream.clustering.products import quantise

    def check(ds: DenStream) -> None:
        assert ds._int8 is not None
        k = ds.n_micro_clusters
        q, scale = quantise(ds._centres[:k])
        np.testing.assert_array_equal(ds._int8.q[:k], q)
        np.testing.assert_array_equal(ds._int8.scale[:k], scale)

    X = blobs(3000, 60, dim=32, noise=0.5, seed=9)
    ds = DenStream(eps=0.15, half_life=300.0, max_micro_clusters=40, precision="int8")
    removed, fullest = 0, 0
    for i in range(0, len(X), 150):
        removed += ds.learn_predict(X[i:i + 150]).delta.removed.size
        fullest = max(fullest, ds.n_micro_clusters)
        check(ds)
    assert removed > 0 and fullest == 40  # rows were removed, and the capacity reached
    again = DenStream(eps=0.15, half_life=300.0, max_micro_clusters=40, precision="int8")
    again.restore(ds.snapshot())
    check(again)


def test_bf16_product_with_every_row_is_cut_to_the_micro_clusters(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """While the micro-clusters fill up, the bf16 product is taken with every allocated row
    (one kernel shape) and cut to the live ones: the same numbers as the product with those
    alone, contiguous, as wide as the number of micro-clusters."""
    from stream.clustering import denstream
    from stream.clustering.products import cross

    widths: list[int] = []

    def spy(A: np.ndarray, C: np.ndarray, precision: str = "fp32") -> np.ndarray:
        widths.append(C.shape[0])
        return cross(A, C, precision)

    monkeypatch.setattr(denstream, "cross", spy)
    X = blobs(300, 40, dim=32, noise=0.2, seed=8)
    ds = DenStream(eps=0.1, max_micro_clusters=500, precision="bf16")
    ds.learn_predict(X[:100])
    ds.learn_predict(X[100:200])
    assert widths == [500]  # the second batch's product, with every row, not the live ones
    k = ds.n_micro_clusters
    assert 0 < k < 500
    S = ds._cross_centres(X[200:], k)
    assert S.shape == (100, k) and S.flags.c_contiguous
    np.testing.assert_allclose(S, cross(X[200:], ds._centres[:k], "bf16"), atol=2.0 ** -7)
    np.testing.assert_allclose(S, X[200:] @ ds._centres[:k].T, atol=2.0 ** -7)


def test_incremental_offline_step_equals_comparing_everything() -> None:
    """Borders left settled (no core within reach) are compared with the changed cores
    only; the labels over a stream equal those of an offline step that compares all."""

    class Full(DenStream):
        def _offline(self, t: float) -> tuple[np.ndarray, np.ndarray]:
            self._dirty[:self._k] = True
            self._settled[:self._k] = False
            return super()._offline(t)

    X = blobs(3000, 30, dim=16, noise=0.6, seed=5)
    a, b = DenStream(eps=0.15, half_life=500), Full(eps=0.15, half_life=500)
    merges = settled = 0
    for i in range(0, len(X), 50):
        ra, rb = a.learn_predict(X[i:i + 50]), b.learn_predict(X[i:i + 50])
        assert ra.cluster_ids.tolist() == rb.cluster_ids.tolist()
        assert ra.merged.tolist() == rb.merged.tolist()
        merges += len(ra.merged)
        settled += int(a._settled[:a._k].sum())
    assert merges > 0 and settled > 0  # the shortcut was exercised
    assert_same_state(a.snapshot(), b.snapshot())


# -- pruning -------------------------------------------------------------------------------
def test_pruning_period_and_xi_follow_the_paper() -> None:
    ds = DenStream(eps=0.1, mu=4, beta=0.5, half_life=1000.0)
    assert ds.prune_every == 1000  # (1/lambda) log2(2 / 1)
    ds = DenStream(eps=0.1, mu=6, beta=0.5, half_life=100.0)
    assert ds.prune_every == math.ceil(100 * math.log2(3 / 2))
    lam, tp = 1 / 100.0, ds.prune_every
    for tc, t0 in ((50.0, 50.0), (80.0, 20.0), (1e6, 0.0)):
        xi = (2 ** (-lam * (tc - t0 + tp)) - 1) / (2 ** (-lam * tp) - 1)
        assert float(ds.xi(tc, t0)) == pytest.approx(xi)
    assert float(ds.xi(50.0, 50.0)) == pytest.approx(1.0)  # at creation
    # long after: 1 / (1 - 2^(-lambda Tp)), beta * mu but for rounding Tp up
    assert float(ds.xi(1e6, 0.0)) == pytest.approx(1 / (1 - 2 ** (-lam * tp)))
    assert 2.95 < float(ds.xi(1e6, 0.0)) <= 3.0
    with pytest.raises(ValueError, match="needs a half_life"):
        DenStream(half_life=None).xi(1.0, 0.0)


def test_outlier_micro_clusters_are_pruned_below_xi() -> None:
    """beta*mu = 3, half_life 100: Tp = 59. An o-micro-cluster of weight 2 created at t0
    survives a check at tc while 2 * 2^(-(tc-t0)/100) >= xi(tc, t0), about
    3 - 2 * 2^(-(tc-t0)/100), i.e. for tc - t0 up to about 41.5; a singleton never survives a
    check after its creation."""
    ds = DenStream(eps=0.05, mu=6, beta=0.5, half_life=100.0)
    assert ds.prune_every == 59
    e = np.eye(5, dtype=np.float32)
    # at t=50: a busy p-micro-cluster (0), o-micro-clusters of weight 2 created at t=30 (1),
    # t=18 (2, 42 old at the first check) and t=19 (3, 41 old), a singleton of t=50 (4)
    state = ClusterState(
        dim=5, ids=np.arange(5), sums=(e * np.array([[10], [2], [2], [2], [1]])).astype(np.float32),
        weights=np.array([10.0, 2, 2, 2, 1]), counts=np.array([10, 2, 2, 2, 1]),
        last_t=np.array([50.0, 30, 18, 19, 50]), created_t=np.array([0.0, 30, 18, 19, 50]),
        n_docs=50, next_id=5)
    ds.restore(state)
    removed = {}
    for t in range(60, 130, 10):
        r = ds.learn_predict(np.tile(e[0], (10, 1)))  # only the busy one gets documents
        removed[t] = r.delta.removed.tolist()
        assert r.faded.tolist() == r.delta.removed.tolist()
    # first check at t=60 (crosses 59): the singleton and the pair 42 old go; the pairs 41
    # and 30 old stay. Second check at t=120 (crosses 118): both, now 101 and 90 old, go
    assert removed == {60: [2, 4], 70: [], 80: [], 90: [], 100: [], 110: [], 120: [1, 3]}
    assert ds.snapshot().ids.tolist() == [0]
    for age, kept in ((30.0, True), (41.0, True), (42.0, False), (10.0, True)):
        w = 2 * 0.5 ** (age / 100)
        assert (w >= float(ds.xi(60.0, 60.0 - age))) == kept


def test_potential_micro_clusters_are_pruned_below_beta_mu() -> None:
    ds = DenStream(eps=0.05, mu=4, beta=0.5, half_life=100.0, dim=4)  # beta*mu = 2, Tp = 100
    e = np.eye(4, dtype=np.float32)
    ds.learn_predict(np.concatenate([np.tile(e[0], (3, 1)), np.tile(e[1], (40, 1))]))  # t=43
    ds.learn_predict(np.tile(e[1], (47, 1)))  # t=90
    r = ds.learn_predict(np.tile(e[1], (10, 1)))  # t=100: check; 3 * 2^-0.57 = 2.02 stays
    assert r.delta.removed.size == 0
    for _ in range(3):
        r = ds.learn_predict(np.tile(e[1], (10, 1)))
        assert r.delta.removed.size == 0
    r = ds.learn_predict(np.tile(e[1], (70, 1)))  # t=200: 3 * 2^-1.57 < 2: pruned
    assert r.delta.removed.tolist() == [0] and r.faded.tolist() == [0]


# -- offline step: connectivity and labels ------------------------------------------------
def test_components_are_the_transitive_closure() -> None:
    a = np.array([0, 5, 3, 7, 2])
    b = np.array([5, 3, 1, 8, 9])
    root = _components(a, b, 10)
    assert root.tolist() == [0, 0, 2, 0, 4, 0, 6, 7, 7, 2]


def test_components_match_a_reference_union_find() -> None:
    rng = np.random.default_rng(11)
    for _ in range(50):
        n = int(rng.integers(1, 40))
        m = int(rng.integers(0, 60))
        a, b = rng.integers(0, n, m), rng.integers(0, n, m)
        parent = list(range(n))

        def find(x: int, parent: list[int] = parent) -> int:
            while parent[x] != x:
                x = parent[x]
            return x

        for u, v in zip(a.tolist(), b.tolist(), strict=True):
            ru, rv = find(u), find(v)
            parent[max(ru, rv)] = min(ru, rv)
        assert _components(a, b, n).tolist() == [find(x) for x in range(n)]


def test_a_chain_of_micro_clusters_gets_one_label() -> None:
    """A-B and B-C are within offline_eps, A-C is not: the three core micro-clusters are
    density-connected through B, so one label (river's one-hop expansion from A never
    reaches C)."""
    off = 0.2  # cosine >= 0.8, about 36.9 degrees
    assert 1 - math.cos(math.radians(60)) > off >= 1 - math.cos(math.radians(30))
    # eps small enough that the three stories open three micro-clusters of weight 3 = mu
    ds = DenStream(eps=0.02, mu=3, beta=0.5, half_life=None, offline_eps=off)
    X = np.stack([at_angle(0)] * 3 + [at_angle(30)] * 3 + [at_angle(60)] * 3)
    r = ds.learn_predict(X)
    assert ds.n_micro_clusters == 3 and ds.n_clusters == 1
    assert set(r.cluster_ids.tolist()) == {0}
    assert r.merged.tolist() == [[1, 0], [2, 0]]


def test_a_bridge_merges_two_labels_and_reports_it() -> None:
    """A (label 0) and C (label 1) are apart; the outlier B (label 2) between them becomes
    a core micro-cluster and connects both: labels 1 and 2 merge into 0, C's row changes
    label only."""
    eps = 0.1
    d = 2
    # A and C full (radius eps, weight 30), so that B's documents fit neither of them
    a, b, c = at_angle(0), at_angle(30), at_angle(60)
    state = ClusterState(
        dim=d, ids=np.array([0, 1, 2]), sums=np.stack([27 * a, 27 * c, b]).astype(np.float32),
        weights=np.array([30.0, 30.0, 1.0]), counts=np.array([30, 30, 1]),
        last_t=np.full(3, 61.0), created_t=np.array([0.0, 0.0, 61.0]),
        labels=np.array([0, 1, 2]), n_docs=61, next_id=3)
    ds = DenStream(eps=eps, mu=3, beta=0.5, half_life=None, offline_eps=2 * eps)
    ds.restore(state)
    before = ds.snapshot()
    r = ds.learn_predict(np.stack([b, b]))  # B: weight 3 = mu, a core micro-cluster
    assert r.cluster_ids.tolist() == [0, 0]
    assert r.merged.tolist() == [[1, 0], [2, 0]]
    after = ds.snapshot()
    assert after.row_labels.tolist() == [0, 0, 0]
    assert after.counts.tolist() == [30, 30, 3]
    # C changed label only: in the delta with zero numbers, a no-op for its numbers
    i = r.delta.ids.tolist().index(1)
    assert r.delta.weights[i] == 0 and r.delta.counts[i] == 0 and not r.delta.sums[i].any()
    applied = apply_delta(before, r.delta, None)
    assert_same_state(applied, after)
    np.testing.assert_array_equal(applied.sorted().sums[1], before.sums[1])


def test_a_potential_micro_cluster_that_is_not_core_joins_but_does_not_chain() -> None:
    """As in the bridge above, but B ends at weight 3 < mu = 4: potential, not core. It is a
    border of the offline DBSCAN: it joins its nearest core micro-cluster (A, 28 degrees
    away; C is 32) and does not connect A with C, though both are within offline_eps."""
    eps = 0.1
    a, b, c = at_angle(0), at_angle(28), at_angle(60)
    assert 1 - math.cos(math.radians(32)) <= 2 * eps < 1 - math.cos(math.radians(60))
    state = ClusterState(
        dim=2, ids=np.array([0, 1, 2]), sums=np.stack([26 * a, 26 * c, b]).astype(np.float32),
        weights=np.array([30.0, 30.0, 1.0]), counts=np.array([30, 30, 1]),
        last_t=np.full(3, 61.0), created_t=np.array([0.0, 0.0, 61.0]),
        labels=np.array([0, 1, 2]), n_docs=61, next_id=3)
    ds = DenStream(eps=eps, mu=4, beta=0.5, half_life=None, offline_eps=2 * eps)
    ds.restore(state)
    r = ds.learn_predict(np.stack([b, b]))
    assert ds.potential().tolist() == [True, True, True]
    assert r.merged.tolist() == [[2, 0]]
    assert ds.snapshot().row_labels.tolist() == [0, 1, 0]
    assert r.cluster_ids.tolist() == [0, 0] and ds.n_clusters == 2


def test_core_micro_clusters_connect_within_offline_eps_not_2_eps() -> None:
    """The offline connection distance is its own parameter: two cores 30 degrees apart
    (cosine distance 0.134) stay apart with offline_eps=0.1 and connect with 0.15, whatever
    the online radius eps."""
    state = ClusterState(
        dim=2, ids=np.array([0, 1]), sums=np.stack([5 * at_angle(0), 5 * at_angle(30)]),
        weights=np.array([5.0, 5.0]), counts=np.array([5, 5]), last_t=np.full(2, 10.0),
        created_t=np.zeros(2), n_docs=10, next_id=2)
    for off, n_clusters in ((0.1, 2), (0.15, 1)):
        ds = DenStream(eps=0.01, mu=4, beta=0.5, half_life=None, offline_eps=off)
        ds.restore(state)
        ds.learn_predict(at_angle(0)[None, :])
        assert ds.n_clusters == n_clusters


def test_label_only_rows_keep_their_decayed_numbers() -> None:
    before = ClusterState(
        dim=2, ids=np.array([4]), sums=np.array([[3.0, 1.0]], np.float32),
        weights=np.array([4.0]), counts=np.array([4]), last_t=np.array([10.0]),
        created_t=np.array([0.0]), labels=np.array([4]), n_docs=10, next_id=5)
    delta = Delta(5, np.array([4]), np.zeros((1, 2), np.float32), np.zeros(1), np.zeros(1, np.int64),
                  labels=np.array([1]))
    after = apply_delta(before, delta, 5.0)
    assert after.row_labels.tolist() == [1] and after.counts.tolist() == [4]
    for t in (15.0, 40.0):
        assert after.weights_at(t, 5.0) == pytest.approx(before.weights_at(t, 5.0))
    f = decay_factor(5.0, 5.0)
    np.testing.assert_allclose(after.sums / after.weights[:, None], before.sums / before.weights[:, None],
                               rtol=1e-6)
    assert after.sums[0] == pytest.approx(before.sums[0] * f)


def _stream_checks(ds: DenStream, X: np.ndarray, batch: int) -> list[BatchResult]:
    """Run ``X`` through ``ds`` checking, batch by batch, that apply_delta(before) == after
    and that labels only merge, as reported."""
    out = []
    for i in range(0, len(X), batch):
        before = ds.snapshot()
        r = ds.learn_predict(X[i:i + batch])
        after = ds.snapshot()
        assert_same_state(apply_delta(before, r.delta, ds.half_life), after)
        into = dict(r.merged.tolist())
        assert all(dst not in into for dst in into.values())  # one step: src -> survivor
        old = dict(zip(before.ids.tolist(), before.row_labels.tolist(), strict=True))
        for cid, lab in zip(after.ids.tolist(), after.row_labels.tolist(), strict=True):
            if cid in old:
                assert lab == into.get(old[cid], old[cid])  # unchanged, or merged as reported
        live = set(after.row_labels.tolist())
        assert not live & set(into)  # merged labels are gone
        assert not live & set(r.faded.tolist())
        assert set(r.faded.tolist()) <= set(before.row_labels.tolist())
        assert set(r.cluster_ids.tolist()) <= live
        out.append(r)
    return out


def test_delta_round_trip_and_merge_only_labels_over_a_stream() -> None:
    X = blobs(3000, 12, noise=0.7, seed=5)
    ds = DenStream(eps=0.2, mu=3, beta=0.5, half_life=300.0, max_micro_clusters=500, dim=16)
    results = _stream_checks(ds, X, 128)
    assert sum(len(r.merged) for r in results) > 0
    assert sum(len(r.delta.removed) for r in results) > 0
    assert sum(len(r.faded) for r in results) > 0
    assert any((r.delta.counts == 0).any() for r in results)  # label-only rows travelled


def test_delta_round_trip_with_offline_every_and_no_decay() -> None:
    X = blobs(1500, 8, noise=0.7, seed=6)
    ds = DenStream(eps=0.2, mu=3, beta=0.5, half_life=None, offline_every=500, dim=16)
    results = _stream_checks(ds, X, 100)
    assert [i for i, r in enumerate(results) if len(r.merged)] != []
    assert all(len(r.merged) == 0 for i, r in enumerate(results) if (i + 1) % 5)


def test_snapshot_restore_mid_stream_gives_the_same_assignments() -> None:
    X = blobs(2400, 10, noise=0.7, seed=7)
    make = lambda: DenStream(eps=0.2, mu=3, beta=0.5, half_life=250.0, max_micro_clusters=300,  # noqa: E731
                             offline_every=200)
    a, b = make(), make()
    for i in range(0, 1100, 100):
        a.learn_predict(X[i:i + 100])
        b.learn_predict(X[i:i + 100])
    c = make()
    c.restore(b.snapshot())
    for i in range(1100, len(X), 100):
        ra, rc = a.learn_predict(X[i:i + 100]), c.learn_predict(X[i:i + 100])
        np.testing.assert_array_equal(ra.cluster_ids, rc.cluster_ids)
        np.testing.assert_array_equal(ra.is_outlier, rc.is_outlier)
        np.testing.assert_array_equal(ra.merged, rc.merged)
        np.testing.assert_array_equal(ra.faded, rc.faded)
        np.testing.assert_array_equal(ra.delta.removed, rc.delta.removed)
    assert_same_state(a.snapshot(), c.snapshot())


# -- outputs, capacity, ids, validation ----------------------------------------------------
def test_outputs_of_a_first_batch() -> None:
    ds = DenStream(eps=0.1, mu=4, beta=0.5, half_life=None)
    X = np.stack([at_angle(0), at_angle(90), at_angle(1), at_angle(0)])
    r = ds.learn_predict(X)
    assert r.cluster_ids.tolist() == [0, 1, 0, 0]
    assert r.is_new_cluster.tolist() == [True, True, False, False]
    assert r.is_outlier.tolist() == [False, True, False, False]  # weights 3 and 1
    assert r.delta.new_ids.tolist() == [0, 1]
    assert r.merged.size == 0 and r.delta.merges.size == 0
    centre = X[[0, 2, 3]].sum(0) / np.linalg.norm(X[[0, 2, 3]].sum(0))
    assert r.similarity[0] == pytest.approx(float(X[0] @ centre), abs=1e-6)
    assert r.similarity[1] == pytest.approx(1.0)


def test_capacity_sends_novel_documents_to_the_nearest_micro_cluster() -> None:
    """When every row is in use by the batch, the documents left over join their nearest
    micro-cluster and are flagged as outliers."""
    ds = DenStream(eps=0.01, mu=4, beta=0.5, half_life=None, max_micro_clusters=2, dim=3)
    r = ds.learn_predict(unit([1, 0, 0], [0, 1, 0], [0.3, 1, 0]))
    assert ds.n_micro_clusters == 2
    assert r.cluster_ids.tolist() == [0, 1, 1]
    assert r.is_outlier.tolist() == [True, False, True]  # the last one: over capacity
    assert r.delta.removed.size == 0


def test_full_capacity_evicts_the_lightest_micro_cluster_not_joined() -> None:
    """At capacity, a new micro-cluster takes the place of the lightest one (decayed
    weight) that no document of the batch joined; the eviction is a reported removal."""
    e = np.eye(4, dtype=np.float32)
    # weights at t=10: row 0 3, row 1 2 * 2^-0.1 (light and updated at t=9), row 2 2
    state = ClusterState(
        dim=4, ids=np.array([5, 6, 7]), sums=(e[:3] * np.array([[3.0], [2.0], [2.0]])).astype(np.float32),
        weights=np.array([3.0, 2.0, 2.0]), counts=np.array([3, 2, 2]),
        last_t=np.array([10.0, 9.0, 10.0]), created_t=np.zeros(3), labels=np.array([5, 6, 5]),
        n_docs=10, next_id=8)
    ds = DenStream(eps=0.05, mu=2, beta=0.75, half_life=10.0, max_micro_clusters=3)
    ds.restore(state)
    before = ds.snapshot()
    r = ds.learn_predict(np.stack([e[1], e[3]]))  # joins row 1; e3 needs a new row
    # row 1 is joined, so the lightest row not joined, row 2 (2 * 2^-0.2 < 3 * 2^-0.2), goes
    assert r.delta.removed.tolist() == [7]
    assert r.faded.size == 0  # label 5 lives on in row 0
    assert r.cluster_ids.tolist() == [6, 8] and r.is_new_cluster.tolist() == [False, True]
    after = ds.snapshot()
    assert sorted(after.ids.tolist()) == [5, 6, 8] and ds.n_micro_clusters == 3
    assert_same_state(apply_delta(before, r.delta, 10.0), after)
    r = ds.learn_predict(e[2][None, :])  # full again: the lightest not joined is row 8
    assert r.delta.removed.tolist() == [8] and r.faded.tolist() == [8]


def test_eviction_choice_equals_sorting_every_spare_row() -> None:
    """The rows to evict, chosen among those as light as the need-th lightest, equal the
    first rows of a full sort of the spare rows by (weight, last update, id), ties
    included."""
    rng = np.random.default_rng(7)
    ds = DenStream(eps=0.01, max_micro_clusters=300)
    ds.learn_predict(unit(*rng.normal(size=(300, 64)).tolist()))  # 300 distinct rows
    k = ds.n_micro_clusters
    assert k == 300
    for _ in range(20):
        w = rng.integers(1, 6, k).astype(np.float64)  # many ties in weight
        ds._last_t[:k] = rng.integers(0, 3, k)
        joined = rng.choice(k, 40, replace=False)
        spare = np.setdiff1d(np.arange(k), joined)
        expect = spare[np.lexsort((ds._ids[spare], ds._last_t[spare], w[spare]))]
        for need in (0, 1, 7, 100, spare.size, spare.size + 5):
            np.testing.assert_array_equal(ds._evictable(w, joined, need), expect[:max(need, 0)])


def test_border_documents_take_the_label_of_the_nearest_p_micro_cluster() -> None:
    """A document that fits no micro-cluster but lies within border_eps of a
    p-micro-cluster's centre is labelled with that cluster; its weight goes to a new
    o-micro-cluster, which keeps its own label. Farther out, the document keeps the new
    label."""
    eps = 0.1
    ds = DenStream(eps=eps, mu=3, beta=0.5, half_life=None, border_eps=2 * eps)
    members = np.stack([at_angle(25), at_angle(-25)])  # radius 1 - cos 25 = 0.094, w=2
    ds.restore(ClusterState(
        dim=2, ids=np.array([0]), sums=members.sum(0, keepdims=True), weights=np.array([2.0]),
        counts=np.array([2]), last_t=np.array([2.0]), created_t=np.zeros(1), n_docs=2, next_id=1))
    assert ds.n_micro_clusters == 1 and ds.potential().tolist() == [True]
    for deg, border in ((35.0, True), (40.0, False)):
        x = at_angle(deg)
        assert float(cosine_radius(members.sum(0) + x, 3.0)) > eps  # fits no micro-cluster
        assert (1 - math.cos(math.radians(deg)) <= 2 * eps) == border  # 0.181 and 0.234
        probe = DenStream(eps=eps, mu=3, beta=0.5, half_life=None, border_eps=2 * eps)
        probe.restore(ds.snapshot())
        r = probe.learn_predict(x[None, :])
        s = probe.snapshot()
        assert len(s) == 2 and s.row_labels.tolist() == [0, 1]  # a new row, its own label
        assert r.delta.new_ids.tolist() == [1] and r.is_outlier.tolist() == [True]
        assert r.cluster_ids.tolist() == ([0] if border else [1])
        assert r.is_new_cluster.tolist() == [not border]


def test_border_search_from_the_online_step_equals_searching_again() -> None:
    """Border documents start from the nearest p-micro-cluster that the online step found
    (searched again only where the batch touched it): the labels over a stream equal
    those of a border search over every untouched p-micro-cluster."""
    reused = redone = 0

    class Counting(DenStream):
        def _border(self, X: np.ndarray, S: np.ndarray, touched: np.ndarray, t: float,
                    docs: np.ndarray, Xq: tuple[np.ndarray, np.ndarray] | None = None,
                    near_pot: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
            nonlocal reused, redone
            if near_pot is not None and docs.size:
                fresh = np.isin(near_pot[docs], touched)
                redone += int(fresh.sum())
                reused += int((~fresh).sum())
            return super()._border(X, S, touched, t, docs, Xq, near_pot)

    class Full(DenStream):
        def _border(self, X: np.ndarray, S: np.ndarray, touched: np.ndarray, t: float,
                    docs: np.ndarray, Xq: tuple[np.ndarray, np.ndarray] | None = None,
                    near_pot: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
            return super()._border(X, S, touched, t, docs, Xq, None)

    # rounded coordinates: many exact ties between micro-clusters
    X = np.round(blobs(3000, 40, dim=16, noise=0.7, seed=11) * 4) / 4
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    for precision in ("fp32", "int8"):
        a = Counting(eps=0.1, half_life=500, border_eps=0.3, precision=precision)
        b = Full(eps=0.1, half_life=500, border_eps=0.3, precision=precision)
        for i in range(0, len(X), 100):
            ra, rb = a.learn_predict(X[i:i + 100]), b.learn_predict(X[i:i + 100])
            assert ra.cluster_ids.tolist() == rb.cluster_ids.tolist()
    assert reused > 0 and redone > 0  # both ways were taken


def test_documents_are_labelled_after_the_batch() -> None:
    """Labels are given against the micro-clusters as the batch leaves them: documents of a
    new micro-cluster that the batch made potential take its own label, not a nearby older
    cluster's; a document left in an o-micro-cluster is a border of a p-micro-cluster that
    the same batch created."""
    old = np.stack([at_angle(0)] * 3)
    ds = DenStream(eps=0.02, mu=3, beta=0.5, half_life=None, offline_eps=0.05, border_eps=0.3)
    ds.learn_predict(old)  # label 0: a core at 0 degrees
    # a new story at 40 degrees (cosine distance 0.23 from label 0: within border_eps), and
    # one document at 70 degrees that fits neither, within border_eps of the new story (0.13)
    # only (label 0: 0.66)
    r = ds.learn_predict(np.stack([at_angle(40), at_angle(40), at_angle(70)]))
    assert r.delta.new_ids.tolist() == [1, 2]
    assert r.cluster_ids.tolist() == [1, 1, 1]
    assert r.is_outlier.tolist() == [False, False, True]
    assert r.is_new_cluster.tolist() == [True, False, False]


def test_id_allocator_is_used() -> None:
    ds = DenStream(eps=0.1, mu=4, beta=0.5)
    ds.set_id_allocator(lambda n: np.arange(100, 100 + n))
    r = ds.learn_predict(np.eye(2, dtype=np.float32))
    assert r.cluster_ids.tolist() == [100, 101] and r.delta.new_ids.tolist() == [100, 101]


def test_empty_batch_and_empty_state() -> None:
    ds = DenStream()
    ds.restore(ClusterState.empty(8))
    r = ds.learn_predict(np.zeros((0, 8), np.float32))
    assert r.cluster_ids.shape == (0,) and r.delta.n_docs == 0
    assert ds.learn_predict(np.eye(8, dtype=np.float32)[:2]).cluster_ids.shape == (2,)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(eps=0), "eps=0 should be > 0"),
    (dict(eps=1.5), "eps=1.5 should be > 0 and <= 1"),
    (dict(mu=0), "mu=0 should be > 0"),
    (dict(beta=0), "beta=0 should be > 0"),
    (dict(beta=0.5, mu=2), r"beta\*mu=1 \(beta=0.5, mu=2\) should be > 1"),
    (dict(half_life=0), "half_life=0 should be > 0"),
    (dict(max_micro_clusters=0), "max_micro_clusters=0 should be >= 1"),
    (dict(offline_every=0), "offline_every=0 should be >= 1"),
    (dict(offline_eps=0), "offline_eps=0 should be > 0 and <= 2"),
    (dict(border_eps=2.5), "border_eps=2.5 should be >= 0 and <= 2"),
    (dict(dim=0), "dim=0 should be >= 1"),
    (dict(precision="fp16"), "precision='fp16' should be one of auto, fp32, bf16"),
])
def test_constructor_validates(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DenStream(**kwargs)  # type: ignore[arg-type]


def test_masked_argmax_and_sorted_membership_match_their_reference_forms() -> None:
    """The step's shortcuts equal what they replace: the argmax among some columns equals
    the argmax with the other columns at -inf (first index on ties), and membership by
    binary search in a sorted array equals np.isin."""
    from stream.clustering.denstream import _argmax_among, _in_sorted

    rng = np.random.default_rng(3)
    S = rng.integers(0, 5, (60, 40)).astype(np.float32)  # many ties
    for frac in (0.05, 0.5, 1.0):
        kind = rng.random(40) < frac
        kind[rng.integers(40)] = True
        rows = np.sort(rng.choice(60, 25, replace=False))
        expect = np.where(kind, S[rows], -np.inf).argmax(axis=1)
        np.testing.assert_array_equal(_argmax_among(S, rows, np.flatnonzero(kind)), expect)
    for size in (0, 1, 30):
        b = np.unique(rng.integers(0, 50, size))
        a = rng.integers(-5, 60, 100)
        np.testing.assert_array_equal(_in_sorted(a, b), np.isin(a, b))
