"""The Logs explorer with the records' own metadata (issue 13): keys, headers, kept value bytes.

* the store's filters (key exact / prefix / binary, header name / value, text over key and
  header values) and its export iterator (keyset pages, bounded memory);
* the Logs page under AppTest on a real backend: the Key column, the filters, the headers table
  in record order and the hex view of kept bytes, the export of the whole filtered set;
* the export over REST (``GET /api/analytics/logs/export``) through the attached dashboard's
  RemoteSource, against a served backend.

The backend is real (embedded broker, store in a temporary DATA_DIR, HTTP servers); rows are
stored directly, as the pipeline stores them, so every filter has a known answer.
"""

from __future__ import annotations

import base64
import csv
import gc
import io
import json
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from backend import export
from backend.config import Settings
from backend.events import FAILED, PROCESSED, SINGLE_MESSAGE, make_log_id
from backend.store import LogRow, RecordMatch, Store
from dashboard import fmt, runtime
from dashboard.source import LocalSource, RemoteSource
from tests.support import HOSTILE, ServedBackend

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "dashboard_app.py"
META_TOPIC = "meta-orders"
BULK_TOPIC = "bulk-orders"
BULK_ROWS = 2_500
#: A Confluent Avro wire-format value: magic byte 0, schema id 7, then the Avro bytes.
BINARY_VALUE = b"\x00\x00\x00\x00\x07" + bytes(range(256)) * 20
BINARY_KEY = b"\xff\xfe\x00k"


def row(topic: str, offset: int, received_ms: int, **fields: Any) -> LogRow:
    """A stored PROCESSED record (``fields`` override any LogRow field)."""
    values: dict[str, Any] = {
        "log_id": make_log_id("explorer", topic, 0, offset),
        "cluster_id": "explorer",
        "topic": topic,
        "partition": 0,
        "offset": offset,
        "record_key": None,
        "data_type": SINGLE_MESSAGE,
        "row_count": 1,
        "status": PROCESSED,
        "consumer_id": "consumer-1",
        "error": None,
        "produced_ms": received_ms - 7,
        "received_ms": received_ms,
        "started_ms": received_ms + 1,
        "completed_ms": received_ms + 2,
        "size_bytes": 20,
        "payload": {"orderId": offset},
    }
    values.update(fields)
    return LogRow(**values)


def meta_rows(now_ms: int) -> list[LogRow]:
    """Records with text, binary and no keys; headers (repeated names, binary values); a kept value."""
    return [
        row(
            META_TOPIC,
            0,
            now_ms - 5000,
            record_key="customer-1",
            headers=[
                {"key": "trace-id", "value": "abc-123"},
                {"key": "hop", "value": "gateway"},
                {"key": "hop", "value": "billing"},
            ],
        ),
        row(
            META_TOPIC,
            1,
            now_ms - 4000,
            record_key="customer-10",
            headers=[{"key": "trace-id", "value": "zzz-999"}],
        ),
        row(META_TOPIC, 2, now_ms - 3000, record_key="other-2", payload={"note": HOSTILE}),
        row(
            META_TOPIC,
            3,
            now_ms - 2000,
            record_key=None,
            key_base64=base64.b64encode(BINARY_KEY).decode(),
            headers=[{"key": "bin", "valueBase64": base64.b64encode(b"\xff\x00").decode()}],
        ),
        row(
            META_TOPIC,
            4,
            now_ms - 1000,
            record_key="avro-1",
            status=FAILED,
            error="not valid UTF-8: 'utf-8' codec can't decode byte 0xff",
            payload=None,
            size_bytes=len(BINARY_VALUE),
            value_bytes=BINARY_VALUE,
            headers=[{"key": "=cmd|' /C calc'!A0", "value": "-2+3"}],
        ),
    ]


def bulk_rows(now_ms: int, count: int, topic: str = BULK_TOPIC) -> list[LogRow]:
    """Many records; every third carries the header ``tenant: blue`` (the filtered set)."""
    return [
        row(
            topic,
            offset,
            now_ms - 100_000 + offset // 3,  # ties in received_ms: keyset pages must not lose any
            record_key=f"k-{offset}",
            headers=[{"key": "tenant", "value": "blue" if offset % 3 == 0 else "red"}],
            payload={"orderId": offset, "text": '=HYPERLINK("http://x")' if offset == 3 else "ok"},
        )
        for offset in range(count)
    ]


