"""``topicstream bench scale``: throughput with 1, 2, 3... worker processes in one consumer
group, through a real broker and a real Redis, and the state store's commit latency.

The documents are produced once to a topic; each worker count then reads all of them with a
new consumer group and a new model, so every run sees the same input from the start, with
the whole backlog waiting (the overload case: each worker is always busy). Throughput, commit
latency and stage times are counted from the first commit to the last, so joining the group
is not in them. The commit latency per batch is the ``commit`` stage of ``topicstream_stage_duration_seconds`` of each
worker, merged over the workers, its quantiles interpolated within the histogram buckets as
Prometheus' ``histogram_quantile`` does. Peak memory is each worker's ``VmHWM``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream.services import Service, free_port

log = logging.getLogger(__name__)

_BUCKET = re.compile(r'^topicstream_stage_duration_seconds_bucket\{([^}]*)\} ([0-9.e+-]+)$', re.M)
_LE = re.compile(r'le="([^"]+)"')
_STAGE_SUM = re.compile(
    r'^topicstream_stage_duration_seconds_sum\{stage="([a-z]+)"\} ([0-9.e+-]+)$', re.M)


@dataclass
class ScaleRow:
    workers: int
    documents: int
    measured_documents: int  # committed after the first commit: those over ``seconds``
    seconds: float
    docs_per_s: float
    commit_p50_ms: float | None
    commit_p99_ms: float | None
    batches: int
    peak_rss_mb: float
    stage_ms_per_batch: dict[str, float]
    # redis-server's CPU time (user + system, from INFO) over the window, per batch: the one
    # thread that every worker of the model commits through
    redis_cpu_ms_per_batch: float | None = None

    def as_json(self) -> dict[str, Any]:
        out = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in vars(self).items()}
        out["stage_ms_per_batch"] = {k: round(v, 3) for k, v in self.stage_ms_per_batch.items()}
        return out


def redis_cpu_s(client: Any) -> float:
    """redis-server's CPU seconds so far (user + system, its INFO cpu section)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class ScaleError(RuntimeError):
    """A scale run that could not be measured: a worker died, the run timed out, or the
    documents were too few to leave a window after the first commit."""


def commit_buckets(body: str) -> list[tuple[float, float]]:
    """``(le, cumulative count)`` of the commit stage's histogram in a /metrics body."""
    out = []
    for labels, count in _BUCKET.findall(body):
        le = _LE.search(labels)
        if 'stage="commit"' in labels and le:
            out.append((float(le.group(1)), float(count)))
    return sorted(out)


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Prometheus' ``histogram_quantile`` on cumulative ``(le, count)`` buckets: linear
    interpolation within the bucket that holds the quantile (the ``+Inf`` bucket gives
    its lower bound).

    >>> histogram_quantile(0.5, [(0.001, 0.0), (0.002, 10.0), (float("inf"), 10.0)])
    0.0015
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_le, lower_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return lower_le
            if count == lower_count:
                return le
            return lower_le + (le - lower_le) * (rank - lower_count) / (count - lower_count)
        lower_le, lower_count = le, count
    return buckets[-1][0]


