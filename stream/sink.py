"""Sinks: where assignments, events and DLQ records go. Kafka topics, or files."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

Message = tuple[bytes | None, bytes]  # (key, value)


class SinkUnavailable(Exception):
    """The broker did not take (or acknowledge) a batch's output; the batch is dropped
    uncommitted and re-read, so its output is sent again."""


class KafkaSink:
    """Publishes to the assignments, events and DLQ topics with one producer.

    :meth:`flush` returns only when every record sent since the last flush is acknowledged
    (``acks=all``), or raises :class:`SinkUnavailable`: the worker commits its batch to the
    state store only after that. Memory is bounded by the producer's ``buffer_memory``
    (32 MiB by default): when the broker is slow, ``send`` blocks (up to ``max_block_ms``)
    instead of queueing more.
    """

    def __init__(self, assignments_topic: str, events_topic: str, dlq_topic: str,
                 producer_config: dict[str, Any]) -> None:
        from kafka import KafkaProducer

        self.topics = {"assignments": assignments_topic, "events": events_topic, "dlq": dlq_topic}
        # The worker flushes after each batch, so lingering costs no latency; large producer
        # batches and a long linger keep send() from waking the I/O thread every few records
        # (a socket write each time), which on a small machine costs more than the send.
        cfg = {"acks": "all", "linger_ms": 100, "batch_size": 256 * 1024, "retries": 5,
               **producer_config}
        self.producer = KafkaProducer(**cfg)
        self._futures: list[Any] = []

    def send(self, kind: str, messages: list[Message]) -> None:
        from kafka.errors import KafkaError

        topic = self.topics[kind]
        try:
            for key, value in messages:
                self._futures.append(self.producer.send(topic, key=key, value=value))
        except KafkaError as exc:
            self._futures = []
            raise SinkUnavailable(f"sending to {topic}: {exc}") from exc

    def flush(self, timeout_s: float = 30.0) -> None:
        from kafka.errors import KafkaError

        futures, self._futures = self._futures, []
        try:
            self.producer.flush(timeout=timeout_s)
            for f in futures:
                f.get(timeout=timeout_s)  # raises the send error, if any
        except KafkaError as exc:
            raise SinkUnavailable(f"the broker did not acknowledge the batch's output: {exc}") from exc

    def close(self) -> None:
        self.producer.close(timeout=10)


class FileSink:
    """Writes each kind of message as JSON Lines to its own file (``-`` is standard output)."""

    def __init__(self, assignments: str | Path | None = "-", events: str | Path | None = None,
                 dlq: str | Path | None = None) -> None:
        self._files: dict[str, IO[bytes] | None] = {
            "assignments": _open(assignments), "events": _open(events), "dlq": _open(dlq)}

    def send(self, kind: str, messages: list[Message]) -> None:
        fh = self._files[kind]
        if fh is None:
            return
        fh.write(b"".join(value + b"\n" for _, value in messages))

    def flush(self, timeout_s: float = 30.0) -> None:
        for fh in self._files.values():
            if fh is not None:
                fh.flush()

    def close(self) -> None:
        for fh in self._files.values():
            if fh is not None and fh is not sys.stdout.buffer:
                fh.close()


class MemorySink:
    """Keeps every message in lists; for tests and for embedding in other programs."""

    def __init__(self) -> None:
        self.messages: dict[str, list[Message]] = {"assignments": [], "events": [], "dlq": []}

    def send(self, kind: str, messages: list[Message]) -> None:
        self.messages[kind].extend(messages)

    def flush(self, timeout_s: float = 30.0) -> None:
        pass

    def close(self) -> None:
        pass


def _open(path: str | Path | None) -> IO[bytes] | None:
    if path is None:
        return None
    if str(path) == "-":
        return sys.stdout.buffer
    return open(path, "wb")  # noqa: SIM115 - closed in FileSink.close
