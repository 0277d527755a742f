"""Logs explorer: filter stored records (payload, key, headers), open one with its payload and
headers, export the whole filtered set as CSV."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from backend.events import CSV_BATCH, FAILED, PROCESSED, TOMBSTONE
from backend.store import RecordMatch
from dashboard import fmt, ui

PAGE_SIZES = [50, 100, 250, 1000]
DETAIL_ROWS = 1000
#: The export's progress bar moves every this many records.
PROGRESS_EVERY = 1000


def _input(label: str, key: str, placeholder: str, width: int, help: str | None = None) -> str | None:
    """A filter's text, or None when left empty."""
    value = st.text_input(label, key=key, placeholder=placeholder, width=width, help=help)
    return value.strip() or None


def build_export(filters: dict[str, Any], total: int) -> tuple[Path, int]:
    """Write every matching record into a temporary CSV file, a row at a time, with a progress bar."""
    bar = st.progress(0.0, text=f"Exporting {fmt.plural(total, 'record')}…")
    descriptor, name = tempfile.mkstemp(prefix="kafka-logs-", suffix=".csv")
    written = 0
    with open(descriptor, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        for number, cells in enumerate(src.export_logs(**filters)):
            writer.writerow(cells)
            written = number  # the first row holds the column names
            if number and number % PROGRESS_EVERY == 0:
                bar.progress(
                    min(1.0, number / max(total, 1)), text=f"{number:,} of {total:,} records written"
                )
    bar.empty()
    return Path(name), written


def kept_bytes(data: bytes, size: int | None, truncated: bool) -> None:
    """The kept bytes of a value that could not be decoded, as a hex dump or as text (inert)."""
    view = st.segmented_control(
        "View", ["Hex", "Text"], default="Hex", key="logs_bytes_view", required=True,
        help="The first bytes of the value, kept because it could not be decoded",
    )  # fmt: skip
    shown = data[: fmt.HEX_SHOWN_BYTES]
    with st.container(height=420, border=False):  # 4 KiB are 256 lines: scroll, not a page of them
        if view == "Text":
            st.code(shown.decode("utf-8", errors="replace"), language=None, wrap_lines=True)
        else:
            st.code(fmt.hex_dump(shown), language=None)
    notes = [f"{len(shown):,} of {len(data):,} kept bytes shown"]
    if truncated:
        notes.append(f"the value had {fmt.count(size)} bytes; the first {len(data):,} were kept")
    st.caption(" · ".join(notes) + ".")


def file_size(n: int) -> str:
    """Bytes as people read them: 820 bytes, 12.4 kB, 3.1 MB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,} bytes"


def drop_export() -> None:
    """Forget (and delete) the prepared export file of this session."""
    prepared = st.session_state.pop("logs_export", None)
    if prepared:
        Path(prepared["path"]).unlink(missing_ok=True)


src = ui.source()
ui.header(
    "Logs explorer",
    "Every stored record, newest first. Filter by payload, key or header, select a row for its full "
    "payload and headers, export every match.",
    refresh=True,
)
# --- filters -----------------------------------------------------------------------------------
topics = src.topics()
with st.container(horizontal=True, vertical_alignment="bottom", gap="medium"):
    topic = st.selectbox("Topic", ["All topics", *topics], key="logs_topic", width=260)
    status = st.segmented_control(
        "Status", ["All", PROCESSED, FAILED], default="All", key="logs_status", required=True
    )
    window = ui.time_range("logs_range", default="All")
with st.container(horizontal=True, vertical_alignment="bottom", gap="medium"):
    text = st.text_input(
        "Search", key="logs_text", placeholder="Text in the payload, error, key or a header value", width=520
    ).strip()
    size = st.selectbox("Rows per page", PAGE_SIZES, index=1, key="logs_size", width=140)
    page_slot = st.empty()
with st.container(horizontal=True, vertical_alignment="bottom", gap="medium"):
    key = _input("Key", "logs_key", "The record key, e.g. customer-42", 260)
    key_match = st.segmented_control(
        "Key match", ["Exact", "Prefix"], default="Exact", key="logs_key_match", required=True
    )
    header = _input("Header", "logs_header", "A header name, e.g. trace-id", 220)
    header_value = _input(
        "Header value", "logs_header_value", "Its exact value", 220,
        help="Of the header named at its left, or of any header when no name is given",
    )  # fmt: skip

match = RecordMatch(key, key_match == "Prefix", header, header_value)
filters = {
    "status": None if status in (None, "All") else status,
    "topic": None if topic == "All topics" else topic,
    "since_ms": window.since_ms,
    "until_ms": window.until_ms,
    "text": text or None,
    "match": None if match.empty else match,
}
total = src.count_logs(**filters)
pages = max(1, -(-total // size))
if st.session_state.get("logs_page", 1) > pages:  # fewer pages than before: back to the first
    st.session_state["logs_page"] = 1
with page_slot:
    page = st.number_input(
        f"Page (of {pages:,})", min_value=1, max_value=pages, value=1, step=1, key="logs_page", width=160
    )
page = min(int(page), pages)
rows = src.logs(limit=size, offset=(page - 1) * size, **filters)
shown_as = [status, topic, window.label, text, key, key_match, header, header_value]

# --- table -------------------------------------------------------------------------------------
first = (page - 1) * size + 1 if rows else 0
st.caption(
    f"**{fmt.count(total)}** matching {'record' if total == 1 else 'records'} in {window.label} · "
    f"showing {fmt.count(first)}–"
    f"{fmt.count(first + len(rows) - 1 if rows else 0)}"
)
if not rows:
    st.info(
        "No records match. Widen the time range, clear the search or the key and header filters, "
        "or send something from the Producer page.",
        icon=":material/search_off:",
    )
    st.stop()

frame = fmt.logs_frame(rows)
# A selection is a row number: the key changes with what the rows are (filters, page, newest row),
# so after a refresh that shifted the rows the selection is cleared instead of pointing elsewhere.
table_key = (
    "logs_table_"
    + hashlib.sha1(json.dumps([*shown_as, page, size, rows[0].log_id], default=str).encode()).hexdigest()[:16]
)
selection = st.dataframe(
    fmt.styled_status(frame),
    hide_index=True,
    width="stretch",
    height=min(38 + 35 * len(frame), 520),
    on_select="rerun",
    selection_mode="single-row",
    key=table_key,
    placeholder="",
    column_order=[c for c in fmt.LOG_COLUMNS if c != "log_id" and not (c == "error" and status == PROCESSED)],
    column_config={
        "received": st.column_config.DatetimeColumn("Received", format="YYYY-MM-DD HH:mm:ss.SSS"),
        "topic": "Topic",
        "partition": st.column_config.NumberColumn("Part.", width="small"),
        "offset": st.column_config.TextColumn("Offset", width="small"),
        "key": st.column_config.TextColumn("Key", width="medium", help="base64: a key that is not UTF-8"),
        "status": "Status",
        "rows": st.column_config.NumberColumn("Rows", format=fmt.COUNT_FORMAT, width="small"),
        "consumer": "Consumer",
        "latency_ms": st.column_config.NumberColumn("Latency", format="%,d ms", help="Received → completed"),
        "error": st.column_config.TextColumn("Error", width="medium"),
        "payload": st.column_config.TextColumn("Payload", width="large"),
        "type": st.column_config.TextColumn("Type", width="small"),
    },
)
# --- export: the whole filtered set, streamed into a file, then offered for download ---------------
# An export belongs to the filters it was made for: changing one drops it (records that arrive later
# do not: the download says how many records it holds).
export_for = hashlib.sha1(json.dumps(shown_as, default=str).encode()).hexdigest()
prepared = st.session_state.get("logs_export")
if prepared and (prepared["for"] != export_for or not Path(prepared["path"]).exists()):
    drop_export()
    prepared = None
with st.container(horizontal=True, vertical_alignment="center", gap="small"):
    if st.button(
        f"Export {fmt.plural(total, 'matching record')} as CSV",
        icon=":material/file_export:",
        key="logs_export_build",
        help="Every record the filters match (not only this page): keys, headers as JSON text, "
        "kafkaTimestamp, full payloads; times in UTC",
    ):
        drop_export()
        path, written = build_export(filters, total)
        prepared = {"for": export_for, "path": str(path), "rows": written}
        st.session_state["logs_export"] = prepared
    if prepared is not None:
        export_path = prepared["path"]
        st.download_button(
            f"Download the CSV ({fmt.plural(prepared['rows'], 'record')}, "
            f"{file_size(os.path.getsize(export_path))})",
            data=lambda: Path(export_path).read_bytes(),
            file_name="kafka-logs.csv",
            mime="text/csv",
            icon=":material/download:",
            type="primary",
            key="logs_export_download",
        )

# --- detail ------------------------------------------------------------------------------------
chosen = selection.selection.rows if selection is not None else []
st.divider()
if not chosen:
    st.caption("Select a row (the box at its left) to see the record's full detail and payload.")
    st.stop()

record = src.log(rows[chosen[0]].log_id) or rows[chosen[0]]
st.subheader(f"{record.topic} · partition {record.partition} · offset {record.offset}", anchor=False)
meta, body = st.columns([2, 3], gap="large")
with meta:
    if record.error:
        st.markdown("**Error**")
        st.code(record.error, language=None, wrap_lines=True)
    st.markdown("**Record**")
    fields = [
        (name, "" if value is None else str(value))
        for name, value in record.to_api().items()
        if name
        not in ("headers", "producedAt")  # the headers have their own table; producedAt = kafkaTimestamp
    ]
    st.dataframe(
        pd.DataFrame(fields, columns=["field", "value"]),
        hide_index=True,
        width="stretch",
        height=38 + 35 * len(fields),
        column_config={"field": st.column_config.TextColumn("Field", width="small"), "value": "Value"},
    )
    headers = fmt.headers_frame(record.headers)
    st.markdown(
        f"**Headers** · {len(headers):,}"
        + (" (some left out: over 16 KiB)" if record.headers_truncated else "")
    )
    if headers.empty:
        st.caption("The record has no headers.")
    else:
        st.dataframe(
            headers,
            hide_index=True,
            width="stretch",
            height=min(38 + 35 * len(headers), 320),
            key="logs_headers",
            column_config={
                "#": st.column_config.NumberColumn("#", width="small", help="Order in the record"),
                "name": st.column_config.TextColumn("Name"),
                "value": st.column_config.TextColumn("Value", help="base64: a value that is not UTF-8"),
            },
        )
with body:
    st.markdown(f"**Payload** · {record.data_type} · {fmt.plural(record.row_count, 'row')}")
    payload = record.payload
    if payload is None and record.value_bytes is not None:
        st.caption("The value could not be decoded: its kept bytes are shown below.")
    elif payload is None and record.data_type == TOMBSTONE:
        st.caption("A tombstone: the record's value is null (a delete on a compacted topic).")
    elif payload is None:
        st.caption("No payload stored: the record could not be decoded (see the error).")
    elif record.data_type == CSV_BATCH and isinstance(payload, list):
        shown = payload[:DETAIL_ROWS]
        st.dataframe(pd.DataFrame.from_records(shown), hide_index=True, width="stretch", height=320)
        if len(payload) > DETAIL_ROWS:
            st.caption(f"First {DETAIL_ROWS:,} of {len(payload):,} rows.")
    elif isinstance(payload, str):
        st.code(payload, language=None, wrap_lines=True)
    else:
        st.json(payload, expanded=2)
    if record.result is not None:
        st.markdown("**Processor result**")
        if isinstance(record.result, str):
            st.code(record.result, language=None, wrap_lines=True)
        else:
            st.json(record.result, expanded=1)
if record.value_bytes is not None:  # full width: a hex dump line is 75 characters
    st.markdown("**Value bytes**")
    kept_bytes(record.value_bytes, record.size_bytes, record.value_truncated)
