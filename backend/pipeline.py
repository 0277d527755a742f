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

Whatever happens, a record is announced once: a batch that could not be stored is delivered again
and its records processed again, but the pipeline remembers which records it announced and not
yet stored, and announces only the others. A row the store refuses (too big for it, say) is
replaced by a small FAILED row for the same record, so one record never holds back the others.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from backend import events, processing, record_meta
from backend.store import INSERTED, REFUSED, REPLACED, LogRow, Saved

log = logging.getLogger(__name__)

PROCESSED, FAILED = events.PROCESSED, events.FAILED

EventItems = list[tuple[str, dict[str, Any]]]
Publish = Callable[[EventItems], object]
# One fresh record on its way: (record, logId, its headers as text, its decoded outcome,
# its key as (text, base64)).
Decoded = tuple[Any, str, dict[str, str], processing.Outcome, tuple[str | None, str | None]]


@dataclass(frozen=True, slots=True)
class SaveResult:
    """What the store did with one row: ``inserted`` (False: stored before), or ``refused`` and why.

    ``replaced``: the store could not keep the row and kept a FAILED row saying why instead
    (this is the error); the record's outcome event must then be ``processing-failed``.
    """

    inserted: bool
    refused: str | None = None
    replaced: str | None = None


#: Per row, what ``save_outcomes`` answers: a :class:`SaveResult`, the store's
#: :class:`backend.store.Saved`, or (simple sinks) whether it was new.
SaveAnswer = SaveResult | Saved | bool


class OutcomeSink(Protocol):
    """Where outcomes are kept: the part of :class:`backend.store.Store` the pipeline uses.

    ``save`` raises when the store as a whole cannot write (disk full, I/O error); the batch is
    then delivered again later. A row it cannot keep on its own is answered ``refused``.
    """

    def known(self, log_ids: Iterable[str]) -> set[str]: ...

    def mark_in_flight(self, log_ids: Iterable[str]) -> None: ...

    def forget_in_flight(self, log_ids: Iterable[str]) -> None: ...

    def save_outcomes(self, rows: list[LogRow]) -> Sequence[SaveAnswer]: ...


class OutcomeRefused(RuntimeError):
    """The store refused even the small FAILED row standing for a refused outcome."""


@dataclass(frozen=True)
class Tally:
    """How many of a batch's outcomes were new to the store, by result (a consumer's counters)."""

    processed: int = 0
    failed: int = 0


