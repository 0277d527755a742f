"""The record pipeline: polled records -> outcomes -> stored rows -> events.

No Kafka client and no threads here. A consumer's worker thread hands each polled batch to
:meth:`Pipeline.handle` and commits the batch's offsets only after it returns, so an outcome is
always stored before its record is committed: a crash or a rebalance at any moment leads to
redelivery at worst, and redelivered records are skipped (the store is keyed by record).

Everything the pipeline touches is given to it explicitly: where outcomes are kept (a
:class:`OutcomeSink`, the store), how events go out (``publish``, the bus's ``publish_many``), the
user processor and the size limit, and whom to tell that the counts changed. It never calls back
into the consumer pool.

Per record the events go out in the contract's order: ``message-received``, ``processing-started``,
then exactly one of ``processing-completed`` / ``processing-failed``, the last only for rows that
were new to the store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from backend import events, processing
from backend.store import LogRow

log = logging.getLogger(__name__)

EventItems = list[tuple[str, dict[str, Any]]]
Publish = Callable[[EventItems], object]
# One fresh record on its way: (record, logId, its headers as text, its decoded outcome).
Decoded = tuple[Any, str, dict[str, str], processing.Outcome]


class OutcomeSink(Protocol):
    """Where outcomes are kept: the part of :class:`backend.store.Store` the pipeline uses."""

    def known(self, log_ids: Iterable[str]) -> set[str]: ...

    def mark_in_flight(self, log_ids: Iterable[str]) -> None: ...

    def forget_in_flight(self, log_ids: Iterable[str]) -> None: ...

    def save(self, rows: list[LogRow]) -> list[bool]: ...


@dataclass(frozen=True)
class Tally:
    """How many of a batch's outcomes were new to the store, by result (a consumer's counters)."""

    processed: int = 0
    failed: int = 0


class Pipeline:
    """Turns a consumer's batch of records into stored outcomes and their events.

    ``records`` are kafka-python ``ConsumerRecord``-like objects (``topic``, ``partition``,
    ``offset``, ``timestamp``, ``key``, ``value``, ``headers``). Safe to share between consumer
    threads: it holds no per-batch state.
    """

    def __init__(
        self,
        *,
        cluster_id: str,
        sink: OutcomeSink,
        publish: Publish,
        processor: processing.Processor | None,
        max_message_bytes: int,
        counts_changed: Callable[[], None],
    ) -> None:
        self.cluster_id = cluster_id
        self.sink = sink
        self.publish = publish
        self.processor = processor
        self.max_message_bytes = max_message_bytes
        self.counts_changed = counts_changed

    def handle(self, consumer_id: str, records: list[Any]) -> Tally:
        """Process, store and announce one batch; the caller may commit its offsets afterwards.

        Raises when the batch could not be stored; the caller then calls :meth:`release` and
        reads the batch again later.
        """
        rows = self.process(consumer_id, records)
        inserted = self.store(consumer_id, rows)
        return tally(rows, inserted)

    def release(self, records: Iterable[Any]) -> None:
        """Forget the records of a batch that was not stored; they will be delivered again."""
        self.sink.forget_in_flight(self.log_id(r) for r in records)

    def log_id(self, record: Any) -> str:
        return events.make_log_id(self.cluster_id, record.topic, record.partition, record.offset)

    def process(self, consumer_id: str, records: list[Any]) -> list[LogRow]:
        """Decode and process the batch's new records; return the rows to store.

        ``message-received`` and ``processing-started`` for the whole batch go
        out in one publish (one bus lock) before any user processor runs, which keeps the
        per-record order (received, started, then the outcome) at a fraction of
        the cost of publishing record by record.
        """
        ids = [self.log_id(r) for r in records]
        already = self.sink.known(ids)
        fresh = [
            (record, log_id) for record, log_id in zip(records, ids, strict=True) if log_id not in already
        ]
        if not fresh:
            return []
        received_ms = events.now_ms()
        self.sink.mark_in_flight([log_id for _, log_id in fresh])
        decoded = [self._decode(record, log_id) for record, log_id in fresh]
        self.publish(announcements(decoded, consumer_id, received_ms))
        if log.isEnabledFor(logging.DEBUG):
            for _, log_id, _, _ in decoded:
                log.debug("Broadcasted message-received for log %s", log_id)
        return [self._finish(consumer_id, item, received_ms) for item in decoded]

    def store(self, consumer_id: str, rows: list[LogRow]) -> list[bool]:
        """Store the outcomes, then announce the ones that were new (exactly one outcome per logId)."""
        inserted = self.sink.save(rows)
        self.publish(outcome_events(rows, inserted, consumer_id))
        if rows:
            self.counts_changed()
        return inserted

    def _decode(self, record: Any, log_id: str) -> Decoded:
        headers = processing.header_map(record.headers)
        return (
            record,
            log_id,
            headers,
            processing.decode_record(record.value, headers, self.max_message_bytes),
        )

    def _finish(self, consumer_id: str, item: Decoded, received_ms: int) -> LogRow:
        record, log_id, headers, decoded = item
        outcome = processing.apply_processor(
            decoded, self.processor, record.topic, record.partition, record.offset, record.key, headers
        )
        return to_row(record, log_id, self.cluster_id, consumer_id, outcome, received_ms)


def announcements(decoded: list[Decoded], consumer_id: str, received_ms: int) -> EventItems:
    """``message-received`` then ``processing-started`` for each record, in the batch's order."""
    items: EventItems = []
    for record, log_id, _, outcome in decoded:
        items.append((events.MESSAGE_RECEIVED, events.message_received(
            log_id, record.topic, record.partition, record.offset, outcome.data_type, outcome.row_count,
            received_ms,
        )))  # fmt: skip
        items.append((events.PROCESSING_STARTED, events.processing_started(log_id, consumer_id, received_ms)))
    return items


