"""Altair chart builders. Inputs are plain rows (dicts) from the live feed or backend.analytics.

Times arrive as epoch milliseconds and are drawn as temporal axes, which
Vega-Lite shows in the viewer's local time. Status colours are fixed so a
failure is red on every chart and in both themes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import altair as alt
import pandas as pd

from dashboard.fmt import STATUS_COLORS, STATUS_ORDER

HEIGHT = 240
Domain = tuple[int, int] | None  # a time axis's extent in epoch ms; None fits the data


def _time_x(domain: Domain) -> alt.X:
    if domain is None:
        return alt.X("bucket:T", title=None)
    start, end = (pd.Timestamp(ms, unit="ms", tz="UTC").isoformat() for ms in domain)
    return alt.X("bucket:T", title=None, scale=alt.Scale(domain=[start, end]))


def _status_scale(statuses: Sequence[str] = STATUS_ORDER) -> alt.Scale:
    return alt.Scale(domain=list(statuses), range=[STATUS_COLORS[s] for s in statuses])


def _count_axis(title: str, largest: float) -> alt.Y:
    """A count axis with whole-number ticks that stays readable when everything is zero."""
    return alt.Y(
        "sum(count):Q",
        title=title,
        stack="zero",
        axis=alt.Axis(format="~s", tickMinStep=1),
        scale=alt.Scale(domainMin=0, domainMax=max(largest, 4), nice=True),
    )


def _frame(rows: Sequence[dict[str, Any]], time_column: str, width_ms: int | None = None) -> pd.DataFrame:
    """Rows as a frame with real datetimes; with ``width_ms``, an ``end`` column for bars' right edges."""
    frame = pd.DataFrame.from_records(list(rows))
    if not frame.empty:
        if width_ms:
            frame["end"] = pd.to_datetime(frame[time_column] + int(width_ms * 0.9), unit="ms", utc=True)
        frame[time_column] = pd.to_datetime(frame[time_column], unit="ms", utc=True)
    return frame


def throughput(rows: Sequence[dict[str, Any]], bucket_s: int) -> alt.Chart:
    """Stacked bars of outcomes per bucket by status (the Overview's last minutes)."""
    frame = _frame(rows, "time", bucket_s * 1000)
    largest = float(frame.groupby("time")["count"].sum().max()) if not frame.empty else 0.0
    return (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X(
                "time:T",
                title=None,
                # A plain number: Streamlit's Vega rejects interval objects here (a runtime TypeError).
                axis=alt.Axis(format="%H:%M", tickCount=6, labelOverlap=True),
            ),
            x2="end:T",
            y=_count_axis(f"messages / {bucket_s} s", largest),
            color=alt.Color(
                "status:N",
                scale=_status_scale(["PROCESSED", "FAILED"]),
                legend=alt.Legend(orient="top", title=None),
            ),
            tooltip=[
                alt.Tooltip("time:T", title="from", format="%H:%M:%S"),
                alt.Tooltip("status:N"),
                alt.Tooltip("sum(count):Q", title="messages"),
            ],
        )
        .properties(height=HEIGHT)
    )


def volume_by_status(rows: Sequence[dict[str, Any]], bucket_ms: int, domain: Domain = None) -> alt.Chart:
    frame = _frame(rows, "bucket", bucket_ms)
    return (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=_time_x(domain),
            x2="end:T",
            y=alt.Y("sum(messages):Q", title="messages", stack="zero"),
            color=alt.Color(
                "status:N",
                scale=_status_scale(["PROCESSED", "FAILED"]),
                legend=alt.Legend(orient="top", title=None),
            ),
            tooltip=[
                alt.Tooltip("bucket:T", title="from", format="%Y-%m-%d %H:%M:%S"),
                "status:N",
                alt.Tooltip("sum(messages):Q", title="messages"),
                alt.Tooltip("sum(rows):Q", title="data rows"),
            ],
        )
        .properties(height=HEIGHT)
    )


def volume_by_topic(rows: Sequence[dict[str, Any]], domain: Domain = None) -> alt.Chart:
    frame = _frame(rows, "bucket")
    return (
        alt.Chart(frame)
        .mark_line(point=True)
        .encode(
            x=_time_x(domain),
            y=alt.Y("sum(messages):Q", title="messages"),
            color=alt.Color("topic:N", legend=alt.Legend(orient="top", title=None)),
            tooltip=[
                alt.Tooltip("bucket:T", title="from", format="%Y-%m-%d %H:%M:%S"),
                "topic:N",
                alt.Tooltip("sum(messages):Q", title="messages"),
            ],
        )
        .properties(height=HEIGHT)
    )