class Pipeline:
    """Turns a consumer's batch of records into stored outcomes and their events.

    ``records`` are kafka-python ``ConsumerRecord``-like objects (``topic``, ``partition``,
    ``offset``, ``timestamp``, ``key``, ``value``, ``headers``). Safe to share between consumer
    threads: its only state is the records announced and not yet stored (``logId`` -> the time
    they were received), behind a lock, so a redelivery is not announced again whichever
    consumer of this process gets it.
    """

    def __init__(
        self,
        *,
        cluster_id: str,
        sink: OutcomeSink,
        publish: Publish,
        processor: processing.Processor | None,
        limits: processing.Limits,
        counts_changed: Callable[[], None],
        deserializer: processing.Deserializer | None = None,
    ) -> None:
        self.cluster_id = cluster_id
        self.sink = sink
        self.publish = publish
        self.processor = processor
        self.deserializer = deserializer
        self.limits = limits
        self.counts_changed = counts_changed
        self._announced: dict[str, int] = {}
        self._announced_lock = threading.Lock()

    def rows_for(self, consumer_id: str, records: list[Any]) -> list[LogRow]:
        """Decode and process every record of a batch into its row; nothing stored or announced.

        The worker's path (``python -m backend.worker``): it does not know any store, so it
        cannot skip what was stored before; the views deduplicate by ``logId`` instead. The sink
        and ``publish`` are not used.
        """
        now = events.now_ms()
        cluster, make_log_id = self.cluster_id, events.make_log_id  # bound once: 2,000 records a batch
        decode, finish = self._decode, self._finish
        return [
            finish(consumer_id, decode(rec, make_log_id(cluster, rec.topic, rec.partition, rec.offset)), now)
            for rec in records
        ]

    def handle(self, consumer_id: str, records: list[Any]) -> Tally:
        """Process, store and announce one batch; the caller may commit its offsets afterwards.

        Raises when the batch could not be stored; the caller reads the batch again later, and
        its records are then processed again but not announced again.
        """
        rows = self.process(consumer_id, records)
        inserted = self.store(consumer_id, rows)
        return tally(rows, inserted)

    def release(self, records: Iterable[Any]) -> None:
        """Forget records that will not be handled by this process again (a partition given away).

        They no longer count as received here; if they do come back, they are announced again.
        """
        ids = [self.log_id(r) for r in records]
        with self._announced_lock:
            for log_id in ids:
                self._announced.pop(log_id, None)
        self.sink.forget_in_flight(ids)

    def announced(self) -> int:
        """How many records were announced and are not stored yet."""
        with self._announced_lock:
            return len(self._announced)

    def log_id(self, record: Any) -> str:
        return events.make_log_id(self.cluster_id, record.topic, record.partition, record.offset)

    def process(self, consumer_id: str, records: list[Any]) -> list[LogRow]:
        """Decode and process the batch's records not stored yet; return the rows to store.

        ``message-received`` and ``processing-started`` for the whole batch go
        out in one publish (one bus lock) before any user processor runs, which keeps the
        per-record order (received, started, then the outcome) at a fraction of
        the cost of publishing record by record. Records announced before (a batch that could
        not be stored, delivered again) are processed again but not announced again.
        """
        ids = [self.log_id(r) for r in records]
        already = self.sink.known(ids)
        fresh = [
            (record, log_id) for record, log_id in zip(records, ids, strict=True) if log_id not in already
        ]
        if not fresh:
            return []
        received = self._received_times([log_id for _, log_id in fresh])
        decoded = [self._decode(record, log_id) for record, log_id in fresh]
        new = [item for item in decoded if item[1] in received.new]
        if new:
            self.sink.mark_in_flight(received.new)
            self.publish(announcements(new, consumer_id, received.now_ms))
            if log.isEnabledFor(logging.DEBUG):
                for _, log_id, *_ in new:
                    log.debug("Broadcasted message-received for log %s", log_id)
        return [self._finish(consumer_id, item, received.times[item[1]]) for item in decoded]

    def _received_times(self, log_ids: list[str]) -> _Received:
        """When each record was first received: now for those not announced before (``new``)."""
        received = _Received(events.now_ms())
        with self._announced_lock:
            for log_id in log_ids:
                first = self._announced.get(log_id)
                if first is None:
                    first = self._announced[log_id] = received.now_ms
                    received.new.add(log_id)
                received.times[log_id] = first
        return received

    def store(self, consumer_id: str, rows: list[LogRow]) -> list[bool]:
        """Store the outcomes, then announce the ones that were new (exactly one outcome per logId).

        Per row, the answer is whether its outcome was stored now (False: stored before). A row
        the store refuses is replaced, in ``rows`` too, by a FAILED row saying why, stored by a
        second save; raises when the store cannot write at all (the rows stay announced).
        """
        results = [as_save_result(answer) for answer in self.sink.save_outcomes(rows)]
        for i, result in enumerate(results):
            if result.replaced is not None:  # stored as FAILED: the event must say so, and why
                rows[i] = failed_row(rows[i], result.replaced)
        inserted = [result.inserted for result in results]
        self._forget_stored(rows, results)
        self.publish(outcome_events(rows, inserted, consumer_id))
        if rows:
            self.counts_changed()
        refused = {i: result.refused for i, result in enumerate(results) if result.refused is not None}
        if refused:
            self._store_failures(consumer_id, rows, inserted, refused)
        return inserted

    def _store_failures(
        self, consumer_id: str, rows: list[LogRow], inserted: list[bool], refused: dict[int, str]
    ) -> None:
        """Store a FAILED row for each refused one and announce it; raise if even that is refused."""
        for i, reason in refused.items():
            log.warning("The store refused the outcome of %s: %s", rows[i].log_id, reason)
            rows[i] = failed_row(rows[i], f"could not store the outcome: {reason}")
        failures = [rows[i] for i in refused]
        results = [as_save_result(answer) for answer in self.sink.save_outcomes(failures)]
        for i, result in zip(refused, results, strict=True):
            inserted[i] = result.inserted
        self._forget_stored(failures, results)
        self.publish(outcome_events(failures, [result.inserted for result in results], consumer_id))
        self.counts_changed()
        still = [(row.log_id, r.refused) for row, r in zip(failures, results, strict=True) if r.refused]
        if still:
            raise OutcomeRefused(f"the store refused even the failure of {still[0][0]}: {still[0][1]}")

    def _forget_stored(self, rows: list[LogRow], results: list[SaveResult]) -> None:
        """The rows that now have an outcome in the store are announced records no longer."""
        with self._announced_lock:
            for row, result in zip(rows, results, strict=True):
                if result.refused is None:
                    self._announced.pop(row.log_id, None)

    def _decode(self, record: Any, log_id: str) -> Decoded:
        headers = processing.header_map(record.headers)
        outcome = processing.decode_record(
            record.value, headers, self.limits, self.deserializer, record.headers or ()
        )
        return (record, log_id, headers, outcome, record_meta.key_fields(record.key))

    def _finish(self, consumer_id: str, item: Decoded, received_ms: int) -> LogRow:
        record, log_id, headers, decoded, key = item
        outcome = processing.apply_processor(
            decoded, self.processor, record.topic, record.partition, record.offset, record.key, headers
        )
        if outcome.result is not None:
            outcome.result = jsonable(outcome.result)
            processing.limit_result(outcome, self.limits)
        return to_row(record, log_id, self.cluster_id, consumer_id, outcome, received_ms, key)


