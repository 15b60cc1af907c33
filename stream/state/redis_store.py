"""Redis state store: the shared model of every worker, one atomic Lua commit per batch."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any

import numpy as np
import orjson
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stream.clustering.base import ClusterState, Delta, apply_delta
from stream.contracts import TopicPartition
from stream.state import (
    CommitRejected,
    CommitResult,
    OffsetMove,
    StoreNotEmpty,
    StoreSnapshot,
    StoreUnavailable,
    offset_field,
)
from stream.topics import (
    ALL,
    MAX_GAP_BUCKETS,
    TopicCard,
    TopicDelta,
    TopicParams,
    TopicState,
    apply_topic_delta,
)

log = logging.getLogger(__name__)

# KEYS[1] lease key, ARGV[1] owner, ARGV[2] ttl in ms: take or renew, 1 when held
LEASE_SCRIPT = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS meta, offsets, clusters, topics, next_id. ARGV: force ('1'/'0'), replace offsets
# ('1'/'0'), dim, n_docs, version, next_id, m, m x cluster id, records blob (record_dtype),
# n_topics, n_topics x (field, JSON), n_offsets, n_offsets x (field, offset), epoch.
# Refuses ({'not_empty', clusters, n_docs}) when the model holds anything and force is not
# '1'; otherwise replaces meta, clusters, topics, the id counter and (if asked) the offsets.
IMPORT_SCRIPT = """
if ARGV[1] ~= '1' and redis.call('EXISTS', KEYS[1], KEYS[2], KEYS[3], KEYS[4]) > 0 then
  return {'not_empty', redis.call('HLEN', KEYS[3]), redis.call('HGET', KEYS[1], 'n_docs') or '0'}
end
redis.call('DEL', KEYS[1], KEYS[3], KEYS[4])
if ARGV[2] == '1' then redis.call('DEL', KEYS[2]) end
redis.call('HSET', KEYS[1], 'dim', ARGV[3], 'n_docs', ARGV[4], 'version', ARGV[5])
redis.call('SET', KEYS[5], ARGV[6])
local size = 40 + 4 * tonumber(ARGV[3])
local m = tonumber(ARGV[7])
local blob = ARGV[8 + m]
for j = 0, m - 1 do
  redis.call('HSET', KEYS[3], ARGV[8 + j], string.sub(blob, j * size + 1, (j + 1) * size))
end
local k = 9 + m
local n_topics = tonumber(ARGV[k])
k = k + 1
for _ = 1, n_topics do
  redis.call('HSET', KEYS[4], ARGV[k], ARGV[k + 1])
  k = k + 2
end
local n_offsets = tonumber(ARGV[k])
k = k + 1
for _ = 1, n_offsets do
  redis.call('HSET', KEYS[2], ARGV[k], ARGV[k + 1])
  k = k + 2
end
redis.call('HSET', KEYS[1], 'epoch', ARGV[k])  -- a new model (see write_rows.lua)
return {'ok'}
"""

HEADER = 40  # '<ddddd': weight, count, last_t, created_t, label
MAX_PATIENCE = 64  # most commits by the delta way, alone, before the model is read again


@dataclass(frozen=True)
class Mirror:
    """A model exactly as stored at one version (see :meth:`RedisStore.commit`): its rows
    (None for a model with nothing yet), its cards, and the stamp ``version/epoch`` that
    ``write_rows.lua`` compares with the stored one."""

    state: ClusterState | None
    topics: TopicState | None
    stamp: str


def record_dtype(dim: int) -> np.dtype:
    """Layout of one cluster record in Redis (and of one delta row sent to the script)."""
    return np.dtype([("weight", "<f8"), ("count", "<f8"), ("last_t", "<f8"),
                     ("created_t", "<f8"), ("label", "<f8"), ("sum", "<f4", (dim,))])


def to_records(state: ClusterState, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` of ``state`` as stored records (:func:`record_dtype`)."""
    recs = np.zeros(len(rows), dtype=record_dtype(state.dim))
    recs["weight"] = state.weights[rows]
    recs["count"] = state.counts[rows]
    recs["last_t"] = state.last_t[rows]
    recs["created_t"] = state.created_t[rows]
    recs["label"] = state.row_labels[rows]
    recs["sum"] = state.sums[rows]
    return recs


