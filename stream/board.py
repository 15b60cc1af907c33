"""The live topic board: what ``/api/topics`` serves and what the report draws.

:func:`build_view` turns one stored model (clusterer state + topic cards) into a
:class:`TopicView`: per public cluster its keywords, exemplars, size, decayed weight, growth,
emerging flag and macro topic (:mod:`stream.macro`). :class:`TopicBoard` keeps the view of a
state store's model and rebuilds it only when the model's version changes; requests between
two commits are answered from the cache (serialised answers included), so a request never
reloads the model when nothing changed.

Growth
------
The topic cards keep, per cluster, its documents in the current stream-time bucket of the
emerging-topic detector (``bucket_s`` seconds of the documents' own timestamps) and its
baseline (the exponentially weighted mean count of the buckets before). The board rolls
every card forward to the newest bucket of the model (a cluster that received nothing
lately has 0 documents now and a decayed baseline) and reports ``recent`` (documents in the
current bucket), ``baseline`` and ``growth = recent - baseline``: documents above the
topic's usual rate. These come from the store, so every reader agrees on them.

History (sparklines)
--------------------
The store keeps no time series per cluster. The board records the size of every topic each
time it sees a new model version (at most ``history`` samples, at least ``sample_every_s``
seconds apart), and a topic's sparkline is its size over those samples: a board that has
just started shows a flat line until the model changes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream.clustering.base import ClusterState
from stream.macro import MacroTopic, PublicClusters, macro_of, macro_topics, public_clusters
from stream.topics import MAX_GAP_BUCKETS, TopicCard, TopicParams, TopicState, TopicTracker

log = logging.getLogger(__name__)

SORTS = ("weight", "size", "growth")
MAX_N = 1000


class BoardQueryError(ValueError):
    """A bad query parameter of ``/api/topics`` (answered with 400 and this message)."""


@dataclass
class TopicView:
    """One model version, ready to serve: row ``i`` of every array is cluster ``ids[i]``."""

    version: int
    n_docs: int
    ids: np.ndarray
    weights: np.ndarray
    sizes: np.ndarray
    recent: np.ndarray  # documents in the current stream-time bucket
    baseline: np.ndarray  # usual documents per bucket, rolled to the current bucket
    growth: np.ndarray  # recent - baseline
    emerging: np.ndarray  # bool: announced as an emerging topic
    born_ts: np.ndarray  # stream time (seconds) of the first document; nan: no card
    last_ts: np.ndarray
    macro: np.ndarray  # id of each cluster's macro topic
    tracker: TopicTracker  # the model's topic cards: keywords and exemplars, on demand
    macros: list[MacroTopic]
    stream_ts: float | None  # newest document time over all cards
    bucket_s: float
    clusters: PublicClusters
    built_s: float = 0.0  # seconds it took to build
    orders: dict[str, np.ndarray] = field(default_factory=dict)
    _keywords: dict[int, list[str]] = field(default_factory=dict)
    _all_keywords: bool = False

    def keywords(self, ids: list[int]) -> dict[int, list[str]]:
        """Keywords of the clusters ``ids``, computed the first time they are asked for
        (a view of thousands of clusters is built without them)."""
        missing = [c for c in ids if c not in self._keywords]
        if missing:
            self._keywords.update(self.tracker.keywords(missing))
        return {c: self._keywords.get(c, []) for c in ids}

    def all_keywords(self) -> dict[int, list[str]]:
        """Keywords of every cluster (for a search), computed once per view."""
        if not self._all_keywords:
            self.keywords(self.ids.tolist())
            self._all_keywords = True
        return self._keywords

    def exemplars(self, cid: int) -> list[str]:
        return self.tracker.exemplars(cid)

    def order(self, sort: str) -> np.ndarray:
        """Rows, best first, for ``sort`` (one of :data:`SORTS`; ties: the smaller id)."""
        if sort not in self.orders:
            key = {"weight": self.weights, "size": self.sizes.astype(np.float64),
                   "growth": self.growth}[sort]
            self.orders[sort] = np.lexsort((self.ids, -key))
        return self.orders[sort]


def _card_arrays(ids: np.ndarray, topics: TopicState | None, p: TopicParams,
                 ) -> tuple[np.ndarray, ...]:
    """Per cluster from its card: recent, baseline, emerging, born_ts, last_ts (a loop over
    cards to read them out; the arithmetic is vectorised)."""
    k = len(ids)
    bucket = np.full(k, -1, np.int64)
    n = np.zeros(k)
    mean = np.zeros(k)
    alerted = np.zeros(k, bool)
    born = np.full(k, np.nan)
    last = np.full(k, np.nan)
    cards = topics.cards if topics is not None else {}
    for i, cid in enumerate(ids.tolist()):
        c = cards.get(cid)
        if c is not None:
            bucket[i], n[i], mean[i], alerted[i] = c.bucket, c.n, c.mean, c.alerted
            born[i], last[i] = c.born_ts, c.last_ts
    now = int(bucket.max()) if k else -1
    current = bucket == now
    gap = np.clip(now - bucket, 1, MAX_GAP_BUCKETS + 1)
    # a stale card: its bucket's count enters the baseline, then gap - 1 empty buckets do
    rolled = (mean + p.alpha * (n - mean)) * (1.0 - p.alpha) ** (gap - 1)
    recent = np.where(current, n, 0.0)
    baseline = np.where(current | (bucket < 0), mean, rolled)
    return recent, baseline, alerted, born, last


def build_view(state: ClusterState, topics: TopicState | None, params: TopicParams,
               max_macro_topics: int = 12) -> TopicView:
    """Everything the board and the report show of one model version.

    Parameters
    ----------
    state, topics
        The stored clusterer state and topic cards of the model.
    params
        The model's topic parameters (half-life, keywords, bucket width, ``alpha``).
    max_macro_topics
        Most macro topics (see :func:`stream.macro.macro_topics`).
    """
    start = time.perf_counter()
    pc = public_clusters(state, params.half_life)
    tracker = TopicTracker(params)
    tracker.restore(topics, state.n_docs)
    recent, baseline, alerted, born, last = _card_arrays(pc.ids, topics, params)
    macros = macro_topics(state, topics, params.half_life, max_macro_topics, params.n_keywords,
                          clusters=pc)
    of = macro_of(macros)
    macro = np.fromiter((of.get(c, c) for c in pc.ids.tolist()), np.int64, len(pc))
    finite = last[np.isfinite(last)]
    view = TopicView(
        version=state.version, n_docs=state.n_docs, ids=pc.ids, weights=pc.weights,
        sizes=pc.sizes, recent=recent, baseline=baseline, growth=recent - baseline,
        emerging=alerted, born_ts=born, last_ts=last, macro=macro, tracker=tracker,
        macros=macros,
        stream_ts=float(finite.max()) if finite.size else None, bucket_s=params.bucket_s,
        clusters=pc)
    view.built_s = time.perf_counter() - start
    return view


def _num(x: float) -> float | None:
    return round(float(x), 3) if np.isfinite(x) else None


def _store_version(store: Any) -> int | None:
    """The store's model version when it can tell it cheaply, else None."""
    probe: Callable[[], int] | None = getattr(store, "model_version", None)
    return None if probe is None else int(probe())


