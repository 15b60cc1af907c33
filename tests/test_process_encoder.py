"""Encoders in child processes (encoders/process.py) and the worker's batches in flight."""

from __future__ import annotations

import json
import os
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from conftest import SideBySide
from encoders import load_encoder
from encoders.hashing import HashingEncoder
from encoders.process import EncoderProcessError, ProcessEncoder, available_cpus, cpu_plan
from stream.app import Unreachable, build_worker, build_worker_encoder, leave_cores_to_encoder
from stream.config import Config, ConfigError, load_config
from stream.services import free_port

TEXTS = [f"story {i % 7} about {w} number {i}" for i, w in
         enumerate(["ports", "rovers", "strikes", "elections", "storms"] * 13)]


@pytest.fixture(scope="module")
def pair() -> ProcessEncoder:
    enc = ProcessEncoder(partial(HashingEncoder, dim=64, idf=False), processes=2, split=True)
    yield enc
    enc.close()


def test_split_calls_match_the_encoder_in_process(pair: ProcessEncoder) -> None:
    want = HashingEncoder(dim=64, idf=False).encode(TEXTS)
    got = pair.encode(TEXTS)
    assert got.dtype == np.float32 and got.flags.writeable
    np.testing.assert_array_equal(got, want)
    assert (pair.dim, pair.device, pair.concurrent_calls) == (64, "cpu", 1)
    assert len(set(pair.pids)) == 2 and os.getpid() not in pair.pids
    np.testing.assert_array_equal(pair.encode(TEXTS[:1]), want[:1])  # fewer texts than children
    assert pair.encode([]).shape == (0, 64)
    before = pair.tokens_seen
    pair.encode(TEXTS[:3])
    assert pair.tokens_seen > before  # the children's counts, summed


def test_whole_calls_from_several_threads_each_take_a_child() -> None:
    enc = ProcessEncoder(partial(HashingEncoder, dim=32, idf=False), processes=3, split=False)
    try:
        assert enc.concurrent_calls == 3
        want = HashingEncoder(dim=32, idf=False).encode(TEXTS)
        chunks = [TEXTS[i:i + 9] for i in range(0, len(TEXTS), 9)]
        out: dict[int, np.ndarray] = {}

        def run(k: int) -> None:
            for _ in range(5):
                out[k] = enc.encode(chunks[k])

        threads = [threading.Thread(target=run, args=(k,)) for k in range(len(chunks))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        np.testing.assert_array_equal(np.concatenate([out[k] for k in range(len(chunks))]), want)
        # each call counts its own tokens, however the calls overlap
        ref = HashingEncoder(dim=32, idf=False)
        counts: dict[int, list[int]] = {k: [] for k in range(len(chunks))}

        def count(k: int) -> None:
            for _ in range(5):
                counts[k].append(enc.encode_counted(chunks[k])[1])

        threads = [threading.Thread(target=count, args=(k,)) for k in range(len(chunks))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        for k, chunk in enumerate(chunks):
            before = ref.tokens_seen
            ref.encode(chunk)
            assert counts[k] == [ref.tokens_seen - before] * 5
    finally:
        enc.close()


def test_a_failing_call_is_reported_and_the_children_serve_on(pair: ProcessEncoder) -> None:
    with pytest.raises(EncoderProcessError, match="the encoder process failed") as info:
        pair.encode(["fine", None, "fine too", None])  # type: ignore[list-item]
    assert info.value.kind
    np.testing.assert_array_equal(pair.encode(TEXTS[:4]), HashingEncoder(dim=64, idf=False).encode(TEXTS[:4]))


def test_a_child_that_cannot_build_its_encoder_fails_the_start_in_one_line() -> None:
    with pytest.raises(EncoderProcessError, match="hashing:DIM takes an integer") as info:
        ProcessEncoder(load_encoder, "hashing:wide", processes=2)
    assert info.value.kind == "ValueError" and "\n" not in str(info.value)


def test_a_dead_child_is_an_error_not_a_hang() -> None:
    enc = ProcessEncoder(load_encoder, "hashing:16", processes=2)
    try:
        enc._children[1].proc.kill()
        enc._children[1].proc.join(timeout=10)
        with pytest.raises(EncoderProcessError, match="exit"):
            enc.encode(TEXTS)
    finally:
        enc.close()


def test_close_ends_the_children() -> None:
    enc = ProcessEncoder(load_encoder, "hashing:16", processes=2)
    procs = [c.proc for c in enc._children]
    enc.close()
    assert all(not p.is_alive() and p.exitcode == 0 for p in procs)
    enc.close()  # twice is harmless


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="processes=0 should be >= 1"):
        ProcessEncoder(load_encoder, "hashing", processes=0)
    with pytest.raises(ValueError, match="threads=0 should be >= 1"):
        ProcessEncoder(load_encoder, "hashing", threads=0)
    with pytest.raises(ConfigError, match="encoder_processes=-2 should be >= -1"):
        load_config(None, overrides={"encoder_processes": "-2"})
    assert cpu_plan(4) == (4, 1) and cpu_plan(0) == (1, 1) and cpu_plan(32) == (8, 4)
    assert 1 <= available_cpus() <= (os.cpu_count() or 1)


def test_the_worker_runs_a_torch_encoder_in_child_processes_and_hashing_in_itself() -> None:
    hashing = build_worker_encoder(Config(encoder="hashing:16"))
    assert isinstance(hashing, HashingEncoder)
    assert not isinstance(build_worker_encoder(Config(encoder="transformer", encoder_processes=0)),
                          ProcessEncoder)
    enc = build_worker_encoder(Config(encoder="transformer", device="cpu", encoder_processes=2))
    try:
        assert isinstance(enc, ProcessEncoder)
        assert enc.concurrent_calls == 2 and enc.device == "cpu" and enc.dim == 384
        assert enc.default_threshold == pytest.approx(0.4)  # type: ignore[attr-defined]
        X = enc.encode(["a port strike ends", "a rover finds ice", "the strike at the port ends"])
        np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-4)
        assert X[0] @ X[2] > X[0] @ X[1]
    finally:
        enc.close()
    with pytest.raises(Unreachable, match="reducer 'ae:/nowhere'"):
        build_worker_encoder(Config(encoder="hybrid", encoder_processes=1, reducer="ae:/nowhere"))


