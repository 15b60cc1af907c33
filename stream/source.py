"""Sources: where records come from. A Kafka consumer-group member, or a file.

Offsets are owned by the state store, not by Kafka: the consumer never auto-commits, and on
every partition assignment (start, rebalance, cooperative or eager) it seeks each new
partition to the offset stored with the model. Offsets are also committed to Kafka after a
successful store commit, best effort, so that lag tools (KEDA, Burrow, kafka-consumer-groups)
see the group's progress; they are never read back.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stream.contracts import Record, TopicPartition
from stream.state import StoreUnavailable

log = logging.getLogger(__name__)

# Given newly assigned partitions, return where to start each (absent: no stored offset).
OffsetLookup = Callable[[list[TopicPartition]], dict[TopicPartition, int]]


class KafkaSource:
    """A consumer-group member on ``topics`` with manual offsets (see the module docstring).

    ``lookup`` is called from inside ``poll`` on each assignment; the worker's
    ``on_assign``/``on_revoke`` hooks learn which partitions moved. Partitions with no
    stored offset start at ``auto_offset_reset`` (``earliest`` by default).
    """

    def __init__(self, topics: list[str], lookup: OffsetLookup,
                 on_assign: Callable[[dict[TopicPartition, int | None]], None],
                 on_revoke: Callable[[list[TopicPartition]], None],
                 consumer_config: dict[str, Any]) -> None:
        from kafka import KafkaConsumer
        from kafka.consumer.subscription_state import ConsumerRebalanceListener

        self._lookup, self._on_assign, self._on_revoke = lookup, on_assign, on_revoke
        self._reset: set[TopicPartition] = set()
        self._pending: set[TopicPartition] = set()  # assigned, stored offset not read yet
        self._backoff = 0.2
        self.consumer = KafkaConsumer(enable_auto_commit=False, **consumer_config)
        source = self

        class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            def on_partitions_revoked(self, revoked: Any) -> None:
                source._revoked([TopicPartition(tp.topic, tp.partition) for tp in revoked])

            def on_partitions_assigned(self, assigned: Any) -> None:
                source._assigned([TopicPartition(tp.topic, tp.partition) for tp in assigned])

        self.consumer.subscribe(topics, listener=Listener())

    def _kafka_tp(self, tp: TopicPartition) -> Any:
        from kafka import TopicPartition as KTP

        return KTP(tp.topic, tp.partition)

    def _revoked(self, tps: list[TopicPartition]) -> None:
        self._pending.difference_update(tps)
        if tps:
            log.info("partitions revoked: %s", ", ".join(map(str, tps)))
        self._reset.update(tps)
        self._on_revoke(tps)

    def _assigned(self, tps: list[TopicPartition]) -> None:
        if not tps:
            return
        try:
            stored = self._lookup(tps)
        except StoreUnavailable as exc:
            # never start a partition anywhere but at its stored offset: hold it paused
            # until the store answers (retried at each poll)
            log.warning("partitions %s assigned while the state store is unavailable (%s): "
                        "paused until their stored offsets can be read",
                        ", ".join(map(str, tps)), exc)
            self.consumer.pause(*[self._kafka_tp(tp) for tp in tps])
            self._pending.update(tps)
            return
        self._start(tps, stored)

    def _retry_pending(self) -> None:
        owned = self.assignment()
        tps = [tp for tp in self._pending if tp in owned]
        self._pending.clear()
        if not tps:
            return
        try:
            stored = self._lookup(tps)
        except StoreUnavailable:
            self._pending.update(tps)
            return
        self.consumer.resume(*[self._kafka_tp(tp) for tp in tps])
        self._start(tps, stored)

    def _start(self, tps: list[TopicPartition], stored: dict[TopicPartition, int]) -> None:
        """Seek newly assigned partitions to their stored offsets, then tell the worker."""
        for tp in tps:
            if tp in stored:
                self.consumer.seek(self._kafka_tp(tp), stored[tp])
            # else: the consumer's auto_offset_reset decides (no committed offset in Kafka
            # is ever used as a start: see seek_unstored below)
        unstored = [self._kafka_tp(tp) for tp in tps if tp not in stored]
        if unstored:
            if self.consumer.config.get("auto_offset_reset") == "latest":
                self.consumer.seek_to_end(*unstored)
            else:
                self.consumer.seek_to_beginning(*unstored)
        log.info("partitions assigned: %s", ", ".join(
            f"{tp}@{stored.get(tp, 'start')}" for tp in tps))
        self._reset.update(tps)
        self._on_assign({tp: stored.get(tp) for tp in tps})

    def seek(self, positions: dict[TopicPartition, int | None]) -> None:
        """Move partitions back to stored offsets (after a refused commit)."""
        for tp, off in positions.items():
            if off is None:
                self.consumer.seek_to_beginning(self._kafka_tp(tp))
            else:
                self.consumer.seek(self._kafka_tp(tp), off)
        self._reset.update(positions)

    def poll(self, timeout_ms: int, max_records: int) -> list[Record]:
        """Records from the owned partitions. Broker errors are logged and retried with a
        growing pause (kafka-python reconnects by itself); they never end the worker."""
        from kafka.errors import KafkaError

        if self._pending:
            self._retry_pending()
        try:
            got = self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as exc:
            log.warning("poll failed (%s): retrying in %.1f s", exc, self._backoff)
            time.sleep(self._backoff)
            self._backoff = min(self._backoff * 2, 5.0)
            return []
        self._backoff = 0.2
        out: list[Record] = []
        for ktp, msgs in got.items():
            for m in msgs:
                out.append(Record(ktp.topic, ktp.partition, m.offset, m.value, m.key, m.timestamp))
        return out

    def take_reset_partitions(self) -> set[TopicPartition]:
        reset, self._reset = self._reset, set()
        return reset

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(tp.topic, tp.partition) for tp in self.consumer.assignment()}

    def lag(self) -> dict[TopicPartition, int]:
        """Records between position and high-water mark, from the last fetch responses."""
        out: dict[TopicPartition, int] = {}
        for ktp in self.consumer.assignment():
            hw = self.consumer.highwater(ktp)
            if hw is None:
                continue
            try:
                pos = self.consumer.position(ktp, timeout_ms=1000)
            except Exception:  # noqa: BLE001 - lag is advisory
                continue
            if pos is not None:
                out[TopicPartition(ktp.topic, ktp.partition)] = max(hw - pos, 0)
        return out

    def commit_to_kafka(self, offsets: dict[TopicPartition, int]) -> None:
        """Mirror the store's offsets into Kafka for lag tools; failures are only logged."""
        from kafka.structs import OffsetAndMetadata

        try:
            self.consumer.commit_async({self._kafka_tp(tp): OffsetAndMetadata(off, "", -1)
                                        for tp, off in offsets.items()})
        except Exception as exc:  # noqa: BLE001 - best effort by design
            log.debug("kafka offset commit failed: %s", exc)

    def close(self) -> None:
        self.consumer.close()


