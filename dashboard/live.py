"""A browser session's live view of the event stream: a cursor on the bus, bounded state.

Each session keeps one :class:`LiveFeed` in ``st.session_state``. A fragment
that runs every second calls :meth:`LiveFeed.sync`, which takes the events
after the session's cursor from the bus (a list copy under the bus lock; no
I/O) and folds them into bounded state: the newest logs with their current
status, the latest statistics, outcomes per second over the last minutes.
When the cursor has fallen out of the bus's ring buffer (or the bus itself
was replaced, in attach mode) the feed reloads from the store, the same
"resync" a reconnecting browser does.

Nothing here calls Streamlit, so it is used from the script thread only and
tested without a browser.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from backend import events
from backend.bus import EventBus

if TYPE_CHECKING:  # no import at run time: this module stays free of the sources' dependencies
    from dashboard.source import Source

TAIL_MAX = 200
WINDOW_S = 600
RATE_WINDOW_S = 10
MAX_EVENTS_PER_SYNC = 20_000
IN_FLIGHT_LOOKBACK = 5_000  # events before the cursor searched for records still being processed


def _now_ms() -> int:
    return int(time.time() * 1000)


#: A tail row: these fields of the contract's log body (backend.wire.LogBody; the message-received
#: event carries the same names), plus ``time``, when it was received (epoch ms).
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


def tail_row(log: dict[str, Any], received_ms: int | None) -> dict[str, Any]:
    """The tail's row for a record, from its log body (or its message-received event)."""
    return {**{name: log.get(name) for name in TAIL_FIELDS}, "time": received_ms}


class LiveFeed:
    """One session's cursor on the event bus and what it has seen, all bounded."""

    def __init__(self) -> None:
        self.bus: EventBus | None = None
        self.cursor = 0
        self.rows: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.stats: dict[str, Any] = {}
        self.per_second: dict[int, list[int]] = {}  # epoch second -> [processed, failed]
        self.seeded_ms = 0
        self.resyncs = 0
        self.events_seen = 0
        self.outcomes_seen = 0
        self.consumer_changes = 0
        self.last_event_ms: int | None = None
        self.last_sync_ms: int | None = None

    # --- reading the bus ----------------------------------------------------------------------

    def sync(self, source: Source) -> int:
        """Fold the events since the cursor into the view; returns how many were new."""
        self.last_sync_ms = _now_ms()
        bus = source.bus
        if bus is not self.bus:
            self.seed(source)
            return 0
        new = bus.since(self.cursor)
        if new is None or len(new) > MAX_EVENTS_PER_SYNC:
            self.resyncs += 1
            self.seed(source)
            return 0
        for event in new:
            self.apply(event.name, event.data)
        if new:
            self.cursor = new[-1].seq
            self.events_seen += len(new)
            self.last_event_ms = self.last_sync_ms
        self._trim()
        return len(new)

    def seed(self, source: Source) -> None:
        """Start over from the source's store: cursor first, so no event after the snapshot is missed."""
        self.bus = source.bus
        self.cursor = self.bus.last_seq
        self.seeded_ms = _now_ms()
        self.stats = source.statistics()
        self.rows.clear()
        self.per_second.clear()
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
        received: dict[str, dict[str, Any]] = {}
        for event in backlog or ():
            if event.seq > self.cursor:
                break
            log_id = event.data.get("logId")
            if event.name == events.MESSAGE_RECEIVED and log_id not in self.rows:
                received[log_id] = event.data
            elif event.name in (events.PROCESSING_COMPLETED, events.PROCESSING_FAILED):
                received.pop(log_id, None)
        for data in received.values():
            self.apply(events.MESSAGE_RECEIVED, data, count=False)

    def apply(self, name: str, data: dict[str, Any], count: bool = True) -> None:
        """Fold one event into the view (the seed document's frontend rules)."""
        log_id = data.get("logId")
        if name == events.MESSAGE_RECEIVED and log_id:
            row = self.rows.get(log_id)
            if row is None:
                received = {**data, "status": events.RECEIVED, "consumerId": None, "error": None}
                self.rows[log_id] = tail_row(received, events.ms_from_iso(data.get("timestamp")))
                if count:
                    self.stats["totalMessages"] = int(self.stats.get("totalMessages", 0)) + 1
        elif name in (events.PROCESSING_STARTED, events.PROCESSING_COMPLETED, events.PROCESSING_FAILED):
            row = self.rows.get(log_id or "")
            if row is not None and row["status"] not in (events.PROCESSED, events.FAILED):
                row["status"] = data.get("status", row["status"])
                row["consumerId"] = data.get("consumerId") or row["consumerId"]
                row["error"] = data.get("error")
            if name != events.PROCESSING_STARTED:
                self._count_outcome(name, data)
        elif name == events.STATS_UPDATED:
            self.stats = dict(data)
        elif name == events.CONSUMER_STATUS_CHANGED:
            self.consumer_changes += 1

    def _count_outcome(self, name: str, data: dict[str, Any]) -> None:
        self.outcomes_seen += 1
        at = events.ms_from_iso(data.get("timestamp")) or _now_ms()
        if at < self.seeded_ms:
            return  # already counted by the seed from the store
        counts = self.per_second.setdefault(at // 1000, [0, 0])
        counts[0 if name == events.PROCESSING_COMPLETED else 1] += 1

    def _trim(self) -> None:
        while len(self.rows) > TAIL_MAX:
            self.rows.popitem(last=False)
        oldest = _now_ms() // 1000 - WINDOW_S
        for second in [s for s in self.per_second if s < oldest]:
            del self.per_second[second]

    # --- views --------------------------------------------------------------------------------

    def tail(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest logs first."""
        return list(reversed(list(self.rows.values())[-limit:]))

    def rate(self, now_ms: int | None = None) -> float:
        """Outcomes per second over the last complete seconds."""
        now_s = (now_ms or _now_ms()) // 1000
        total = sum(sum(self.per_second.get(s, (0, 0))) for s in range(now_s - RATE_WINDOW_S, now_s))
        return total / RATE_WINDOW_S

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
            "stream": stream,
            "tailSize": tail,
        }
