"""The river backend: parameter parsing, the batch adapter, and signed state that is never
unpickled unless its signature checks out."""

from __future__ import annotations

import hashlib
import hmac
import pickle
from pathlib import Path

import numpy as np
import pytest

from stream.clustering import ClusterState, apply_delta
from stream.clustering.params import parse_params
from stream.clustering.river_backend import FORMAT_TAG, RiverClusterer, StateSignatureError

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
DBSTREAM_PARAMS = {"clustering_threshold": 0.5, "fading_factor": 0.001, "cleanup_interval": 50}

UNPICKLED = False  # set by _mark_unpickled when a crafted payload is ever unpickled


def _mark_unpickled() -> bool:
    global UNPICKLED
    UNPICKLED = True
    return True


class _Bomb:
    """Unpickling this runs code: it sets the flag above and creates ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (_detonate, (str(self.path),))


def _detonate(path: str) -> bool:
    _mark_unpickled()
    Path(path).write_text("unpickled")
    return True


def groups(n_per: int = 30, dim: int = 8, noise: float = 0.03, seed: int = 0
           ) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated groups of unit vectors around e0, e1, e2, shuffled."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n_per)
    rng.shuffle(y)
    X = np.eye(dim)[y] + noise * rng.normal(size=(len(y), dim))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X.astype(np.float32), y


def make(key: bytes | None = KEY, mode: str = "one") -> RiverClusterer:
    return RiverClusterer("DBSTREAM", dict(DBSTREAM_PARAMS), key=key, mode=mode)


# -- parse_params ----------------------------------------------------------------------------
def test_parse_params_types() -> None:
    got = parse_params(["clustering_threshold=0.8", "n_clusters=5", "flag=true", "off=False",
                        "name=foo", "seed=none", "x=NULL", "tiny=1e-3", "neg=-2"])
    assert got == {"clustering_threshold": 0.8, "n_clusters": 5, "flag": True, "off": False,
                   "name": "foo", "seed": None, "x": None, "tiny": 1e-3, "neg": -2}
    assert type(got["n_clusters"]) is int and type(got["flag"]) is bool
    assert parse_params([]) == {}
    # nothing is evaluated: an expression stays a string
    assert parse_params(["name=__import__('os')"]) == {"name": "__import__('os')"}


@pytest.mark.parametrize("item", ["x", "=3", "a b=1", "1a=2", "a=", ""])
def test_parse_params_malformed(item: str) -> None:
    with pytest.raises(ValueError, match=f"clusterer param {item!r} should be NAME=VALUE"):
        parse_params([item])


def test_parse_params_duplicate() -> None:
    with pytest.raises(ValueError, match="given twice"):
        parse_params(["a=1", "a=2"])


# -- construction ----------------------------------------------------------------------------
def test_unknown_estimator_lists_available() -> None:
    with pytest.raises(ValueError, match="'Nope'.*available: CluStream, DBSTREAM, DenStream"):
        RiverClusterer("Nope")
    with pytest.raises(ValueError, match="does not cluster numeric vectors"):
        RiverClusterer("ODAC")


def test_name_and_case() -> None:
    rc = RiverClusterer("dbstream")
    assert rc.name == "river:DBSTREAM" and rc.single_worker and rc.half_life is None


def test_bad_params_are_quoted() -> None:
    with pytest.raises(ValueError, match="does not accept params.*'radius': 2.*clustering_threshold"):
        RiverClusterer("DBSTREAM", {"radius": 2})
    with pytest.raises(ValueError, match="refused params.*'beta': 2"):
        RiverClusterer("DenStream", {"beta": 2})


def test_bad_key_and_mode() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        make(key=b"short")
    with pytest.raises(ValueError, match="should be bytes"):
        make(key="a string key of some length")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mode='each'"):
        make(mode="each")


# -- learn_predict ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["one", "batch"])
def test_groups_each_under_one_id(mode: str) -> None:
    X, y = groups()
    rc = make(mode=mode)
    ids = np.concatenate([rc.learn_predict(X[i:i + 16]).cluster_ids for i in range(0, len(X), 16)])
    per_group = [np.unique(ids[y == g]) for g in range(3)]
    assert all(len(u) == 1 for u in per_group), per_group
    assert len({int(u[0]) for u in per_group}) == 3
    assert rc.n_clusters == 3


def test_result_shapes_and_flags() -> None:
    X, _ = groups()
    rc = make()
    res = rc.learn_predict(X)
    n = len(X)
    assert res.cluster_ids.shape == (n,) and res.cluster_ids.dtype == np.int64
    assert res.similarity.shape == (n,) and res.similarity.dtype == np.float32
    assert np.all(res.similarity > 0.9) and np.all(res.similarity <= 1.0001)
    assert res.is_new_cluster.dtype == bool and res.is_outlier.dtype == bool
    assert not res.is_outlier.any()
    # one founder per id: its first document
    founders = np.flatnonzero(res.is_new_cluster)
    assert sorted(res.cluster_ids[founders].tolist()) == sorted(np.unique(res.cluster_ids).tolist())
    for i in founders:
        assert res.cluster_ids[i] not in res.cluster_ids[:i]
    assert sorted(res.delta.new_ids.tolist()) == sorted(np.unique(res.cluster_ids).tolist())
    again = rc.learn_predict(X[:10])
    assert not again.is_new_cluster.any() and len(again.delta.new_ids) == 0
    with pytest.raises(ValueError, match=r"X.shape\[1\]=4 should be 8"):
        rc.learn_predict(np.ones((2, 4), np.float32))


def test_delta_sums_match_the_batch() -> None:
    X, _ = groups()
    rc = make()
    res = rc.learn_predict(X)
    state = apply_delta(ClusterState.empty(X.shape[1]), res.delta, None)
    assert state.n_docs == len(X)
    for c, s, w, k in zip(state.ids, state.sums, state.weights, state.counts, strict=True):
        mine = res.cluster_ids == c
        np.testing.assert_allclose(s, X[mine].sum(axis=0), rtol=1e-5, atol=1e-5)
        assert w == k == mine.sum()
    snap = rc.snapshot().sorted()
    np.testing.assert_array_equal(snap.ids, state.sorted().ids)
    np.testing.assert_allclose(snap.sums, state.sorted().sums, rtol=1e-6)
    assert snap.n_docs == len(X)


def test_outliers_are_left_out_of_the_delta() -> None:
    # river's DenStream answers -1 while it has no potential micro-cluster
    rng = np.random.default_rng(1)
    X = rng.normal(size=(12, 8)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    rc = RiverClusterer("DenStream", {"n_samples_init": 5, "epsilon": 0.01})
    res = rc.learn_predict(X)
    out = res.is_outlier
    assert out.any()
    assert np.all(res.cluster_ids[out] == -1) and np.all(res.similarity[out] == 0)
    assert -1 not in res.delta.ids and res.delta.counts.sum() == (~out).sum()
    assert res.delta.n_docs == len(X) and rc.snapshot().n_docs == len(X)


# -- snapshot / restore ----------------------------------------------------------------------
def test_restore() -> None:
    X, _ = groups()
    rc = make()
    rc.learn_predict(X)
    snap = rc.snapshot()
    rc.restore(snap)  # the statistics of the model held: accepted
    assert rc.n_clusters == 3
    other = ClusterState.empty(8)
    other = apply_delta(other, make().learn_predict(X[:5]).delta, None)
    with pytest.raises(ValueError, match=r"comes from load\(\)"):
        rc.restore(other)
    rc.restore(ClusterState.empty(8))
    assert rc.n_clusters == 0 and rc.snapshot().n_docs == 0
    assert rc.learn_predict(X[:1]).is_new_cluster.all()  # a fresh river model


# -- signed state ----------------------------------------------------------------------------
def test_dumps_loads_round_trip(tmp_path: Path) -> None:
    X, _ = groups(n_per=40)
    a = make()
    a.learn_predict(X[:60])
    blob = a.dumps()
    assert blob.startswith(FORMAT_TAG)
    b = make()
    b.loads(blob)
    c = make()
    a.save(tmp_path / "river.state")
    c.load(tmp_path / "river.state")
    assert [p.name for p in tmp_path.iterdir()] == ["river.state"]  # no temporary left
    ra, rb, rcc = (m.learn_predict(X[60:]) for m in (a, b, c))
    np.testing.assert_array_equal(ra.cluster_ids, rb.cluster_ids)
    np.testing.assert_array_equal(ra.cluster_ids, rcc.cluster_ids)
    np.testing.assert_array_equal(ra.similarity, rb.similarity)
    np.testing.assert_array_equal(ra.is_new_cluster, rb.is_new_cluster)
    sa, sb = a.snapshot(), b.snapshot()
    assert (sa.n_docs, sa.version, sa.next_id) == (sb.n_docs, sb.version, sb.next_id)
    np.testing.assert_array_equal(sa.sums, sb.sums)


def test_loads_refuses_another_estimator() -> None:
    X, _ = groups()
    a = make()
    a.learn_predict(X)
    with pytest.raises(ValueError, match="river:DBSTREAM model"):
        RiverClusterer("KMeans", key=KEY).loads(a.dumps())


def test_tampered_or_foreign_state_is_refused() -> None:
    X, _ = groups()
    a = make()
    a.learn_predict(X)
    blob = a.dumps()
    head = len(FORMAT_TAG) + 32
    flipped = bytearray(blob)
    flipped[-1] ^= 0x01  # one byte of the pickle payload
    sig_flipped = bytearray(blob)
    sig_flipped[len(FORMAT_TAG)] ^= 0x80
    b = make()
    for bad in (bytes(flipped), bytes(sig_flipped), blob[:head], blob[:10], b"", blob[:-1]):
        with pytest.raises(StateSignatureError, match="does not match the configured key"):
            b.loads(bad)
    with pytest.raises(StateSignatureError, match="format tag"):
        b.loads(b"x" * 100)
    with pytest.raises(StateSignatureError, match="refusing to unpickle it"):
        make(key=OTHER_KEY).loads(blob)
    assert b.n_clusters == 0  # nothing was replaced


def _signed(payload: bytes, key: bytes) -> bytes:
    return FORMAT_TAG + hmac.new(key, FORMAT_TAG + payload, hashlib.sha256).digest() + payload


def test_nothing_is_unpickled_without_the_key(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Bomb(marker))
    rc = make()
    with pytest.raises(StateSignatureError):
        rc.loads(_signed(payload, OTHER_KEY))
    flipped = bytearray(_signed(payload, KEY))
    flipped[-2] ^= 0x01
    with pytest.raises(StateSignatureError):
        rc.loads(bytes(flipped))
    assert not UNPICKLED and not marker.exists()
    # control: the same payload signed with the configured key does run when unpickled
    with pytest.raises(ValueError, match="not a river state"):
        rc.loads(_signed(payload, KEY))
    assert UNPICKLED and marker.exists()


def test_no_key_is_a_clear_error(tmp_path: Path) -> None:
    X, _ = groups()
    rc = make(key=None)
    rc.learn_predict(X)
    for call in (rc.dumps, lambda: rc.loads(b"x" * 100), lambda: rc.save(tmp_path / "s"),
                 lambda: rc.load(tmp_path / "s")):
        with pytest.raises(ValueError, match="no state key is configured.*--state-key-file"):
            call()
    assert not (tmp_path / "s").exists()


def test_batch_mode_denstream_shortcut_matches_predict_one() -> None:
    X, _ = groups(n_per=40, noise=0.1)
    params = {"n_samples_init": 30, "epsilon": 0.5, "stream_speed": 10}
    fast = RiverClusterer("DenStream", params, mode="batch")
    slow = RiverClusterer("DenStream", params, mode="batch")
    slow._predict_learnt = lambda docs: [slow.model.predict_one(x) for x in docs]  # type: ignore[method-assign]
    for i in range(0, len(X), 20):
        a, b = fast.learn_predict(X[i:i + 20]), slow.learn_predict(X[i:i + 20])
        np.testing.assert_array_equal(a.cluster_ids, b.cluster_ids)
    assert fast.n_clusters >= 2
