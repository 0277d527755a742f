"""Trends: volume, failure rate, latency, top errors and payload fields over time, with downloads."""

from __future__ import annotations

import re

import pandas as pd
import streamlit as st

from dashboard import charts, fmt, ui

MIN_BARS = 20

src = ui.source()
ui.header(
    "Trends",
    "How traffic, failures, latency and payload values change over time. Every chart has its data as CSV.",
    refresh=True,
)
with st.container(horizontal=True, vertical_alignment="bottom", gap="medium"):
    window = ui.time_range("trends_range", default="1 hour")
    chosen_bucket = ui.bucket_picker("trends_bucket")
    topics = st.multiselect("Topics", src.topics(), key="trends_topics", placeholder="All topics", width=320)

first_ms, last_ms = src.time_bounds()
if first_ms is None:
    st.info(
        "Nothing stored yet. Start the demo traffic on the Producer page to see trends.",
        icon=":material/hourglass_empty:",
    )
    st.stop()
since = window.since_ms
until = window.until_ms
# Auto buckets fit the data in the range, not the range: a minute of data in "24 hours" gets 1 s bars.
start = max(since, first_ms) if since is not None else first_ms
end = min(until, last_ms + 1) if until is not None else last_ms + 1
bucket = chosen_bucket or ui.auto_bucket(max(end - start, 1000))
# The time axis spans at least MIN_BARS buckets, so a burst does not fill the chart with one bar.
axis_start = start - start % bucket
axis_end = max(end - end % bucket + bucket, axis_start + MIN_BARS * bucket)
domain = (axis_start, axis_end)
scope = {"since_ms": since, "until_ms": until, "topics": topics or None}
# Counts survive RETENTION (per-minute aggregates); latency, errors and payload values need the logs.
kept_from = src.kept_from()
kept_only = (
    f" Only logs kept since {fmt.when(kept_from)}: older ones were pruned (RETENTION)."
    if kept_from is not None and (since is None or since < kept_from)
    else ""
)


def download(rows: list[dict], name: str, key: str) -> None:
    frame = pd.DataFrame.from_records(rows)
    for column in ("bucket", "first_ms", "last_ms"):
        if column in frame:
            frame[column] = pd.to_datetime(frame[column], unit="ms", utc=True)
    st.download_button(
        "CSV",
        data=fmt.csv_bytes(frame),
        file_name=re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80] + ".csv",
        mime="text/csv",
        icon=":material/download:",
        key=key,
        disabled=frame.empty,
        help=f"The data behind this chart ({len(frame)} rows, UTC times)",
    )


def section(title: str, caption: str) -> None:
    st.subheader(title, anchor=False)
    st.caption(caption)


volume = src.volume(bucket, **scope)
total = sum(row["messages"] for row in volume)
st.caption(
    f"**{fmt.count(total)}** records in {window.label}"
    + (f" on {len(topics)} topic(s)" if topics else " on all topics")
    + f" · one bar per {ui.bucket_label(bucket)}"
)
if not volume:
    st.info("No records in this time range. Choose a longer range.", icon=":material/search_off:")
    st.stop()

row1 = st.columns(2, gap="large")
with row1[0]:
    section("Volume by status", "Records received per bucket, processed and failed stacked.")
    by_status, by_type = st.tabs(["By status", "By data type"])
    with by_status:
        st.altair_chart(charts.volume_by_status(volume, bucket, domain), width="stretch")
    with by_type:  # tombstones are processed records of their own kind, not failures
        st.altair_chart(charts.volume_by_type(volume, bucket, domain), width="stretch")
    download(volume, "volume", "dl_volume_status")
with row1[1]:
    section("Volume by topic", "Records received per bucket and topic.")
    st.altair_chart(charts.volume_by_topic(volume, bucket, domain), width="stretch")
    download(volume, "volume-by-topic", "dl_volume_topic")

row2 = st.columns(2, gap="large")
with row2[0]:
    rate = src.failure_rate(bucket, **scope)
    failed = sum(row["failed"] or 0 for row in rate)
    overall = fmt.percent(failed / total if total else None)
    section("Failure rate", f"Share of records that failed per bucket · {overall} overall.")
    st.altair_chart(charts.failure_rate(rate, bucket, domain), width="stretch")
    download(rate, "failure-rate", "dl_failure_rate")
with row2[1]:
    kinds = {"processing": "Received → completed", "end_to_end": "Produced → completed"}
    section("Latency percentiles", "p50, p90 and p99 per bucket (nearest rank), in milliseconds." + kept_only)
    kind = st.segmented_control(
        "Latency",
        list(kinds),
        format_func=kinds.get,
        default="processing",
        key="trends_latency_kind",
        required=True,
        label_visibility="collapsed",
    )
    latency = src.latency(bucket, kind=kind or "processing", **scope)
    if latency:
        st.altair_chart(charts.latency(latency, bucket, domain), width="stretch")
    else:
        st.caption("No timings in this range.")
    download(latency, f"latency-{kind}", "dl_latency")

row3 = st.columns(2, gap="large")
with row3[0]:
    section("Top errors", "The most frequent failure reasons in this range." + kept_only)
    errors = src.top_errors(15, **scope)
    if errors:
        frame = pd.DataFrame.from_records(errors)
        frame["last"] = frame["last_ms"].map(fmt.local_time)
        st.dataframe(
            frame[["count", "error", "topics", "last"]],
            hide_index=True,
            width="stretch",
            column_config={
                "count": st.column_config.NumberColumn("Count", format=fmt.COUNT_FORMAT, width="small"),
                "error": st.column_config.TextColumn("Error", width="medium"),
                "topics": "Topics",
                "last": st.column_config.DatetimeColumn("Last seen", format="MMM D, HH:mm:ss"),
            },
        )
    else:
        st.success("No failures in this range.", icon=":material/check_circle:")
    download(errors, "top-errors", "dl_errors")
with row3[1]:
    fields = src.numeric_fields(**scope)
    read = fields[0].get("records", 0) if fields else 0
    sampled = (
        f" Counted in the newest {fmt.count(read)} records of this range."
        if fields and fields[0].get("sampled")
        else ""
    )
    section(
        "Payload field",
        "Any numeric field of the JSON messages or CSV rows (nested: a.b.c), aggregated per bucket."
        + sampled
        + kept_only,
    )
    if not fields:
        st.caption("No numeric payload fields in this range.")
    else:
        counts = {f["field"]: f["count"] for f in fields}
        with st.container(horizontal=True, vertical_alignment="bottom"):
            field = st.selectbox(
                "Field",
                list(counts),
                key="trends_field",
                format_func=lambda name: f"{name}  ({counts[name]:,} values)",
                width=280,
            )
            aggregate = st.segmented_control(
                "Aggregate", ["sum", "mean", "max"], default="sum", key="trends_aggregate", required=True
            )
        series = src.field_series(field, bucket, **scope)
        st.altair_chart(
            charts.field_series(series, field, aggregate or "sum", bucket, domain), width="stretch"
        )
        download(series, f"field-{field}", "dl_field")
