"""The events topic's wire format (backend/event_log.py): round trips, and what it refuses."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from backend import event_log
from backend.event_log import (
    CONSUMER,
    ROWS,
    WORKER,
    Command,
    ConsumerReport,
    EventLogError,
    RowsEntry,
    WorkerReport,
)
from backend.events import FAILED, PROCESSED, SINGLE_MESSAGE
from backend.store import LogRow


def row(offset: int = 0, **changes: object) -> LogRow:
    base = LogRow(
        log_id=f"cluster:orders:1:{offset}",
        cluster_id="cluster",
        topic="orders",
        partition=1,
        offset=offset,
        record_key="k",
        data_type=SINGLE_MESSAGE,
        row_count=1,
        status=PROCESSED,
        consumer_id="consumer-1",
        error=None,
        produced_ms=1_700_000_000_000,
        received_ms=1_700_000_000_010,
        started_ms=1_700_000_000_010,
        completed_ms=1_700_000_000_012,
        size_bytes=20,
        payload={"amount": 1.5, "note": "é ✓ <script>"},
    )
    return dataclasses.replace(base, **changes)


def wire_view(r: LogRow) -> list[object]:
    """What survives the trip: the wire values (the payload travels as its JSON text)."""
    return event_log.row_to_wire(r)


def decode_rows(values: list[bytes]) -> list[RowsEntry]:
    entries = [event_log.decode_entry(event_log.headers_for(ROWS), value) for value in values]
    assert all(isinstance(entry, RowsEntry) for entry in entries)
    return entries  # type: ignore[return-value]


def test_rows_round_trip_with_binary_key_value_and_headers() -> None:
    rows = [
        row(0),
        row(
            1,
            status=FAILED,
            error="invalid JSON",
            payload=None,
            record_key=None,
            key_base64="AP8=",
            headers=[{"key": "trace", "value": "abc"}, {"key": "bin", "valueBase64": "AAE="}],
            headers_truncated=True,
            value_bytes=b"\x00\xff not json",
        ),
        row(2, payload=None, payload_json='{"pre":"encoded"}', result={"total": 3}),
    ]
    (entry,) = decode_rows(event_log.encode_rows("w1", "consumer-1", rows))
    assert (entry.worker_id, entry.consumer_id) == ("w1", "consumer-1")
    assert [wire_view(r) for r in entry.rows] == [wire_view(r) for r in rows]
    assert entry.rows[1].value_bytes == b"\x00\xff not json"
    assert entry.rows[1].headers_truncated is True
    assert orjson.loads(entry.rows[0].payload_json or "") == rows[0].payload


def test_big_rows_are_split_into_several_records_and_all_come_back() -> None:
    big = "x" * (event_log.TARGET_EVENT_RECORD_BYTES // 3)
    rows = [row(i, payload={"text": big}) for i in range(10)]
    values = event_log.encode_rows("w1", "consumer-2", rows)
    assert len(values) > 1
    assert all(len(value) <= event_log.TARGET_EVENT_RECORD_BYTES + len(big) + 1024 for value in values)
    back = [r for entry in decode_rows(values) for r in entry.rows]
    assert [r.log_id for r in back] == [r.log_id for r in rows]


def test_an_empty_batch_is_no_record() -> None:
    assert event_log.encode_rows("w1", "consumer-1", []) == []


def test_reports_and_commands_round_trip() -> None:
    report = ConsumerReport(
        "consumer-1", "w1", "ACTIVE", {"orders-0": [5, 9], "orders-1": [None, None]}, 3, 1, polled=True
    )
    encoded = event_log.encode_consumer(report)
    assert event_log.decode_entry(event_log.headers_for(CONSUMER), encoded) == report
    worker = WorkerReport("w1", "up", "host", 42, ["consumer-1"])
    assert event_log.decode_entry(event_log.headers_for(WORKER), event_log.encode_worker(worker)) == worker
    command = Command("start", "consumer-9", "w1", "req-1")
    assert event_log.decode_command(event_log.encode_command(command)) == command


def test_a_newer_writer_may_add_fields() -> None:
    value = orjson.dumps({"v": 1, "op": "stop", "consumer_id": "consumer-2", "later": [1, 2]})
    assert event_log.decode_command(value) == Command("stop", "consumer-2")


GARBAGE = [
    None,
    b"",
    b"not json",
    b"[1, 2]",
    b"null",
    b'{"v": 2, "op": "start", "consumer_id": "c"}',
    b'{"v": true, "op": "start", "consumer_id": "c"}',
    b'{"op": "start", "consumer_id": "c"}',
    b"[" * 5000 + b"]" * 5000,
    b'{"v": 1, "op": "launch", "consumer_id": "c"}',
    b'{"v": 1, "op": "start", "consumer_id": ""}',
    b'{"v": 1, "op": "start", "consumer_id": 7}',
    b'{"v": 1, "op": "start", "consumer_id": "c", "worker_id": ["w"]}',
    b'{"v": 1, "op": "start"}',
    b"\xff\xfe garbage",
]


@pytest.mark.parametrize("value", GARBAGE)
def test_garbage_commands_are_refused(value: bytes | None) -> None:
    with pytest.raises(EventLogError):
        event_log.decode_command(value)


def rows_value(rows: object) -> bytes:
    return orjson.dumps({"v": 1, "worker": "w", "consumer": "c", "rows": rows})


HOSTILE_ENTRIES = [
    (None, event_log.encode_command(Command("start", "c"))),  # no kind header
    ([("kind", b"telemetry")], b'{"v": 1}'),  # a kind this version does not know
    ([("kind", None)], b'{"v": 1}'),
    (event_log.headers_for(ROWS), b""),
    (event_log.headers_for(ROWS), b'{"v": 1, "worker": "w", "consumer": "c"}'),  # no rows
    (event_log.headers_for(ROWS), rows_value(None)),
    (event_log.headers_for(ROWS), rows_value([[1, 2, 3]])),  # a row of the wrong length
    (event_log.headers_for(ROWS), rows_value([{"log_id": "x"}])),
    (event_log.headers_for(ROWS), rows_value([[None] * len(event_log.ROW_FIELDS)])),
    (event_log.headers_for(ROWS), rows_value([event_log.row_to_wire(row(0))[:5] + ["p"] + [None] * 16])),
    (event_log.headers_for(ROWS), rows_value([[["list"]] + event_log.row_to_wire(row(0))[1:]])),
    (event_log.headers_for(ROWS), rows_value([event_log.row_to_wire(row(0))[:-1] + ["@@not base64@@"]])),
    (event_log.headers_for(ROWS), rows_value([event_log.row_to_wire(row(0))[:3] + [True] + [None] * 18])),
    (event_log.headers_for(ROWS), rows_value([event_log.row_to_wire(row(0))[:4] + [1.5] + [None] * 17])),
    (event_log.headers_for(CONSUMER), b'{"v": 1, "consumer_id": "c"}'),  # missing fields
    (event_log.headers_for(CONSUMER), b'{"v": 1, "consumer_id": "c", "worker_id": "w", "status": 5}'),
    (
        event_log.headers_for(CONSUMER),
        b'{"v": 1, "consumer_id": "c", "worker_id": "w", "status": "ACTIVE", "partitions": [1]}',
    ),
    (
        event_log.headers_for(CONSUMER),
        b'{"v": 1, "consumer_id": "c", "worker_id": "w", "status": "ACTIVE",'
        b' "partitions": {"t-0": ["a", 1]}}',
    ),
    (event_log.headers_for(WORKER), b'{"v": 1, "worker_id": "w", "status": "up", "consumers": "c1,c2"}'),
    (event_log.headers_for(WORKER), b'{"v": 3, "worker_id": "w", "status": "up"}'),
]


@pytest.mark.parametrize(("headers", "value"), HOSTILE_ENTRIES)
def test_unreadable_entries_raise_event_log_error(
    headers: list[tuple[str, bytes | None]] | None, value: bytes
) -> None:
    with pytest.raises(EventLogError):
        event_log.decode_entry(headers, value)


def test_a_huge_valid_record_decodes() -> None:
    payload = {"blob": "é" * 2_000_000}
    values = event_log.encode_rows("w", "c", [row(0, payload=payload)])
    (entry,) = decode_rows(values)
    assert orjson.loads(entry.rows[0].payload_json or "") == payload