def changed_rows(old: ClusterState, new: ClusterState, delta: Delta) -> tuple[np.ndarray, np.ndarray]:
    """What :func:`~stream.clustering.base.apply_delta` changed from ``old`` to ``new``: the
    rows of ``new`` to write (new ids, the delta's rows, merge destinations, rows whose label
    a merge rewrote) and the ids of ``old`` that are gone. ``apply_delta`` touches nothing
    else, so every other row is stored as it is.

    >>> old = ClusterState.empty(2)
    >>> d = Delta(3, np.array([4, 5]), np.ones((2, 2), np.float32), np.ones(2), np.ones(2, np.int64))
    >>> mid = apply_delta(old, d, None)
    >>> rows, gone = changed_rows(old, mid, d)
    >>> rows.tolist(), gone.tolist()
    ([0, 1], [])
    >>> m = Delta(0, np.zeros(0, np.int64), np.zeros((0, 2), np.float32), np.zeros(0),
    ...           np.zeros(0, np.int64), merges=np.array([[5, 4]]))
    >>> rows, gone = changed_rows(mid, apply_delta(mid, m, None), m)
    >>> rows.tolist(), gone.tolist()
    ([0], [5])
    """
    gone = np.setdiff1d(old.ids, new.ids)
    if len(old) == 0:
        return np.arange(len(new)), gone
    order = np.argsort(old.ids, kind="stable")
    at = np.minimum(np.searchsorted(old.ids[order], new.ids), len(old) - 1)
    was = old.ids[order][at] == new.ids
    relabelled = was & (old.row_labels[order][at] != new.row_labels)
    touched = np.concatenate([delta.ids, np.asarray(delta.merges, np.int64).reshape(-1, 2)[:, 1]])
    return np.flatnonzero(~was | relabelled | np.isin(new.ids, touched)), gone


def model_keys(model: str) -> dict[str, str]:
    """Every key of a model shares the hash tag ``{model}``, so it runs on Redis Cluster."""
    if not model or any(c in model for c in "{}"):
        raise ValueError(f"model={model!r} should be a non-empty name without braces")
    base = f"topicstream:{{{model}}}"
    return {k: f"{base}:{k}" for k in ("meta", "offsets", "clusters", "topics", "next_id",
                                                  "lease")}