@dataclass
class _Received:
    """When a batch's records were first received, and which of them are new (to announce)."""

    now_ms: int
    times: dict[str, int] = dataclasses.field(default_factory=dict)
    new: set[str] = dataclasses.field(default_factory=set)


def as_save_result(answer: SaveAnswer) -> SaveResult:
    """A store's answer for one row as a :class:`SaveResult` (a bare bool: inserted or not)."""
    if isinstance(answer, SaveResult):
        return answer
    if isinstance(answer, Saved):
        if answer.kind == REPLACED:
            return SaveResult(inserted=True, replaced=answer.reason)
        if answer.kind == REFUSED:
            return SaveResult(inserted=False, refused=answer.reason)
        return _INSERTED if answer.kind == INSERTED else _DUPLICATE
    return _INSERTED if answer else _DUPLICATE


_INSERTED = SaveResult(inserted=True)
_DUPLICATE = SaveResult(inserted=False)


def failed_row(row: LogRow, error: str) -> LogRow:
    """The small row standing for an outcome the store could not keep: FAILED, no payload."""
    return dataclasses.replace(
        row,
        status=events.FAILED,
        error=error[: processing.MAX_ERROR_CHARS],
        payload=None,
        result=None,
        payload_json=None,
        value_bytes=None,
        completed_ms=events.now_ms(),
    )


def announcements(decoded: list[Decoded], consumer_id: str, received_ms: int) -> EventItems:
    """``message-received`` then ``processing-started`` for each record, in the batch's order."""
    items: EventItems = []
    for record, log_id, _, outcome, (key, key_base64) in decoded:
        items.append((events.MESSAGE_RECEIVED, events.message_received(
            log_id, record.topic, record.partition, record.offset, outcome.data_type, outcome.row_count,
            received_ms, key, key_base64,
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
    record: Any,
    log_id: str,
    cluster_id: str,
    consumer_id: str,
    outcome: processing.Outcome,
    received_ms: int,
    key_fields: tuple[str | None, str | None] | None = None,
) -> LogRow:
    """The stored row of one processed record and its metadata; completed now.

    A record that failed with no decoded payload keeps its value's first bytes, so the analyst
    can see what could not be read.
    """
    key, key_base64 = key_fields or record_meta.key_fields(record.key)
    headers, headers_truncated = record_meta.header_entries(record.headers)
    ok = outcome.error is None
    value = record.value
    timestamp = record.timestamp
    # Positional, in LogRow's field order (LOG_ROW_FIELDS, checked by a test): keywords cost
    # ~0.9 us more per record for its 25 fields, on every record's path in the workers.
    return LogRow(
        log_id, cluster_id, record.topic, record.partition, record.offset, key,
        outcome.data_type, outcome.row_count, PROCESSED if ok else FAILED, consumer_id, outcome.error,
        timestamp if timestamp and timestamp > 0 else None, received_ms, received_ms, events.now_ms(),
        None if value is None else len(value), outcome.payload, jsonable(outcome.result),
        outcome.payload_json, False, None, key_base64, headers, headers_truncated,
        record_meta.kept_value(value) if not ok and outcome.payload is None else None,
    )  # fmt: skip


#: LogRow's fields in the order :func:`to_row` gives them.
LOG_ROW_FIELDS = (
    "log_id", "cluster_id", "topic", "partition", "offset", "record_key", "data_type", "row_count",
    "status", "consumer_id", "error", "produced_ms", "received_ms", "started_ms", "completed_ms",
    "size_bytes", "payload", "result", "payload_json", "stored_apart", "payload_preview", "key_base64",
    "headers", "headers_truncated", "value_bytes",
)  # fmt: skip


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
