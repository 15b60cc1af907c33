"""An encoder that runs in a child process, so that it never waits for the worker's GIL.

A transformer's forward pass is hundreds of small torch calls, and each one takes the
interpreter's lock (the GIL) to start. In a worker the same interpreter also polls Kafka,
decodes, clusters, keeps the topic cards, publishes and commits, and kafka-python runs its
own I/O threads: whenever one of them holds the GIL, the encoder's next call waits for it,
up to the switch interval (5 ms) each time. On the 2-core development machine (2026-12-02)
the encoder on a thread beside one Python thread that never paused fell from 887-981 to
40-53 documents/s; in a child process (two threads), beside the same thread, it kept 280-310
(the busy thread takes one of the two cores).

:class:`ProcessEncoder` starts the child with ``spawn`` (a forked child of a process that has
started torch's thread pools or CUDA is not safe), builds the encoder there by calling
``factory(*args)`` (a module-level function, as it is pickled by name), and then answers
:meth:`~ProcessEncoder.encode` calls over a pipe: texts go in, the float32 rows come back as
one buffer. The child ignores SIGINT (a Ctrl-C reaches the whole process group, and the
worker still has a batch to finish) and exits when the pipe closes, so it never outlives the
worker; a child that dies mid-call is reported as a :class:`EncoderProcessError`, not a hang.

Each child holds its own copy of the encoder, so an encoder with state that depends on what
it has encoded (the hashing encoder's IDF) would drift apart across children: run only
stateless encoders this way (the transformer, hybrid with a term-frequency lexical part,
the distilled students).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from encoders import Encoder

#: attributes of the child's encoder copied to the parent's proxy when the child has them
EXTRA_ATTRIBUTES = ("default_threshold", "default_merge_threshold")


class EncoderProcessError(RuntimeError):
    """The child failed: it could not build its encoder, an encode call raised, or it died.
    ``kind`` is the class name of the child's exception ('' when it died)."""

    def __init__(self, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.kind = kind


def _serve(conn: Any, factory: Callable[..., Encoder], args: tuple[Any, ...],
           threads: int | None) -> None:
    """The child: build the encoder, report it, then encode until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        encoder = factory(*args)
    except Exception as exc:  # noqa: BLE001 - every failure goes back to the parent
        conn.send(("error", type(exc).__name__, str(exc)))
        return
    extra = {k: getattr(encoder, k) for k in EXTRA_ATTRIBUTES if hasattr(encoder, k)}
    conn.send(("ready", encoder.name, int(encoder.dim), encoder.device, extra))
    while True:
        try:
            texts = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if texts is None:
            return
        try:
            X = np.ascontiguousarray(encoder.encode(texts), dtype=np.float32)
        except Exception as exc:  # noqa: BLE001 - reported, and the child serves on
            conn.send(("error", type(exc).__name__, str(exc)))
            continue
        conn.send(("ok", int(encoder.tokens_seen), len(X)))
        conn.send_bytes(X.data.cast("B"))


class _Child:
    """One child process and the parent's end of its pipe."""

    def __init__(self, ctx: Any, factory: Callable[..., Encoder], args: tuple[Any, ...],
                 threads: int | None, index: int) -> None:
        self.conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child_conn, factory, args, threads),
                                daemon=True, name=f"topicstream-encoder-{index}")
        self.proc.start()
        child_conn.close()  # the child holds its end; EOF here once it exits
        self.tokens = 0

    def receive(self, doing: str) -> Any:
        try:
            return self.conn.recv()
        except (EOFError, OSError) as exc:
            self.proc.join(timeout=5.0)
            raise EncoderProcessError(f"the encoder process exited while {doing} (exit code "
                                      f"{self.proc.exitcode})") from exc

    def send(self, texts: list[str] | None) -> None:
        try:
            self.conn.send(texts)
        except (BrokenPipeError, OSError) as exc:
            if texts is None:
                return
            raise EncoderProcessError(f"the encoder process is gone (exit code "
                                      f"{self.proc.exitcode})") from exc

    def close(self) -> None:
        if self.proc.pid is None:
            return
        self.send(None)
        self.proc.join(timeout=10.0)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(timeout=5.0)
        self.conn.close()


