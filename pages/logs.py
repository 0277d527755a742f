"""Logs explorer: filter stored records, open one with its payload, export what is shown."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import streamlit as st

from backend.events import CSV_BATCH, FAILED, PROCESSED
from dashboard import fmt, ui

PAGE_SIZES = [50, 100, 250, 1000]
DETAIL_ROWS = 1000

src = ui.source()
ui.header(
    "Logs explorer",
    "Every stored record, newest first. Filter, select a row for its full payload, export what you see.",
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
        "Search", key="logs_text", placeholder="Text in the payload or the error, e.g. an order id", width=520
    ).strip()
    size = st.selectbox("Rows per page", PAGE_SIZES, index=1, key="logs_size", width=140)
    page_slot = st.empty()

filters = {
    "status": None if status in (None, "All") else status,
    "topic": None if topic == "All topics" else topic,
    "since_ms": window.since_ms,
    "until_ms": window.until_ms,
    "text": text or None,
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

# --- table -------------------------------------------------------------------------------------
first = (page - 1) * size + 1 if rows else 0
st.caption(
    f"**{fmt.count(total)}** matching {'record' if total == 1 else 'records'} in {window.label} · "
    f"showing {fmt.count(first)}–"
    f"{fmt.count(first + len(rows) - 1 if rows else 0)}"
)
if not rows:
    st.info(
        "No records match. Widen the time range, clear the search, or send something from the Producer page.",
        icon=":material/search_off:",
    )
    st.stop()

frame = fmt.logs_frame(rows)
# A selection is a row number: the key changes with what the rows are (filters, page, newest row),
# so after a refresh that shifted the rows the selection is cleared instead of pointing elsewhere.
shown_as = [status, topic, window.label, text, page, size, rows[0].log_id]
table_key = "logs_table_" + hashlib.sha1(json.dumps(shown_as, default=str).encode()).hexdigest()[:16]
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
        "status": "Status",
        "rows": st.column_config.NumberColumn("Rows", format=fmt.COUNT_FORMAT, width="small"),
        "consumer": "Consumer",
        "latency_ms": st.column_config.NumberColumn("Latency", format="%,d ms", help="Received → completed"),
        "error": st.column_config.TextColumn("Error", width="medium"),
        "payload": st.column_config.TextColumn("Payload", width="large"),
        "type": st.column_config.TextColumn("Type", width="small"),
    },
)
st.download_button(
    "Download this row as CSV" if len(rows) == 1 else f"Download these {len(rows):,} rows as CSV",
    data=fmt.csv_bytes(fmt.export_frame(src.log(r.log_id) or r if r.stored_apart else r for r in rows)),
    file_name="kafka-logs.csv",
    mime="text/csv",
    icon=":material/download:",
    help="The rows on this page with full payloads (JSON text) and UTC times",
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
    fields = [(name, "" if value is None else str(value)) for name, value in record.to_api().items()]
    st.dataframe(
        pd.DataFrame(fields, columns=["field", "value"]),
        hide_index=True,
        width="stretch",
        height=38 + 35 * len(fields),
        column_config={"field": st.column_config.TextColumn("Field", width="small"), "value": "Value"},
    )
with body:
    st.markdown(f"**Payload** · {record.data_type} · {fmt.plural(record.row_count, 'row')}")
    payload = record.payload
    if payload is None:
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
