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
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from backend import event_log, events, replay_journal
from backend.bus import EventBus
from backend.cluster import ConsumerDirectory
from backend.config import Settings
from backend.event_log import ConsumerReport, RowsEntry, WorkerReport
from backend.replay_journal import EventItems, row_events
from backend.stats import statistics
from backend.store import REFUSED, LogRow, Saved, Store, StoreUnavailable, WrittenAlong

log = logging.getLogger(__name__)

POSITION_KEY = "events.position"  # the next offset of the events topic to apply
SEQ_KEY = "events.seq"  # the seq of the last event published
DIRECTORY_KEY = "events.directory"
POLL_TIMEOUT_MS = 100
RETRY_MAX_S = 5.0


class EventsApplier:
    """Applies events-topic records, one at a time and in order (one thread calls it)."""

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
        try:
            entry = event_log.decode_entry(headers, value)
        except event_log.EventLogError as exc:
            self._skip(offset, exc)
            return
        if isinstance(entry, RowsEntry):
            self._apply_rows(offset, entry.rows)
        elif isinstance(entry, ConsumerReport):
            changed = self.directory.apply_consumer(entry)
            self._announce_statuses(offset, [(entry.consumer_id, changed)] if changed else [])
        elif isinstance(entry, WorkerReport):
            self._announce_statuses(offset, self.directory.apply_worker(entry))

    def _skip(self, offset: int, exc: Exception) -> None:
        self._unreadable += 1
        if self._unreadable <= 10 or self._unreadable % 1000 == 0:
            log.warning("events topic offset %d skipped (%d so far): %s", offset, self._unreadable, exc)
        self.store.set_meta_many({POSITION_KEY: str(offset + 1)})
        self.position = offset + 1

    def _apply_rows(self, offset: int, rows: list[LogRow]) -> None:
        first_seq = self.bus.last_seq + 1
        items: EventItems = []

        def along(saved: list[Saved]) -> WrittenAlong:
            """Within the save: the events it publishes, their journal entry, the new position."""
            new_ids: list[str] = []
            for row, result in zip(rows, saved, strict=True):
                if result.new:
                    if result.reason is not None:  # the store kept a FAILED row in its place
                        row = _as_failed(row, result.reason)
                    items.extend(row_events(row))
                    new_ids.append(row.log_id)
                elif result.kind == REFUSED:
                    log.error("record %s could not be stored at all: %s", row.log_id, result.reason)
            stats = [(events.STATS_UPDATED, self._stats_after(rows, saved))] if new_ids else []
            items.extend(stats)
            return WrittenAlong(
                {POSITION_KEY: str(offset + 1), SEQ_KEY: str(first_seq - 1 + len(items))},
                replay_journal.entry(first_seq, new_ids, stats),
            )

        self.store.save_outcomes(rows, along)
        self.position = offset + 1
        if items:
            self.bus.publish_many(items)

    def _announce_statuses(self, offset: int, changes: list[tuple[str, str]]) -> None:
        items: EventItems = [
            (events.CONSUMER_STATUS_CHANGED, events.consumer_status_changed(consumer_id, status))
            for consumer_id, status in changes
        ]
        if items:
            items.append((events.STATS_UPDATED, self.stats()))
        first_seq = self.bus.last_seq + 1
        self.store.set_meta_many(
            {
                POSITION_KEY: str(offset + 1),
                SEQ_KEY: str(first_seq - 1 + len(items)),
                DIRECTORY_KEY: self.directory.dump(),
            },
            replay_journal.entry(first_seq, [], items),
        )
        self.position = offset + 1
        if items:
            self.bus.publish_many(items)

    def _stats_after(self, rows: list[LogRow], saved: list[Saved]) -> dict[str, Any]:
        """stats-updated as it will be once this save is counted (it is written in the journal)."""
        return statistics(self.store.counts_after(rows, saved), self.directory.active_count())

    def stats(self) -> dict[str, Any]:
        return statistics(self.store.counts(), self.directory.active_count())


def _as_failed(row: LogRow, error: str) -> LogRow:
    from backend.pipeline import failed_row

    return failed_row(row, error)


class EventsReader(threading.Thread):
    """Reads the events topic from the view's position and hands every record to the applier.

    ``caught_up`` is set once the view has applied everything the topic held when it started (a
    view's health waits for it). A record that cannot be stored (disk full) is applied again after
    a wait that grows to 5 s; nothing after it is applied before it.
    """

    def __init__(self, settings: Settings, bootstrap: str, applier: EventsApplier) -> None:
        super().__init__(name="events-reader", daemon=True)
        self.settings = settings
        self.bootstrap = bootstrap
        self.applier = applier
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
            enable_auto_commit=False,
            isolation_level=self.settings.isolation_level,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=20 if self.settings.embedded else 100,
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
            for record in batch.get(tp, ()):
                try:
                    self.applier.apply(record.offset, record.headers, record.value)
                except StoreUnavailable as exc:
                    retry_s = min(max(retry_s * 2, 0.5), RETRY_MAX_S)
                    self._note(f"events not stored, will retry: {exc}")
                    consumer.seek(tp, record.offset)
                    self._stopping.wait(retry_s)
                    break
                retry_s = 0.0
            else:
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