class ProcessEncoder:
    """An :class:`~encoders.Encoder` whose work is done by ``factory(*args)`` in
    ``processes`` child processes (see the module docstring). A call's texts are cut into
    one contiguous slice per child, encoded side by side, and put back in order.

    Parameters
    ----------
    factory
        A module-level function that builds the encoder in each child.
    args
        Its arguments (pickled to the children).
    processes
        Child processes. On a CPU, one per core with ``threads=1`` beats one process with a
        thread per core (see :func:`cpu_plan`); on a GPU, one.
    threads
        torch's intra-op threads in each child; None leaves torch's default.
    split
        True: a call is cut into one slice per child and waits for all of them (lowest
        latency for one caller). False: a call goes whole to the next idle child, so
        :attr:`concurrent_calls` callers (the worker's batches in flight) are served side by
        side, and a child slowed by other work holds up only its own batch.
    start_timeout_s
        Longest wait for the children to build their encoders (loading a model takes a while).

    Examples
    --------
    >>> from functools import partial
    >>> from encoders.hashing import HashingEncoder
    >>> enc = ProcessEncoder(partial(HashingEncoder, dim=64, idf=False), processes=2)  # doctest: +SKIP
    >>> enc.encode(["port strike ends", "mars rover finds ice"]).shape  # doctest: +SKIP
    (2, 64)
    >>> enc.close()  # doctest: +SKIP
    """

    def __init__(self, factory: Callable[..., Encoder], *args: Any, processes: int = 1,
                 threads: int | None = None, split: bool = True,
                 start_timeout_s: float = 600.0) -> None:
        if processes < 1:
            raise ValueError(f"processes={processes} should be >= 1")
        if threads is not None and threads < 1:
            raise ValueError(f"threads={threads} should be >= 1 (or None)")
        self._spawn = (mp.get_context("spawn"), factory, args, threads, start_timeout_s)
        self._children: list[_Child] = []
        self.split = split
        self._lock = threading.Lock()  # split: one call at a time, over every child
        self._idle: queue.SimpleQueue[_Child] = queue.SimpleQueue()  # not split: a child a call
        first = self._start(processes)
        _, self.name, self.dim, self.device, extra = first
        for key, value in extra.items():
            setattr(self, key, value)

    def _start(self, k: int) -> Any:
        """Start ``k`` more children and wait until each has built its encoder; returns the
        first one's ready message. On failure every child is closed."""
        ctx, factory, args, threads, timeout_s = self._spawn
        new: list[_Child] = []
        try:
            for _ in range(k):
                new.append(_Child(ctx, factory, args, threads, len(self._children) + len(new)))
            replies = []
            for child in new:
                if not child.conn.poll(timeout_s):
                    raise EncoderProcessError(f"the encoder process did not start within "
                                              f"{timeout_s:g} s")
                replies.append(child.receive("starting"))
            for reply in replies:
                if reply[0] == "error":
                    raise EncoderProcessError(reply[2], kind=reply[1])
        except BaseException:
            for child in new:
                child.close()
            self.close()
            raise
        self._children += new
        for child in new:
            self._idle.put(child)
        return replies[0]

    def add_processes(self, k: int) -> None:
        """Start ``k`` more children (e.g. once the first has said which device it is on)."""
        if k < 0:
            raise ValueError(f"k={k} should be >= 0")
        if k:
            self._start(k)

    @property
    def pids(self) -> list[int | None]:
        return [c.proc.pid for c in self._children]

    @property
    def tokens_seen(self) -> int:
        return sum(c.tokens for c in self._children)

    @property
    def concurrent_calls(self) -> int:
        """Encode calls answered side by side: one per child unless calls are split."""
        return 1 if self.split else len(self._children)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Encode ``texts``: split over every child (``split``), else whole on the next idle
        child; safe to call from several threads at once."""
        return self.encode_counted(texts)[0]

    def encode_counted(self, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        """:meth:`encode` and the tokens of this call alone: with calls side by side, a
        difference of :attr:`tokens_seen` taken around one call would count the others'."""
        if self.split:
            with self._lock:
                return self._encode_on(self._children, texts)
        child = self._idle.get()
        try:
            return self._encode_on([child], texts)
        finally:
            self._idle.put(child)

    def _encode_on(self, children: list[_Child], texts: Sequence[str]) -> tuple[np.ndarray, int]:
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        if n == 0:
            return out, 0
        cuts = np.linspace(0, n, min(n, len(children)) + 1).round().astype(int)
        spans = list(zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True))
        busy = children[:len(spans)]
        for child, (a, b) in zip(busy, spans, strict=True):
            child.send(list(texts[a:b]))
        failure: EncoderProcessError | None = None
        tokens = 0
        for child, (a, b) in zip(busy, spans, strict=True):  # read every reply: pipes in step
            reply = child.receive(f"encoding {b - a} texts")
            if reply[0] == "error":
                failure = failure or EncoderProcessError(
                    f"the encoder process failed: {reply[1]}: {reply[2]}", kind=reply[1])
                continue
            tokens += reply[1] - child.tokens  # a child serves one call at a time
            child.tokens = reply[1]
            try:
                child.conn.recv_bytes_into(out[a:b].data.cast("B"))
            except (EOFError, OSError) as exc:
                raise EncoderProcessError("the encoder process exited while sending "
                                          "vectors") from exc
        if failure is not None:
            raise failure
        return out, tokens

    def close(self) -> None:
        """Ask the children to exit, then end those that do not within a few seconds."""
        for child in self._children:
            child.close()


#: the most encoder processes ``cpu_plan`` starts by itself (each holds a copy of the model)
MAX_AUTO_PROCESSES = 8


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, bounded by a cgroup CPU quota (a
    container limited to 2 CPUs on a 64-core node still sees 64 in ``os.cpu_count()``);
    a fractional quota rounds down, to at least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    quota = None
    try:  # cgroup v2: "max 100000" or "200000 100000"
        limit, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if limit != "max":
            quota = int(limit) / int(period)
    except (OSError, ValueError):
        try:  # cgroup v1
            limit = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text().strip()
            period = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text().strip()
            if int(limit) > 0:
                quota = int(limit) / int(period)
        except (OSError, ValueError):
            pass
    if quota is not None:
        n = min(n, int(quota))
    return max(1, n)


def cpu_plan(cores: int | None = None) -> tuple[int, int]:
    """``(processes, threads)`` for a torch encoder on a CPU: one single-threaded process per
    core (:func:`available_cpus` by default), at most :data:`MAX_AUTO_PROCESSES`, the cores
    shared out as threads beyond that. Measured on the 2-core development machine
    (2026-12-02), news titles in batches of 256: two processes of one thread 810-1,099
    documents/s, one process of two threads 692-831; beside a Python thread that never
    paused, two one-thread processes splitting each batch 732-829, one two-thread process
    280-310 (a thread's stall holds up the other at every barrier of a multi-threaded
    kernel, while two processes stall alone)."""
    n = max(1, cores if cores is not None else available_cpus())
    processes = min(n, MAX_AUTO_PROCESSES)
    return processes, max(1, n // processes)
