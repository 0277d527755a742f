"""What a view published, kept in its store so that a client's ``lastSeq`` replays after any restart.

The bus holds the newest events in memory (20,000); a view killed with SIGKILL held none after its
restart, and a client further behind got ``resync-required`` although the view had stored every
record. So each applied events-topic record also writes one journal entry, in the same SQLite
transaction as its rows, position and ``seq`` (:meth:`backend.store.Store.save_outcomes`):

- a stored row is one logId: its three events are built again from the stored row, which never
  changes, exactly as they were published (:func:`row_events`);
- anything else (``stats-updated``, ``consumer-status-changed``) is kept whole: counts at a moment
  cannot be built again.

The entry is a JSON list (orjson): a string is a row, a ``[name, data]`` pair an event. It costs
~40 bytes per record, against the record's own row of several hundred. The journal keeps the
newest :data:`backend.store.JOURNAL_EVENTS` events; a client further behind (or one whose rows
RETENTION pruned) gets ``resync-required`` and reloads over REST, which is cheaper at that point.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import orjson

from backend import events
from backend.events import Event
from backend.store import JournalEntry, LogRow, Store

EventItems = list[tuple[str, dict[str, Any]]]
#: Events per stored row: received, started, outcome.
EVENTS_PER_ROW = 3


def row_events(row: LogRow) -> EventItems:
    """The three events of one stored row, built from what the row says."""
    received = row.received_ms
    consumer = row.consumer_id or ""
    data = events.message_received(
        row.log_id, row.topic, row.partition, row.offset, row.data_type, row.row_count, received,
        row.record_key, row.key_base64,
    )  # fmt: skip
    items: EventItems = [
        (events.MESSAGE_RECEIVED, data),
        (
            events.PROCESSING_STARTED,
            events.processing_started(row.log_id, consumer, row.started_ms or received),
        ),
    ]
    completed = row.completed_ms or received
    if row.status == events.PROCESSED:
        items.append(
            (events.PROCESSING_COMPLETED, events.processing_completed(row.log_id, consumer, completed))
        )
    else:
        failed = events.processing_failed(row.log_id, consumer, row.error or "", completed)
        items.append((events.PROCESSING_FAILED, failed))
    return items


def entry(first_seq: int, log_ids: list[str], items: EventItems) -> JournalEntry | None:
    """The entry for events published from ``first_seq``: the rows' (three each), then ``items``."""
    count = len(log_ids) * EVENTS_PER_ROW + len(items)
    if not count:
        return None
    parts: list[Any] = [*log_ids, *([name, data] for name, data in items)]
    return JournalEntry(first_seq, first_seq + count - 1, orjson.dumps(parts))


class ReplayJournal:
    """Reads the events a view published back from its store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def since(self, after_seq: int, until_seq: int) -> list[Event] | None:
        """The events after ``after_seq`` up to ``until_seq``, in order; None if some are not held."""
        if until_seq <= after_seq:
            return []
        entries = self.store.journal(after_seq, until_seq)
        if not entries or entries[0].first_seq > after_seq + 1 or entries[-1].last_seq < until_seq:
            return None
        if any(later.first_seq != earlier.last_seq + 1 for earlier, later in pairwise(entries)):
            return None
        decoded = [(e.first_seq, orjson.loads(e.entry)) for e in entries]
        wanted = [part for _, parts in decoded for part in parts if isinstance(part, str)]
        rows = self.store.rows_by_id(wanted)
        if len(rows) < len(set(wanted)):
            return None  # pruned by RETENTION
        held: list[Event] = []
        for first_seq, parts in decoded:
            seq = first_seq
            for part in parts:
                items = row_events(rows[part]) if isinstance(part, str) else [(part[0], part[1])]
                for name, data in items:
                    if after_seq < seq <= until_seq:
                        held.append(Event(seq, name, data))
                    seq += 1
        return held