class RedisStore:
    """Clusterer state and offsets in Redis, shared by every worker of ``model``.

    Layout (all under the hash tag ``{model}``): ``meta`` (``n_docs``, ``version``, ``dim``),
    ``offsets`` (``topic:partition`` -> next offset), ``clusters`` (id -> packed record, see
    :func:`record_dtype`: plain numbers, never pickle), ``topics`` (cluster id, or ``all``
    for the all-clusters term sketch -> the JSON of a :class:`~stream.topics.TopicCard`)
    ``next_id`` (the counter that hands out cluster ids) and ``lease`` (the owner of the
    maintenance lease, with a time to live: :mod:`stream.state.lease`).

    :meth:`commit` is one round trip, atomic, compare-and-set on the offsets (the fencing
    of zombies), in one of two ways with the same outcome (to the rounding of the stored
    numbers: Redis' cjson writes 14 significant digits):

    - *rows* (``write_rows.lua``), while this store's commits are the model's only ones:
      the store keeps a *mirror*, the model exactly as stored at its version, applies the
      batch to it here (:func:`~stream.clustering.base.apply_delta`,
      :func:`~stream.topics.apply_topic_delta`, vectorised) and sends the changed rows and
      cards whole, with a compare-and-set on the model's ``version/epoch``; Redis only
      stores them.
    - *delta* (``commit.lua``): the delta and the topic delta go to Redis, which adds them
      with the same arithmetic (step for step, in Lua) to whatever is stored. This is the
      way when another worker committed since the mirror was read (the script above
      answers ``stale`` and writes nothing; the stored stamp is read first, so no rows
      are computed in vain), and the first commit of a store.

    Redis is one thread for every worker of the model, so the arithmetic belongs in the
    workers: on the 2-core development machine (2026-12-03, news titles, 896-d vectors,
    batches of 256) ``commit.lua`` took 18 ms of Redis's time per batch for about 150
    rows and 32-35 ms with the topic cards, which alone bounds a whole consumer group to
    about 30 batches a second; ``write_rows.lua`` took 3.1 ms for the same kmeans batches
    (4.7 ms for DenStream's, about 235 rows).

    The mirror is read (in one transaction: every row and card, a read of the whole model)
    after ``patience`` commits by the delta way in a row that each followed this store's
    own previous one with nothing between (the first commit of a store counts as one).
    ``patience`` starts at 1 and doubles, up to :data:`MAX_PATIENCE`, each time a mirror
    goes stale, so workers that keep interleaving stay on the delta way without reading the
    model again and again.

    Pitfall: the mirror is a second copy of the model in the worker's memory (rows and
    cards), besides the clusterer's replica.
    """

    def __init__(self, url: str, model: str = "default", half_life: float | None = None,
                 client: Any = None, socket_timeout_s: float = 5.0,
                 topic_params: TopicParams | None = None, write_rows: bool = True) -> None:
        self.url = url
        self.model = model
        self.half_life = half_life
        # one clock and one half-life for the clusterer state and the topic cards
        self.topic_params = replace(topic_params or TopicParams(), half_life=half_life)
        self.keys = model_keys(model)
        self.r = client or redis.Redis.from_url(url, socket_timeout=socket_timeout_s,
                                                socket_connect_timeout=socket_timeout_s)
        lua = resources.files("stream.state")
        shared = lua.joinpath("batch.lua").read_text()  # the functions both scripts call
        self._commit = self.r.register_script(shared + lua.joinpath("commit.lua").read_text())
        self._write_rows = self.r.register_script(shared + lua.joinpath("write_rows.lua").read_text())
        self.write_rows = write_rows
        self._mirror: Mirror | None = None
        self._seen_version: int | None = None  # the version after this store's last commit
        self._alone = 0  # commits in a row that followed this store's previous one directly
        self._patience = 1  # such commits before the model is read for the rows way
        self.commits = {"rows": 0, "delta": 0}  # commits made each way
        self._lease = self.r.register_script(LEASE_SCRIPT)
        self._release = self.r.register_script(RELEASE_SCRIPT)
        self._import = self.r.register_script(IMPORT_SCRIPT)

    def ping(self) -> None:
        try:
            self.r.ping()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise StoreUnavailable(f"Redis at {redact(self.url)} is unreachable: {exc}") from exc

    def load_state(self) -> ClusterState | None:
        try:
            with self.r.pipeline(transaction=True) as p:
                p.hgetall(self.keys["meta"])
                p.hgetall(self.keys["clusters"])
                p.get(self.keys["next_id"])
                meta, clusters, next_id = p.execute()
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise StoreUnavailable(str(exc)) from exc
        return _parse_state(meta, clusters, next_id)

    def load_topics(self) -> TopicState | None:
        try:
            raw: dict[Any, Any] = self.r.hgetall(self.keys["topics"])
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise StoreUnavailable(str(exc)) from exc
        return _parse_topics(raw)

    def model_version(self) -> int:
        """Commits applied to the model (0: none), in one ``HGET``: a cheap test of whether
        the model changed since it was last read."""
        try:
            raw = self.r.hget(self.keys["meta"], "version")
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise StoreUnavailable(str(exc)) from exc
        return int(raw) if raw is not None else 0

    def load_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        if not tps:
            return {}
        try:
            values = self.r.hmget(self.keys["offsets"], [offset_field(tp) for tp in tps])
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise StoreUnavailable(str(exc)) from exc
        return {tp: int(v) for tp, v in zip(tps, values, strict=True) if v is not None}

    def all_offsets(self) -> dict[str, int]:
        try:
            raw: dict[Any, Any] = self.r.hgetall(self.keys["offsets"])
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise StoreUnavailable(str(exc)) from exc
        return _parse_offsets(raw)

    def export_state(self, cards: dict[str, tuple[bytes, TopicCard]] | None = None
                     ) -> StoreSnapshot:
        """State, topic cards and offsets in one MULTI/EXEC: no commit falls between them.

        ``cards`` is a cache for a reader that rereads the model again and again (the topic
        board): field -> (stored JSON, parsed card). A card whose stored JSON is byte for
        byte the cached one is not parsed again (a batch changes a few cards of thousands),
        and the cache is updated in place to the cards read."""
        meta, clusters, next_id, topics, offsets = self._read_model(offsets=True)
        return StoreSnapshot(_parse_state(meta, clusters, next_id), _parse_topics(topics, cards),
                             _parse_offsets(offsets))

    def _read_model(self, offsets: bool) -> list[Any]:
        """The raw ``meta``, ``clusters``, ``next_id``, ``topics`` (and ``offsets``) in one
        MULTI/EXEC."""
        k = self.keys
        try:
            with self.r.pipeline(transaction=True) as p:
                p.hgetall(k["meta"])
                p.hgetall(k["clusters"])
                p.get(k["next_id"])
                p.hgetall(k["topics"])
                if offsets:
                    p.hgetall(k["offsets"])
                return list(p.execute())
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise StoreUnavailable(str(exc)) from exc

    def import_state(self, state: ClusterState, topics: TopicState | None,
                     offsets: dict[str, int] | None, *, force: bool = False) -> None:
        """Replace the model's keys in one script (atomic; the emptiness check included):
        ``meta``, ``clusters``, ``topics``, ``next_id`` and, unless ``offsets`` is None,
        ``offsets``; the ``lease`` is left alone (see :meth:`StateStore.import_state`)."""
        dim = int(state.dim)
        recs = to_records(state, np.arange(len(state)))
        args: list[Any] = ["1" if force else "0", "0" if offsets is None else "1", dim,
                           int(state.n_docs), int(state.version), int(state.next_id), len(state)]
        args += [str(int(c)) for c in state.ids]
        args.append(recs.tobytes())
        cards = topics.to_json() if topics is not None else {}
        args.append(len(cards))
        for key, card in cards.items():
            args += [key, json.dumps(card, ensure_ascii=False)]
        args.append(len(offsets or {}))
        for field, value in (offsets or {}).items():
            args += [field, str(int(value))]
        args.append(f"import.{uuid.uuid4().hex}")
        self._mirror = None
        k = self.keys
        try:
            out = self._import(keys=[k["meta"], k["offsets"], k["clusters"], k["topics"],
                                     k["next_id"]], args=args)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise StoreUnavailable(str(exc)) from exc
        except ResponseError as exc:
            raise RuntimeError(f"import script failed: {exc}") from exc
        out = [v.decode() if isinstance(v, bytes) else v for v in out]
        if out[0] == "not_empty":
            raise StoreNotEmpty(f"model {self.model!r} at {redact(self.url)} already holds "
                                f"state ({int(out[1])} clusters, {int(out[2])} documents)")

    def commit(self, delta: Delta, moves: list[OffsetMove],
               topics: TopicDelta | None = None) -> CommitResult:
        """Apply one batch atomically (see the class docstring for the two ways)."""
        previous = self._seen_version
        mirror = self._mirror
        if mirror is not None and self._stamp() == mirror.stamp:  # else: no rows to compute
            result = self._commit_rows(mirror, delta, moves, topics)
            if result is not None:
                self._seen_version = result.version
                return result
        if mirror is not None:  # another worker committed: its rows are not in the mirror
            self._mirror = None
            self._patience = min(2 * self._patience, MAX_PATIENCE)
        result = self._commit_delta(delta, moves, topics)
        self._seen_version = result.version
        alone = previous is None or result.version == previous + 1
        self._alone = self._alone + 1 if alone else 0
        if self.write_rows and self._alone >= self._patience:
            self._alone = 0
            try:
                self._mirror = self.read_mirror()
            except StoreUnavailable as exc:  # the batch is committed: only the way is lost
                log.warning("could not read the model after a commit (%s): the next commit "
                            "sends its delta", exc)
        return result

    def _stamp(self) -> str:
        """The stored ``version/epoch`` (one round trip)."""
        try:
            version, epoch = self.r.hmget(self.keys["meta"], ["version", "epoch"])
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise StoreUnavailable(str(exc)) from exc
        return f"{_text(version or b'0')}/{_text(epoch or b'')}"

    def read_mirror(self) -> Mirror:
        """The whole model as stored, read in one transaction (rows, cards, version)."""
        meta, clusters, next_id, topics = self._read_model(offsets=False)
        state = _parse_state(meta, clusters, next_id)
        version = state.version if state is not None else 0  # (an empty state is falsy)
        return Mirror(state, _parse_topics(topics), f"{version}/{_text(meta.get(b'epoch', b''))}")

    def _commit_rows(self, mirror: Mirror, delta: Delta, moves: list[OffsetMove],
                     topics: TopicDelta | None) -> CommitResult | None:
        """The rows way: None when the model moved past ``mirror`` (nothing written)."""
        dim = int(delta.sums.shape[1])
        if mirror.state is not None and mirror.state.dim != dim:
            return None  # the delta way reports the mismatch
        old = mirror.state if mirror.state is not None else ClusterState.empty(dim)
        new = apply_delta(old, delta, self.half_life)
        rows, gone = changed_rows(old, new, delta)
        recs = to_records(new, rows)
        args: list[Any] = [mirror.stamp, delta.n_docs, dim, len(moves)]
        for mv in moves:
            args += [offset_field(mv.tp), str(mv.expected), str(mv.new)]
        args.append(len(rows))
        args += new.ids[rows].astype(str).tolist()
        args.append(recs.tobytes())
        args.append(len(gone))
        args += gone.astype(str).tolist()
        cards = mirror.topics
        if topics is None:
            args += ["", 0, 0]
        else:
            before = mirror.topics or TopicState()
            cards = apply_topic_delta(before, topics, float(new.n_docs), self.topic_params)
            touched = set(topics.cards) | {dst for _, dst in topics.merges}
            written = [c for c in touched if c in cards.cards]
            dropped = [c for c in before.cards if c not in cards.cards]
            args.append(_json({"w": cards.all_terms, "t": cards.all_t}))
            args.append(len(written))
            for c in written:
                args += [str(c), _json(cards.cards[c].to_json())]
            args.append(len(dropped))
            args += [str(c) for c in dropped]
        out = self._run(self._write_rows, args, moves, dim)
        if out[0] == "stale":
            log.debug("model %r moved to %s since it was read (%s): this batch goes as a delta",
                     self.model, out[1], mirror.stamp)
            return None
        self.commits["rows"] += 1
        self._mirror = Mirror(new, cards, f"{int(out[1])}/{out[3]}")
        return CommitResult(version=int(out[1]), n_docs=int(out[2]))

    def _commit_delta(self, delta: Delta, moves: list[OffsetMove],
                      topics: TopicDelta | None) -> CommitResult:
        """The delta way: Redis adds the delta to what it holds (``commit.lua``)."""
        dim = int(delta.sums.shape[1])
        recs = np.zeros(len(delta.ids), dtype=record_dtype(dim))
        recs["weight"] = delta.weights
        recs["count"] = delta.counts
        recs["label"] = delta.row_labels
        recs["sum"] = delta.sums
        args: list[Any] = [delta.n_docs, "" if self.half_life is None else repr(self.half_life),
                           dim, len(moves)]
        for mv in moves:
            args += [offset_field(mv.tp), str(mv.expected), str(mv.new)]
        args.append(len(delta.ids))
        args += [str(int(c)) for c in delta.ids]
        args.append(recs.tobytes())
        args.append(len(delta.merges))
        args += [str(int(c)) for c in np.asarray(delta.merges).reshape(-1)]
        args.append(len(delta.removed))
        args += [str(int(c)) for c in delta.removed]
        tp = self.topic_params
        args += ["" if topics is None else json.dumps(topics.to_json(), ensure_ascii=False),
                 tp.keyword_capacity, tp.vocabulary_capacity, tp.n_exemplars, repr(tp.alpha),
                 MAX_GAP_BUCKETS]
        out = self._run(self._commit, args, moves, dim)
        self.commits["delta"] += 1
        return CommitResult(version=int(out[1]), n_docs=int(out[2]))

    def _run(self, script: Any, args: list[Any], moves: list[OffsetMove], dim: int) -> list[Any]:
        """Run a commit script; its refusals raised as :class:`CommitRejected` (a partition
        moved) or ValueError (another dim), any other answer returned decoded."""
        keys = [self.keys["meta"], self.keys["offsets"], self.keys["clusters"], self.keys["topics"]]
        try:
            out = script(keys=keys, args=args)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise StoreUnavailable(str(exc)) from exc
        except ResponseError as exc:
            raise RuntimeError(f"commit script failed: {exc}") from exc
        out = [v.decode() if isinstance(v, bytes) else v for v in out]
        if out[0] == "rejected":
            field = str(out[1])
            expected = next(mv.expected for mv in moves if offset_field(mv.tp) == field)
            raise CommitRejected(field, expected, int(out[2]))
        if out[0] == "bad_dim":
            raise ValueError(f"model {self.model!r} has dim={int(out[1])}, this batch has dim={dim}: "
                             "a model's encoder cannot change (use another --model name)")
        return out

    def allocate_ids(self, n: int) -> np.ndarray:
        if n <= 0:
            return np.zeros(0, np.int64)
        try:
            top = int(self.r.incrby(self.keys["next_id"], n))
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise StoreUnavailable(str(exc)) from exc
        return np.arange(top - n, top, dtype=np.int64)

    def hold_lease(self, owner: str, ttl_ms: int) -> bool:
        """Take the maintenance lease when free or ``owner``'s, for ``ttl_ms`` (one script)."""
        try:
            return bool(self._lease(keys=[self.keys["lease"]], args=[owner, int(ttl_ms)]))
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise StoreUnavailable(str(exc)) from exc

    def release_lease(self, owner: str) -> None:
        """Delete the lease if ``owner`` holds it."""
        try:
            self._release(keys=[self.keys["lease"]], args=[owner])
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise StoreUnavailable(str(exc)) from exc

    def close(self) -> None:
        self.r.close()


