"""bench scale: a worker process through a real broker and Redis, measured between its first
commit and its last."""

from __future__ import annotations

import math

import pytest

from stream.bench_scale import ScaleError, Scrape, run_scale


def test_a_scrape_minus_an_earlier_one_is_what_was_counted_in_between() -> None:
    before = Scrape({0.01: 1.0, 0.1: 2.0}, {"poll": 5.0, "commit": 0.02}, 2)
    after = Scrape({0.01: 4.0, 0.1: 7.0}, {"poll": 5.5, "commit": 0.08, "publish": 0.1}, 6)
    window = after.minus(before)
    assert window.buckets == {0.01: 3.0, 0.1: 5.0}
    assert window.batches == 4
    assert window.stage_s == {"poll": 0.5, "commit": 0.08 - 0.02, "publish": 0.1}


@pytest.mark.integration
def test_one_worker_is_measured_from_its_first_commit() -> None:
    """Every document is processed; the stage times are those of the measured batches: the
    seconds spent joining the group (in the first polls) are not in the poll stage."""
    docs = [{"id": f"d{i}", "text": f"story {i % 9} about harbour number {i}"} for i in range(1200)]
    settings = {"encoder": "hashing", "batch_size": 100, "clusterer": "kmeans",
                "session_timeout_ms": 6000}
    (row,) = run_scale(docs, [1], 1, settings, timeout_s=120)
    assert row.workers == 1 and row.documents == 1200
    assert row.docs_per_s > 0 and row.seconds > 0
    # the window starts at the first commit: its documents and its batch are not in it
    assert 0 < row.measured_documents < 1200
    # batches of at most 100: at least that many batches (one fewer if a commit fell between
    # the first look at the state and the first scrape), at most one per document
    assert max(1, math.ceil(row.measured_documents / 100) - 1) <= row.batches <= row.measured_documents
    assert row.docs_per_s == pytest.approx(row.measured_documents / row.seconds)
    assert {"poll", "cluster", "publish", "commit"} <= set(row.stage_ms_per_batch)
    # a join of a few seconds spread over the measured batches would be hundreds of ms a batch
    assert row.stage_ms_per_batch["poll"] < 200
    assert row.commit_p50_ms is not None and row.commit_p50_ms > 0
    # every batch is a commit script in Redis: its CPU time is counted, and is not seconds
    assert row.redis_cpu_ms_per_batch is not None and 0 < row.redis_cpu_ms_per_batch < 1000


@pytest.mark.integration
def test_a_stream_done_at_the_first_commit_is_an_error_not_a_figure() -> None:
    """One document: it is all committed in the first commit, so nothing is left to time."""
    settings = {"encoder": "hashing", "batch_size": 100, "clusterer": "kmeans",
                "session_timeout_ms": 6000}
    with pytest.raises(ScaleError, match="all 1 documents were committed by the first look"):
        run_scale([{"id": "d0", "text": "one story"}], [1], 1, settings, timeout_s=120)
