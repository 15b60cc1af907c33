from __future__ import annotations

import json

import pytest

from conftest import MALFORMED
from stream.batcher import (
    FieldNames,
    InputRules,
    MicroBatcher,
    clean_text,
    decode_batch,
    decode_record,
    next_offsets,
)
from stream.contracts import BadRecord, Document, Record, TopicPartition


def rec(value: bytes | None, offset: int = 0, partition: int = 0, ts: int | None = 1_700_000_000_000) -> Record:
    return Record("in", partition, offset, value, timestamp_ms=ts)


@pytest.mark.parametrize(("raw", "error"), MALFORMED)
def test_each_kind_of_bad_input_is_named(raw: bytes | None, error: str) -> None:
    out = decode_record(rec(raw), InputRules())
    assert isinstance(out, BadRecord)
    assert out.error == error
    assert out.detail


def test_oversize_record_is_rejected_not_truncated() -> None:
    raw = json.dumps({"id": "big", "text": "x" * 5000}).encode()
    out = decode_record(rec(raw), InputRules(max_record_bytes=1000))
    assert isinstance(out, BadRecord) and out.error == "oversize"


def test_long_text_is_truncated_not_rejected() -> None:
    raw = json.dumps({"id": "a", "text": "word " * 1000}).encode()
    out = decode_record(rec(raw), InputRules(max_chars=50))
    assert isinstance(out, Document)
    assert len(out.text) <= 50 and out.text.startswith("word word")


def test_valid_document_fields() -> None:
    raw = json.dumps({"id": "a", "text": "<p>Rover&nbsp;finds   <b>ice</b></p>", "ts": "2024-05-01T12:00:00Z",
                      "meta": {"src": "wire"}, "label": 3}).encode()
    out = decode_record(rec(raw), InputRules())
    assert isinstance(out, Document)
    assert out.text == "Rover finds ice"
    assert out.ts == 1714564800.0
    assert out.meta == {"src": "wire"} and out.label == "3"


def test_ts_defaults_to_record_timestamp_and_accepts_epoch() -> None:
    out = decode_record(rec(b'{"id": "a", "text": "t"}', ts=1_234_000), InputRules())
    assert isinstance(out, Document) and out.ts == 1234.0
    out = decode_record(rec(b'{"id": "a", "text": "t", "ts": 99.5}'), InputRules())
    assert isinstance(out, Document) and out.ts == 99.5


def test_field_names_are_configurable() -> None:
    rules = InputRules(FieldNames(id="uuid", text="body"))
    out = decode_record(rec(b'{"uuid": "u1", "body": "hello world"}'), rules)
    assert isinstance(out, Document) and (out.id, out.text) == ("u1", "hello world")
    assert isinstance(decode_record(rec(b'{"id": "u1", "text": "x"}'), rules), BadRecord)


def test_clean_text_strips_script_and_entities() -> None:
    assert clean_text("a<script>var x = 1;</script> b &amp; c\n\t d", 100) == "a b & c d"


def test_decode_batch_splits_and_next_offsets_are_last_plus_one() -> None:
    records = [rec(b'{"id":"a","text":"x"}', 5), rec(b"bad", 6), rec(b'{"id":"b","text":"y"}', 2, partition=1)]
    docs, bad = decode_batch(records, InputRules())
    assert [d.id for d in docs] == ["a", "b"] and [b.error for b in bad] == ["not_json"]
    assert next_offsets(records) == {TopicPartition("in", 0): 7, TopicPartition("in", 1): 3}


class ListSource:
    def __init__(self, records: list[Record], reset_after: int | None = None) -> None:
        self.records, self.polls, self.reset_after = records, 0, reset_after

    def poll(self, timeout_ms: int, max_records: int) -> list[Record]:
        self.polls += 1
        out, self.records = self.records[:max_records], self.records[max_records:]
        return out

    def take_reset_partitions(self) -> set[TopicPartition]:
        if self.reset_after is not None and self.polls == self.reset_after:
            return {TopicPartition("in", 0)}
        return set()


def test_batcher_bounds_batch_size() -> None:
    src = ListSource([rec(b"{}", i) for i in range(10)])
    b = MicroBatcher(src, batch_size=4, max_wait_ms=50)
    assert [len(b.next_batch()) for _ in range(4)] == [4, 4, 2, 0]


def test_batcher_bounds_wait_time() -> None:
    class Trickle(ListSource):
        def poll(self, timeout_ms: int, max_records: int) -> list[Record]:
            self.polls += 1
            return [rec(b"{}", self.polls)]

    now = [0.0]
    src = Trickle([])

    def clock() -> float:
        now[0] += 0.01  # each poll takes 10 ms
        return now[0]

    batch = MicroBatcher(src, batch_size=1000, max_wait_ms=100, clock=clock).next_batch()
    assert 3 <= len(batch) <= 10  # cut by time, far below the size bound


def test_batcher_drops_pending_records_of_reset_partitions() -> None:
    records = [rec(b"{}", i) for i in range(3)] + [rec(b"{}", i, partition=1) for i in range(3)]
    src = ListSource(records, reset_after=2)

    b = MicroBatcher(src, batch_size=4, max_wait_ms=50)
    src_poll = src.poll
    src.poll = lambda timeout_ms, max_records: src_poll(timeout_ms, min(max_records, 2))  # type: ignore[method-assign]
    batch = b.next_batch()
    # polls: [p0@0, p0@1], then [p0@2, p1@0] with p0 reset, then [p1@1, p1@2]: the two records
    # of partition 0 read before the reset are dropped, the ones read after it are kept
    assert [(r.partition, r.offset) for r in batch] == [(0, 2), (1, 0), (1, 1), (1, 2)]


def test_batcher_validates_parameters() -> None:
    with pytest.raises(ValueError, match="batch_size=0 should be >= 1"):
        MicroBatcher(ListSource([]), batch_size=0, max_wait_ms=1)
