"""State stores: where the clusterer state and the consumed offsets live.

A store keeps, for one model, the :class:`~stream.clustering.base.ClusterState` and the next
offset to consume for each input partition. :meth:`StateStore.commit` applies one batch's
delta and moves that batch's partitions forward *atomically*, and only if every partition
still stands where the batch began (compare-and-set): a worker whose partitions were taken
over meanwhile (a zombie back from a long pause) gets :class:`CommitRejected` and must drop
its batch, reload the state and seek back to the stored offsets.

Offsets are "next offset to read" (last consumed + 1), the Kafka convention: resuming at a
stored offset re-reads nothing and skips nothing. ``-1`` stands for "nothing stored yet".

:meth:`StateStore.export_state` reads all of a model at one instant and
:meth:`StateStore.import_state` writes all of it at once; :mod:`stream.state.export` turns
them into files (``topicstream state export`` / ``import``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from stream.clustering.base import ClusterState, Delta
from stream.contracts import TopicPartition
from stream.topics import TopicCard, TopicDelta, TopicState

NO_OFFSET = -1


class CommitRejected(Exception):
    """The compare-and-set on the offsets failed: another worker moved this partition."""

    def __init__(self, partition: str, expected: int, found: int) -> None:
        super().__init__(f"{partition}: expected stored offset {expected}, found {found}")
        self.partition, self.expected, self.found = partition, expected, found


class StoreUnavailable(Exception):
    """The store could not be reached; the batch was not applied."""


class StoreNotEmpty(Exception):
    """:meth:`StateStore.import_state` refused to replace a model that already has state."""


@dataclass(frozen=True, slots=True)
class OffsetMove:
    """Move ``tp`` from ``expected`` (as stored when the batch began) to ``new``."""

    tp: TopicPartition
    expected: int
    new: int


@dataclass(frozen=True, slots=True)
class CommitResult:
    version: int  # commits applied to the store, this one included
    n_docs: int  # the store's document counter after this commit


@dataclass(frozen=True, slots=True)
class StoreSnapshot:
    """Everything a store holds for one model, read at one instant (see
    :meth:`StateStore.export_state`)."""

    state: ClusterState | None
    topics: TopicState | None
    offsets: dict[str, int]  # offset_field -> next offset


def offset_field(tp: TopicPartition) -> str:
    return f"{tp.topic}:{tp.partition}"


class StateStore(Protocol):
    half_life: float | None

    def load_state(self) -> ClusterState | None:
        """The stored state, or None when this model has none yet."""
        ...

    def load_topics(self) -> TopicState | None:
        """The stored topic state (keywords, exemplars, emerging counters), or None."""
        ...

    def load_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Stored next offsets; partitions with none are absent."""
        ...

    def commit(self, delta: Delta, moves: list[OffsetMove],
               topics: TopicDelta | None = None) -> CommitResult:
        """Apply ``delta``, ``topics`` and ``moves`` atomically, or raise
        :class:`CommitRejected`."""
        ...

    def allocate_ids(self, n: int) -> np.ndarray:
        """``n`` new cluster ids, unique across every worker of the model."""
        ...

    def hold_lease(self, owner: str, ttl_ms: int) -> bool:
        """Take the maintenance lease when free or ``owner``'s (see :mod:`stream.state.lease`)."""
        ...

    def all_offsets(self) -> dict[str, int]:
        """Every stored next offset, by :func:`offset_field`."""
        ...

    def export_state(self, cards: dict[str, tuple[bytes, TopicCard]] | None = None
                     ) -> StoreSnapshot:
        """The state, topic state and offsets of the model, consistent with each other (no
        commit falls between the reads). ``cards``: a cache of parsed topic cards kept by a
        reader that rereads the model often (a store that parses nothing may ignore it)."""
        ...

    def import_state(self, state: ClusterState, topics: TopicState | None,
                     offsets: dict[str, int] | None, *, force: bool = False) -> None:
        """Replace the model's state, topic state and (unless ``offsets`` is None, which
        leaves the stored ones as they are) offsets, all at once; the id counter moves to
        ``state.next_id``. Raises :class:`StoreNotEmpty` when the model already holds
        state, topics or offsets and ``force`` is False; nothing is changed then."""
        ...

    def close(self) -> None: ...


__all__ = ["NO_OFFSET", "CommitRejected", "CommitResult", "OffsetMove", "StateStore",
           "StoreNotEmpty", "StoreSnapshot", "StoreUnavailable", "offset_field"]
