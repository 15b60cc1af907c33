"""A backend that runs one of river's stream clusterers (``river.cluster``) behind the batch API.

river's clusterers learn and predict one ``dict`` at a time and own their cluster labels;
this module adapts them to :class:`~stream.clustering.base.Clusterer` so that they can be
run, measured and compared (the "peer" baselines of the benchmark) through the same
pipeline as topicstream's own clusterers. What it keeps besides the river model is the
public view of the clusters as plain arrays (a :class:`ClusterState` with one row per
public id), which is what keywords, inspection and the store read.

A river model can only be saved by pickling it, and unpickling runs code.
:meth:`RiverClusterer.dumps` therefore signs the pickle with HMAC-SHA256 under a configured
key, and :meth:`RiverClusterer.loads` checks the signature (in constant time) *before* unpickling:
data that was not written by a holder of the key is refused and never unpickled.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import logging
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from stream.clustering.base import (
    BatchResult,
    Clusterer,
    ClusterState,
    Delta,
    apply_delta,
    check_batch,
    sum_rows_by,
)

log = logging.getLogger(__name__)

#: river clusterers that take a numeric feature dict and predict an int label for it.
#: ``ODAC`` clusters variables (its ``predict_one`` raises) and ``TextClust`` expects term
#: frequencies, so neither can cluster embeddings.
SUPPORTED_ESTIMATORS = ("CluStream", "DBSTREAM", "DenStream", "KMeans", "STREAMKMeans")

#: how :meth:`RiverClusterer.learn_predict` interleaves learning and predicting.
MODES = ("one", "batch")

#: first bytes of every blob written by :meth:`RiverClusterer.dumps`; part of the signed data.
FORMAT_TAG = b"topicstream-river-state/1\n"
_SIG_LEN = hashlib.sha256().digest_size  # 32
MIN_KEY_BYTES = 16

_NO_KEY = ("no state key is configured: river models can only be saved as a pickle, which "
           "topicstream signs and checks with a secret key; configure one (e.g. "
           "--state-key-file, a file of at least 16 random bytes) to save or load river state")
_BAD_SIGNATURE = "river state signature does not match the configured key: refusing to unpickle it"


class StateSignatureError(ValueError):
    """Signed river state that fails its check: it is refused and never unpickled."""


def _resolve(estimator: str) -> tuple[str, type]:
    """river's spelling of ``estimator`` (matched case-insensitively) and its class."""
    from river import cluster  # type: ignore[import-untyped]

    by_lower = {n.lower(): n for n in SUPPORTED_ESTIMATORS}
    name = by_lower.get(str(estimator).lower())
    if name is None:
        known = ", ".join(SUPPORTED_ESTIMATORS)
        why = (" (it does not cluster numeric vectors)"
               if str(estimator) in getattr(cluster, "__all__", ()) else "")
        raise ValueError(f"estimator={estimator!r} is not a supported river.cluster "
                         f"estimator{why}; available: {known}")
    return name, getattr(cluster, name)


def check_key(key: bytes | None) -> bytes | None:
    """Validate a state key: None, or bytes of at least :data:`MIN_KEY_BYTES`."""
    if key is None:
        return None
    if not isinstance(key, bytes | bytearray):
        raise ValueError(f"key should be bytes, not {type(key).__name__}")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"key is {len(key)} bytes long; it should be at least "
                         f"{MIN_KEY_BYTES} random bytes")
    return bytes(key)


def read_key_file(path: str | os.PathLike[str]) -> bytes:
    """Read a state key from ``path`` (surrounding whitespace, e.g. a final newline, dropped)."""
    key = Path(path).read_bytes().strip()
    try:
        return check_key(key) or b""
    except ValueError as exc:
        raise ValueError(f"state key file {os.fspath(path)!r}: {exc}") from exc


def check_signed_layout(data: bytes) -> None:
    """Check, without a key, that ``data`` looks like :meth:`RiverClusterer.dumps` output:
    the format tag, a signature and a payload (nothing is unpickled).

    Raises
    ------
    StateSignatureError
        When it is too short or does not start with :data:`FORMAT_TAG`.
    """
    if len(data) < len(FORMAT_TAG) + _SIG_LEN + 1:
        raise StateSignatureError(f"{_BAD_SIGNATURE} (only {len(data)} bytes: truncated)")
    if not data.startswith(FORMAT_TAG):
        raise StateSignatureError(f"{_BAD_SIGNATURE} (no {FORMAT_TAG!r} format tag: not "
                                  f"a topicstream river state)")


