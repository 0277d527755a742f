"""A record's own metadata (key, headers, timestamp, kept value) from the pipeline to the REST body.

No broker here: kafka-python's own ConsumerRecord in, the real store and the wire models out.
The same paths against Apache Kafka: tests/test_real_records_kafka.py.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from kafka.consumer.fetcher import ConsumerRecord

from backend import events, record_meta, wire
from backend.events import FAILED, PROCESSED, SINGLE_MESSAGE, TOMBSTONE
from backend.pipeline import Pipeline
from backend.processing import Limits
from backend.store import Store


def record(
    offset: int, value: bytes | None, key: bytes | None = None, headers: list[tuple[str, bytes | None]] = ()
) -> Any:
    return ConsumerRecord(
        "orders", 0, -1, offset, 1_700_000_000_123, 0, key, value, list(headers), None, -1, 0, 0
    )


def run(records: list[Any], tmp_path: Path, **pipeline: Any) -> tuple[Store, list[tuple[str, dict]]]:
    """Handle the records with a real store; the store (open) and the published events."""
    store = Store(tmp_path)
    published: list[tuple[str, dict]] = []
    Pipeline(
        cluster_id="c",
        sink=store,
        publish=published.extend,
        processor=None,
        limits=Limits(max_message_bytes=200_000),
        counts_changed=lambda: None,
        **pipeline,
    ).handle("consumer-1", records)
    return store, published


def detail(store: Store, offset: int) -> dict[str, Any]:
    row = store.log(events.make_log_id("c", "orders", 0, offset))
    assert row is not None
    body = row.to_api(with_payload=True)
    wire.parse(wire.LogDetailBody, body)
    return body


def test_keys_headers_and_timestamp_reach_the_rest_body_in_record_order(tmp_path: Path) -> None:
    headers = [
        ("trace", b"a"),
        ("data-type", b"SINGLE_MESSAGE"),
        ("trace", b"b"),
        ("bin", b"\xff\x00"),
        ("n", None),
    ]
    store, published = run(
        [record(0, b'{"a": 1}', b"order-42", headers), record(1, b'{"a": 2}', b"\xff\xfe")], tmp_path
    )
    try:
        text = detail(store, 0)
        assert (text["key"], text["keyBase64"]) == ("order-42", None)
        assert text["headers"] == [
            {"key": "trace", "value": "a"},
            {"key": "data-type", "value": "SINGLE_MESSAGE"},
            {"key": "trace", "value": "b"},
            {"key": "bin", "valueBase64": base64.b64encode(b"\xff\x00").decode()},
            {"key": "n", "value": None},
        ]
        assert text["kafkaTimestamp"] == text["producedAt"] == "2023-11-14T22:13:20.123Z"
        binary = detail(store, 1)
        assert (binary["key"], binary["keyBase64"], binary["headers"]) == (None, "//4=", [])
        listed = {body["offset"]: body for body in (row.to_api() for row in store.logs(payloads=False))}
        assert listed["0"]["headers"] == text["headers"] and listed["1"]["keyBase64"] == "//4="
    finally:
        store.close()
    received = [data for name, data in published if name == events.MESSAGE_RECEIVED]
    assert [(d["key"], d.get("keyBase64")) for d in received] == [("order-42", None), (None, "//4=")]


def test_a_tombstone_is_processed_counted_and_keeps_its_key(tmp_path: Path) -> None:
    store, published = run([record(0, None, b"deleted-id")], tmp_path)
    try:
        body = detail(store, 0)
        assert store.counts().processed == 1 and store.counts().failed == 0
    finally:
        store.close()
    assert (body["dataType"], body["status"], body["rowCount"], body["key"]) == (
        TOMBSTONE,
        PROCESSED,
        0,
        "deleted-id",
    )
    assert (body["payload"], body["valueBase64"], body["sizeBytes"], body["error"]) == (
        None,
        None,
        None,
        None,
    )
    assert [name for name, _ in published][-1] == events.PROCESSING_COMPLETED


def test_an_undecodable_value_keeps_its_first_64_kib(tmp_path: Path) -> None:
    small = b"\x00\x00\x00\x00\x07\x02\x0a"
    large = bytes(range(256)) * 400  # 100 KiB, not UTF-8
    store, _ = run([record(0, small), record(1, large), record(2, b'{"ok": true}')], tmp_path)
    try:
        kept, cut, decoded = detail(store, 0), detail(store, 1), detail(store, 2)
        listed = store.logs()
    finally:
        store.close()
    assert (kept["status"], kept["dataType"]) == (FAILED, SINGLE_MESSAGE) and "NUL" in kept["error"]
    assert base64.b64decode(kept["valueBase64"]) == small and kept["valueTruncated"] is False
    assert base64.b64decode(cut["valueBase64"]) == large[: record_meta.MAX_KEPT_VALUE_BYTES]
    assert cut["valueTruncated"] is True and cut["sizeBytes"] == len(large)
    assert (decoded["valueBase64"], decoded["valueTruncated"]) == (None, False)
    assert all(row.value_bytes is None for row in listed)  # lists never read the kept bytes


def test_the_deserializer_decodes_what_json_and_csv_cannot(tmp_path: Path) -> None:
    def deserializer(value: bytes, headers: list) -> dict:
        if value[:1] != b"\x00":
            raise ValueError(f"unknown magic byte {value[0]:#04x}")
        return {"schema": int.from_bytes(value[1:5], "big"), "headers": [name for name, _ in headers]}

    records = [record(0, b"\x00\x00\x00\x00\x05xyz", headers=[("h", b"1")]), record(1, b"\x01zz")]
    store, published = run(records, tmp_path, deserializer=deserializer)
    try:
        good, bad = detail(store, 0), detail(store, 1)
    finally:
        store.close()
    assert (good["status"], good["payload"], good["valueBase64"]) == (
        PROCESSED,
        {"schema": 5, "headers": ["h"]},
        None,
    )
    assert (
        bad["status"] == FAILED and bad["error"] == "DESERIALIZER failed: ValueError: unknown magic byte 0x01"
    )
    assert base64.b64decode(bad["valueBase64"]) == b"\x01zz"
    failed = [data for name, data in published if name == events.PROCESSING_FAILED]
    assert [d["error"] for d in failed] == [bad["error"]]


def test_hostile_headers_are_cut_whole_and_said_to_be(tmp_path: Path) -> None:
    many = [(f"h{i}", b"v" * 1000) for i in range(100)]  # ~100 KB of headers
    store, _ = run([record(0, b"{}", headers=many)], tmp_path)
    try:
        body = detail(store, 0)
    finally:
        store.close()
    assert body["headersTruncated"] is True
    kept = body["headers"]
    assert 0 < len(kept) < 100 and [h["key"] for h in kept] == [f"h{i}" for i in range(len(kept))]
    assert all(h["value"] == "v" * 1000 for h in kept)
    assert sum(len(h["key"]) + len(h["value"]) for h in kept) <= record_meta.MAX_HEADERS_CHARS


def test_header_entries_never_mangle_bytes() -> None:
    entries, cut = record_meta.header_entries([("a", b"caf\xc3\xa9"), ("b", b"caf\xe9"), ("c", b"")])
    assert not cut
    assert entries == [
        {"key": "a", "value": "café"},
        {"key": "b", "valueBase64": "Y2Fm6Q=="},
        {"key": "c", "value": ""},
    ]
    assert record_meta.key_fields(b"") == ("", None) and record_meta.key_fields(None) == (None, None)


def test_an_attached_dashboard_reads_the_same_metadata_over_rest(tmp_path: Path) -> None:
    """dashboard/remote_source.py's log_row: REST body -> LogRow -> the same REST body."""
    from dashboard.remote_source import log_row

    headers = [("trace", b"a"), ("trace", b"\xff"), ("n", None)]
    store, _ = run([record(0, b"\x00\xff" * 10, b"\xfe", headers), record(1, None, b"k")], tmp_path)
    try:
        bodies = [detail(store, 0), detail(store, 1)]
    finally:
        store.close()
    for body in bodies:
        assert log_row(wire.parse(wire.LogDetailBody, body)).to_api(with_payload=True) == body
