"""In-memory state store: the embedded default, with an optional snapshot file."""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np

from stream.clustering.base import ClusterState, Delta, apply_delta
from stream.contracts import TopicPartition
from stream.state import (
    NO_OFFSET,
    CommitRejected,
    CommitResult,
    OffsetMove,
    StoreNotEmpty,
    StoreSnapshot,
    offset_field,
)
from stream.topics import TopicCard, TopicDelta, TopicParams, TopicState, apply_topic_delta

log = logging.getLogger(__name__)

_ARRAYS = ("ids", "sums", "weights", "counts", "last_t", "created_t", "labels")


def _json_bytes(obj: object) -> np.ndarray:
    return np.frombuffer(json.dumps(obj, ensure_ascii=False).encode(), np.uint8)


def save_snapshot(path: Path, state: ClusterState, offsets: dict[str, int],
                  topics: TopicState | None = None) -> None:
    """Write ``state``, ``offsets`` and ``topics`` to an ``.npz`` file atomically (write,
    then rename); the topic state travels as JSON bytes."""
    meta = {"dim": state.dim, "n_docs": state.n_docs, "next_id": state.next_id,
            "version": state.version, "offsets": offsets, "format": 3}
    tmp = path.with_name(path.name + ".tmp")
    arrays: dict[str, np.ndarray] = {k: getattr(state, k) for k in _ARRAYS}
    arrays["meta"] = _json_bytes(meta)
    if topics is not None:
        arrays["topics"] = _json_bytes(topics.to_json())
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, path)


def load_snapshot(path: Path) -> tuple[ClusterState, dict[str, int], TopicState | None]:
    """Read a snapshot; never unpickles (``allow_pickle=False``)."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(z["meta"].tobytes().decode())
        arrays = {k: z[k] for k in _ARRAYS if k in z.files}  # format 1 had no labels
        topics = (TopicState.from_json(json.loads(z["topics"].tobytes().decode()))
                  if "topics" in z.files else None)  # formats 1 and 2 had no topics
    state = ClusterState(dim=int(meta["dim"]), n_docs=int(meta["n_docs"]),
                         next_id=int(meta["next_id"]), version=int(meta["version"]), **arrays)
    return state, {str(k): int(v) for k, v in meta["offsets"].items()}, topics


class MemoryStore:
    """State and offsets in this process; saved to ``snapshot_path`` on :meth:`save`/:meth:`close`.

    Same contract as the Redis store (compare-and-set commit), for one worker.
    """

    def __init__(self, half_life: float | None = None, snapshot_path: str | Path | None = None,
                 topic_params: TopicParams | None = None) -> None:
        self.half_life = half_life
        # one clock and one half-life for the clusterer state and the topic cards
        self.topic_params = replace(topic_params or TopicParams(), half_life=half_life)
        self._topics: TopicState | None = None
        self.snapshot_path = Path(snapshot_path) if snapshot_path else None
        self._lock = threading.Lock()
        self._state: ClusterState | None = None
        self._offsets: dict[str, int] = {}
        self._next_id = 0
        if self.snapshot_path and self.snapshot_path.exists():
            self._state, self._offsets, self._topics = load_snapshot(self.snapshot_path)
            log.info("loaded snapshot %s: %d clusters, %d documents", self.snapshot_path,
                     len(self._state), self._state.n_docs)

    def load_state(self) -> ClusterState | None:
        return self._state

    def load_topics(self) -> TopicState | None:
        return self._topics

    def model_version(self) -> int:
        """Commits applied to the model (0: none): a cheap test of whether it changed."""
        state = self._state
        return state.version if state is not None else 0

    def load_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._offsets[offset_field(tp)] for tp in tps if offset_field(tp) in self._offsets}

    def all_offsets(self) -> dict[str, int]:
        return dict(self._offsets)

    def commit(self, delta: Delta, moves: list[OffsetMove],
               topics: TopicDelta | None = None) -> CommitResult:
        with self._lock:
            for mv in moves:
                found = self._offsets.get(offset_field(mv.tp), NO_OFFSET)
                if found != mv.expected:
                    raise CommitRejected(str(mv.tp), mv.expected, found)
            base = self._state or ClusterState.empty(delta.sums.shape[1])
            self._state = apply_delta(base, delta, self.half_life)
            if topics is not None:
                self._topics = apply_topic_delta(self._topics or TopicState(), topics,
                                                 self._state.n_docs, self.topic_params)
            for mv in moves:
                self._offsets[offset_field(mv.tp)] = mv.new
            return CommitResult(self._state.version, self._state.n_docs)

    def export_state(self, cards: dict[str, tuple[bytes, TopicCard]] | None = None
                     ) -> StoreSnapshot:
        """The held objects themselves (nothing is parsed, so ``cards`` is not used)."""
        with self._lock:
            return StoreSnapshot(self._state, self._topics, dict(self._offsets))

    def import_state(self, state: ClusterState, topics: TopicState | None,
                     offsets: dict[str, int] | None, *, force: bool = False) -> None:
        """Replace the state, topics and offsets (None: keep the stored offsets), then write
        the snapshot file at once (see :meth:`StateStore.import_state`)."""
        with self._lock:
            if not force and (self._state is not None or self._topics is not None
                              or self._offsets):
                held = self._state
                where = f"state file {self.snapshot_path}" if self.snapshot_path else "store"
                raise StoreNotEmpty(
                    f"the {where} already holds a model"
                    + (f" ({len(held)} clusters, {held.n_docs} documents)" if held else ""))
            self._state = replace(state)
            self._topics = topics
            if offsets is not None:
                self._offsets = dict(offsets)
            self._next_id = state.next_id
        self.save()

    def allocate_ids(self, n: int) -> np.ndarray:
        with self._lock:
            state = self._state
            start = max(self._next_id, state.next_id if state else 0)
            self._next_id = start + n
            return np.arange(start, start + n, dtype=np.int64)

    def hold_lease(self, owner: str, ttl_ms: int) -> bool:
        """One process, one writer: the lease is always held."""
        return True

    def save(self) -> None:
        if self.snapshot_path and self._state is not None:
            save_snapshot(self.snapshot_path, self._state, self._offsets, self._topics)

    def close(self) -> None:
        self.save()
