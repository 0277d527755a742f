"""A view: reads the whole events topic, stores it, and publishes its events on the bus.

This is the only publisher on a view's bus. Each events-topic record is applied in topic order,
and everything it changes goes into one SQLite transaction with the view's position (the next
offset to read) and its last ``seq``:

- ``rows``: the rows new to the store are stored, and for each of them ``message-received``,
  ``processing-started`` and its outcome are published, then one ``stats-updated``. A row stored
  before (a worker killed after writing and before committing wrote it twice) is neither stored
  nor announced again.
- ``consumer`` / ``worker``: the consumer directory changes; a status change is announced
  (``consumer-status-changed``, then ``stats-updated`` with the new ``activeConsumers``).

So after a restart a view goes on exactly where it stopped, and two views that read the same topic
give every event the same ``seq``: it is the event's place in the topic's one order.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from backend import event_log, events, replay_journal
from backend.bus import EventBus
from backend.cluster import ConsumerDirectory
from backend.config import Settings
from backend.event_log import ConsumerReport, RowsEntry, WorkerReport
from backend.log_end import local_position
from backend.replay_journal import EventItems, row_events
from backend.stats import statistics
from backend.store import (
    REFUSED,
    Counts,
    JournalEntry,
    LogRow,
    Saved,
    Store,
    StoreUnavailable,
    WrittenAlong,
    tally,
)
from backend.view_pace import PositionSharer, view_group

log = logging.getLogger(__name__)

POSITION_KEY = "events.position"  # the next offset of the events topic to apply
SEQ_KEY = "events.seq"  # the seq of the last event published
DIRECTORY_KEY = "events.directory"
POLL_TIMEOUT_MS = 100
RETRY_MAX_S = 5.0


#: The most rows one SQLite transaction stores when the reader hands over several records at once
#: (a view catching up). Every record still gets its own events, stats-updated and journal entry,
#: exactly as if applied alone, so every view gives the same seqs however its polls were cut; one
#: commit for many records is what changes. The log_id index takes random inserts: a commit writes
#: about one page per row at 500 rows, far fewer per row at 5,000 (bench/README.md, "View apply").
GROUP_MAX_ROWS = 5_000

#: One events-topic record as the reader hands it over: (offset, headers, value).
TopicRecord = tuple[int, Any, bytes | None]


class _RowsGroup:
    """Consecutive ``rows`` records applied in one SQLite transaction."""

    def __init__(self) -> None:
        self.offsets: list[int] = []
        self.row_lists: list[list[LogRow]] = []
        self.size = 0

    def add(self, offset: int, rows: list[LogRow]) -> None:
        self.offsets.append(offset)
        self.row_lists.append(rows)
        self.size += len(rows)

    def unique_rows(self) -> tuple[list[LogRow], list[list[int | None]]]:
        """The group's rows with a logId's later copies left out (a batch written twice), and for
        each record where each of its rows went in that list (None: a copy)."""
        rows: list[LogRow] = []
        seen: set[str] = set()
        places: list[list[int | None]] = []
        for row_list in self.row_lists:
            record_places: list[int | None] = []
            for row in row_list:
                if row.log_id in seen:
                    record_places.append(None)
                else:
                    seen.add(row.log_id)
                    record_places.append(len(rows))
                    rows.append(row)
            places.append(record_places)
        return rows, places


class EventsApplier:
    """Applies events-topic records in order (one thread calls it)."""

    def __init__(self, store: Store, bus: EventBus, directory: ConsumerDirectory) -> None:
        self.store = store
        self.bus = bus
        self.directory = directory
        self.position = int(store.get_meta(POSITION_KEY) or 0)
        directory.load(store.get_meta(DIRECTORY_KEY))
        self._unreadable = 0

    @staticmethod
    def start_seq(store: Store) -> int:
        """Where this view's seq goes on: its last, or (a store of an older version) its reserve."""
        return int(store.get_meta(SEQ_KEY) or store.get_meta("seq_reserved") or 0)

    def apply(self, offset: int, headers: Any, value: bytes | None) -> None:
        """Apply one record; raises StoreUnavailable (nothing applied: call again later)."""
        self.apply_many([(offset, headers, value)])

    def apply_many(self, records: list[TopicRecord]) -> None:
        """Apply records in order, consecutive ``rows`` records GROUP_MAX_ROWS rows per transaction.

        Raises StoreUnavailable: what was applied before is kept, :attr:`position` says where to
        go on from (the first record not applied).
        """
        group = _RowsGroup()
        for offset, headers, value in records:
            try:
                entry = event_log.decode_entry(headers, value)
            except event_log.EventLogError as exc:
                group = self._apply_group(group)
                self._skip(offset, exc)
                continue
            if isinstance(entry, RowsEntry):
                if group.size and group.size + len(entry.rows) > GROUP_MAX_ROWS:
                    group = self._apply_group(group)
                group.add(offset, entry.rows)
                continue
            group = self._apply_group(group)
            if isinstance(entry, ConsumerReport):
                changed = self.directory.apply_consumer(entry)
                self._announce_statuses(offset, [(entry.consumer_id, changed)] if changed else [])
            elif isinstance(entry, WorkerReport):
                self._announce_statuses(offset, self.directory.apply_worker(entry))
        self._apply_group(group)

    def _skip(self, offset: int, exc: Exception) -> None:
        self._unreadable += 1
        if self._unreadable <= 10 or self._unreadable % 1000 == 0:
            log.warning("events topic offset %d skipped (%d so far): %s", offset, self._unreadable, exc)
        self.store.set_meta_many({POSITION_KEY: str(offset + 1)})
        self.position = offset + 1

    def _apply_group(self, group: _RowsGroup) -> _RowsGroup:
        """Store the group's rows in one transaction; per record, publish what applying it alone
        would have: the events of its new rows, then stats-updated as the counts were after it.
        Returns the next (empty) group."""
        if not group.offsets:
            return group
        rows, places = group.unique_rows()
        first_seq = self.bus.last_seq + 1
        items: EventItems = []

        def along(saved: list[Saved]) -> WrittenAlong:
            """Within the save: the events it publishes, their journal entries, the new position."""
            journal: list[JournalEntry] = []
            processed = failed = 0  # what the group's records so far add to the counts
            for record_rows, record_places in zip(group.row_lists, places, strict=True):
                record_first = first_seq + len(items)
                carried = [(row, saved[place]) for row, place in zip(record_rows, record_places, strict=True)
                           if place is not None]  # fmt: skip
                new_ids = self._record_events(carried, items)
                if not new_ids:
                    continue
                added = tally(*zip(*carried, strict=True))
                processed, failed = processed + added[0], failed + added[1]
                stats = [(events.STATS_UPDATED, self._stats(self.store.counts_after(processed, failed)))]
                items.extend(stats)
                if entry := replay_journal.entry(record_first, new_ids, stats):
                    journal.append(entry)
            return WrittenAlong(
                {POSITION_KEY: str(group.offsets[-1] + 1), SEQ_KEY: str(first_seq - 1 + len(items))},
                journal,
            )

        self.store.save_outcomes(rows, along)
        self.position = group.offsets[-1] + 1
        if items:
            self.bus.publish_many(items)
        return _RowsGroup()

    def _announce_statuses(self, offset: int, changes: list[tuple[str, str]]) -> None:
        items: EventItems = [
            (events.CONSUMER_STATUS_CHANGED, events.consumer_status_changed(consumer_id, status))
            for consumer_id, status in changes
        ]
        if items:
            items.append((events.STATS_UPDATED, self.stats()))
        first_seq = self.bus.last_seq + 1
        entry = replay_journal.entry(first_seq, [], items)
        self.store.set_meta_many(
            {
                POSITION_KEY: str(offset + 1),
                SEQ_KEY: str(first_seq - 1 + len(items)),
                DIRECTORY_KEY: self.directory.dump(),
            },
            [entry] if entry is not None else [],
        )
        self.position = offset + 1
        if items:
            self.bus.publish_many(items)

    @staticmethod
    def _record_events(carried: list[tuple[LogRow, Saved]], items: EventItems) -> list[str]:
        """Add the events of a record's new rows to ``items``; the logIds of those rows."""
        new_ids: list[str] = []
        for row, result in carried:
            if result.new:
                if result.reason is not None:  # the store kept a FAILED row in its place
                    row = _as_failed(row, result.reason)
                items.extend(row_events(row))
                new_ids.append(row.log_id)
            elif result.kind == REFUSED:
                log.error("record %s could not be stored at all: %s", row.log_id, result.reason)
        return new_ids

    def _stats(self, counts: Counts) -> dict[str, Any]:
        return statistics(counts, self.directory.active_count())

    def stats(self) -> dict[str, Any]:
        return self._stats(self.store.counts())