class TopicBoard:
    """The topics of a state store's model, cached per model version.

    Parameters
    ----------
    store
        A :class:`~stream.state.StateStore` (the worker's own, or one opened by
        ``topicstream board``).
    params
        The model's topic parameters.
    max_macro_topics
        Most macro topics.
    default_n
        Topics answered when the query names no ``n``.
    history
        Samples of every topic's size kept for the sparklines.
    sample_every_s
        Least seconds between two history samples.
    background
        Rebuild a changed model's view in a thread and answer from the previous one
        meanwhile (the worker's server: a request never waits for a rebuild once a first
        view exists); False: rebuild in the request (tests, reports).
    """

    def __init__(self, store: Any, params: TopicParams | None = None, max_macro_topics: int = 12,
                 default_n: int = 50, history: int = 30, sample_every_s: float = 1.0,
                 background: bool = True, model: str = "default") -> None:
        self.store = store
        self.params = params or TopicParams()
        self.max_macro_topics = max_macro_topics
        self.default_n = default_n
        self.sample_every_s = sample_every_s
        self.background = background
        self.model = model
        self._view: TopicView | None = None
        # parsed topic cards by their stored JSON (see StateStore.export_state)
        self._cards: dict[str, tuple[bytes, TopicCard]] = {}
        self._history: deque[tuple[float, np.ndarray, np.ndarray]] = deque(maxlen=history)
        self._last_sample = -np.inf
        self._lock = threading.Lock()  # the view, the history and the answers
        self._build_lock = threading.Lock()  # one rebuild at a time
        self._building = False
        self._answers: OrderedDict[tuple[int, int, str, str], bytes] = OrderedDict()

    # -- the view ---------------------------------------------------------------------------
    def _rebuild(self) -> TopicView | None:
        with self._build_lock:
            snap = self.store.export_state(self._cards)
            if snap.state is None:
                return None
            view = build_view(snap.state, snap.topics, self.params, self.max_macro_topics)
        now = time.monotonic()
        with self._lock:
            if self._view is None or view.version != self._view.version:
                if now - self._last_sample >= self.sample_every_s or not self._history:
                    self._history.append((float(view.n_docs), view.ids, view.sizes))
                    self._last_sample = now
                else:  # too soon: the newest sample is replaced, not added to
                    self._history[-1] = (float(view.n_docs), view.ids, view.sizes)
            self._view = view
            self._answers.clear()
        log.debug("board view of version %s: %d clusters, %d macro topics in %.1f ms",
                  view.version, len(view.ids), len(view.macros), view.built_s * 1000)
        return view

    def _background(self) -> None:
        try:
            self._rebuild()
        except Exception as exc:  # noqa: BLE001 - logged; the next request tries again
            log.warning("rebuilding the topic board failed: %s", exc)
        finally:
            self._building = False

    def view(self) -> TopicView | None:
        """The current view: rebuilt when the model's version moved (in the background when
        a previous view exists and ``background`` is set); None when the model is empty."""
        current = self._view
        version = _store_version(self.store)
        if current is not None and version is not None and version == current.version:
            return current
        if current is not None and self.background:
            with self._lock:
                start = not self._building
                self._building = True
            if start:
                threading.Thread(target=self._background, name="board-rebuild",
                                 daemon=True).start()
            return current
        return self._rebuild()

    # -- answers ----------------------------------------------------------------------------
    def answer(self, n: int | None = None, sort: str = "weight", q: str = "") -> bytes:
        """The JSON of ``/api/topics``: the ``n`` best topics by ``sort`` whose keywords
        contain ``q`` (cached per model version)."""
        n = self.default_n if n is None else n
        if not 1 <= n <= MAX_N:
            raise BoardQueryError(f"n={n} should be within [1, {MAX_N}]")
        if sort not in SORTS:
            raise BoardQueryError(f"sort={sort!r} should be one of {', '.join(SORTS)}")
        view = self.view()
        key = (view.version if view else -1, n, sort, q.strip().lower())
        with self._lock:
            hit = self._answers.get(key)
        if hit is not None:
            return hit
        body = json.dumps(self.payload(view, n, sort, key[3]), ensure_ascii=False).encode()
        with self._lock:
            self._answers[key] = body
            while len(self._answers) > 64:
                self._answers.popitem(last=False)
        return body

    def payload(self, view: TopicView | None, n: int, sort: str, q: str = "") -> dict[str, Any]:
        """The answer as a dict (see :meth:`answer`)."""
        if view is None:
            return {"model": self.model, "version": 0, "documents": 0, "clusters": 0,
                    "topics": [], "macros": [], "history_docs": [], "sort": sort, "n": n,
                    "query": q}
        rows = view.order(sort)
        if q:
            every = view.all_keywords()
            hits = np.fromiter((any(q in k for k in every.get(c, []))
                                for c in view.ids[rows].tolist()), bool, len(rows))
            rows = rows[hits]
        rows = rows[:n]
        keywords = view.keywords(view.ids[rows].tolist())
        with self._lock:
            samples = list(self._history)
        docs, spark = self._sparklines(view.ids[rows], samples)
        topics = []
        for j, i in enumerate(rows.tolist()):
            cid = int(view.ids[i])
            topics.append({
                "id": cid, "keywords": keywords.get(cid, []),
                "exemplars": view.exemplars(cid), "size": int(view.sizes[i]),
                "weight": _num(view.weights[i]), "recent": _num(view.recent[i]),
                "baseline": _num(view.baseline[i]), "growth": _num(view.growth[i]),
                "emerging": bool(view.emerging[i]), "macro": int(view.macro[i]),
                "born_ts": _num(view.born_ts[i]), "last_ts": _num(view.last_ts[i]),
                "history": spark[j].tolist()})
        shown = set(int(view.macro[i]) for i in rows.tolist())
        macros = [{**m.to_json(), "members": len(m.members), "shown": m.id in shown}
                  for m in view.macros]
        return {"model": self.model, "version": view.version, "documents": view.n_docs,
                "clusters": len(view.ids), "stream_ts": view.stream_ts,
                "bucket_s": view.bucket_s, "sort": sort, "n": n, "query": q, "matched": int(len(rows)),
                "history_docs": docs, "topics": topics, "macros": macros}

    @staticmethod
    def _sparklines(ids: np.ndarray, samples: list[tuple[float, np.ndarray, np.ndarray]],
                    ) -> tuple[list[float], np.ndarray]:
        """Size of each of ``ids`` at each history sample (0 before it existed)."""
        out = np.zeros((len(ids), len(samples)), np.int64)
        for h, (_, s_ids, s_sizes) in enumerate(samples):
            if not len(s_ids):
                continue
            pos = np.clip(np.searchsorted(s_ids, ids), 0, len(s_ids) - 1)
            hit = s_ids[pos] == ids
            out[hit, h] = s_sizes[pos[hit]]
        return [d for d, _, _ in samples], out


def parse_query(query: str) -> tuple[int | None, str, str]:
    """``n``, ``sort`` and ``q`` of a query string; raises :class:`BoardQueryError`.

    >>> parse_query("n=5&sort=growth&q=flu")
    (5, 'growth', 'flu')
    """
    from urllib.parse import parse_qs

    args = parse_qs(query, keep_blank_values=True)
    n_raw = args.get("n", [""])[-1]
    try:
        n = int(n_raw) if n_raw else None
    except ValueError as exc:
        raise BoardQueryError(f"n={n_raw!r} should be a whole number") from exc
    return n, args.get("sort", ["weight"])[-1] or "weight", args.get("q", [""])[-1]
