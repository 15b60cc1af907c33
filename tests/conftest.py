"""Fixtures that start real servers: a Tansu Kafka-protocol broker and a private redis-server,
each on a free port, torn down after. No test depends on a server started by hand."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from stream.services import Service, start_redis, start_tansu

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "stream" / "demo_corpus.jsonl"


@pytest.fixture(scope="session")
def kafka() -> Iterator[Service]:
    with start_tansu() as broker:
        yield broker


@pytest.fixture
def redis_server() -> Iterator[Service]:
    with start_redis() as server:
        yield server


@pytest.fixture
def redis_aof(tmp_path: Path) -> Iterator[Service]:
    with start_redis(aof=True, workdir=tmp_path) as server:
        yield server


@pytest.fixture
def names() -> dict[str, str]:
    """Topic, group and model names of one test, unique so tests share the broker safely."""
    tag = uuid.uuid4().hex[:8]
    return {"input": f"in-{tag}", "assignments": f"asg-{tag}", "events": f"ev-{tag}",
            "dlq": f"dlq-{tag}", "group": f"g-{tag}", "model": f"m-{tag}"}


def create_topic(kafka: Service, topic: str, partitions: int = 4) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=kafka.url)
    admin.create_topics([NewTopic(topic, partitions, 1)])
    admin.close()


def read_topic(kafka: Service, topic: str) -> list:
    """Every record of ``topic`` (all partitions, from the start)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=kafka.url, auto_offset_reset="earliest",
                             consumer_timeout_ms=3000)
    out = list(consumer)
    consumer.close()
    return out


def corpus_rows() -> list[dict[str, str]]:
    return [json.loads(line) for line in CORPUS.read_text().splitlines() if line.strip()]


def documents(n: int) -> list[dict[str, str]]:
    """``n`` valid documents with unique ids, cycling over the sample corpus."""
    rows = corpus_rows()
    return [{"id": f"doc-{i}", "text": rows[i % len(rows)]["text"], "label": rows[i % len(rows)]["label"]}
            for i in range(n)]


# One of each kind of bad input named in DESIGN.md, with the error it must be filed under.
MALFORMED: list[tuple[bytes | None, str]] = [
    (b"\xff\xfe\xfd not utf-8", "invalid_utf8"),
    (b"this is not json", "not_json"),
    (b"[1, 2, 3]", "not_object"),
    (b'{"text": "no id here"}', "missing_field"),
    (b'{"id": "m-1"}', "missing_field"),
    (b'{"id": 12, "text": "id is a number"}', "wrong_type"),
    (b'{"id": "m-2", "text": ["a", "list"]}', "wrong_type"),
    (b'{"id": "m-3", "text": "   <b> </b>  "}', "empty_text"),
    (b'{"id": "m-4", "text": "fine", "ts": "yesterday"}', "bad_timestamp"),
    (b'{"id": "m-5", "text": "fine", "meta": "not an object"}', "wrong_type"),
    (None, "empty_record"),
]


def edit_config(path: Path, **changes: object) -> None:
    """Change fields of a trained model's ``config.json`` (for the damaged-directory tests)."""
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


class SideBySide:
    """The hashing encoder serving ``concurrent_calls`` calls at once, slowly (as encoder
    processes taking whole batches do), so a worker keeps that many batches in flight;
    ``most`` is the most calls seen running at once."""

    def __init__(self, concurrent_calls: int = 3, dim: int = 64, delay_s: float = 0.02) -> None:
        from encoders.hashing import HashingEncoder

        self.inner = HashingEncoder(dim=dim)
        self.name, self.dim, self.device = "side-by-side", dim, "cpu"
        self.concurrent_calls, self.delay_s = concurrent_calls, delay_s
        self.lock = threading.Lock()
        self.active = self.most = 0

    @property
    def tokens_seen(self) -> int:
        return self.inner.tokens_seen

    def encode(self, texts: list[str]) -> np.ndarray:
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
        time.sleep(self.delay_s)
        with self.lock:
            self.active -= 1
            return self.inner.encode(texts)