def peak_rss_mb(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    m = re.search(r"^VmHWM:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) / 1024 if m else 0.0


def produce_docs(kafka: Service, topic: str, docs: Sequence[dict[str, Any]], partitions: int) -> None:
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=kafka.url)
    admin.create_topics([NewTopic(topic, partitions, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=kafka.url, linger_ms=20, batch_size=262144)
    for d in docs:
        producer.send(topic, key=str(d["id"]).encode(), value=json.dumps(d).encode())
    producer.flush()
    producer.close()


@dataclass
class Scrape:
    """The workers' counters at one moment, summed: commit histogram buckets, seconds per
    stage, batches."""

    buckets: dict[float, float]
    stage_s: dict[str, float]
    batches: int

    def minus(self, before: Scrape) -> Scrape:
        """What was counted since ``before``."""
        return Scrape({le: c - before.buckets.get(le, 0.0) for le, c in self.buckets.items()},
                      {k: v - before.stage_s.get(k, 0.0) for k, v in self.stage_s.items()},
                      self.batches - before.batches)


def scrape(ports: Sequence[int]) -> Scrape:
    """Read and sum the /metrics of the workers on ``ports``."""
    out = Scrape({}, {}, 0)
    for port in ports:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        for le, c in commit_buckets(body):
            out.buckets[le] = out.buckets.get(le, 0.0) + c
        for stage, total in _STAGE_SUM.findall(body):
            out.stage_s[stage] = out.stage_s.get(stage, 0.0) + float(total)
        m = re.search(r"^topicstream_batches_total ([0-9.e+-]+)$", body, re.M)
        out.batches += int(float(m.group(1))) if m else 0
    return out


def run_workers(kafka: Service, redis: Service, topic: str, n_workers: int, n_docs: int,
                settings: dict[str, Any], timeout_s: float, logdir: Path) -> ScaleRow:
    """Start ``n_workers`` processes on a new group and model; measure until every document
    is committed; scrape their metrics; stop them with SIGTERM.

    Like the throughput, the commit latency and the stage times cover the window from the
    first commit to the last: the metrics are scraped at both ends and subtracted, so the
    wait to join the group (seconds, spent in the first polls) is not in the poll stage."""
    from stream.state.redis_store import RedisStore

    tag = uuid.uuid4().hex[:8]
    model = f"scale-{n_workers}-{tag}"
    base = dict(settings, brokers=kafka.url, redis_url=redis.url, input_topic=topic,
                assignments_topic=f"asg-{tag}", events_topic=f"ev-{tag}", dlq_topic=f"dlq-{tag}",
                group_id=f"scale-{n_workers}-{tag}", model=model, log_interval_s=5.0)
    procs: list[tuple[subprocess.Popen[bytes], int]] = []
    for i in range(n_workers):
        port = free_port()
        args = [sys.executable, "-m", "stream", "run"]
        env = dict(os.environ)
        for k, v in dict(base, metrics_port=port).items():
            if v is None or v == "":
                continue
            if k == "clusterer_params":  # NAME=VALUE,... (the flag is a repeated one)
                env["TOPICSTREAM_CLUSTERER_PARAMS"] = str(v)
                continue
            args += ["--" + k.replace("_", "-"), str(v)]
        fh = open(logdir / f"w{n_workers}-{i}.log", "wb")  # noqa: SIM115 - child's stdout
        procs.append((subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=env), port))
        fh.close()
    store = RedisStore(redis.url, model=model)
    first: tuple[float, int] | None = None
    last: tuple[float, int] = (time.monotonic(), 0)
    deadline = time.monotonic() + timeout_s
    try:
        at_first: Scrape | None = None
        cpu_first = 0.0
        while time.monotonic() < deadline:
            state = store.r.hget(store.keys["meta"], "n_docs")
            done = int(state or 0)
            now = time.monotonic()
            if done and first is None:
                first = (now, done)
                at_first = scrape([port for _, port in procs])
                cpu_first = redis_cpu_s(store.r)
            if done != last[1]:
                last = (now, done)
            if done >= n_docs:
                break
            if any(p.poll() is not None for p, _ in procs):
                raise ScaleError(f"a worker exited early; see the logs in {logdir}")
            time.sleep(0.02)
        else:
            raise ScaleError(f"{n_workers} workers did not finish {n_docs} documents in "
                               f"{timeout_s:g} s; see the logs in {logdir}")
        at_last = scrape([port for _, port in procs])
        redis_cpu = redis_cpu_s(store.r) - cpu_first
        window = at_last.minus(at_first) if at_first is not None else at_last
        buckets, stage_s, batches = window.buckets, window.stage_s, window.batches
        rss = max(peak_rss_mb(p.pid) for p, _ in procs)
    finally:
        store.close()
        for p, _ in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p, _ in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    assert first is not None
    if last[1] == first[1]:
        raise ScaleError(f"all {n_docs} documents were committed by the first look at the "
                         "state (nothing left to time after the first commit): give more "
                         "documents")
    if batches < 1:
        raise ScaleError(f"the {last[1] - first[1]} documents after the first commit were "
                         "committed before the workers' metrics were first read: nothing left "
                         "to time; give more documents")
    seconds = max(last[0] - first[0], 1e-9)
    merged = sorted(buckets.items())
    p50, p99 = histogram_quantile(0.5, merged), histogram_quantile(0.99, merged)
    return ScaleRow(workers=n_workers, documents=n_docs, measured_documents=last[1] - first[1],
                    seconds=seconds,
                    docs_per_s=(last[1] - first[1]) / seconds,
                    commit_p50_ms=None if p50 is None else p50 * 1000,
                    commit_p99_ms=None if p99 is None else p99 * 1000,
                    batches=batches, peak_rss_mb=rss,
                    stage_ms_per_batch={k: v * 1000 / max(batches, 1) for k, v in stage_s.items()},
                    redis_cpu_ms_per_batch=redis_cpu * 1000 / max(batches, 1))


def run_scale(docs: Sequence[dict[str, Any]], worker_counts: Sequence[int], partitions: int,
              settings: dict[str, Any], timeout_s: float = 600.0,
              keep_logs: bool = False) -> list[ScaleRow]:
    """Start a private Tansu broker and redis-server, produce ``docs`` once, and measure
    each worker count in turn."""
    from stream.services import start_redis, start_tansu

    logdir = Path(tempfile.mkdtemp(prefix="topicstream-scale-"))
    rows: list[ScaleRow] = []
    failed = True
    try:
        with start_tansu() as kafka, start_redis() as redis:
            topic = f"scale-{uuid.uuid4().hex[:8]}"
            produce_docs(kafka, topic, docs, partitions)
            for n in worker_counts:
                rows.append(run_workers(kafka, redis, topic, n, len(docs), settings, timeout_s,
                                        logdir))
                log.info("%d workers: %.0f docs/s", n, rows[-1].docs_per_s)
        failed = False
    finally:
        # the logs stay when asked for, and when a run failed (its error names the folder)
        if keep_logs or (failed and any(logdir.iterdir())):
            print(f"worker logs in {logdir}", file=sys.stderr)
        else:
            for f in logdir.iterdir():
                f.unlink()
            os.rmdir(logdir)
    return rows