def _json(obj: Any) -> bytes:
    """A card as JSON, as the readers and ``commit.lua`` parse it (orjson: the standard
    library's float formatting was the larger part of the rows way's time)."""
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def _text(key: Any) -> str:
    return key.decode() if isinstance(key, bytes) else str(key)


def _parse_state(meta: dict[Any, Any], clusters: dict[Any, Any],
                 next_id: Any) -> ClusterState | None:
    """A :class:`ClusterState` from the raw ``meta`` and ``clusters`` hashes and the id
    counter; None when the model has no meta yet."""
    if not meta:
        return None
    dim = int(meta[b"dim"])
    dt = record_dtype(dim)
    ids = np.fromiter((int(k) for k in clusters), np.int64, len(clusters))
    recs = np.frombuffer(b"".join(clusters.values()), dtype=dt) if clusters else np.zeros(0, dt)
    state = ClusterState(
        dim=dim, ids=ids, sums=recs["sum"].astype(np.float32),
        weights=recs["weight"].astype(np.float64), counts=recs["count"].astype(np.int64),
        last_t=recs["last_t"].astype(np.float64), created_t=recs["created_t"].astype(np.float64),
        labels=recs["label"].astype(np.int64),
        n_docs=int(meta.get(b"n_docs", 0)), next_id=int(next_id or 0),
        version=int(meta.get(b"version", 0)),
    )
    return state.sorted()


