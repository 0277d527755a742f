"""A browser session's live view of the event stream: a cursor on the bus, bounded state.

Each session keeps one :class:`LiveFeed` in ``st.session_state``. A fragment calls
:meth:`LiveFeed.sync`, which takes the events after the session's cursor from the bus (a list copy
under the bus lock; no I/O) and folds them into bounded state: the newest logs with their current
status, the latest statistics, outcomes per second over the last minutes.

It is coalesced the way a ``mode=live`` client of the gateway is (docs/CONTRACT.md): per sync it
takes the events of at most :data:`RECORDS_PER_SYNC` records, the newest, whole (a record's events
all or none), and the newest ``stats-updated``; the records it leaves out are counted
(:attr:`LiveFeed.skipped`). A burst of any size costs a sync the same: the newest part of the bus
is walked, the rest only counted. The counters and the rate come from ``stats-updated`` alone (the
backend's exact counts and their change over time), never from the sampled records.

When the cursor has fallen out of the bus's ring buffer the feed keeps what the bus still holds
and counts the records in between from the counts; only a replaced bus (attach mode) or the first
sync reloads from the store.

Nothing here calls Streamlit, so it is used from the script thread only and tested without a
browser.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any

from backend import events
from backend.bus import EventBus
from backend.events import Event

if TYPE_CHECKING:  # no import at run time: this module stays free of the sources' dependencies
    from dashboard.source import Source

TAIL_MAX = 200
WINDOW_S = 600
RATE_WINDOW_S = 10
#: Records a sync takes whole, the newest; the tail shows 50.
RECORDS_PER_SYNC = 100
#: How long the "N records skipped" note counts back.
SKIPPED_WINDOW_S = 60
IN_FLIGHT_LOOKBACK = 5_000  # events before the cursor searched for records still being processed
_OUTCOMES = (events.PROCESSING_COMPLETED, events.PROCESSING_FAILED)
_RECORD_STEPS = (events.PROCESSING_STARTED, *_OUTCOMES)


def _now_ms() -> int:
    return int(time.time() * 1000)


#: A tail row: these fields of the contract's log body (backend.wire.LogBody; the message-received
#: event carries the same names), plus ``time``, when it was received (epoch ms), and ``seq``, the
#: seq of its message-received (None when read from the store): the browser orders rows by it when
#: it merges a snapshot with what its own stream brought.
TAIL_FIELDS = (
    "logId",
    "topic",
    "partition",
    "offset",
    "key",
    "keyBase64",
    "dataType",
    "rowCount",
    "status",
    "consumerId",
    "error",
)


def tail_row(log: dict[str, Any], received_ms: int | None, seq: int | None = None) -> dict[str, Any]:
    """The tail's row for a record, from its log body (or its message-received event)."""
    return {**{name: log.get(name) for name in TAIL_FIELDS}, "time": received_ms, "seq": seq}


def outcomes(stats: dict[str, Any]) -> tuple[int, int]:
    """(processed, failed) of a statistics body."""
    return int(stats.get("processedMessages") or 0), int(stats.get("failedMessages") or 0)


def newest_records(window: list[Event], most: int) -> int:
    """Where the events of the newest ``most`` records received in ``window`` begin (an index).

    Walks back from the end and stops at the record before them: a burst costs what ``most``
    records cost, not what the window holds.
    """
    seen = 0
    for index in range(len(window) - 1, -1, -1):
        if window[index].name == events.MESSAGE_RECEIVED:
            if seen == most:
                return index + 1
            seen += 1
    return 0


def newest_stats(window: list[Event]) -> Event | None:
    """The newest ``stats-updated`` (the stats publisher sends one within 20 ms of any change)."""
    for index in range(len(window) - 1, -1, -1):
        if window[index].name == events.STATS_UPDATED:
            return window[index]
    return None


