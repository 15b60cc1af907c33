"""The maintenance lease: of the workers sharing one model, only the holder merges, fades,
prunes and runs DenStream's offline step.

The lease is one key in the store, set with the holder's owner id and a time to live: a
worker takes it when it is free (or expired) and renews it while it holds it. A holder that
dies, hangs or is partitioned away loses it after ``ttl_s`` and another worker takes over
at its next check. The owner id is made of the host name, the process id and a random
part: never Python's ``hash()``, which differs from process to process.

Pitfall: a holder that is paused for longer than ``ttl_s`` (SIGSTOP, a long GC, a VM
migration) still believes it holds the lease for up to ``ttl_s / 3`` after it wakes, the
time between two checks. Two workers may then both run maintenance once. That is safe: a
merge naming a row that is already gone does nothing in the commit script, and a zombie's
batch is refused anyway when its partitions have moved (the offset fencing).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Protocol

from stream.state import StoreUnavailable

log = logging.getLogger(__name__)


class LeaseStore(Protocol):
    def hold_lease(self, owner: str, ttl_ms: int) -> bool:
        """Take the lease when it is free or already ``owner``'s, for ``ttl_ms``; True if
        ``owner`` holds it now."""
        ...


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Lease:
    """A maintenance gate (see :meth:`~stream.clustering.base.Clusterer.set_maintenance_gate`)
    backed by ``store.hold_lease``: asks the store at most once per ``ttl_s / 3`` and
    answers from the last reply in between, so it costs no round trip per batch. A store
    that cannot be reached means not held."""

    def __init__(self, store: LeaseStore, ttl_s: float = 30.0, owner: str | None = None,
                 on_change: Callable[[bool], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not ttl_s > 0:
            raise ValueError(f"ttl_s={ttl_s} should be > 0")
        self.store, self.ttl_s = store, float(ttl_s)
        self.owner = owner or owner_id()
        self.on_change, self.clock = on_change, clock
        self.held = False
        self.checked: float | None = None

    def __call__(self) -> bool:
        now = self.clock()
        if self.checked is not None and now - self.checked < self.ttl_s / 3:
            return self.held
        try:
            held = bool(self.store.hold_lease(self.owner, int(self.ttl_s * 1000)))
        except StoreUnavailable as exc:
            log.warning("maintenance lease: store unavailable (%s): not held", exc)
            held = False
        self.checked = now
        if held != self.held:
            log.info("maintenance lease %s by %s", "taken" if held else "lost", self.owner)
            if self.on_change is not None:
                self.on_change(held)
        self.held = held
        return held

    def release(self) -> None:
        """Hand the lease back (on a clean stop), so another worker need not wait ``ttl_s``."""
        release = getattr(self.store, "release_lease", None)
        if self.held and release is not None:
            with contextlib.suppress(StoreUnavailable):
                release(self.owner)
        self.held = False
