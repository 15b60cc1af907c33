"""Batcher: micro-batches bounded by size and time; decodes, validates and cleans each record.

Input contract (DESIGN.md): a UTF-8 JSON object with a string ``id``, a string ``text``
(HTML stripped, whitespace folded, empty after cleaning is invalid, longer than
``max_chars`` is truncated), an optional ``ts`` (RFC 3339 string or epoch seconds), an
optional ``meta`` object passed through untouched and an optional ``label`` (string or
int). Anything else becomes a :class:`~stream.contracts.BadRecord` whose ``error`` is one
of :data:`ERRORS`; the caller sends it to the DLQ and still advances the offset.

This module imports neither kafka nor redis: it pulls from anything that implements
:class:`RecordSource`.
"""

from __future__ import annotations

import html
import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from stream.contracts import BadRecord, Document, Record, TopicPartition
from stream.topics import tokenize

log = logging.getLogger(__name__)

ERRORS = (
    "empty_record",  # no value at all (tombstone)
    "oversize",  # value longer than max_record_bytes
    "invalid_utf8",
    "not_json",
    "not_object",  # JSON, but not an object
    "missing_field",  # id or text absent
    "wrong_type",  # a field of the wrong type
    "empty_text",  # text empty after cleaning
    "bad_timestamp",  # ts present but not RFC 3339 / epoch seconds
)

_TAG = re.compile(r"<[^>]{0,2000}>")
_SCRIPT = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class FieldNames:
    """Names of the input fields, so a user's existing topic works as it is."""

    id: str = "id"
    text: str = "text"
    ts: str = "ts"
    meta: str = "meta"
    label: str = "label"


@dataclass(frozen=True, slots=True)
class InputRules:
    fields: FieldNames = FieldNames()
    max_chars: int = 2000
    max_record_bytes: int = 1_000_000


def clean_text(text: str, max_chars: int) -> str:
    """Strip HTML (tags, script/style bodies, entities), fold whitespace, truncate."""
    if "<" in text:
        text = _SCRIPT.sub(" ", text)
        text = _TAG.sub(" ", text)
    if "&" in text:
        text = html.unescape(text)
    text = _SPACE.sub(" ", text).strip()
    return text[:max_chars].rstrip() if len(text) > max_chars else text


