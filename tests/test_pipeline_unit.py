"""The record pipeline on its own: records in, rows and events out; no broker, no threads, no SQLite."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pytest
from kafka.consumer.fetcher import ConsumerRecord

from backend import events
from backend.pipeline import Pipeline, Tally
from backend.processing import DecodedRecord
from backend.store import LogRow

CLUSTER = "cluster-1"


class MemorySink:
    """The store's part the pipeline uses, in memory; ``fail`` makes save raise (disk full)."""

    def __init__(self) -> None:
        self.rows: dict[str, LogRow] = {}
        self.in_flight: set[str] = set()
        self.fail = False

    def known(self, log_ids: Iterable[str]) -> set[str]:
        return {log_id for log_id in log_ids if log_id in self.rows}

    def mark_in_flight(self, log_ids: Iterable[str]) -> None:
        self.in_flight.update(log_ids)

    def forget_in_flight(self, log_ids: Iterable[str]) -> None:
        self.in_flight.difference_update(log_ids)

    def save(self, rows: list[LogRow]) -> list[bool]:
        if self.fail:
            raise OSError("database or disk is full")
        inserted = [row.log_id not in self.rows for row in rows]
        for row in rows:
            self.rows.setdefault(row.log_id, row)
            self.in_flight.discard(row.log_id)
        return inserted


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
            max_message_bytes=max_message_bytes,
            counts_changed=self._counts_changed,
        )

    def _counts_changed(self) -> None:
        self.counts_changed += 1

    def names(self) -> list[str]:
        return [name for name, _ in self.published]


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