# --- the store's filters ------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path)
    opened.save(meta_rows(int(time.time() * 1000)))
    yield opened
    opened.close()


def offsets(rows: list[LogRow]) -> list[int]:
    return sorted(r.offset for r in rows)


@pytest.mark.parametrize(
    ("match", "text", "expected"),
    [
        (RecordMatch(key="customer-1"), None, [0]),
        (RecordMatch(key="customer-1", key_prefix=True), None, [0, 1]),
        (RecordMatch(key="customer-%", key_prefix=True), None, []),  # no wildcard
        (RecordMatch(key="Customer-1"), None, []),  # keys are exact bytes
        (RecordMatch(key="base64:" + base64.b64encode(BINARY_KEY).decode()), None, [3]),
        (RecordMatch(header="hop"), None, [0]),
        (RecordMatch(header="hop", header_value="billing"), None, [0]),  # the second "hop" counts
        (RecordMatch(header="trace-id"), None, [0, 1]),
        (RecordMatch(header="trace-id", header_value="abc"), None, []),  # a value is exact
        (RecordMatch(header="bin", header_value="base64:/wA="), None, [3]),
        (RecordMatch(header_value="billing"), None, [0]),  # a value alone: in any header
        (RecordMatch(header="trace-id", header_value="billing"), None, []),
        (RecordMatch(header="=cmd|' /C calc'!A0"), None, [4]),
        (None, "ZZZ-9", [1]),  # text finds a header value, case-insensitive
        (None, "other-", [2]),  # ... and a key
        (None, "hop", []),  # ... header names are filters of their own, not text
        (RecordMatch(key="customer", key_prefix=True), "abc-123", [0]),
    ],
)
def test_key_and_header_filters(
    store: Store, match: RecordMatch | None, text: str | None, expected: list[int]
) -> None:
    assert offsets(store.logs(100, text=text, match=match)) == expected
    assert store.count_logs(text=text, match=match) == len(expected)
    assert offsets(list(store.iter_logs(text=text, match=match))) == expected


def test_the_export_iterator_reads_every_row_once_across_pages(tmp_path: Path) -> None:
    store = Store(tmp_path)
    try:
        store.save(bulk_rows(int(time.time() * 1000), 1_234))
        seen = [r.log_id for r in store.iter_logs(page_size=100)]
        assert len(seen) == len(set(seen)) == 1_234
        received = [r.received_ms for r in store.iter_logs(page_size=100)]
        assert received == sorted(received, reverse=True)  # newest first
        blue = list(store.iter_logs(page_size=7, match=RecordMatch(header="tenant", header_value="blue")))
        assert offsets(blue) == list(range(0, 1_234, 3))
    finally:
        store.close()


def test_exporting_streams_in_bounded_memory(tmp_path: Path) -> None:
    """20,000 rows: the export's peak is a fraction of what the rows weigh as a list (streaming)."""
    store = Store(tmp_path)
    try:
        store.save(bulk_rows(int(time.time() * 1000), 20_000))
        gc.collect()
        tracemalloc.start()
        listed = store.logs(limit=20_000)
        as_list = tracemalloc.get_traced_memory()[0]
        assert len(listed) == 20_000
        del listed
        gc.collect()
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        written = sum(chunk.count("\n") for chunk in export.csv_chunks(store.iter_logs()))
        peak = tracemalloc.get_traced_memory()[1] - start
        tracemalloc.stop()
        assert written == 20_001  # the header and every row (no newline inside these cells)
        assert peak < as_list / 2, (peak, as_list)
    finally:
        store.close()


def test_csv_cells_are_defused_and_carry_the_metadata() -> None:
    [*_, binary] = meta_rows(1_700_000_000_000)
    cells = dict(zip(export.COLUMNS, export.cells(binary), strict=True))
    assert cells["key"] == "avro-1"
    assert json.loads(cells["headers"]) == [{"key": "=cmd|' /C calc'!A0", "value": "-2+3"}]
    assert cells["kafkaTimestamp"] == "2023-11-14T22:13:18.993Z"
    assert export.defuse("=1+1") == "'=1+1" and export.defuse("-2+3") == "'-2+3"
    assert export.defuse("ok") == "ok" and export.defuse(5) == 5