def verify_signed(data: bytes, key: bytes) -> bytes:
    """The pickle payload of signed river state ``data``, once its HMAC-SHA256 under ``key``
    has been checked (in constant time); nothing is unpickled here.

    Raises
    ------
    StateSignatureError
        When ``data`` is truncated, not a river state, or not signed with ``key``.
    """
    data = bytes(data)
    check_signed_layout(data)
    head = len(FORMAT_TAG) + _SIG_LEN
    signature, payload = data[len(FORMAT_TAG):head], data[head:]
    expected = hmac.new(key, FORMAT_TAG + payload, hashlib.sha256).digest()
    if not hmac.compare_digest(signature, expected):
        raise StateSignatureError(_BAD_SIGNATURE)
    return payload


class RiverClusterer(Clusterer):
    """One of river's stream clusterers (``river.cluster``) behind topicstream's batch API.

    This backend keeps the model in one process: it cannot share state across workers
    (``single_worker`` is True). The river model lives only here; the store receives the
    public statistics below but not the model, which is saved with :meth:`save` /
    :meth:`dumps` as a signed pickle.

    river learns one ``dict`` at a time, so :meth:`learn_predict` loops over the documents
    of a batch: each row becomes ``{0: x0, 1: x1, ...}`` and is learnt with ``learn_one``
    and assigned with ``predict_one`` (interleaved or not, see ``mode``). The public cluster
    id of a document is river's label as an int64. A label of None or below 0 (river's
    DenStream answers -1 when it has no cluster) makes the document an outlier with id -1,
    left out of the statistics.

    **Ids are river's and are not guaranteed stable across reclusterings**, unlike
    topicstream's own clusterers, whose ids only change meaning through a reported merge.
    DBSTREAM reclusters at the first ``predict_one`` after a ``learn_one``: once per
    document in mode ``"one"``, once per batch in mode ``"batch"``. Each reclustering
    numbers the macro-clusters afresh, 0, 1, 2, ..., in the order of their oldest micro-
    cluster (micro-clusters are visited in creation order, skipping those whose weight at
    their last update is below ``minimum_weight``; each unlabelled one opens the next
    label and takes its whole shared-density component with it). So when an old micro-
    cluster is removed by the cleanup (every ``cleanup_interval`` documents), or two
    macro-clusters become connected or disconnected, every later label shifts: label ``c``
    may name another group of documents than it did one document (or batch) earlier.
    Before it has any macro-cluster DBSTREAM answers 0; it never answers an outlier: a
    document goes to the nearest macro-cluster centre however far it is. DenStream also
    re-runs its DBSCAN at every ``predict_one`` (labels in the order of its potential
    micro-clusters) and answers 0 for all documents until it has seen ``n_samples_init``;
    CluStream re-runs k-means over its micro-clusters every ``time_gap`` documents. Only
    KMeans' labels (its fixed centres) keep their meaning, though the centres move.

    Public statistics are kept per public id with no decay (``half_life`` is None): the
    vector sum, weight and count of the documents given the id, so :meth:`snapshot`
    returns plain arrays and ``similarity`` is the cosine of a document to its id's
    centroid after the batch. Because of the relabelling above, these statistics describe
    "documents river called ``c``", which may span several of river's clusters over time.

    Parameters
    ----------
    estimator
        Class name in ``river.cluster`` (case-insensitive): one of
        :data:`SUPPORTED_ESTIMATORS`.
    params
        Keyword arguments of the estimator's constructor (from text:
        :func:`stream.clustering.params.parse_params`).
    key
        Secret of at least 16 bytes that signs the saved state; without one the model
        cannot be saved or loaded.
    dim
        Width of the vectors; taken from the first batch when None.
    mode
        ``"one"``: each document is learnt, then assigned (``learn_one``, ``predict_one``),
        river's prequential use. ``"batch"``: the whole batch is learnt, then assigned, so
        every document of a batch is labelled by the same model; for DBSTREAM that is one
        reclustering per batch instead of one per document (much faster).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[1, 0], [0.99, 0.14], [0, 1], [0.14, 0.99]], dtype=np.float32)
    >>> rc = RiverClusterer("DBSTREAM", {"clustering_threshold": 0.5})
    >>> rc.name
    'river:DBSTREAM'
    >>> rc.learn_predict(X).cluster_ids.tolist()
    [0, 0, 1, 1]
    >>> rc.n_clusters
    2
    """

    single_worker = True
    half_life = None

    def __init__(
        self,
        estimator: str,
        params: dict[str, Any] | None = None,
        key: bytes | None = None,
        dim: int | None = None,
        mode: str = "one",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} should be one of {', '.join(map(repr, MODES))}")
        self.mode = mode
        self.estimator, self._cls = _resolve(estimator)
        self.params = dict(params or {})
        self.name = f"river:{self.estimator}"
        self.key = check_key(key)
        if dim is not None and dim < 1:
            raise ValueError(f"dim={dim} should be >= 1 (or None to take it from the first batch)")
        self.dim = dim
        self._allocate = None  # river owns the labels: a shared id counter is not used
        self.model = self._new_model()
        self._state = ClusterState.empty(dim or 0)
        self._keys: list[int] = list(range(dim or 0))

    def _new_model(self) -> Any:
        try:
            return self._cls(**self.params)
        except TypeError as exc:
            accepted = ", ".join(p for p in inspect.signature(self._cls).parameters
                                 if p not in ("self", "kwargs"))
            raise ValueError(f"river.cluster.{self.estimator} does not accept params "
                             f"{self.params!r} ({exc}); it takes: {accepted}") from exc
        except (ValueError, ArithmeticError) as exc:
            raise ValueError(f"river.cluster.{self.estimator} refused params "
                             f"{self.params!r}: {exc}") from exc

    # -- state -----------------------------------------------------------------------------
    @property
    def n_clusters(self) -> int:
        return len(self._state)

    def snapshot(self) -> ClusterState:
        s = self._state
        return ClusterState(
            dim=self.dim or 0, ids=s.ids.copy(), sums=s.sums.copy(), weights=s.weights.copy(),
            counts=s.counts.copy(), last_t=s.last_t.copy(), created_t=s.created_t.copy(),
            labels=s.ids.copy(), n_docs=s.n_docs, next_id=s.next_id, version=s.version,
        )

    def restore(self, state: ClusterState) -> None:
        """Reset to an empty state, or accept the public statistics of the model held.

        An empty ``state`` resets the river model. A non-empty one cannot rebuild a river
        model, which only :meth:`load` / :meth:`loads` bring back (signed); it is accepted
        only when it describes the model already held (same document count and ids, e.g.
        the store's copy after :meth:`load`), and then replaces the public statistics.

        Raises
        ------
        ValueError
            On a non-empty state that does not match the model held, or of another width.
        """
        if self.dim is not None and state.dim and state.dim != self.dim:
            raise ValueError(f"state.dim={state.dim} should be {self.dim}, the model's dimension")
        if len(state) == 0 and state.n_docs == 0:
            self.dim = state.dim or self.dim
            self._keys = list(range(self.dim or 0))
            self.model = self._new_model()
            self._state = ClusterState.empty(self.dim or 0)
            return
        mine = self._state
        if state.n_docs == mine.n_docs and np.array_equal(np.sort(state.ids), np.sort(mine.ids)):
            self._state = ClusterState(
                self.dim or state.dim, state.ids.copy(), state.sums.copy(), state.weights.copy(),
                state.counts.copy(), state.last_t.copy(), state.created_t.copy(),
                state.ids.copy(), state.n_docs, state.next_id, state.version,
            )
            return
        raise ValueError(
            f"cannot restore a {self.name} model from plain arrays ({len(state)} clusters, "
            f"{state.n_docs} documents; the model held has seen {mine.n_docs}): the river model "
            f"comes from load() / loads() (signed with the state key), not from a ClusterState"
        )

    # -- learning --------------------------------------------------------------------------
    def learn_predict(self, X: np.ndarray) -> BatchResult:
        X = check_batch(X, self.dim)
        n, d = X.shape
        if self.dim is None:
            self.dim = d
            self._keys = list(range(d))
            self._state = ClusterState.empty(d)
        keys = self._keys
        learn_one, predict_one = self.model.learn_one, self.model.predict_one
        # river takes one dict at a time: these loops over documents cannot be avoided
        docs = [dict(zip(keys, row, strict=True)) for row in X.tolist()]
        if self.mode == "one":
            labels = []
            for x in docs:
                learn_one(x)
                labels.append(predict_one(x))
        else:
            for x in docs:
                learn_one(x)
            labels = self._predict_learnt(docs)
        raw = [-1 if label is None else int(label) for label in labels]
        ids = np.asarray(raw, np.int64).reshape(n)
        placed = ids >= 0
        where = np.flatnonzero(placed)
        uniq, dsums, dcounts = sum_rows_by(ids[where], X[where])
        before = self._state
        is_fresh = np.isin(uniq, before.ids, invert=True)
        delta = Delta(
            n_docs=n, ids=uniq, sums=dsums, weights=dcounts.astype(np.float64),
            counts=dcounts.astype(np.int64), new_ids=uniq[is_fresh],
        )
        self._state = apply_delta(before, delta, None)
        is_new = np.zeros(n, bool)
        if is_fresh.any():
            _, first = np.unique(ids[where], return_index=True)
            is_new[where[first[is_fresh]]] = True
        similarity = np.zeros(n, np.float32)
        if where.size:
            s = self._state
            order = np.argsort(s.ids, kind="stable")
            rows = order[np.searchsorted(s.ids, ids[where], sorter=order)]
            c = s.sums[rows]
            dots = np.einsum("ij,ij->i", X[where], c)
            norms = np.linalg.norm(X[where], axis=1) * np.linalg.norm(c, axis=1)
            similarity[where] = dots / np.maximum(norms, 1e-12)
        return BatchResult(ids, similarity, is_new, ~placed, delta)

    def _predict_learnt(self, docs: list[dict[int, float]]) -> list[Any]:
        """``predict_one`` of each document, the model no longer learning (mode "batch").

        river's DenStream re-runs its DBSCAN over all potential micro-clusters at every
        ``predict_one`` (quadratic in their number) although nothing changed in between; it
        is run once here, by the first call, and the other documents go to the nearest of
        the clusters it produced, exactly what their own calls would answer. The other
        estimators cache their clustering themselves.
        """
        model, predict_one = self.model, self.model.predict_one
        if not docs:
            return []
        first = predict_one(docs[0])
        nearest = getattr(model, "_get_closest_cluster_key", None)
        if (self.estimator != "DenStream" or nearest is None or not model.initialized
                or not isinstance(getattr(model, "clusters", None), dict)):
            return [first] + [predict_one(x) for x in docs[1:]]
        clusters = model.clusters
        return [first] + [nearest(x, clusters) for x in docs[1:]]

    # -- saving ----------------------------------------------------------------------------
    def _require_key(self) -> bytes:
        if self.key is None:
            raise ValueError(_NO_KEY)
        return self.key

    def dumps(self) -> bytes:
        """The river model and the public statistics, pickled and signed with the key.

        Layout: :data:`FORMAT_TAG`, then HMAC-SHA256(key, tag + payload) (32 bytes), then
        the pickle payload.

        Raises
        ------
        ValueError
            When no key is configured.
        """
        key = self._require_key()
        s = self._state
        payload = pickle.dumps({
            "estimator": self.estimator,
            "params": self.params,
            "dim": self.dim,
            "model": self.model,
            "state": {
                "ids": s.ids, "sums": s.sums, "weights": s.weights, "counts": s.counts,
                "last_t": s.last_t, "created_t": s.created_t, "n_docs": s.n_docs,
                "next_id": s.next_id, "version": s.version,
            },
        }, protocol=pickle.HIGHEST_PROTOCOL)
        signature = hmac.new(key, FORMAT_TAG + payload, hashlib.sha256).digest()
        return FORMAT_TAG + signature + payload

    def loads(self, data: bytes) -> None:
        """Replace the model and statistics with those of :meth:`dumps` output ``data``.

        The signature is checked before anything is unpickled.

        Raises
        ------
        StateSignatureError
            When ``data`` is not signed with the configured key (tampered, truncated, or
            signed with another key, or not a river state at all); nothing is unpickled.
        ValueError
            When no key is configured, or the state belongs to another estimator or width.
        """
        payload = verify_signed(data, self._require_key())
        blob = pickle.loads(payload)  # signed by a holder of the key: trusted from here on
        if not isinstance(blob, dict) or not {"estimator", "dim", "params", "model",
                                              "state"} <= blob.keys():
            raise ValueError(f"the signed state holds a {type(blob).__name__}, not a "
                             f"river state written by dumps()")
        if blob["estimator"] != self.estimator:
            raise ValueError(f"the state holds a river:{blob['estimator']} model; this "
                             f"clusterer is {self.name}")
        dim = blob["dim"]
        if self.dim is not None and dim is not None and dim != self.dim:
            raise ValueError(f"the state's dim={dim} should be {self.dim}, the model's dimension")
        if blob["params"] != self.params:
            log.warning("%s: loaded a model made with params %r; the configured %r are not "
                        "used", self.name, blob["params"], self.params)
        st = blob["state"]
        self.dim = dim if dim is not None else self.dim
        self._keys = list(range(self.dim or 0))
        self.model = blob["model"]
        self._state = ClusterState(
            self.dim or 0, st["ids"], st["sums"], st["weights"], st["counts"], st["last_t"],
            st["created_t"], st["ids"].copy(), st["n_docs"], st["next_id"], st["version"],
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`dumps` to ``path`` atomically (a temporary file, then a rename)."""
        data = self.dumps()
        target = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load(self, path: str | os.PathLike[str]) -> None:
        """Read state written by :meth:`save` (see :meth:`loads`)."""
        self._require_key()
        self.loads(Path(path).read_bytes())
