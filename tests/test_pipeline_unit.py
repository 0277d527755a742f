"""The record pipeline on its own: records in, rows and events out; no broker, no threads, no SQLite."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable
from typing import Any

import pytest
from kafka.consumer.fetcher import ConsumerRecord

from backend import events
from backend.pipeline import LOG_ROW_FIELDS, OutcomeRefused, Pipeline, SaveResult, Tally
from backend.processing import DecodedRecord, Limits
from backend.store import LogRow

CLUSTER = "cluster-1"


class MemorySink:
    """The store's part the pipeline uses, in memory.

    ``fail`` makes save raise (disk full); ``fail_times`` makes the next N saves raise;
    ``refuse`` maps logIds to the reason their (large) row is refused, like the store's
    per-row answers; ``answer_bools`` answers like the store of today, one bool per row.
    """

    def __init__(self) -> None:
        self.rows: dict[str, LogRow] = {}
        self.in_flight: set[str] = set()
        self.fail = False
        self.fail_times = 0
        self.refuse: dict[str, str] = {}
        self.answer_bools = True

    def known(self, log_ids: Iterable[str]) -> set[str]:
        return {log_id for log_id in log_ids if log_id in self.rows}

    def mark_in_flight(self, log_ids: Iterable[str]) -> None:
        self.in_flight.update(log_ids)

    def forget_in_flight(self, log_ids: Iterable[str]) -> None:
        self.in_flight.difference_update(log_ids)

    def save_outcomes(self, rows: list[LogRow]) -> list[Any]:
        if self.fail or self.fail_times > 0:
            self.fail_times -= 1
            raise OSError("database or disk is full")
        if self.answer_bools:
            return [self._insert(row) for row in rows]
        return [self._answer(row) for row in rows]

    def _insert(self, row: LogRow) -> bool:
        new = row.log_id not in self.rows
        self.rows.setdefault(row.log_id, row)
        self.in_flight.discard(row.log_id)
        return new

    def _answer(self, row: LogRow) -> SaveResult:
        reason = self.refuse.get(row.log_id)
        if reason and row.payload is not None:
            return SaveResult(inserted=False, refused=reason)
        return SaveResult(inserted=self._insert(row))


class Harness:
    """A pipeline with a memory sink, a list of published events and a count of stats signals."""

    def __init__(self, processor: Any = None, max_message_bytes: int = 1_000_000) -> None:
        self.sink = MemorySink()
        self.published: list[tuple[str, dict[str, Any]]] = []
        self.counts_changed = 0
        self.pipeline = Pipeline(
            cluster_id=CLUSTER,
            sink=self.sink,
            publish=self.published.extend,
            processor=processor,
            limits=Limits(max_message_bytes=max_message_bytes),
            counts_changed=self._counts_changed,
        )

    def _counts_changed(self) -> None:
        self.counts_changed += 1

    def names(self) -> list[str]:
        return [name for name, _ in self.published]

    def by_log_id(self) -> dict[str, list[str]]:
        sequences: dict[str, list[str]] = {}
        for name, data in self.published:
            sequences.setdefault(data["logId"], []).append(name)
        return sequences


def record(offset: int, value: bytes | None, partition: int = 0, key: bytes | None = None) -> Any:
    return ConsumerRecord(
        "orders", partition, -1, offset, 1_700_000_000_000, 0, key, value, [], None, -1, 0, 0
    )


def log_id(offset: int, partition: int = 0) -> str:
    return events.make_log_id(CLUSTER, "orders", partition, offset)


def test_each_record_is_received_started_then_completed_or_failed() -> None:
    h = Harness()
    tally = h.pipeline.handle("consumer-1", [record(0, b'{"a": 1}'), record(1, b"{not json")])
    assert tally == Tally(processed=1, failed=1)
    assert h.names() == [
        events.MESSAGE_RECEIVED,
        events.PROCESSING_STARTED,
        events.MESSAGE_RECEIVED,
        events.PROCESSING_STARTED,
        events.PROCESSING_COMPLETED,
        events.PROCESSING_FAILED,
    ]
    failed = h.published[-1][1]
    assert failed["logId"] == log_id(1) and failed["consumerId"] == "consumer-1"
    assert failed["error"].startswith("invalid JSON")
    assert h.published[0][1]["offset"] == "0" and h.published[0][1]["dataType"] == events.SINGLE_MESSAGE
    assert h.sink.rows[log_id(0)].status == events.PROCESSED and h.sink.in_flight == set()
    assert h.counts_changed == 1


def test_the_batch_is_announced_before_any_processor_runs() -> None:
    seen: list[list[str]] = []
    h: Harness

    def processor(decoded: DecodedRecord) -> None:
        seen.append(h.names())

    h = Harness(processor)
    h.pipeline.handle("consumer-1", [record(0, b"1"), record(1, b"2")])
    assert seen[0] == [events.MESSAGE_RECEIVED, events.PROCESSING_STARTED] * 2


def test_records_stored_before_are_skipped_without_events() -> None:
    h = Harness()
    h.pipeline.handle("consumer-1", [record(0, b"1")])
    h.published.clear()
    tally = h.pipeline.handle("consumer-2", [record(0, b"1")])
    assert tally == Tally() and h.published == [] and h.counts_changed == 1


def test_a_row_stored_meanwhile_gets_no_second_outcome() -> None:
    """Between known() and save() another consumer may have stored the record: no outcome twice."""
    h = Harness()
    rows = h.pipeline.process("consumer-1", [record(0, b"1")])
    h.sink.rows[rows[0].log_id] = rows[0]
    h.published.clear()
    assert h.pipeline.store("consumer-1", rows) == [False]
    assert h.published == []


def test_a_batch_that_cannot_be_stored_raises_and_announces_no_outcome() -> None:
    h = Harness()
    h.sink.fail = True
    batch = [record(0, b"1"), record(1, b"2")]
    with pytest.raises(OSError):
        h.pipeline.handle("consumer-1", batch)
    assert events.PROCESSING_COMPLETED not in h.names() and h.counts_changed == 0
    assert h.sink.in_flight == {log_id(0), log_id(1)}
    h.pipeline.release(batch)
    assert h.sink.in_flight == set()


def test_rows_carry_the_record_and_its_outcome() -> None:
    h = Harness(processor=lambda decoded: {"double": decoded.payload["value"] * 2})
    [row] = h.pipeline.process("consumer-3", [record(7, b'{"value": 21}', partition=2, key=b"k")])
    assert (row.topic, row.partition, row.offset, row.record_key) == ("orders", 2, 7, "k")
    assert (row.consumer_id, row.status, row.result, row.size_bytes) == (
        "consumer-3",
        events.PROCESSED,
        {"double": 42},
        13,
    )
    assert row.produced_ms == 1_700_000_000_000 and row.payload == {"value": 21}
    assert json.loads(row.payload_json or "") == {"value": 21}


def test_a_result_that_is_not_json_is_stored_as_its_text() -> None:
    h = Harness(processor=lambda decoded: {1, 2})
    [row] = h.pipeline.process("consumer-1", [record(0, b"1")])
    assert row.result == repr({1, 2})


def test_the_size_limit_is_the_one_given() -> None:
    h = Harness(max_message_bytes=4)
    h.pipeline.handle("consumer-1", [record(0, b'"12345"')])
    assert h.names()[-1] == events.PROCESSING_FAILED and "too large" in h.published[-1][1]["error"]


def test_an_empty_batch_signals_nothing() -> None:
    h = Harness()
    assert h.pipeline.handle("consumer-1", []) == Tally()
    assert h.counts_changed == 0 and h.published == []


def test_a_batch_stored_after_failures_is_announced_once() -> None:
    """save() fails twice, the batch comes again each time: received and started once, one outcome."""
    h = Harness()
    h.sink.fail_times = 2
    batch = [record(0, b"1"), record(1, b"{bad")]
    for _ in range(2):
        with pytest.raises(OSError):
            h.pipeline.handle("consumer-1", batch)
        assert h.sink.in_flight == {log_id(0), log_id(1)} and h.pipeline.announced() == 2
        time.sleep(0.002)  # a later millisecond: the row keeps the first reception's time
    assert h.pipeline.handle("consumer-2", batch) == Tally(processed=1, failed=1)
    assert h.by_log_id() == {
        log_id(0): [events.MESSAGE_RECEIVED, events.PROCESSING_STARTED, events.PROCESSING_COMPLETED],
        log_id(1): [events.MESSAGE_RECEIVED, events.PROCESSING_STARTED, events.PROCESSING_FAILED],
    }
    assert h.pipeline.announced() == 0 and h.sink.in_flight == set()
    received = h.published[0][1]["timestamp"]
    assert h.sink.rows[log_id(0)].received_ms == events.ms_from_iso(received)


def test_a_redelivery_with_new_records_announces_only_the_new_ones() -> None:
    h = Harness()
    h.sink.fail_times = 1
    with pytest.raises(OSError):
        h.pipeline.handle("consumer-1", [record(0, b"1")])
    h.pipeline.handle("consumer-1", [record(0, b"1"), record(1, b"2")])
    assert h.names().count(events.MESSAGE_RECEIVED) == 2
    assert all(len(sequence) == 3 for sequence in h.by_log_id().values())


def test_a_refused_row_becomes_a_failed_row_and_the_others_are_stored() -> None:
    h = Harness()
    h.sink.answer_bools = False
    h.sink.refuse[log_id(1)] = "string or blob too big"
    tally = h.pipeline.handle("consumer-1", [record(0, b"1"), record(1, b'{"big": 1}'), record(2, b"3")])
    assert tally == Tally(processed=2, failed=1)
    stored = h.sink.rows[log_id(1)]
    assert (stored.status, stored.error, stored.payload) == (
        events.FAILED,
        "could not store the outcome: string or blob too big",
        None,
    )
    assert h.sink.rows[log_id(0)].status == h.sink.rows[log_id(2)].status == events.PROCESSED
    sequences = h.by_log_id()
    assert sequences[log_id(1)] == [
        events.MESSAGE_RECEIVED,
        events.PROCESSING_STARTED,
        events.PROCESSING_FAILED,
    ]
    assert all(len(sequence) == 3 for sequence in sequences.values())
    failed = [data for name, data in h.published if name == events.PROCESSING_FAILED]
    assert failed[0]["error"] == "could not store the outcome: string or blob too big"
    assert h.pipeline.announced() == 0 and h.sink.in_flight == set()


def test_a_failure_row_the_store_refuses_too_is_retried_without_new_announcements() -> None:
    h = Harness()
    h.sink.answer_bools = False
    h.sink.refuse[log_id(0)] = "no"
    original_answer = h.sink._answer

    def refuse_everything(row: LogRow) -> SaveResult:
        return (
            SaveResult(inserted=False, refused="read-only")
            if row.log_id == log_id(0)
            else original_answer(row)
        )

    h.sink._answer = refuse_everything  # type: ignore[method-assign]
    with pytest.raises(OutcomeRefused, match="read-only"):
        h.pipeline.handle("consumer-1", [record(0, b"1"), record(1, b"2")])
    assert h.pipeline.announced() == 1 and log_id(1) in h.sink.rows
    h.sink._answer = original_answer  # type: ignore[method-assign]
    h.pipeline.handle("consumer-1", [record(0, b"1"), record(1, b"2")])
    assert h.by_log_id() == {
        log_id(0): [events.MESSAGE_RECEIVED, events.PROCESSING_STARTED, events.PROCESSING_FAILED],
        log_id(1): [events.MESSAGE_RECEIVED, events.PROCESSING_STARTED, events.PROCESSING_COMPLETED],
    }


def test_a_poison_csv_fails_and_its_neighbours_are_processed() -> None:
    h = Harness(max_message_bytes=1_048_576)
    header = ",".join(f"c{i:03d}".ljust(2_000, "x") for i in range(250))
    poison = (header + "\n" + ("," * 249 + "\n") * 2_191).encode()
    tally = h.pipeline.handle("consumer-1", [record(0, b"1"), record(1, poison), record(2, b"a,b\n1,2\n")])
    assert tally == Tally(processed=2, failed=1)
    error = h.sink.rows[log_id(1)].error or ""
    assert error.startswith("CSV has 250 columns whose names are up to 2,000 characters")


def test_a_processor_result_that_cannot_be_stored_fails_only_its_record() -> None:
    h = Harness(processor=lambda decoded: decoded.payload if decoded.offset == 1 else None)
    h.pipeline.limits = Limits(max_decoded_chars=100)
    tally = h.pipeline.handle("consumer-1", [record(0, b"1"), record(1, json.dumps(["x" * 60]).encode())])
    assert tally == Tally(processed=1, failed=1)
    assert (h.sink.rows[log_id(1)].error or "").startswith("processor result too large")


def test_with_the_real_store_a_value_over_sqlites_limit_fails_alone(tmp_path) -> None:
    """The issue's poison: a row over SQLite's limit was retried for ever. Now the store keeps a
    FAILED row in its place, its neighbours are stored, and the events say why, once."""
    from backend.store import Store

    store = Store(tmp_path, value_limit_bytes=20_000)  # SQLite's limit, lowered to stay small
    h = Harness()
    h.sink = store  # type: ignore[assignment]
    h.pipeline.sink = store
    big = json.dumps({"text": "x" * 30_000}).encode()
    try:
        tally = h.pipeline.handle("consumer-1", [record(0, b"1"), record(1, big), record(2, b"3")])
        stored = {i: store.log(log_id(i)) for i in range(3)}
        counts = store.counts()
    finally:
        store.close()
    assert tally == Tally(processed=2, failed=1)
    assert stored[0].status == stored[2].status == events.PROCESSED
    assert stored[1].status == events.FAILED and "too large" in stored[1].error
    assert (counts.processed, counts.failed) == (2, 1)
    assert h.by_log_id()[log_id(1)] == [
        events.MESSAGE_RECEIVED,
        events.PROCESSING_STARTED,
        events.PROCESSING_FAILED,
    ]
    failed = [data for name, data in h.published if name == events.PROCESSING_FAILED]
    assert failed == [failed[0]] and failed[0]["error"] == stored[1].error


def test_to_row_gives_log_row_its_fields_in_order() -> None:
    """to_row builds LogRow positionally (the hot path): a reordered or added field must fail here."""
    assert tuple(field.name for field in dataclasses.fields(LogRow)) == LOG_ROW_FIELDS
