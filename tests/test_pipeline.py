"""End to end on a real Tansu broker and a real redis-server (both started by fixtures)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter

import pytest
from kafka import KafkaProducer

from conftest import MALFORMED, REPO, SideBySide, create_topic, documents, read_topic
from stream.app import build_worker
from stream.config import load_config
from stream.services import Service, free_port
from stream.state.redis_store import RedisStore

pytestmark = pytest.mark.integration
# every metric a worker exports (histograms by their _bucket series)
METRIC_NAMES = [
    "topicstream_documents_in_total", "topicstream_documents_out_total",
    "topicstream_batches_total", "topicstream_stage_duration_seconds_bucket",
    "topicstream_active_clusters", "topicstream_clusters_created_total",
    "topicstream_emerging_topics_total", "topicstream_assignment_similarity_bucket",
    "topicstream_drift_similarity_mean", "topicstream_drift_outlier_ratio",
    "topicstream_drift_new_cluster_ratio", "topicstream_drift_centroid_movement",
    "topicstream_drift_cluster_share_js_divergence", "topicstream_drift_embedding_mean_shift",
    "topicstream_drift_window_nmi", "topicstream_drift_windows_total",
    "topicstream_drift_events_total", "topicstream_store_errors_total",
    "topicstream_sink_errors_total", "topicstream_commits_rejected_total",
    "topicstream_maintenance_lease_held",
]
N_DOCS = 2000
PARTITIONS = 4


def produce(kafka: Service, topic: str, docs: list[dict], malformed: list[bytes | None] = ()) -> dict[int, int]:
    """Write docs then malformed records; return the end offset of each partition."""
    producer = KafkaProducer(bootstrap_servers=kafka.url, linger_ms=5)
    futures = [producer.send(topic, key=d["id"].encode(), value=json.dumps(d).encode()) for d in docs]
    futures += [producer.send(topic, key=f"bad-{i}".encode(), value=raw) for i, raw in enumerate(malformed)]
    producer.flush()
    ends: dict[int, int] = {}
    for f in futures:
        md = f.get(timeout=10)
        ends[md.partition] = max(ends.get(md.partition, 0), md.offset + 1)
    producer.close()
    return ends


def settings(kafka: Service, redis: Service, names: dict[str, str], **extra) -> dict:
    base = dict(brokers=kafka.url, redis_url=redis.url, input_topic=names["input"],
                assignments_topic=names["assignments"], events_topic=names["events"],
                dlq_topic=names["dlq"], group_id=names["group"], model=names["model"],
                encoder="hashing", session_timeout_ms=6000, metrics_port=0, log_interval_s=2.0)
    return {**base, **extra}


def check_outcome(kafka: Service, redis: Service, names: dict[str, str], ends: dict[int, int],
                  n_docs: int, at_least_once: bool = False) -> None:
    ids = Counter(json.loads(m.value)["id"] for m in read_topic(kafka, names["assignments"]))
    expected = {f"doc-{i}" for i in range(n_docs)}
    assert set(ids) == expected
    if not at_least_once:
        assert all(n == 1 for n in ids.values()), "every valid id has exactly one assignment"
    dlq = [json.loads(m.value) for m in read_topic(kafka, names["dlq"])]
    reasons = Counter(d["error"] for d in dlq)
    assert reasons == Counter(err for _, err in MALFORMED)
    for d in dlq:
        assert set(d["source"]) == {"topic", "partition", "offset"}
    store = RedisStore(redis.url, model=names["model"])
    stored = store.all_offsets()
    assert stored == {f"{names['input']}:{p}": end for p, end in ends.items()}
    assert store.load_state().n_docs == n_docs
    store.close()


def test_worker_end_to_end(kafka: Service, redis_server: Service, names: dict[str, str]) -> None:
    create_topic(kafka, names["input"])
    ends = produce(kafka, names["input"], documents(N_DOCS), [raw for raw, _ in MALFORMED])
    cfg = load_config(env={}, overrides=settings(kafka, redis_server, names, exit_when_idle=6.0))
    built = build_worker(cfg)
    try:
        stats = built.worker.run()
    finally:
        built.close()
    assert stats.docs == N_DOCS and stats.bad == len(MALFORMED) and stats.rejected == 0
    check_outcome(kafka, redis_server, names, ends, N_DOCS)
    events = [json.loads(m.value) for m in read_topic(kafka, names["events"])]
    created = [e for e in events if e["type"] == "cluster_created"]
    store = RedisStore(redis_server.url, model=names["model"])
    state, topics = store.load_state(), store.load_topics()
    store.close()
    assert len(created) == state.ids.size
    # keywords travel in every assignment; the topic cards were committed with the state
    asg = [json.loads(m.value) for m in read_topic(kafka, names["assignments"])]
    assert all(a["keywords"] for a in asg)
    assert topics is not None and set(topics.cards) == set(state.row_labels.tolist())
    assert sum(c.size for c in topics.cards.values()) == N_DOCS


@pytest.mark.parametrize("in_flight", [1, 3])
def test_a_batch_whose_output_failed_is_dropped_and_read_again(
        kafka: Service, redis_server: Service, names: dict[str, str], in_flight: int) -> None:
    """The broker refuses one batch's output: nothing of that batch is committed, the
    worker seeks back and reads it again (with the batches polled after it, when several
    are in flight), and the state still counts each document once."""
    from stream.sink import KafkaSink, SinkUnavailable

    class FlakySink(KafkaSink):
        flushes = 0

        def flush(self, timeout_s: float = 30.0) -> None:
            FlakySink.flushes += 1
            if FlakySink.flushes in (3, 4):
                self._futures = []
                raise SinkUnavailable("injected: the broker did not acknowledge")
            super().flush(timeout_s)

    create_topic(kafka, names["input"])
    ends = produce(kafka, names["input"], documents(N_DOCS), [raw for raw, _ in MALFORMED])
    cfg = load_config(env={}, overrides=settings(kafka, redis_server, names, exit_when_idle=6.0,
                                                 batch_size=100))
    sink = FlakySink(cfg.assignments_topic, cfg.events_topic, cfg.dlq_topic, cfg.kafka_client_config())
    built = build_worker(cfg, sink=sink, encoder=SideBySide() if in_flight > 1 else None)
    assert built.worker.ahead == in_flight
    try:
        stats = built.worker.run()
    finally:
        built.close()
    assert FlakySink.flushes > 4
    assert built.worker.metrics.sink_errors._value.get() == 2
    assert stats.docs == N_DOCS  # the two dropped batches are not counted
    check_outcome(kafka, redis_server, names, ends, N_DOCS, at_least_once=True)


def run_cli(args: list[str], **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "stream", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def flags(d: dict) -> list[str]:
    out: list[str] = []
    for k, v in d.items():
        out += ["--" + k.replace("_", "-"), str(v)]
    return out


def test_restart_after_sigterm_mid_stream(kafka: Service, redis_server: Service, names: dict[str, str]) -> None:
    create_topic(kafka, names["input"])
    docs = documents(N_DOCS)
    ends = produce(kafka, names["input"], docs[:1500], [raw for raw, _ in MALFORMED[:5]])
    port = free_port()
    base = settings(kafka, redis_server, names, batch_size=20, metrics_port=port)
    proc = run_cli(["run", *flags(base)])
    store = RedisStore(redis_server.url, model=names["model"])
    deadline = time.monotonic() + 60
    seen = 0
    while time.monotonic() < deadline and seen < 200:
        state = store.load_state()
        seen = state.n_docs if state else 0
        time.sleep(0.05)
    assert seen >= 200, "the worker did not start consuming"
    # the worker serves /metrics and health while it runs
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for name in METRIC_NAMES:
        assert f"\n{name}" in body, name
    if shutil.which("promtool"):  # Prometheus' own linter of metric names, types and help
        lint = subprocess.run(["promtool", "check", "metrics"], input=body, text=True,
                              capture_output=True)
        assert lint.returncode == 0, lint.stdout + lint.stderr
    assert urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).status == 200
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "SIGTERM" in out
    mid = store.load_state().n_docs
    # the rest of the stream arrives while it is down, then it comes back
    more = produce(kafka, names["input"], docs[1500:], [raw for raw, _ in MALFORMED[5:]])
    for p, end in more.items():
        ends[p] = max(ends.get(p, 0), end)
    proc = run_cli(["run", *flags(dict(base, metrics_port=0, exit_when_idle=6.0))])
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    store.close()
    assert mid < N_DOCS
    check_outcome(kafka, redis_server, names, ends, N_DOCS, at_least_once=True)
