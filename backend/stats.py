"""``stats-updated``: the exact counts and the number of active consumers, published when they change.

The contract: ``stats-updated`` follows every processed/failed message; under load several may be
merged into one, but the latest counts reach clients within 100 ms. A consumer thread only marks
the stats dirty (:meth:`StatsPublisher.counts_changed`, :meth:`StatsPublisher.consumers_changed`);
this thread publishes at most once per ``STATS_MIN_INTERVAL_S`` with the counts read at that moment,
so a burst of batches costs one event, not one per batch, and the consumer never builds it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from backend import events, wire
from backend.store import Counts

log = logging.getLogger(__name__)

STATS_MIN_INTERVAL_S = 0.02


def statistics(counts: Counts | None, active_consumers: int) -> dict[str, Any]:
    """The stats-updated payload (also ``GET /api/consumers/statistics``); no counts yet: zeros."""
    if counts is None:
        return wire.statistics_body(0, 0, 0, active_consumers)
    return wire.statistics_body(counts.total, counts.processed, counts.failed, active_consumers)


class StatsPublisher(threading.Thread):
    """Publishes stats-updated after a change, merging bursts, never later than ~20 ms after it.

    Its inputs are narrow on purpose: where the counts come from (the store's exact counters),
    how many consumers are active, and the function that publishes an event (the bus's).
    """

    def __init__(
        self,
        counts: Callable[[], Counts | None],
        active_consumers: Callable[[], int],
        publish: Callable[[str, dict[str, Any]], object],
    ) -> None:
        super().__init__(name="stats-publisher", daemon=True)
        self.counts = counts
        self.active_consumers = active_consumers
        self.publish = publish
        self._dirty = threading.Event()
        self._stopping = threading.Event()

    def counts_changed(self) -> None:
        """Outcomes were stored: the counts moved."""
        self._dirty.set()

    def consumers_changed(self) -> None:
        """A consumer started or stopped: ``activeConsumers`` moved."""
        self._dirty.set()

    def current(self) -> dict[str, Any]:
        """The payload as of now."""
        return statistics(self.counts(), self.active_consumers())

    def stop(self) -> None:
        self._stopping.set()
        self._dirty.set()

    def run(self) -> None:
        while not self._stopping.is_set():
            self._dirty.wait()
            if self._stopping.is_set():
                return
            self._dirty.clear()
            self.publish(events.STATS_UPDATED, self.current())
            log.debug("Broadcasted stats update")
            self._stopping.wait(STATS_MIN_INTERVAL_S)
