"""Benchmarks that print figures: ``topicstream bench quality`` and ``bench emerging``.

``bench quality`` streams a labelled JSONL file in its order, in micro-batches, through the
encoder once, then through each clusterer on the same embeddings, and scores the cluster
ids against the labels. topicstream's clusterers are scored twice: on arrival (the id in
the assignment message) and after announced merges (each id followed through the
``clusters_merged`` events to the cluster it ended in, which is what a consumer of the
events topic sees). Peers run on the same embeddings: river's DBSTREAM and DenStream through
the river backend (on the first ``peer_limit`` documents when that is fewer than the
stream, and the row says so), and scikit-learn's ``MiniBatchKMeans.partial_fit`` with the
true number of topics (BERTopic's online recipe). The published and reference figures of
MStream (Yin et al., KDD 2018) are printed beside them for the two news streams.

``bench emerging`` streams a labelled file through the worker itself (file source, the
in-memory store, a sink that keeps what is published) and scores its ``emerging_topic``
events against the true topics with :func:`score_emerging`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stream.clustering.base import Clusterer, ClusterState
from stream.evaluate import follow_merges, quality

log = logging.getLogger(__name__)

# MStream (Yin et al., KDD 2018), scored on the whole stream with assignment on arrival.
# "published": the paper's NMI; "reference code": its code run on this kind of machine.
MSTREAM: dict[str, list[dict[str, Any]]] = {
    "news": [
        {"method": "MStream (published)", "nmi": 0.834},
        {"method": "MStreamF (published)", "nmi": 0.797},
        {"method": "MStream (reference code)", "nmi": 0.855, "ari": 0.663, "clusters": 302,
         "docs_per_s": 140.0},
    ],
    "news-t": [
        {"method": "MStream (published)", "nmi": 0.850},
        {"method": "MStreamF (published)", "nmi": 0.873},
        {"method": "MStream (reference code)", "nmi": 0.876, "ari": 0.666, "clusters": 370,
         "docs_per_s": 140.0},
    ],
}

# river peers and their settings on unit-length embeddings: the best of a grid of about 40
# runs on news.jsonl's all-MiniLM-L6-v2 embeddings (Euclidean distances; for unit vectors
# d = sqrt(2 - 2 cos), so clustering_threshold 1.1 is a cosine of about 0.4)
RIVER_PEERS: dict[str, dict[str, Any]] = {
    "DBSTREAM": {"clustering_threshold": 1.1, "fading_factor": 0.0001, "cleanup_interval": 200,
                 "intersection_factor": 1.5},
    "DenStream": {"epsilon": 0.9, "n_samples_init": 1000, "decaying_factor": 0.01, "mu": 1.5},
}
# river's DenStream re-runs its offline clustering on every predict_one: past its initial
# buffer it manages a few documents per second here, so it gets a shorter prefix
RIVER_PEER_CAPS: dict[str, int] = {"DenStream": 1200}


@dataclass
class Row:
    """One line of the table (and one object of ``--json``)."""

    method: str
    nmi: float | None = None
    ari: float | None = None
    homogeneity: float | None = None
    completeness: float | None = None
    purity: float | None = None
    clusters: int | None = None
    clusters_5plus: int | None = None
    docs_per_s: float | None = None
    note: str = ""


@dataclass
class Dataset:
    name: str
    texts: list[str]
    labels: list[str]


def read_dataset(path: Path, text_field: str = "text", label_field: str = "label",
                 limit: int | None = None) -> Dataset:
    """The texts and labels of a labelled JSONL stream, in file order.

    Raises ``ValueError`` naming the line of the first record without the two fields.
    """
    texts: list[str] = []
    labels: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{n}: not JSON ({exc})") from exc
            if not isinstance(obj, dict) or not isinstance(obj.get(text_field), str) \
                    or obj.get(label_field) is None:
                raise ValueError(f"{path}:{n}: needs a string {text_field!r} and a {label_field!r}")
            texts.append(obj[text_field])
            labels.append(str(obj[label_field]))
            if limit and len(texts) >= limit:
                break
    if not texts:
        raise ValueError(f"{path}: no records")
    return Dataset(path.name.removesuffix(".jsonl"), texts, labels)


def encode_stream(encode: Callable[[Sequence[str]], np.ndarray], texts: Sequence[str],
                  batch_size: int) -> tuple[np.ndarray, float]:
    """Encode in stream order, micro-batch by micro-batch; returns (X, seconds)."""
    start = time.perf_counter()
    parts = [encode(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]
    return np.concatenate(parts).astype(np.float32, copy=False), time.perf_counter() - start


def run_clusterer(clusterer: Clusterer, X: np.ndarray, batch_size: int
                  ) -> tuple[list[int], list[tuple[int, int]], float]:
    """Stream ``X`` through ``clusterer``; returns arrival ids, announced merges and the
    seconds spent in ``learn_predict`` alone."""
    preds: list[int] = []
    merges: list[tuple[int, int]] = []
    seconds = 0.0
    for i in range(0, len(X), batch_size):
        t0 = time.perf_counter()
        result = clusterer.learn_predict(X[i:i + batch_size])
        seconds += time.perf_counter() - t0
        preds.extend(result.cluster_ids.tolist())
        merges.extend((int(a), int(b)) for a, b in result.merged.tolist())
    return preds, merges, seconds


def score(method: str, labels: Sequence[str], pred: Sequence[Any], n: int, seconds: float,
          note: str = "") -> Row:
    q = quality(labels, pred)
    return Row(method, round(q.nmi, 4), round(q.ari, 4), round(q.homogeneity, 4),
               round(q.completeness, 4), round(q.purity, 4), q.clusters, q.clusters_5plus,
               round(n / max(seconds, 1e-9), 1), note)


def ours(name: str, clusterer: Clusterer, X: np.ndarray, labels: Sequence[str],
         batch_size: int) -> list[Row]:
    preds, merges, seconds = run_clusterer(clusterer, X, batch_size)
    precision = getattr(clusterer, "precision", None)
    product = f"; {precision} product" if precision else ""
    return [score(name, labels, follow_merges(preds, merges), len(X), seconds,
                  f"after {len(merges)} announced merges{product}"),
            score(f"{name} (arrival)", labels, preds, len(X), seconds,
                  f"ids as first assigned{product}")]


def river_peer(estimator: str, X: np.ndarray, labels: Sequence[str], batch_size: int,
               limit: int) -> Row:
    from stream.clustering.river_backend import RiverClusterer

    n = min(limit, RIVER_PEER_CAPS.get(estimator, limit), len(X))
    clusterer = RiverClusterer(estimator, dict(RIVER_PEERS.get(estimator, {})))
    preds, _, seconds = run_clusterer(clusterer, X[:n], batch_size)
    note = "settings: " + ",".join(f"{k}={v}" for k, v in RIVER_PEERS.get(estimator, {}).items())
    if n < len(X):
        note = f"first {n} of {len(X)} documents (too slow for all); " + note
    return score(f"river {estimator}", labels[:n], preds, n, seconds, note)


def minibatch_kmeans_peer(X: np.ndarray, labels: Sequence[str], batch_size: int) -> Row:
    """scikit-learn's ``MiniBatchKMeans.partial_fit`` given the true number of topics; each
    batch is predicted right after it is learnt (assignment on arrival)."""
    from sklearn.cluster import MiniBatchKMeans

    k = len(set(labels))
    km = MiniBatchKMeans(n_clusters=k, random_state=0, n_init=1)
    preds: list[int] = []
    seconds = 0.0
    step = max(batch_size, k)  # its first partial_fit needs at least k documents
    for i in range(0, len(X), step):
        t0 = time.perf_counter()
        km.partial_fit(X[i:i + step])
        preds.extend(km.predict(X[i:i + step]).tolist())
        seconds += time.perf_counter() - t0
    return score("sklearn MiniBatchKMeans", labels, preds, len(X), seconds,
                 f"partial_fit, true k={k}, batches of {step}")


def print_table(rows: list[Row], title: str, out: Any) -> None:
    def fmt(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    print(title, file=out)
    head = f"{'method':<28} {'NMI':>6} {'ARI':>6} {'homog':>6} {'compl':>6} {'purity':>6} " \
           f"{'clusters':>8} {'5+':>5} {'docs/s':>10}  note"
    print(head, file=out)
    print("-" * len(head), file=out)
    for r in rows:
        print(f"{r.method:<28} {fmt(r.nmi, '.3f'):>6} {fmt(r.ari, '.3f'):>6} "
              f"{fmt(r.homogeneity, '.3f'):>6} {fmt(r.completeness, '.3f'):>6} "
              f"{fmt(r.purity, '.3f'):>6} {fmt(r.clusters, 'd'):>8} {fmt(r.clusters_5plus, 'd'):>5} "
              f"{fmt(r.docs_per_s, ',.0f'):>10}  {r.note}", file=out)


def rows_as_json(rows: list[Row]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]


# -- bench quality --encoders: one row per model ----------------------------------------------
@dataclass
class ModelRow:
    """One line of the models table: an encoder (and reducer) with one clusterer."""

    model: str
    clusterer: str
    dim: int
    threshold: float | None
    nmi: float
    ari: float
    clusters: int
    clusters_5plus: int
    encoder_docs_per_s: float
    clusterer_docs_per_s: float
    state_bytes_per_cluster: float
    note: str = ""


def state_bytes_per_cluster(clusterer: Clusterer) -> float:
    """Bytes of clusterer state per public cluster, as the Redis store lays them out: one
    record (:func:`~stream.state.redis_store.record_dtype`) per row of the state (a centroid
    for k-means, a micro-cluster for DenStream), divided by the number of clusters. Topic
    cards (keywords, exemplars) come on top and do not depend on the encoder."""
    from stream.state.redis_store import record_dtype

    state = clusterer.snapshot()
    clusters = len(np.unique(state.row_labels))
    return round(len(state) * record_dtype(state.dim).itemsize / max(clusters, 1), 1)


def model_row(model: str, clusterer_name: str, clusterer: Clusterer, X: np.ndarray,
              encode_seconds: float, labels: Sequence[str], batch_size: int) -> ModelRow:
    """Stream ``X`` through ``clusterer`` and score it, ids followed through announced merges."""
    preds, merges, seconds = run_clusterer(clusterer, X, batch_size)
    q = quality(labels, follow_merges(preds, merges))
    threshold = getattr(clusterer, "threshold", None)
    return ModelRow(model, clusterer_name, int(X.shape[1]),
                    None if threshold is None else round(float(threshold), 4),
                    round(q.nmi, 4), round(q.ari, 4), q.clusters, q.clusters_5plus,
                    round(len(X) / max(encode_seconds, 1e-9), 1),
                    round(len(X) / max(seconds, 1e-9), 1), state_bytes_per_cluster(clusterer))


def print_model_table(rows: list[ModelRow], title: str, out: Any) -> None:
    print(title, file=out)
    head = f"{'model':<34} {'clusterer':<10} {'dim':>5} {'thresh':>6} {'NMI':>6} {'ARI':>6} " \
           f"{'5+':>5} {'enc docs/s':>10} {'clu docs/s':>10} {'B/cluster':>9}"
    print(head, file=out)
    print("-" * len(head), file=out)
    for r in rows:
        th = "-" if r.threshold is None else f"{r.threshold:.3f}"
        print(f"{r.model:<34} {r.clusterer:<10} {r.dim:>5} {th:>6} {r.nmi:>6.3f} {r.ari:>6.3f} "
              f"{r.clusters_5plus:>5} {r.encoder_docs_per_s:>10,.0f} "
              f"{r.clusterer_docs_per_s:>10,.0f} {r.state_bytes_per_cluster:>9,.0f}"
              + (f"  {r.note}" if r.note else ""), file=out)


# -- bench bootstrap ---------------------------------------------------------------------------
@dataclass
class WarmRow:
    """One way to start the online clusterer, scored on the stream after the history."""

    start: str
    nmi: float
    ari: float
    clusters: int
    clusters_5plus: int
    initial_clusters: int
    seconds: float  # preparing the initial state (0 for a cold start)
    note: str = ""


def continue_from(clusterer: Clusterer, state: ClusterState | None, X_rest: np.ndarray,
                  labels_rest: Sequence[str], batch_size: int, start: str, seconds: float,
                  note: str = "") -> WarmRow:
    """Restore ``state`` (None: start empty), stream ``X_rest`` and score its documents, ids
    followed through the merges announced while streaming it."""
    if state is not None:
        clusterer.restore(state)
    preds, merges, _ = run_clusterer(clusterer, X_rest, batch_size)
    q = quality(labels_rest, follow_merges(preds, merges))
    return WarmRow(start, round(q.nmi, 4), round(q.ari, 4), q.clusters, q.clusters_5plus,
                   0 if state is None else len(state), round(seconds, 1), note)


def print_warm_table(rows: list[WarmRow], title: str, out: Any) -> None:
    print(title, file=out)
    head = f"{'start':<34} {'NMI':>6} {'ARI':>6} {'clusters':>8} {'5+':>5} {'initial':>7} " \
           f"{'prep s':>7}  note"
    print(head, file=out)
    print("-" * len(head), file=out)
    for r in rows:
        print(f"{r.start:<34} {r.nmi:>6.3f} {r.ari:>6.3f} {r.clusters:>8d} {r.clusters_5plus:>5d} "
              f"{r.initial_clusters:>7d} {r.seconds:>7.1f}  {r.note}", file=out)


# -- bench emerging ---------------------------------------------------------------------------
class CollectingSink:
    """A sink that keeps what the worker publishes, in order, as decoded JSON. Each event is
    stamped with ``_published_at``: the stream position (source offset) of the last
    assignment published before it, i.e. the end of its batch."""

    def __init__(self) -> None:
        self.assignments: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.dlq: list[dict[str, Any]] = []

    def send(self, kind: str, messages: list[tuple[bytes | None, bytes]]) -> None:
        out = getattr(self, kind)
        for _, value in messages:
            obj = json.loads(value)
            if kind == "events":
                last = self.assignments[-1]["source"]["offset"] if self.assignments else -1
                obj["_published_at"] = last
            out.append(obj)

    def flush(self, timeout_s: float = 30.0) -> None:
        return None

    def close(self) -> None:
        return None


@dataclass
class EmergingAlert:
    cluster_id: int
    topic: str | None  # majority label of the cluster's documents (after announced merges)
    trigger: int  # stream position of the document that made the cluster cross
    published_at: int  # stream position of the end of the batch that published the alert
    first_of_topic: bool  # the first alert that points at this topic
    delay_docs: int | None  # documents of the topic up to the trigger, for a first alert
    keywords: list[str]


def score_emerging(labels: Sequence[str], arrival: Sequence[int], merges: Sequence[tuple[int, int]],
                   events: Sequence[dict[str, Any]], min_topic_docs: int = 20
                   ) -> tuple[dict[str, Any], list[EmergingAlert]]:
    """Score ``emerging_topic`` events against the true topics of a labelled stream.

    A true topic with at least ``min_topic_docs`` documents is *detected* when an alert names
    a cluster whose majority label (over the documents assigned to it, ids followed through
    the announced merges) is that topic; its delay is the number of that topic's documents
    up to and including the one that triggered the first such alert. Precision is the share
    of alerts that point at a topic no earlier alert pointed at.
    """
    final = follow_merges(arrival, merges)
    members: dict[int, list[str]] = {}
    for c, y in zip(final, labels, strict=True):
        members.setdefault(c, []).append(y)
    majority = {c: max(set(ys), key=lambda v: (ys.count(v), v)) for c, ys in members.items()}
    into = dict(zip(arrival, final, strict=True))
    sizes: dict[str, int] = {}
    for y in labels:
        sizes[y] = sizes.get(y, 0) + 1
    evaluated = {y for y, n in sizes.items() if n >= min_topic_docs}
    positions: dict[str, list[int]] = {}
    for i, y in enumerate(labels):
        positions.setdefault(y, []).append(i)
    alerts: list[EmergingAlert] = []
    seen: set[str] = set()
    for e in sorted((e for e in events if e["type"] == "emerging_topic"),
                    key=lambda e: e["source"]["offset"]):
        cid = into.get(int(e["cluster_id"]), int(e["cluster_id"]))
        topic = majority.get(cid)
        trigger = int(e["source"]["offset"])
        first = topic is not None and topic not in seen
        delay = None
        if first and topic is not None:
            seen.add(topic)
            delay = int(np.searchsorted(positions[topic], trigger, side="right"))
        alerts.append(EmergingAlert(int(e["cluster_id"]), topic, trigger, int(e["_published_at"]),
                                    first, delay, list(e.get("keywords", []))))
    detected = [a for a in alerts if a.first_of_topic and a.topic in evaluated]
    delays = np.array([a.delay_docs for a in detected], np.float64)
    at_publish = np.array([np.searchsorted(positions[str(a.topic)], a.published_at, side="right")
                           for a in detected], np.float64)

    def pct(x: np.ndarray, q: float) -> float | None:
        return round(float(np.percentile(x, q)), 1) if x.size else None

    report = {
        "recall": round(len(detected) / max(len(evaluated), 1), 4),
        "precision": round(sum(a.first_of_topic for a in alerts) / len(alerts), 4) if alerts else None,
        "median_delay_docs": pct(delays, 50),
        "p90_delay_docs": pct(delays, 90),
        "median_delay_docs_at_publish": pct(at_publish, 50),
        "p90_delay_docs_at_publish": pct(at_publish, 90),
        "alerts": len(alerts),
        "topics_evaluated": len(evaluated),
        "topics_detected": len(detected),
    }
    return report, alerts