def _as_failed(row: LogRow, error: str) -> LogRow:
    from backend.pipeline import failed_row

    return failed_row(row, error)


class EventsReader(threading.Thread):
    """Reads the events topic from the view's position and hands every record to the applier.

    ``caught_up`` is set once the view has applied everything the topic held when it started (a
    view's health waits for it). A record that cannot be stored (disk full) is applied again after
    a wait that grows to 5 s; nothing after it is applied before it.
    """

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        applier: EventsApplier,
        instance: str | None = None,
        watched: Callable[[], bool] = lambda: False,
    ) -> None:
        """``instance``: the view's instance id; its position, and whether anybody ``watched`` it,
        are then shared through Kafka for the workers that keep pace with it (backend.view_pace)."""
        super().__init__(name="events-reader", daemon=True)
        self.settings = settings
        self.bootstrap = bootstrap
        self.applier = applier
        self.watched = watched
        self.group = view_group(settings.events_topic, instance) if instance else None
        self._sharer = PositionSharer(TopicPartition(settings.events_topic, 0))
        self.caught_up = threading.Event()
        self.problem: str | None = None
        self._target: int | None = None
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def behind(self) -> int | None:
        """Records of the topic's start-up end not applied yet (None: not known yet)."""
        if self._target is None:
            return None
        return max(self._target - self.applier.position, 0)

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                consumer = self._open()
            except Exception as exc:
                self._note(f"cannot read {self.settings.events_topic}: {exc}")
                self._stopping.wait(1.0)
                continue
            try:
                self._loop(consumer)
            except Exception:  # never die: a view that stops reading would serve stale data for good
                log.exception("reading %s failed; reading again", self.settings.events_topic)
                self._stopping.wait(1.0)
            finally:
                consumer.close(autocommit=False)

    def _open(self) -> KafkaConsumer:
        from backend.event_log import MAX_EVENT_RECORD_BYTES

        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group,  # assigned, never subscribed: the group only holds our position
            enable_auto_commit=False,
            isolation_level=self.settings.isolation_level,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
            max_partition_fetch_bytes=MAX_EVENT_RECORD_BYTES,
            fetch_max_bytes=MAX_EVENT_RECORD_BYTES,
            reconnect_backoff_max_ms=2_000,
            request_timeout_ms=15_000,
            **self.settings.kafka_client_options(),
        )
        tp = TopicPartition(self.settings.events_topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, self.applier.position)
        if self._target is None:
            self._target = consumer.end_offsets([tp])[tp]
            if self._target <= self.applier.position:
                self.caught_up.set()
        return consumer

    def _loop(self, consumer: KafkaConsumer) -> None:
        tp = TopicPartition(self.settings.events_topic, 0)
        retry_s = 0.0
        while not self._stopping.is_set():
            try:
                batch = consumer.poll(timeout_ms=POLL_TIMEOUT_MS, max_records=1000)
            except Exception as exc:
                self._note(f"reading {self.settings.events_topic} failed: {exc}")
                self._stopping.wait(0.5)
                continue
            records = batch.get(tp, ())
            try:
                self.applier.apply_many([(r.offset, r.headers, r.value) for r in records])
            except StoreUnavailable as exc:
                retry_s = min(max(retry_s * 2, 0.5), RETRY_MAX_S)
                self._note(f"events not stored, will retry: {exc}")
                consumer.seek(tp, self.applier.position)
                self._stopping.wait(retry_s)
                continue
            if records:
                retry_s = 0.0
            if self.group is not None:
                self._sharer.share(consumer, local_position(consumer, tp), self.watched())
            self.problem = None
            if not self.caught_up.is_set():
                self._check_caught_up(consumer, tp)

    def _check_caught_up(self, consumer: KafkaConsumer, tp: TopicPartition) -> None:
        """Position, not the last record applied: the position steps over transaction markers."""
        try:
            position = consumer.position(tp, timeout_ms=1_000)
        except Exception as exc:  # the broker is away: the next poll tries again
            log.debug("events position unknown: %s", exc)
            return
        if self._target is not None and position is not None and position >= self._target:
            self.caught_up.set()

    def _note(self, problem: str) -> None:
        if problem != self.problem:
            log.warning("%s", problem)
        self.problem = problem