def _parse_topics(raw: dict[Any, Any], cache: dict[str, tuple[bytes, TopicCard]] | None = None
                  ) -> TopicState | None:
    """The topics hash as a :class:`TopicState`; with ``cache`` (see
    :meth:`RedisStore.export_state`), unchanged cards are taken from it, not parsed."""
    if not raw:
        return None
    every: dict[str, Any] = {}
    cards: dict[int, TopicCard] = {}
    fresh: dict[str, tuple[bytes, TopicCard]] = {}
    for key, value in raw.items():
        name = _text(key)
        if name == ALL:
            every[ALL] = json.loads(value)
            continue
        hit = cache.get(name) if cache is not None else None
        card = hit[1] if hit is not None and hit[0] == value else \
            TopicCard.from_json(json.loads(value))
        fresh[name] = (value, card)
        cards[int(name)] = card
    if cache is not None:
        cache.clear()
        cache.update(fresh)
    state = TopicState.from_json(every)  # the all-clusters sketch, parsed in one place
    state.cards = cards
    return state


def _parse_offsets(raw: dict[Any, Any]) -> dict[str, int]:
    return {_text(k): int(v) for k, v in raw.items()}


def redact(url: str) -> str:
    """A URL fit for a log line: the password replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    cred, _, host = rest.rpartition("@")
    user = cred.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}" if ":" in cred else f"{scheme}{sep}***@{host}"