def test_the_hex_dump_is_plain_text_with_an_ascii_column() -> None:
    dump = fmt.hex_dump(b"\x00\x00\x00\x00\x07<script>" + bytes(range(200)), limit=32)
    lines = dump.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("00000000  00 00 00 00 07 3c 73 63")
    assert lines[0].endswith(".....<script>...")
    assert fmt.key_cell(None, "A" * 40) == "base64:" + "A" * 23 + "…"
    assert fmt.key_cell("k", None) == "k" and fmt.key_cell(None, None) == ""


# --- the Logs page and the exports on a real backend -------------------------------------------


@pytest.fixture(scope="module")
def served_settings() -> dict[str, Any]:
    """On its own embedded broker (Apache Kafka is not needed here)."""
    return {"bootstrap_servers": None, "consumer_count": 1}


@pytest.fixture(scope="module")
def filled(served: ServedBackend) -> ServedBackend:
    assert served.backend.store is not None
    now = int(time.time() * 1000)
    served.backend.store.save(meta_rows(now) + bulk_rows(now, BULK_ROWS))
    return served


@pytest.fixture
def local(filled: ServedBackend) -> Iterator[LocalSource]:
    source = LocalSource(filled.backend)
    runtime.install(source)
    yield source
    runtime.install(None)


def logs_page() -> AppTest:
    app = AppTest.from_file(str(APP), default_timeout=60)
    app.run()
    app.switch_page("pages/logs.py").run()
    return app


def problems(app: AppTest) -> list[str]:
    return [str(e.value) for e in app.exception] + [str(e.value) for e in app.error]


def caption_count(app: AppTest) -> str:
    return next(c.value for c in app.caption if "matching record" in c.value)


def logs_table(app: AppTest) -> Any:
    return next(df for df in app.dataframe if (df.key or "").startswith("logs_table_"))


def test_the_logs_page_shows_keys_and_filters_by_key_and_header(local: LocalSource) -> None:
    app = logs_page()
    app.selectbox(key="logs_topic").set_value(META_TOPIC).run()
    assert not problems(app), problems(app)
    assert "**5** matching records" in caption_count(app)
    keys = list(logs_table(app).value["key"])
    assert keys == [
        "avro-1",
        "base64:" + base64.b64encode(BINARY_KEY).decode(),
        "other-2",
        "customer-10",
        "customer-1",
    ]

    app.text_input(key="logs_key").set_value("customer-1").run()
    assert "**1** matching record " in caption_count(app)
    app.segmented_control(key="logs_key_match").set_value("Prefix").run()
    assert "**2** matching records" in caption_count(app)
    app.text_input(key="logs_key").set_value("").run()

    app.text_input(key="logs_header").set_value("trace-id").run()
    assert "**2** matching records" in caption_count(app)
    app.text_input(key="logs_header_value").set_value("zzz-999").run()
    assert "**1** matching record " in caption_count(app)
    assert list(logs_table(app).value["key"]) == ["customer-10"]
    app.text_input(key="logs_header_value").set_value("billing").run()
    assert "**0** matching records" in caption_count(app)  # billing is a hop, not a trace id
    app.text_input(key="logs_header").set_value("").run()
    assert "**1** matching record " in caption_count(app)  # a value alone: in any header
    app.text_input(key="logs_header_value").set_value("").run()

    app.text_input(key="logs_text").set_value("ABC-123").run()  # text search finds a header value
    assert not problems(app)
    assert list(logs_table(app).value["key"]) == ["customer-1"]


def select_first_row(app: AppTest) -> None:
    app.session_state[logs_table(app).key] = {"selection": {"rows": [0], "columns": [], "cells": []}}
    app.run()
    assert not problems(app), problems(app)


def headers_table(app: AppTest) -> Any:
    return next(df.value for df in app.dataframe if list(df.value.columns) == ["#", "name", "value"])


