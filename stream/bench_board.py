"""``topicstream bench board``: latency of ``/api/topics`` on a large synthetic model.

Builds a model of ``clusters`` active clusters (unit centroids drawn around a few dozen
latent themes, topic cards with keywords, exemplars and emerging counters), imports it into
a private ``redis-server`` (or the in-memory store), serves the board exactly as a worker
does (:class:`~stream.http.StatusServer` with a background-rebuilding
:class:`~stream.board.TopicBoard`), and times ``requests`` calls of ``/api/topics`` over
HTTP, cycling the sort orders. Every ``change_every`` requests a small batch is committed
to the model, so the board has to notice the new version and rebuild its view while being
asked, as it does next to a live worker.
"""

from __future__ import annotations

import http.client
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from stream.clustering.base import ClusterState, Delta
from stream.topics import TopicCard, TopicDelta, TopicParams, TopicState

log = logging.getLogger(__name__)


@dataclass
class BoardBench:
    clusters: int
    store: str
    requests: int
    cold_ms: float  # the first request: the board builds its first view in it
    p50_ms: float
    p99_ms: float
    max_ms: float
    changes: int  # model versions committed during the run
    rebuild_ms: float  # building one view (the last one), off the request path
    bytes: int  # size of one answer

    def as_json(self) -> dict[str, Any]:
        return dict(vars(self))


def synthetic_model(n_clusters: int, dim: int = 384, themes: int = 40, seed: int = 0,
                    params: TopicParams | None = None) -> tuple[ClusterState, TopicState]:
    """A model of ``n_clusters`` clusters around ``themes`` latent themes, with cards."""
    if n_clusters < 1:
        raise ValueError(f"clusters={n_clusters} should be >= 1")
    p = params or TopicParams()
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((themes, dim)).astype(np.float32)
    theme = rng.integers(0, themes, n_clusters)
    X = centers[theme] + 0.8 * rng.standard_normal((n_clusters, dim)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    counts = rng.zipf(1.6, n_clusters).clip(1, 5000).astype(np.int64)
    n_docs = int(counts.sum())
    last_t = rng.uniform(0.5, 1.0, n_clusters) * n_docs
    weights = counts.astype(np.float64)
    state = ClusterState(dim=dim, ids=np.arange(n_clusters, dtype=np.int64),
                         sums=(X * weights[:, None]).astype(np.float32), weights=weights,
                         counts=counts, last_t=last_t, created_t=last_t * 0.5,
                         n_docs=n_docs, next_id=n_clusters, version=1)
    vocab = [f"{a}{b}" for a in ("al", "bo", "cu", "da", "ek", "fo", "gi", "ha", "io", "ju")
             for b in ("ran", "mel", "tos", "vik", "lun", "per", "sad", "qor", "nix", "bel")]
    theme_terms = rng.integers(0, len(vocab), (themes, 12))
    now_bucket = 1000
    cards: dict[int, TopicCard] = {}
    all_terms: dict[str, float] = {}
    for c in range(n_clusters):
        own = theme_terms[theme[c]].tolist() + rng.integers(0, len(vocab), 6).tolist()
        terms = {vocab[i]: float(rng.integers(1, 20)) for i in own}
        for k, v in terms.items():
            all_terms[k] = all_terms.get(k, 0.0) + v
        words = [vocab[i] for i in own[:6]]
        ex = [(0.9 - 0.05 * j, f"doc-{c}-{j}", " ".join(words[j:] + words[:j]))
              for j in range(p.n_exemplars)]
        bucket = now_bucket - int(rng.integers(0, 3))
        cards[c] = TopicCard(terms=terms, t=float(n_docs), exemplars=ex, bucket=bucket,
                             n=float(rng.integers(0, 30)), mean=float(rng.uniform(0, 10)),
                             var=float(rng.uniform(0, 20)), alerted=bool(rng.random() < 0.02),
                             born_ts=now_bucket * p.bucket_s - 3600.0,
                             last_ts=bucket * p.bucket_s, size=int(counts[c]))
    return state, TopicState(cards, all_terms, float(n_docs))


def _small_batch(state: ClusterState, rng: np.random.Generator, docs: int = 20) -> tuple[Delta, TopicDelta]:
    ids = rng.choice(state.ids, 3, replace=False).astype(np.int64)
    sums = state.sums[np.searchsorted(state.ids, ids)] / np.maximum(
        state.weights[np.searchsorted(state.ids, ids)], 1.0)[:, None]
    delta = Delta(docs, ids, (sums * (docs / 3)).astype(np.float32), np.full(3, docs / 3),
                  np.full(3, docs // 3, np.int64))
    return delta, TopicDelta()


def run_board_bench(n_clusters: int, requests: int = 300, use_redis: bool = True,
                    change_every: int = 50, n: int = 50, dim: int = 384) -> BoardBench:
    """See the module docstring. Needs ``redis-server`` on PATH when ``use_redis``."""
    from prometheus_client import CollectorRegistry

    from stream.board import SORTS, TopicBoard
    from stream.http import StatusServer
    from stream.state.memory import MemoryStore

    if requests < 1:
        raise ValueError(f"requests={requests} should be >= 1")
    params = TopicParams()
    state, topics = synthetic_model(n_clusters, dim=dim, params=params)
    redis_service = None
    store: Any
    if use_redis:
        from stream.services import start_redis
        from stream.state.redis_store import RedisStore

        redis_service = start_redis()
        store = RedisStore(redis_service.url, model="bench-board", half_life=params.half_life)
    else:
        store = MemoryStore(half_life=params.half_life)
    server = None
    try:
        store.import_state(state, topics, {})
        board = TopicBoard(store, params, default_n=n, model="bench-board")
        server = StatusServer("127.0.0.1", 0, CollectorRegistry(), alive=lambda: True,
                              ready=lambda: True, board=board).start()
        rng = np.random.default_rng(1)

        def get(sort: str) -> tuple[float, int]:
            start = time.perf_counter()
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            conn.request("GET", f"/api/topics?n={n}&sort={sort}")
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            if resp.status != 200:
                raise RuntimeError(f"/api/topics answered {resp.status}: {body[:200]!r}")
            return (time.perf_counter() - start) * 1000, len(body)

        cold, size = get("weight")
        times = []
        changes = 0
        for i in range(requests):
            if change_every and i and i % change_every == 0:
                delta, tdelta = _small_batch(state, rng)
                store.commit(delta, [], tdelta)
                changes += 1
            ms, size = get(SORTS[i % len(SORTS)])
            times.append(ms)
        arr = np.asarray(times)
        view = board.view()
        return BoardBench(n_clusters, "redis" if use_redis else "memory", requests,
                          round(cold, 2), round(float(np.percentile(arr, 50)), 2),
                          round(float(np.percentile(arr, 99)), 2), round(float(arr.max()), 2),
                          changes, round((view.built_s if view else 0.0) * 1000, 1), size)
    finally:
        if server is not None:
            server.close()
        if use_redis:
            store.close()
        if redis_service is not None:
            redis_service.close()