def _parse_ts(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def decode_record(record: Record, rules: InputRules) -> Document | BadRecord:
    """Decode one record into a :class:`Document`, or say why it is bad."""
    raw = record.value
    if raw is None or len(raw) == 0:
        return BadRecord("empty_record", "record has no value", record)
    if len(raw) > rules.max_record_bytes:
        return BadRecord(
            "oversize", f"{len(raw)} bytes > max_record_bytes={rules.max_record_bytes}", record
        )
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadRecord("invalid_utf8", str(exc), record)
    try:
        obj = json.loads(decoded)
    except ValueError as exc:
        return BadRecord("not_json", str(exc)[:200], record)
    if not isinstance(obj, dict):
        return BadRecord("not_object", f"JSON {type(obj).__name__}, expected an object", record)
    f = rules.fields
    doc_id, text = obj.get(f.id), obj.get(f.text)
    if doc_id is None or text is None:
        missing = f.id if doc_id is None else f.text
        return BadRecord("missing_field", f"field {missing!r} is required", record)
    if not isinstance(doc_id, str) or not doc_id:
        return BadRecord("wrong_type", f"field {f.id!r} should be a non-empty string", record)
    if not isinstance(text, str):
        return BadRecord("wrong_type", f"field {f.text!r} should be a string", record)
    meta = obj.get(f.meta)
    if meta is not None and not isinstance(meta, dict):
        return BadRecord("wrong_type", f"field {f.meta!r} should be an object", record)
    label = obj.get(f.label)
    if label is not None and (isinstance(label, bool) or not isinstance(label, str | int)):
        return BadRecord("wrong_type", f"field {f.label!r} should be a string or int", record)
    ts_value = obj.get(f.ts)
    if ts_value is None:
        ts = (record.timestamp_ms or time.time() * 1000.0) / 1000.0
    else:
        parsed = _parse_ts(ts_value)
        if parsed is None:
            return BadRecord("bad_timestamp", f"field {f.ts!r}={ts_value!r:.60}", record)
        ts = parsed
    cleaned = clean_text(text, rules.max_chars)
    if not cleaned:
        return BadRecord("empty_text", f"field {f.text!r} is empty after cleaning", record)
    return Document(
        id=doc_id,
        text=cleaned,
        ts=ts,
        record=record,
        meta=meta,
        label=None if label is None else str(label),
        tokens=tokenize(cleaned),
    )


def decode_batch(
    records: Iterable[Record], rules: InputRules
) -> tuple[list[Document], list[BadRecord]]:
    docs: list[Document] = []
    bad: list[BadRecord] = []
    for record in records:
        out = decode_record(record, rules)
        if isinstance(out, Document):
            docs.append(out)
        else:
            bad.append(out)
    return docs, bad


def next_offsets(records: Iterable[Record]) -> dict[TopicPartition, int]:
    """The offset to resume from, per partition: last consumed offset + 1 (not the last one)."""
    out: dict[TopicPartition, int] = {}
    for r in records:
        tp = r.tp
        if r.offset + 1 > out.get(tp, -1):
            out[tp] = r.offset + 1
    return out


class RecordSource(Protocol):
    """What the batcher pulls from: a Kafka consumer, a file, a list in a test."""

    def poll(self, timeout_ms: int, max_records: int) -> list[Record]: ...

    def take_reset_partitions(self) -> set[TopicPartition]:
        """Partitions whose position was moved (rebalance, seek) since the last call."""
        ...


class MicroBatcher:
    """Groups records into batches of at most ``batch_size``, waiting at most ``max_wait_ms``
    after the first record of a batch arrived.

    Records of a partition whose position was reset while a batch was being filled (a
    rebalance moved it, or the worker seeked it back to the stored offset) are dropped from
    the pending batch: they will be read again from the new position, and keeping them would
    count them twice.

    Examples
    --------
    >>> from stream.contracts import Record
    >>> class ListSource:
    ...     def __init__(self, recs): self.recs = recs
    ...     def poll(self, timeout_ms, max_records):
    ...         out, self.recs = self.recs[:max_records], self.recs[max_records:]
    ...         return out
    ...     def take_reset_partitions(self): return set()
    >>> src = ListSource([Record("t", 0, i, b"{}") for i in range(5)])
    >>> [len(MicroBatcher(src, batch_size=2, max_wait_ms=10).next_batch()) for _ in range(3)]
    [2, 2, 1]
    """

    def __init__(
        self,
        source: RecordSource,
        batch_size: int,
        max_wait_ms: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} should be >= 1")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms={max_wait_ms} should be >= 0")
        self.source = source
        self.batch_size = batch_size
        self.max_wait_ms = max_wait_ms
        self.clock = clock

    def next_batch(self) -> list[Record]:
        """Return the next batch; empty when nothing arrived within ``max_wait_ms``."""
        buf: list[Record] = []
        deadline = self.clock() + self.max_wait_ms / 1000.0
        while len(buf) < self.batch_size:
            remaining_ms = int((deadline - self.clock()) * 1000)
            if remaining_ms <= 0 and buf:
                break
            got = self.source.poll(max(remaining_ms, 0), self.batch_size - len(buf))
            reset = self.source.take_reset_partitions()
            if reset and buf:
                before = len(buf)
                buf = [r for r in buf if r.tp not in reset]
                log.info("dropped %d pending records of moved partitions %s", before - len(buf),
                         ", ".join(map(str, sorted(reset, key=str))))
            buf.extend(got)
            if remaining_ms <= 0:
                break
        return buf
