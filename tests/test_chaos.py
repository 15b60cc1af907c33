"""Fault injection against a real Tansu broker and a real redis-server (AOF on).

Each scenario runs 3 worker processes (``python -m stream run``) in one consumer group on a
6-partition topic while a producer streams 20,000 records into it, valid documents and
malformed ones mixed, and injects one kind of fault:

(a) kill -9 a random worker every few seconds and start a new one in its place;
(b) stop Redis mid-stream (the workers see connection errors), start it again from its AOF;
(c) SIGSTOP a worker mid-batch for longer than the session timeout, so that its partitions
    move to the others, then SIGCONT it: its commit is refused (counted in
    ``topicstream_commits_rejected_total``);
(d) a fuzzed stream: random bytes and random JSON between the documents.

After each, when the stored offsets reach the end of every partition: every valid document
has at least one assignment, the state's document counter equals the number of valid
documents exactly (nothing lost, nothing counted twice), the stored offsets equal the end
offsets, every malformed record is in the DLQ (by its source offset), and every worker that
was not killed on purpose is alive, leaves on SIGTERM with exit code 0, and logged no
traceback through topicstream's code.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest
from kafka import KafkaProducer

from conftest import MALFORMED, REPO, corpus_rows, create_topic, read_topic
from stream.services import Service, free_port, start_redis
from stream.state.redis_store import RedisStore

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

N_RECORDS = 20_000
N_BAD = 400  # of the 20,000
PARTITIONS = 6
WORKERS = 3
SESSION_TIMEOUT_MS = 6000
MAX_RECORD_BYTES = 4096
DONE_TIMEOUT_S = 180.0


@dataclass
class Stream:
    """What was produced: valid ids, and (partition, offset) of each malformed record."""
    valid: set[str] = field(default_factory=set)
    bad: set[tuple[int, int]] = field(default_factory=set)
    ends: dict[int, int] = field(default_factory=dict)


def fuzz_record(rng: random.Random) -> bytes | None:
    """A record that is bad input by construction: random bytes that are not a JSON object,
    or random JSON that breaks the input contract in one of several ways."""
    kind = rng.randrange(6)
    if kind == 0:  # random bytes (never a JSON object: regenerate in the unlikely case)
        while True:
            raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
            try:
                if isinstance(json.loads(raw), dict):
                    continue
            except ValueError:
                pass
            return raw
    if kind == 1:  # JSON that is not an object
        return json.dumps(rng.choice([rng.random(), [rng.randrange(9)] * 3, "text", None,
                                      rng.randrange(10**9)])).encode()
    if kind == 2:  # an object without the text field, or with a text of the wrong type
        obj: dict[str, object] = {"id": f"fz-{rng.randrange(10**9)}"}
        if rng.random() < 0.5:
            obj["text"] = rng.choice([17, [1, "a"], {"nested": True}, None, 2.5])
        obj[rng.choice(["x", "body", "payload"])] = "".join(rng.choice("abc ") for _ in range(20))
        return json.dumps(obj).encode()
    if kind == 3:  # an id of the wrong type
        return json.dumps({"id": rng.choice([1, 2.5, None, ["a"], {"b": 1}]),
                           "text": "a perfectly fine text"}).encode()
    if kind == 4:  # oversize
        return json.dumps({"id": f"big-{rng.randrange(10**9)}",
                           "text": "word " * (MAX_RECORD_BYTES // 4)}).encode()
    return rng.choice([raw for raw, _ in MALFORMED])  # the named kinds (None: an empty record)


def produce_stream(kafka: Service, topic: str, seed: int, fuzz: bool, seconds: float,
                   on_progress: Callable[[float], None] | None = None) -> Stream:
    """Stream ``N_RECORDS`` records over about ``seconds``; ``N_BAD`` of them malformed."""
    rng = random.Random(seed)
    rows = corpus_rows()
    bad_at = set(rng.sample(range(N_RECORDS), N_BAD))
    producer = KafkaProducer(bootstrap_servers=kafka.url, linger_ms=5)
    out = Stream()
    pending: list[tuple[bool, object]] = []
    chunk = 500
    start = time.monotonic()
    for i in range(N_RECORDS):
        if i in bad_at:
            value = fuzz_record(rng) if fuzz else rng.choice([raw for raw, _ in MALFORMED])
            pending.append((False, producer.send(topic, key=f"bad-{i}".encode(), value=value)))
        else:
            doc_id = f"doc-{i}"
            row = rows[i % len(rows)]
            value = json.dumps({"id": doc_id, "text": row["text"], "label": row["label"]}).encode()
            pending.append((True, producer.send(topic, key=doc_id.encode(), value=value)))
            out.valid.add(doc_id)
        if (i + 1) % chunk == 0:
            done = (i + 1) / N_RECORDS
            if on_progress is not None:
                on_progress(done)
            wait = start + done * seconds - time.monotonic()
            if wait > 0:
                time.sleep(wait)
    producer.flush()
    for valid, fut in pending:
        md = fut.get(timeout=30)  # type: ignore[attr-defined]
        out.ends[md.partition] = max(out.ends.get(md.partition, 0), md.offset + 1)
        if not valid:
            out.bad.add((md.partition, md.offset))
    producer.close()
    return out


class Workers:
    """Worker processes of one consumer group, each logging to its own file."""

    def __init__(self, kafka: Service, redis: Service, names: dict[str, str], logdir: Path,
                 **extra: object) -> None:
        self.settings = dict(
            brokers=kafka.url, redis_url=redis.url, input_topic=names["input"],
            assignments_topic=names["assignments"], events_topic=names["events"],
            dlq_topic=names["dlq"], group_id=names["group"], model=names["model"],
            encoder="hashing", session_timeout_ms=SESSION_TIMEOUT_MS, log_interval_s=2.0,
            batch_size=200, max_record_bytes=MAX_RECORD_BYTES)
        self.settings.update(extra)
        self.logdir = logdir
        self.procs: list[tuple[subprocess.Popen[bytes], Path, int, IO[bytes]]] = []
        self.killed: set[int] = set()

    def start(self) -> int:
        index = len(self.procs)
        port = free_port()
        args = [sys.executable, "-m", "stream", "run"]
        for k, v in dict(self.settings, metrics_port=port).items():
            args += ["--" + k.replace("_", "-"), str(v)]
        log_path = self.logdir / f"worker-{index}.log"
        fh = open(log_path, "wb")  # noqa: SIM115 - closed in stop_all
        proc = subprocess.Popen(args, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.procs.append((proc, log_path, port, fh))
        return index

    def alive(self) -> list[int]:
        return [i for i, (p, *_) in enumerate(self.procs) if i not in self.killed and p.poll() is None]

    def kill(self, index: int) -> None:
        self.procs[index][0].kill()  # SIGKILL
        self.procs[index][0].wait()
        self.killed.add(index)

    def signal(self, index: int, sig: int) -> None:
        self.procs[index][0].send_signal(sig)

    def metric(self, index: int, name: str) -> float:
        port = self.procs[index][2]
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        m = re.search(rf"^{name} ([0-9.e+-]+)$", body, re.M)
        return float(m.group(1)) if m else 0.0

    def stop_all(self) -> dict[int, tuple[int | None, str]]:
        """SIGTERM every live worker; (exit code, log) of each worker not killed on purpose."""
        for i in self.alive():
            self.signal(i, signal.SIGTERM)
        out: dict[int, tuple[int | None, str]] = {}
        for i, (p, log_path, _, fh) in enumerate(self.procs):
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            fh.close()
            if i not in self.killed:
                out[i] = (p.returncode, log_path.read_text(errors="replace"))
        return out

    def logs(self, tail: int | None = 3000) -> str:
        return "\n".join(f"--- worker {i}\n" + path.read_text(errors="replace")[-tail if tail else 0:]
                         for i, (_, path, _, _) in enumerate(self.procs))


@pytest.fixture
def redis_aof_restartable(tmp_path: Path) -> Iterator[Service]:
    """A redis-server with AOF (fsync always) in this test's directory, so that it can be
    stopped and started again on the same port and data."""
    workdir = tmp_path / "redis"
    workdir.mkdir()
    with start_redis(aof=True, workdir=workdir) as server:
        yield server


def wait_until_done(redis: Service, names: dict[str, str], stream: Stream, workers: Workers,
                    during: Callable[[], None] | None = None) -> None:
    """Until the stored offsets reach the end offsets (calling ``during`` meanwhile)."""
    want = {f"{names['input']}:{p}": end for p, end in stream.ends.items()}
    store = RedisStore(redis.url, model=names["model"])
    deadline = time.monotonic() + DONE_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if during is not None:
                during()
            try:
                if store.all_offsets() == want:
                    return
            except Exception:  # noqa: BLE001 - Redis may be down in scenario (b)
                pass
            time.sleep(0.5)
    finally:
        store.close()
    raise AssertionError(f"the stored offsets did not reach the end offsets {want}\n{workers.logs()}")


def check_outcome(kafka: Service, redis: Service, names: dict[str, str], stream: Stream,
                  workers: Workers) -> None:
    results = workers.stop_all()
    for i, (code, text) in results.items():
        assert code == 0, f"worker {i} exited with {code}:\n{text[-3000:]}"
        # a traceback through topicstream's own code (kafka-python may log its own on close)
        ours = [line for line in text.splitlines()
                if line.strip().startswith(("File \"" + str(REPO / "stream"),
                                            "File \"" + str(REPO / "encoders")))]
        assert not ours, f"worker {i} logged a traceback through {ours[-1]}:\n{text[-5000:]}"
    store = RedisStore(redis.url, model=names["model"])
    state = store.load_state()
    offsets = store.all_offsets()
    store.close()
    assert offsets == {f"{names['input']}:{p}": end for p, end in stream.ends.items()}
    assert state is not None and state.n_docs == len(stream.valid), (
        f"n_docs={state.n_docs if state else None}, valid documents: {len(stream.valid)}")
    assigned = {json.loads(m.value)["id"] for m in read_topic(kafka, names["assignments"])}
    missing = stream.valid - assigned
    assert not missing, f"{len(missing)} valid documents have no assignment, e.g. {sorted(missing)[:5]}"
    dlq = {(d["source"]["partition"], d["source"]["offset"])
           for d in (json.loads(m.value) for m in read_topic(kafka, names["dlq"]))}
    lost = stream.bad - dlq
    assert not lost, f"{len(lost)} malformed records are not in the DLQ, e.g. {sorted(lost)[:5]}"


def run_scenario(kafka: Service, redis: Service, names: dict[str, str], tmp_path: Path,
                 fault: Callable[[Workers, float], None], seed: int, seconds: float = 20.0,
                 fuzz: bool = False, **extra: object) -> Workers:
    """Start the workers, stream the records while ``fault(workers, share_produced)`` runs
    after each chunk, wait until done and check the outcome."""
    create_topic(kafka, names["input"], PARTITIONS)
    workers = Workers(kafka, redis, names, tmp_path, **extra)
    for _ in range(WORKERS):
        workers.start()
    time.sleep(3.0)  # let them join before the stream starts
    stream = produce_stream(kafka, names["input"], seed=seed, fuzz=fuzz, seconds=seconds,
                            on_progress=lambda share: fault(workers, share))
    wait_until_done(redis, names, stream, workers)
    check_outcome(kafka, redis, names, stream, workers)
    return workers


def test_kill_9_workers(kafka: Service, redis_aof_restartable: Service, names: dict[str, str],
                        tmp_path: Path) -> None:
    rng = random.Random(7)
    last = [time.monotonic()]
    kills: list[int] = []

    def fault(workers: Workers, share: float) -> None:
        if share < 0.95 and time.monotonic() - last[0] >= 3.0:
            victim = rng.choice(workers.alive())
            workers.kill(victim)
            workers.start()
            kills.append(victim)
            last[0] = time.monotonic()

    # incremental rebalances here (the other scenarios use the default, eager range)
    run_scenario(kafka, redis_aof_restartable, names, tmp_path, fault, seed=1, seconds=24.0,
                 kafka_assignment_strategy="cooperative-sticky")
    assert len(kills) >= 4


def test_redis_restart(kafka: Service, redis_aof_restartable: Service, names: dict[str, str],
                       tmp_path: Path) -> None:
    done = []

    def fault(workers: Workers, share: float) -> None:
        if share >= 0.4 and not done:
            done.append(True)
            redis_aof_restartable.stop()  # SIGTERM: Redis fsyncs its AOF and exits
            time.sleep(3.0)
            redis_aof_restartable.restart()

    workers = run_scenario(kafka, redis_aof_restartable, names, tmp_path, fault, seed=2)
    assert done
    # the outage was seen, and the batches in flight were dropped and re-read
    assert "state store unavailable" in workers.logs(tail=None)


def test_zombie_commit_is_refused(kafka: Service, redis_aof_restartable: Service,
                                  names: dict[str, str], tmp_path: Path) -> None:
    """The zombie is stopped mid-batch: with a slow encoder it is busy in a batch nearly all
    the time; if it was caught between batches it is stopped again, up to 4 times."""
    state = {"tries": 0, "refused": 0.0, "next": 0.25}

    def fault(workers: Workers, share: float) -> None:
        if share < state["next"] or state["refused"] or state["tries"] >= 4:
            return
        zombie = workers.alive()[0]
        before = workers.metric(zombie, "topicstream_commits_rejected_total")
        workers.signal(zombie, signal.SIGSTOP)
        time.sleep(SESSION_TIMEOUT_MS / 1000 * 2.5)  # the group moves its partitions meanwhile
        workers.signal(zombie, signal.SIGCONT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            state["refused"] = workers.metric(zombie, "topicstream_commits_rejected_total") - before
            if state["refused"]:
                break
            time.sleep(0.5)
        state["tries"] += 1
        state["next"] = share + 0.1

    run_scenario(kafka, redis_aof_restartable, names, tmp_path, fault, seed=3,
                 seconds=30.0, batch_size=500)
    assert state["refused"] >= 1, f"no refused commit in {state['tries']} pauses"


def test_fuzzed_stream(kafka: Service, redis_aof_restartable: Service, names: dict[str, str],
                       tmp_path: Path) -> None:
    run_scenario(kafka, redis_aof_restartable, names, tmp_path, lambda w, s: None,
                 seed=4, seconds=10.0, fuzz=True)
