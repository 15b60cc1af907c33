"""Message contracts: what comes in, what goes out (see DESIGN.md, "Contracts").

Every message that leaves topicstream is built by one function here, so the schema of each
output topic lives in one place: :func:`assignment_message`, :func:`event_message` and
:func:`dlq_message`.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

EVENT_TYPES = ("cluster_created", "emerging_topic", "clusters_merged", "cluster_faded", "drift")


@dataclass(frozen=True, slots=True)
class TopicPartition:
    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]"


@dataclass(slots=True)
class Record:
    """One raw record as a source delivered it: bytes, not yet decoded."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    timestamp_ms: int | None = None

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)

    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"

    def source(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


@dataclass(slots=True)
class Document:
    """A valid, cleaned input document."""

    id: str
    text: str
    ts: float
    record: Record
    meta: dict[str, Any] | None = None
    label: str | None = None
    tokens: list[str] = field(default_factory=list)


@dataclass(slots=True)
class BadRecord:
    """An input record that failed the contract; it goes to the DLQ with ``error``."""

    error: str
    detail: str
    record: Record


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def assignment_message(
    doc: Document,
    *,
    cluster_id: int,
    similarity: float,
    is_new_cluster: bool,
    is_outlier: bool,
    keywords: list[str],
    model: str,
    model_version: int,
    processed_at: float | None = None,
) -> tuple[bytes, bytes]:
    """Key and value of one record on the assignments topic (key = document id)."""
    value = {
        "id": doc.id,
        "cluster_id": int(cluster_id),
        "similarity": round(float(similarity), 6),
        "is_new_cluster": bool(is_new_cluster),
        "is_outlier": bool(is_outlier),
        "keywords": keywords,
        "model": model,
        "model_version": int(model_version),
        "ts": doc.ts,
        "processed_at": time.time() if processed_at is None else processed_at,
        "source": doc.record.source(),
        "meta": doc.meta,
    }
    return doc.id.encode("utf-8"), _dumps(value)


def event_message(
    type: str,
    *,
    cluster_id: int,
    size: float,
    keywords: list[str],
    exemplars: list[str],
    score: float,
    ts: float,
    **extra: Any,
) -> tuple[bytes, bytes]:
    """Key and value of one record on the events topic (key = cluster id)."""
    if type not in EVENT_TYPES:
        raise ValueError(f"type={type!r} should be one of {EVENT_TYPES}")
    value = {
        "type": type,
        "cluster_id": int(cluster_id),
        "size": float(size),
        "keywords": keywords,
        "exemplars": exemplars,
        "score": float(score),
        "ts": ts,
        **extra,
    }
    return str(int(cluster_id)).encode("ascii"), _dumps(value)


def dlq_message(bad: BadRecord) -> tuple[bytes | None, bytes]:
    """Key and value of one DLQ record: the reason and the raw bytes, so nothing is lost."""
    rec = bad.record
    value = {
        "error": bad.error,
        "detail": bad.detail,
        "source": rec.source(),
        "key": base64.b64encode(rec.key).decode("ascii") if rec.key is not None else None,
        "raw": base64.b64encode(rec.value).decode("ascii") if rec.value is not None else None,
        "timestamp_ms": rec.timestamp_ms,
    }
    return rec.key, _dumps(value)