def outcome_events(rows: list[LogRow], inserted: list[bool], consumer_id: str) -> EventItems:
    """``processing-completed`` / ``-failed`` for the rows that were new; redeliveries get none."""
    items: EventItems = []
    for row, new in zip(rows, inserted, strict=True):
        if not new:
            continue
        completed_ms = row.completed_ms or events.now_ms()
        if row.status == events.PROCESSED:
            data = events.processing_completed(row.log_id, consumer_id, completed_ms)
            items.append((events.PROCESSING_COMPLETED, data))
        else:
            data = events.processing_failed(row.log_id, consumer_id, row.error or "", completed_ms)
            items.append((events.PROCESSING_FAILED, data))
    return items


def to_row(
    record: Any, log_id: str, cluster_id: str, consumer_id: str, outcome: processing.Outcome, received_ms: int
) -> LogRow:
    """The stored row of one processed record; completed now."""
    return LogRow(
        log_id=log_id,
        cluster_id=cluster_id,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        record_key=None if record.key is None else record.key.decode("utf-8", errors="replace"),
        data_type=outcome.data_type,
        row_count=outcome.row_count,
        status=events.PROCESSED if outcome.ok else events.FAILED,
        consumer_id=consumer_id,
        error=outcome.error,
        produced_ms=record.timestamp if record.timestamp and record.timestamp > 0 else None,
        received_ms=received_ms,
        started_ms=received_ms,
        completed_ms=events.now_ms(),
        size_bytes=None if record.value is None else len(record.value),
        payload=outcome.payload,
        result=jsonable(outcome.result),
        payload_json=outcome.payload_json,
    )


def tally(rows: list[LogRow], inserted: list[bool]) -> Tally:
    """Count the new outcomes by result (rows already stored before count as neither)."""
    processed = failed = 0
    for row, new in zip(rows, inserted, strict=True):
        if new and row.status == events.PROCESSED:
            processed += 1
        elif new:
            failed += 1
    return Tally(processed, failed)


def jsonable(value: Any) -> Any:
    """Processor results are stored as JSON; anything else is stored as its text."""
    if value is None or isinstance(value, str | int | float | bool | list | dict):
        return value
    return repr(value)