def test_the_detail_shows_headers_in_order_and_a_hex_view_of_kept_bytes(local: LocalSource) -> None:
    app = logs_page()
    app.selectbox(key="logs_topic").set_value(META_TOPIC).run()
    app.text_input(key="logs_key").set_value("customer-1").run()
    select_first_row(app)
    headers = headers_table(app)
    assert headers.to_dict("records") == [
        {"#": 1, "name": "trace-id", "value": "abc-123"},
        {"#": 2, "name": "hop", "value": "gateway"},
        {"#": 3, "name": "hop", "value": "billing"},
    ]
    fields = dict(next(df for df in app.dataframe if "field" in df.value).value.values.tolist())
    assert fields["kafkaTimestamp"].endswith("Z") and fields["key"] == "customer-1"

    app.text_input(key="logs_key").set_value("avro-1").run()
    select_first_row(app)
    codes = [c.value for c in app.code]
    dump = next(c for c in codes if c.startswith("00000000  00 00 00 00 07 00 01 02"))
    assert len(dump.splitlines()) == fmt.HEX_SHOWN_BYTES // 16  # the first 4 KiB
    assert any(f"4,096 of {len(BINARY_VALUE):,} kept bytes shown" in c.value for c in app.caption)
    [binary_header] = headers_table(app).to_dict("records")
    assert binary_header["name"] == "=cmd|' /C calc'!A0"  # shown as text, as it is
    app.segmented_control(key="logs_bytes_view").set_value("Text").run()
    assert not problems(app)
    assert any("\ufffd" in c.value for c in app.code)  # bytes that are not UTF-8, replaced
    # Nothing of the data reaches markup: the hostile note is in a table cell or a code block only.
    for element in [*app.markdown, *app.caption]:
        assert "<script" not in str(element.value)


def parse(rows: Iterator[list[Any]] | str) -> list[dict[str, str]]:
    if isinstance(rows, str):
        return list(csv.DictReader(io.StringIO(rows)))
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return list(csv.DictReader(io.StringIO(buffer.getvalue())))


def assert_blue_export(records: list[dict[str, str]]) -> None:
    """The whole filtered set (tenant: blue): every row once, with key, headers and payload."""
    expected = list(range(0, BULK_ROWS, 3))
    assert len(expected) > 800  # more than a page of the table would ever show
    assert sorted(int(r["offset"]) for r in records) == expected
    by_offset = {int(r["offset"]): r for r in records}
    assert by_offset[0]["key"] == "k-0"
    assert json.loads(by_offset[0]["headers"]) == [{"key": "tenant", "value": "blue"}]
    assert json.loads(by_offset[0]["payload"]) == {"orderId": 0, "text": "ok"}
    assert by_offset[0]["kafkaTimestamp"].endswith("Z")
    assert json.loads(by_offset[3]["payload"])["text"].startswith("=HYPERLINK")  # inside JSON text


def test_the_page_exports_the_whole_filtered_set(local: LocalSource) -> None:
    app = logs_page()
    app.selectbox(key="logs_topic").set_value(BULK_TOPIC).run()
    app.selectbox(key="logs_size").set_value(50).run()
    app.text_input(key="logs_header").set_value("tenant").run()
    app.text_input(key="logs_header_value").set_value("blue").run()
    assert f"**{len(range(0, BULK_ROWS, 3)):,}** matching records" in caption_count(app)
    [build] = [b for b in app.button if b.key == "logs_export_build"]
    build.click().run()
    assert not problems(app), problems(app)
    prepared = app.session_state["logs_export"]
    assert prepared["rows"] == len(range(0, BULK_ROWS, 3))
    assert_blue_export(parse(Path(prepared["path"]).read_text(encoding="utf-8")))
    # A change of filters drops the prepared file.
    app.text_input(key="logs_header_value").set_value("red").run()
    assert "logs_export" not in app.session_state
    assert not Path(prepared["path"]).exists()


def test_the_local_and_the_remote_source_export_the_same_rows(filled: ServedBackend) -> None:
    blue = RecordMatch(header="tenant", header_value="blue")
    local_rows = parse(LocalSource(filled.backend).export_logs(topic=BULK_TOPIC, match=blue))
    assert_blue_export(local_rows)
    remote = RemoteSource(Settings(backend_url=filled.gateway, producer_port=filled.settings.producer_port))
    remote_rows = parse(remote.export_logs(topic=BULK_TOPIC, match=blue))
    assert_blue_export(remote_rows)
    assert remote_rows == local_rows
    # Counts and lists over REST take the same filters.
    assert remote.count_logs(topic=BULK_TOPIC, match=blue) == len(local_rows)
    prefix = RecordMatch(key="customer-1", key_prefix=True)
    assert [r.record_key for r in remote.logs(match=prefix)] == ["customer-10", "customer-1"]
    [kept] = remote.logs(match=RecordMatch(key="avro-1"))
    assert remote.log(kept.log_id).value_bytes == BINARY_VALUE  # type: ignore[union-attr]
    # The formula-looking header name stays defused in the streamed CSV.
    [avro] = parse(remote.export_logs(match=RecordMatch(key="avro-1")))
    assert json.loads(avro["headers"])[0]["value"] == "-2+3"
    assert remote.count_logs(text="zzz-999") == 1