class FileSource:
    """Records from a JSONL file (one record per line) or a CSV file (one per row, turned into
    a JSON object), as partition 0 of a pseudo-topic named after the file; offset = line
    number. ``exhausted`` turns True at the end of the file.

    ``replay_docs_per_s`` stamps each record as if the file had arrived at that rate
    (record ``n`` at ``n / replay_docs_per_s`` seconds of stream time), for files whose
    documents carry no ``ts`` of their own; without it records have no timestamp and
    documents without ``ts`` take the time they are read."""

    def __init__(self, path: str | Path, start: int = 0,
                 replay_docs_per_s: float | None = None) -> None:
        if replay_docs_per_s is not None and not replay_docs_per_s > 0:
            raise ValueError(f"replay_docs_per_s={replay_docs_per_s} should be > 0")
        self.replay_docs_per_s = replay_docs_per_s
        self.path = Path(path)
        self.topic = self.path.name
        self.tp = TopicPartition(self.topic, 0)
        self._fh = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        self._csv = self.path.suffix.lower() == ".csv"
        self._offset = 0
        self.exhausted = False
        self._rows = _csv_rows(self.path) if self._csv else None
        for _ in range(start):
            self._next_value()

    def _next_value(self) -> bytes | None:
        if self._rows is not None:
            row = next(self._rows, None)
            if row is None:
                self.exhausted = True
                return None
            self._offset += 1
            return json.dumps(row, ensure_ascii=False).encode()
        line = self._fh.readline()
        if not line:
            self.exhausted = True
            return None
        self._offset += 1
        return line.rstrip(b"\r\n")

    def poll(self, timeout_ms: int, max_records: int) -> list[Record]:
        out: list[Record] = []
        while len(out) < max_records:
            offset = self._offset
            value = self._next_value()
            if value is None:
                break
            if not value.strip():
                continue  # blank lines are not records
            stamp = (None if self.replay_docs_per_s is None
                     else int(offset * 1000.0 / self.replay_docs_per_s))
            out.append(Record(self.topic, 0, offset, value, timestamp_ms=stamp))
        return out

    def take_reset_partitions(self) -> set[TopicPartition]:
        return set()

    def close(self) -> None:
        self._fh.close()


def _csv_rows(path: Path) -> Any:
    import csv

    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        yield from csv.DictReader(fh)