def test_the_worker_keeps_one_batch_in_flight_per_concurrent_call(tmp_path: Path) -> None:
    """With an encoder that serves 3 calls at once, 3 batches are encoding while the oldest is
    processed, and the output is still in input order, every document once."""
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n"
                           for i, t in enumerate(TEXTS * 3)))
    out = tmp_path / "out.jsonl"
    from stream.sink import FileSink

    enc = SideBySide(concurrent_calls=3, dim=16, delay_s=0.05)
    cfg = Config(encoder="hashing:16", batch_size=8, max_wait_ms=0)
    built = build_worker(cfg, input_file=src, sink=FileSink(str(out), str(tmp_path / "ev.jsonl"),
                                                            str(tmp_path / "dlq.jsonl")),
                         encoder=enc)  # type: ignore[arg-type]
    try:
        assert built.worker.ahead == 3
        built.worker.run()
    finally:
        built.close()
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert ids == [f"d{i}" for i in range(len(TEXTS) * 3)]
    assert enc.most >= 2  # batches were encoded side by side


def test_the_worker_encoder_benchmark_keeps_as_many_batches_in_flight() -> None:
    """bench encoder --pipeline times the worker's encoder as the worker calls it."""
    from stream.bench_encoder import docs_per_s_in_flight

    enc = SideBySide(concurrent_calls=3, dim=16, delay_s=0.02)
    rate = docs_per_s_in_flight(enc, TEXTS * 2, 10, repeat=2)
    assert enc.most == 3
    assert 0 < rate < len(TEXTS * 2) / (0.02 * 13 / 3 * 0.9)  # 13 batches, 3 at a time


def test_the_worker_leaves_the_cores_to_its_encoder_processes(pair: ProcessEncoder) -> None:
    """Encoder processes on the CPU: the worker's own BLAS drops to one thread; an encoder in
    the worker's process leaves the worker's BLAS threads as they were."""
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads() -> set[int]:
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    with threadpool_limits(limits=2, user_api="blas"):  # restored when the block ends
        assert blas_threads() == {2}
        assert leave_cores_to_encoder(HashingEncoder(dim=16)) is None
        assert blas_threads() == {2}
        limit = leave_cores_to_encoder(pair)
        assert limit is not None and blas_threads() == {1}
        limit.close()
        assert blas_threads() == {2}


def test_a_built_worker_limits_blas_while_it_lives_and_restores_it_on_close(tmp_path: Path) -> None:
    """build_worker sets the one-thread limit for its torch encoder's processes on the CPU, and
    Built.close puts the process's BLAS threads back."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from stream.sink import FileSink

    def blas_threads() -> set[int]:
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n"
                           for i, t in enumerate(TEXTS[:10])))
    cfg = Config(encoder="transformer", device="cpu", encoder_processes=1, batch_size=8,
                 max_wait_ms=0)
    with threadpool_limits(limits=2, user_api="blas"):
        built = build_worker(cfg, input_file=src, sink=FileSink(
            str(tmp_path / "out.jsonl"), str(tmp_path / "ev.jsonl"), str(tmp_path / "dlq.jsonl")))
        try:
            assert isinstance(built.worker.encoder, ProcessEncoder)
            assert blas_threads() == {1}
            built.worker.run()
        finally:
            built.close()
        assert blas_threads() == {2}
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 10


def test_a_worker_that_fails_to_build_closes_its_encoder_and_blas_limit() -> None:
    """No broker: build_worker fails after starting its encoder processes and setting the BLAS
    limit; both are undone before the error goes up."""
    import multiprocessing

    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads() -> set[int]:
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    cfg = Config(encoder="transformer", device="cpu", encoder_processes=1,
                 brokers=f"127.0.0.1:{free_port()}")
    before = set(multiprocessing.active_children())  # e.g. the module's `pair` fixture
    with threadpool_limits(limits=2, user_api="blas"):
        with pytest.raises(Unreachable):
            build_worker(cfg)
        assert blas_threads() == {2}
    assert set(multiprocessing.active_children()) <= before
