"""The in-process event bus: sequence numbers, a bounded replay buffer, fan-out.

Consumer threads publish; the gateway (asyncio) and Streamlit sessions read.
Publishing never waits for a reader: subscriber callbacks must only hand the
event over (``loop.call_soon_threadsafe``, ``queue.put_nowait``), and readers
that prefer pulling keep a cursor and call :meth:`EventBus.since`.

Sequence numbers increase by one for every event. They continue across
restarts: the bus reserves numbers in blocks through ``reserve`` (persisted by
the store) so a restarted process never reuses a number a client has seen.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from backend.events import Event

log = logging.getLogger(__name__)

Subscriber = Callable[[Event], None]
#: Gets each publish whole (one call per ``publish_many``): a reader that takes what arrived so far
#: from another thread then never sees half of one (a record's events without the stats after them).
BatchSubscriber = Callable[[list[Event]], None]
SEQ_BLOCK = 100_000


class EventBus:
    """Thread-safe publish with a ring buffer of the most recent events."""

    def __init__(
        self,
        capacity: int = 20_000,
        start_seq: int = 0,
        reserve: Callable[[int], None] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._ring: deque[Event] = deque(maxlen=capacity)
        self._seq = start_seq
        self._reserve = reserve
        self._reserved_until = start_seq
        self._subscribers: list[tuple[Callable[..., None], bool]] = []  # (callback, whole batches)
        #: When a reader last pulled events (:meth:`since`; time.monotonic()): a dashboard session
        #: or a replaying client is watching. Workers keep pace with a watched view only
        #: (backend/view_pace.py).
        self.pulled_at = float("-inf")

    @property
    def last_seq(self) -> int:
        """The sequence number of the newest event (start_seq when none yet)."""
        return self._seq

    @property
    def oldest_seq(self) -> int:
        """The sequence number of the oldest event still held (last_seq + 1 when empty)."""
        with self._lock:
            return self._ring[0].seq if self._ring else self._seq + 1

    def publish(self, name: str, data: dict[str, Any]) -> Event:
        """Give the event the next sequence number, keep it, and hand it to every subscriber."""
        return self.publish_many(((name, data),))[0]

    def publish_many(self, items: Iterable[tuple[str, dict[str, Any]]]) -> list[Event]:
        """Publish several events in order under one lock (a consumer's batch)."""
        with self._lock:
            published = []
            for name, data in items:
                if self._seq >= self._reserved_until:
                    self._reserve_block()
                self._seq += 1
                published.append(Event(self._seq, name, data))
            self._ring.extend(published)
            for subscriber, batches in tuple(self._subscribers):
                try:
                    if batches:
                        subscriber(published)
                    else:
                        for event in published:
                            subscriber(event)
                except Exception:  # a broken reader must not break the publisher
                    log.exception("event subscriber failed; removing it")
                    self._subscribers.remove((subscriber, batches))
        return published

    def _reserve_block(self) -> None:
        self._reserved_until = self._seq + SEQ_BLOCK
        if self._reserve is not None:
            self._reserve(self._reserved_until)

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Register a non-blocking callback; returns the function that unsubscribes it."""
        entry = (subscriber, False)
        with self._lock:
            self._subscribers.append(entry)
        return self._remover(entry)

    def subscribe_from(
        self, last_seq: int, subscriber: Subscriber | BatchSubscriber, *, batches: bool = False
    ) -> tuple[list[Event] | None, Callable[[], None]]:
        """Atomically take the backlog after ``last_seq`` and subscribe to what follows.

        Returns (backlog, unsubscribe); backlog is None when events after
        ``last_seq`` are no longer held, and the reader must resync.
        No event is lost or doubled between the backlog and the live stream.
        ``batches``: ``subscriber`` gets each publish's list of events whole (a BatchSubscriber).
        """
        entry = (subscriber, batches)
        with self._lock:
            backlog = self._since_locked(last_seq)
            self._subscribers.append(entry)
        return backlog, self._remover(entry)

    def _remover(self, entry: tuple[Callable[..., None], bool]) -> Callable[[], None]:
        def unsubscribe() -> None:
            with self._lock:
                if entry in self._subscribers:
                    self._subscribers.remove(entry)

        return unsubscribe

    def since(self, last_seq: int, limit: int | None = None) -> list[Event] | None:
        """Events after ``last_seq`` in order, or None when some of them are gone."""
        self.pulled_at = time.monotonic()
        with self._lock:
            events = self._since_locked(last_seq)
        if events is not None and limit is not None:
            return events[-limit:]
        return events

    def held(self) -> list[Event]:
        """Every event still held, oldest first (a start-up's look back, not a reader's pull)."""
        with self._lock:
            return list(self._ring)

    def _since_locked(self, last_seq: int) -> list[Event] | None:
        if last_seq >= self._seq:
            return [] if last_seq == self._seq else None
        oldest = self._ring[0].seq if self._ring else self._seq + 1
        if last_seq + 1 < oldest:
            return None
        start = last_seq + 1 - oldest
        return [self._ring[i] for i in range(start, len(self._ring))]
