"""Whether every partition with records waiting is being consumed: a part of ``/api/health``.

A consumer can look alive (its thread runs, it polls) while one of its partitions does not move:
a record it keeps failing to store, a stuck fetch. The contract says health is not ok while a
partition does not advance; this watches each held partition's position against its lag.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from backend.consumers import ConsumerSnapshot

#: A partition with records waiting whose position has not moved for this long is "not advancing".
#: Long enough for a rebalance or a burst of big CSVs, short enough that an operator sees it soon.
STALL_AFTER_S = 30.0


class PartitionProgress:
    """Remembers when each held partition's position last moved (or had nothing waiting)."""

    def __init__(self, stall_after_s: float = STALL_AFTER_S, clock: Callable[[], float] = time.monotonic):
        self.stall_after_s = stall_after_s
        self._clock = clock
        self._last: dict[str, tuple[int | None, float]] = {}  # partition -> (position, since)
        self._lock = threading.Lock()

    def stalled(self, snapshots: Iterable[ConsumerSnapshot]) -> str | None:
        """Why health is not ok ("orders-2 has not advanced for 31 s with 120 records waiting"), or None."""
        now = self._clock()
        worst: tuple[float, str] | None = None
        with self._lock:
            held: dict[str, tuple[int | None, float]] = {}
            for snapshot in snapshots:
                for name, state in snapshot.partitions.items():
                    position, since = self._last.get(name, (state.position, now))
                    if state.position != position or not state.lag:
                        since = now  # moved, or nothing is waiting: not stalled
                    held[name] = (state.position, since)
                    waited = now - since
                    if waited >= self.stall_after_s and (worst is None or waited > worst[0]):
                        worst = (
                            waited,
                            f"{name} has not advanced for {waited:.0f} s with {state.lag} records waiting",
                        )
            self._last = held  # partitions no longer held are forgotten
        return worst[1] if worst else None
