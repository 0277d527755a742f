"""Failed messages: failures grouped by error, with a retry that sends the record again."""

from __future__ import annotations

import hashlib
from collections import deque

import pandas as pd
import streamlit as st

from dashboard import fmt, retry, ui

RECORDS_SHOWN = 200
RETRY_LIMIT = 500
RETRIED_KEPT = 200

src = ui.source()
ui.header(
    "Failed messages",
    "Records the consumers could not process, grouped by what went wrong. Select a group to see its "
    "records and send them again.",
    refresh=True,
)
groups = src.error_groups()
failed_total = sum(g.count for g in groups)
numbers = st.columns(4)
numbers[0].metric("Failed records", fmt.count(failed_total))
numbers[1].metric(
    "Kinds of error",
    fmt.count(len(groups)),
    help="Errors that differ only in positions or values are one kind",
)
numbers[2].metric(
    "Can be retried", fmt.count(sum(g.retriable for g in groups)), help="Their decoded payload is stored"
)
numbers[3].metric("Resent this session", fmt.count(len(st.session_state.get("retried", ()))))

if not groups:
    st.success(
        "No failed records. Everything the consumers received was processed.", icon=":material/check_circle:"
    )
    st.stop()

with st.expander("What does a retry send?", icon=":material/help:"):
    st.markdown(
        "A retry produces a **new** record to the same topic, with the same key: the payload the consumer "
        "decoded, encoded again (compact JSON for a message, CSV with a header for a CSV batch), and the "
        "header `data-type`. The original bytes and other headers are not stored, so:\n"
        "- a record that failed to **decode** (invalid JSON, invalid UTF-8, bad CSV) has no stored payload; "
        "its bytes would fail the same way again, so it is not retriable: fix its producer instead;\n"
        "- a record that failed in **processing** (your processor raised) is sent again as decoded.\n\n"
        "The failed record stays in the store; the retried one gets its own log entry."
    )

frame = pd.DataFrame.from_records(
    [
        {
            "count": g.count,
            "retriable": g.retriable,
            "error": g.pattern,
            "topics": ", ".join(sorted(g.topics)),
            "first": fmt.local_time(g.first_ms),
            "last": fmt.local_time(g.last_ms),
        }
        for g in groups
    ]
)
st.subheader("Errors", anchor=False)
picked = st.dataframe(
    frame,
    hide_index=True,
    width="stretch",
    height=min(38 + 35 * len(frame), 360),
    on_select="rerun",
    selection_mode="single-row",
    # Selections are row numbers: a new key when the groups change clears a stale selection.
    key="failed_groups_" + hashlib.sha1("\n".join(g.pattern for g in groups).encode()).hexdigest()[:16],
    column_config={
        "count": st.column_config.NumberColumn("Records", format=fmt.COUNT_FORMAT, width="small"),
        "retriable": st.column_config.NumberColumn("Retriable", format=fmt.COUNT_FORMAT, width="small"),
        "error": st.column_config.TextColumn(
            "Error (numbers and quoted values shown as # and '…')", width="large"
        ),
        "topics": st.column_config.TextColumn("Topics", width="medium"),
        "first": st.column_config.DatetimeColumn("First", format="MMM D, HH:mm:ss"),
        "last": st.column_config.DatetimeColumn("Last", format="MMM D, HH:mm:ss"),
    },
)
rows = picked.selection.rows if picked is not None else []
if not rows:
    st.caption("Select an error (the box at its left) to see its records and retry them.")
    st.stop()

group = groups[rows[0]]
records = src.failed_records(group, RECORDS_SHOWN)
st.subheader(fmt.plural(group.count, "record"), anchor=False)
st.code(group.example, language=None, wrap_lines=True)

table = pd.DataFrame.from_records(records)
table["received"] = table["received_ms"].map(fmt.local_time)
table["retriable"] = table["retriable"].astype(bool)
chosen = st.dataframe(
    table[["received", "topic", "partition", "offset", "data_type", "consumer_id", "retriable", "error"]],
    hide_index=True,
    width="stretch",
    height=min(38 + 35 * len(table), 360),
    on_select="rerun",
    selection_mode="multi-row",
    key=f"failed_records_{rows[0]}_{group.count}",
    column_config={
        "received": st.column_config.DatetimeColumn("Received", format="YYYY-MM-DD HH:mm:ss.SSS"),
        "topic": "Topic",
        "partition": st.column_config.NumberColumn("Partition", width="small"),
        "offset": st.column_config.NumberColumn("Offset", format="plain"),
        "data_type": "Type",
        "consumer_id": "Consumer",
        "retriable": st.column_config.CheckboxColumn("Retriable"),
        "error": st.column_config.TextColumn("Error", width="large"),
    },
)
if group.count > len(records):
    st.caption(f"The newest {fmt.count(len(records))} of {fmt.count(group.count)}.")

selected = [records[i] for i in (chosen.selection.rows if chosen is not None else [])]
retriable_selected = [r for r in selected if r["retriable"]]
buttons = st.columns([2, 2, 3], vertical_alignment="center")
retry_selected = buttons[0].button(
    f"Retry {len(retriable_selected)} selected",
    icon=":material/replay:",
    disabled=not retriable_selected,
    key="retry_selected",
)
retry_all = buttons[1].button(
    f"Retry all {min(group.retriable, RETRY_LIMIT):,} retriable",
    icon=":material/replay:",
    type="primary",
    disabled=group.retriable == 0,
    key="retry_all",
    help=f"At most {RETRY_LIMIT} at a time, newest first",
)
if group.retriable == 0:
    buttons[2].caption(
        "None of these can be retried: they could not be decoded, and the same bytes would fail again."
    )

if retry_selected or retry_all:
    targets = retriable_selected if retry_selected else retry.retriable_records(src, group, RETRY_LIMIT)
    retried = st.session_state.setdefault("retried", deque(maxlen=RETRIED_KEPT))
    progress = st.progress(0.0, text="Sending…")
    report = retry.resend(
        src,
        targets,
        lambda number, sent, total: progress.progress(number / total, text=f"Sent {sent} of {total}"),
    )
    retried.extendleft(report.resent)
    progress.empty()
    if report.sent:
        sent = fmt.plural(report.sent, "record")
        st.success(f"Sent {sent} again. Their outcomes appear on the Overview and in the Logs explorer.")
    for problem in report.problems[:5]:
        st.warning(fmt.plain(problem))

if st.session_state.get("retried"):
    st.subheader("Resent in this session", anchor=False)
    st.dataframe(
        pd.DataFrame.from_records(list(st.session_state["retried"])), hide_index=True, width="stretch"
    )