class LiveFeed:
    """One session's cursor on the event bus and what it has seen, all bounded."""

    def __init__(self) -> None:
        self.bus: EventBus | None = None
        self.cursor = 0
        self.rows: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.stats: dict[str, Any] = {}
        self.per_second: dict[int, list[int]] = {}  # epoch second -> [processed, failed]
        self.samples: deque[tuple[int, int, int]] = deque()  # (ms, processed, failed) per sync
        self.skips: deque[tuple[int, int]] = deque()  # (ms, records left out) per sync
        self.skipped = 0  # records left out since the feed started
        self.seeded_ms = 0
        self.resyncs = 0
        self.events_seen = 0
        self.outcomes_seen = 0
        self.consumer_changes = 0
        self.last_event_ms: int | None = None
        self.last_sync_ms: int | None = None

    # --- reading the bus ----------------------------------------------------------------------

    def sync(self, source: Source) -> int:
        """Fold the events since the cursor into the view, coalesced; returns how many were new."""
        now = self.last_sync_ms = _now_ms()
        bus = source.bus
        if bus is not self.bus:
            self.seed(source)
            return 0
        window, lost = self._window(bus)
        if window is None:
            self.resyncs += 1
            self.seed(source)
            return 0
        total_before = int(self.stats.get("totalMessages") or 0)
        start = newest_records(window, RECORDS_PER_SYNC)
        left_out = sum(1 for event in window[:start] if event.name == events.MESSAGE_RECEIVED)
        stats = newest_stats(window[start:]) or newest_stats(window[:start])
        for event in window[start:]:
            self.apply(event.name, event.data, event.seq)
        if stats is not None:
            self.stats = dict(stats.data)
        if lost:  # the records of the events the bus no longer held: from the exact counts
            taken = sum(1 for event in window if event.name == events.MESSAGE_RECEIVED)
            left_out += max(0, int(self.stats.get("totalMessages") or 0) - total_before - taken)
        self._count_skipped(left_out, now)
        self._sample(stats, now)
        if window:
            self.cursor = window[-1].seq
            self.events_seen += len(window) + lost
            self.last_event_ms = now
        self._trim()
        return len(window) + lost

    def _window(self, bus: EventBus) -> tuple[list[Event] | None, int]:
        """The events after the cursor, or when some are gone, those still held and how many are gone."""
        for _ in range(3):  # the ring may move between reading its oldest seq and copying it
            window = bus.since(self.cursor)
            if window is not None:
                return window, 0
            oldest = bus.oldest_seq
            window = bus.since(oldest - 1)
            if window is not None:
                return window, max(0, oldest - 1 - self.cursor)
        return None, 0

    def seed(self, source: Source) -> None:
        """Start over from the source's store: cursor first, so no event after the snapshot is missed."""
        self.bus = source.bus
        self.cursor = self.bus.last_seq
        self.seeded_ms = _now_ms()
        self.stats = source.statistics()
        self.rows.clear()
        self.per_second.clear()
        self.samples.clear()
        self.samples.append((self.seeded_ms, *outcomes(self.stats)))
        self.outcomes_seen = sum(outcomes(self.stats))
        for row in reversed(source.logs(limit=50)):
            self.rows[row.log_id] = tail_row(row.to_api(), row.received_ms)
        self._add_in_flight()
        since = self.seeded_ms - WINDOW_S * 1000
        for item in source.throughput(since, 1000):
            counts = self.per_second.setdefault(item["bucket"] // 1000, [0, 0])
            counts[0 if item["status"] == events.PROCESSED else 1] += item["count"]

    def _add_in_flight(self) -> None:
        """Rows for records received before the cursor whose outcome is not stored yet.

        The store holds a record once its outcome is; one still being processed exists only as
        events on the bus. Without this, its later outcome event would find no row to update and
        the record would never show in this session's tail.
        """
        backlog = self.bus.since(max(self.bus.oldest_seq - 1, self.cursor - IN_FLIGHT_LOOKBACK))
        received: dict[str, Event] = {}
        for event in backlog or ():
            if event.seq > self.cursor:
                break
            log_id = event.data.get("logId")
            if event.name == events.MESSAGE_RECEIVED and log_id not in self.rows:
                received[log_id] = event
            elif event.name in _OUTCOMES:
                received.pop(log_id, None)
        for event in list(received.values())[-RECORDS_PER_SYNC:]:
            self.apply(event.name, event.data, event.seq)

    def apply(self, name: str, data: dict[str, Any], seq: int | None = None) -> None:
        """Fold one event into the view (the seed document's frontend rules); counts are the stats'."""
        log_id = data.get("logId")
        if name == events.MESSAGE_RECEIVED and log_id:
            if log_id not in self.rows:
                received = {**data, "status": events.RECEIVED, "consumerId": None, "error": None}
                self.rows[log_id] = tail_row(received, events.ms_from_iso(data.get("timestamp")), seq)
        elif name in _RECORD_STEPS:
            row = self.rows.get(log_id or "")
            if row is not None and row["status"] not in (events.PROCESSED, events.FAILED):
                row["status"] = data.get("status", row["status"])
                row["consumerId"] = data.get("consumerId") or row["consumerId"]
                row["error"] = data.get("error")
        elif name == events.STATS_UPDATED:
            self.stats = dict(data)
        elif name == events.CONSUMER_STATUS_CHANGED:
            self.consumer_changes += 1

    def _count_skipped(self, left_out: int, now: int) -> None:
        if left_out:
            self.skipped += left_out
            self.skips.append((now, left_out))

    def _sample(self, stats: Event | None, now: int) -> None:
        """Outcomes per second from the change of the exact counts since the previous sync.

        The change is spread evenly over the seconds between the two samples: the chart's total is
        exact, and a sync every 5 s does not draw one bar five times too high.
        """
        processed, failed = outcomes(self.stats)
        self.outcomes_seen = processed + failed
        at = (events.ms_from_iso(stats.data.get("timestamp")) if stats is not None else None) or now
        last_ms, last_processed, last_failed = self.samples[-1]
        at = max(at, last_ms)
        self.samples.append((at, processed, failed))
        spread(self.per_second, last_ms, at, processed - last_processed, failed - last_failed)

    def _trim(self) -> None:
        while len(self.rows) > TAIL_MAX:
            self.rows.popitem(last=False)
        now = _now_ms()
        oldest = now // 1000 - WINDOW_S
        for second in [s for s in self.per_second if s < oldest]:
            del self.per_second[second]
        while len(self.samples) > 2 and self.samples[1][0] <= now - RATE_WINDOW_S * 1000:
            self.samples.popleft()  # keeps one sample at or before the rate window's start
        while self.skips and self.skips[0][0] < now - SKIPPED_WINDOW_S * 1000:
            self.skips.popleft()

    # --- views --------------------------------------------------------------------------------

    def tail(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest logs first."""
        return list(reversed(list(self.rows.values())[-limit:]))

    def rate(self) -> float:
        """Outcomes per second over the RATE_WINDOW_S before the newest sample, from the exact counts."""
        if len(self.samples) < 2:
            return 0.0
        end = self.samples[-1]
        start = max(end[0] - RATE_WINDOW_S * 1000, self.samples[0][0])
        if end[0] - start < 1000:
            return 0.0
        return (end[1] + end[2] - self._outcomes_at(start)) * 1000 / (end[0] - start)

    def _outcomes_at(self, at_ms: int) -> float:
        """processed + failed at an instant, interpolated between the samples around it."""
        previous = self.samples[0]
        for sample in self.samples:
            if sample[0] >= at_ms:
                if sample[0] == previous[0]:
                    return sample[1] + sample[2]
                share = (at_ms - previous[0]) / (sample[0] - previous[0])
                before, after = previous[1] + previous[2], sample[1] + sample[2]
                return before + (after - before) * share
            previous = sample
        return previous[1] + previous[2]

    def skipped_recently(self) -> int:
        """Records left out of this feed's tail over the last SKIPPED_WINDOW_S."""
        return sum(count for _, count in self.skips)

    def throughput(
        self, minutes: int = 5, bucket_s: int = 5, now_ms: int | None = None
    ) -> list[dict[str, Any]]:
        """Outcomes per bucket and status over the last minutes, zero-filled: chart rows."""
        now_s = (now_ms or _now_ms()) // 1000
        end = now_s - now_s % bucket_s
        start = end - minutes * 60
        rows = []
        for bucket in range(start, end + bucket_s, bucket_s):
            processed = sum(self.per_second.get(s, (0, 0))[0] for s in range(bucket, bucket + bucket_s))
            failed = sum(self.per_second.get(s, (0, 0))[1] for s in range(bucket, bucket + bucket_s))
            rows.append({"time": bucket * 1000, "status": events.PROCESSED, "count": processed})
            rows.append({"time": bucket * 1000, "status": events.FAILED, "count": failed})
        return rows

    def snapshot(self, stream: dict[str, Any] | None, tail: int = 50) -> dict[str, Any]:
        """What the live component gets from Python: enough to draw, with the cursor it reflects."""
        return {
            "seq": self.cursor,
            "stats": self.stats,
            "rate": round(self.rate(), 2),
            "rows": self.tail(tail),
            "skipped": self.skipped_recently(),
            "stream": stream,
            "tailSize": tail,
        }


def spread(per_second: dict[int, list[int]], from_ms: int, to_ms: int, processed: int, failed: int) -> None:
    """Add outcomes that happened between two instants to per-second counts, evenly, exactly."""
    if processed < 0 or failed < 0:
        return  # the counts started over (another backend): nothing to add
    first, last = from_ms // 1000, max(from_ms, to_ms - 1) // 1000
    seconds = last - first + 1
    for column, amount in ((0, processed), (1, failed)):
        for offset in range(seconds if amount else 0):
            share = amount * (offset + 1) // seconds - amount * offset // seconds
            if share:
                per_second.setdefault(first + offset, [0, 0])[column] += share