def failure_rate(rows: Sequence[dict[str, Any]], domain: Domain = None) -> alt.Chart:
    frame = _frame(rows, "bucket")
    base = alt.Chart(frame).encode(x=_time_x(domain))
    area = base.mark_area(opacity=0.25, color=STATUS_COLORS["FAILED"], line=True, point=True).encode(
        y=alt.Y("rate:Q", title="failed share", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1])),
        tooltip=[
            alt.Tooltip("bucket:T", title="from", format="%Y-%m-%d %H:%M:%S"),
            alt.Tooltip("rate:Q", title="failed", format=".1%"),
            alt.Tooltip("failed:Q", title="failed messages"),
            alt.Tooltip("total:Q", title="all messages"),
        ],
    )
    return area.properties(height=HEIGHT)


def latency(rows: Sequence[dict[str, Any]], domain: Domain = None) -> alt.Chart:
    frame = _frame(rows, "bucket")
    if not frame.empty:
        frame = frame.melt(
            id_vars=["bucket", "count"],
            value_vars=["p50", "p90", "p99"],
            var_name="percentile",
            value_name="ms",
        )
    return (
        alt.Chart(frame)
        .mark_line(point=True)
        .encode(
            x=_time_x(domain),
            y=alt.Y("ms:Q", title="milliseconds"),
            color=alt.Color(
                "percentile:N",
                scale=alt.Scale(domain=["p50", "p90", "p99"], range=["#3b82f6", "#e0882b", "#e0454f"]),
                legend=alt.Legend(orient="top", title=None),
            ),
            tooltip=[
                alt.Tooltip("bucket:T", title="from", format="%Y-%m-%d %H:%M:%S"),
                "percentile:N",
                alt.Tooltip("ms:Q", title="ms"),
                alt.Tooltip("count:Q", title="messages"),
            ],
        )
        .properties(height=HEIGHT)
    )


def field_series(
    rows: Sequence[dict[str, Any]], field: str, aggregate: str, bucket_ms: int, domain: Domain = None
) -> alt.Chart:
    frame = _frame(rows, "bucket", bucket_ms)
    return (
        alt.Chart(frame)
        .mark_bar(color="#7c6cf2")
        .encode(
            x=_time_x(domain),
            x2="end:T",
            y=alt.Y(f"{aggregate}:Q", title=f"{aggregate} of {field}"),
            y2=alt.datum(0),  # bars rise from 0; with x2 alone Vega-Lite would draw them sideways
            tooltip=[
                alt.Tooltip("bucket:T", title="from", format="%Y-%m-%d %H:%M:%S"),
                alt.Tooltip("count:Q", title="values"),
                alt.Tooltip("sum:Q", format=",.4~f"),
                alt.Tooltip("mean:Q", format=",.4~f"),
                alt.Tooltip("min:Q", format=",.4~f"),
                alt.Tooltip("max:Q", format=",.4~f"),
            ],
        )
        .properties(height=HEIGHT)
    )


def lag(rows: Sequence[dict[str, Any]]) -> alt.Chart:
    """Lag per partition as horizontal bars (most behind first), coloured by the owning consumer."""
    frame = pd.DataFrame.from_records(list(rows))
    if not frame.empty:
        frame["lag"] = frame["lag"].fillna(0)
    largest = float(frame["lag"].max()) if not frame.empty else 0.0
    return (
        alt.Chart(frame)
        .mark_bar(height={"band": 0.7})
        .encode(
            y=alt.Y("partition:N", title=None, sort="-x", axis=alt.Axis(labelLimit=320)),
            x=alt.X(
                "lag:Q",
                title="lag (messages)",
                axis=alt.Axis(format="~s", tickMinStep=1),
                scale=alt.Scale(domainMin=0, domainMax=max(largest, 4), nice=True),
            ),
            color=alt.Color("consumer:N", legend=alt.Legend(orient="top", title=None)),
            tooltip=["partition:N", "consumer:N", "lag:Q", "position:Q", "highwater:Q"],
        )
        .properties(height=max(120, 28 * len(frame)))
    )
