"""Altair chart builders. Inputs are plain rows (dicts) from the live feed or backend.analytics.

Times arrive as epoch milliseconds and are drawn as temporal axes, which
Vega-Lite shows in the viewer's local time, on a 24-hour clock like the
tables. Status colours are fixed so a failure is red on every chart and in
both themes. Counts are whole numbers with thousands separators. A bucket
without records is never bridged: counts and rates are bars, latency lines
break.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import altair as alt
import pandas as pd

from dashboard.fmt import STATUS_COLORS, STATUS_ORDER

HEIGHT = 240
Domain = tuple[int, int] | None  # a time axis's extent in epoch ms; None fits the data

# Vega's default time labels are a 12-hour clock without AM/PM ("01:52" at 13:52, then "02 PM").
# A multi-format picks the label by the tick's precision: 24-hour times, seconds only on ticks
# between whole minutes, the date on midnight ticks (so a range over days shows its days).
TIME_FORMAT = {
    "milliseconds": "%H:%M:%S.%L",
    "seconds": "%H:%M:%S",
    "minutes": "%H:%M",
    "hours": "%H:%M",
    "date": "%b %d",
    "week": "%b %d",
    "month": "%b %Y",
    "quarter": "%b %Y",
    "year": "%Y",
}
TOOLTIP_TIME = "%Y-%m-%d %H:%M:%S"
# Whole numbers with separators: "~s" shared the largest tick's prefix, so 0 and 500 read "0k", "0.5k".
COUNT_FORMAT = ",d"
PERCENT_FORMAT = ".1%"  # one precision for every share: 30.3%, 25.0%


def time_axis(**options: Any) -> alt.Axis:
    """The one time axis format of every chart (the Overview's and the Trends')."""
    return alt.Axis(format=TIME_FORMAT, labelOverlap=True, **options)


def _time_x(domain: Domain) -> alt.X:
    if domain is None:
        return alt.X("bucket:T", title=None, axis=time_axis())
    start, end = (pd.Timestamp(ms, unit="ms", tz="UTC").isoformat() for ms in domain)
    return alt.X("bucket:T", title=None, axis=time_axis(), scale=alt.Scale(domain=[start, end]))


# A legend row wider than this runs off a half-page chart; entries are estimated at 6.5 px a character
# plus the symbol and padding (Streamlit's 12 px Source Sans).
LEGEND_PX = 360
LEGEND_ROW_PX = 20


def legend_columns(names: Iterable[Any]) -> int:
    """0 (one row) when every entry fits above the chart, else as many columns as fit."""
    widths = sorted((len(str(name)) * 6.5 + 30 for name in set(names)), reverse=True)
    if sum(widths) <= LEGEND_PX:
        return 0
    used, columns = 0.0, 0
    for width in widths:
        if used + width > LEGEND_PX:
            break
        used, columns = used + width, columns + 1
    return max(columns, 1)


def legend_height(names: Iterable[Any]) -> int:
    """The pixels a wrapped legend adds above its chart: the chart's height includes its legend,
    so without them seven topics in one column left the bars 30 px."""
    distinct = set(names)
    columns = legend_columns(distinct)
    rows = -(-len(distinct) // columns) if columns else 1
    return (rows - 1) * LEGEND_ROW_PX


def _legend(names: Iterable[Any] = ()) -> alt.Legend:
    """Above the chart, labels not cut (a topic read "paymer" for "payments") unless one alone is
    wider than a chart; many or long labels wrap into columns rather than run off its right edge."""
    return alt.Legend(orient="top", title=None, labelLimit=LEGEND_PX, columns=legend_columns(names))


def _status_scale(statuses: Sequence[str] = STATUS_ORDER) -> alt.Scale:
    return alt.Scale(domain=list(statuses), range=[STATUS_COLORS[s] for s in statuses])


def count_axis() -> alt.Axis:
    """Whole-number ticks (never 0.5 messages) written 0, 500, 1,000."""
    return alt.Axis(format=COUNT_FORMAT, tickMinStep=1)


def _count_y(field: str, title: str, largest: float) -> alt.Y:
    """A stacked count axis that stays readable when everything is zero."""
    return alt.Y(
        field,
        title=title,
        stack="zero",
        axis=count_axis(),
        scale=alt.Scale(domainMin=0, domainMax=max(largest, 4), nice=True),
    )


def _largest(frame: pd.DataFrame, by: str, value: str) -> float:
    """The tallest stack: the largest sum of ``value`` over one ``by``."""
    return float(frame.groupby(by)[value].sum().max()) if not frame.empty else 0.0


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
    return (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X(
                "time:T",
                title=None,
                # A plain number: Streamlit's Vega rejects interval objects here (a runtime TypeError).
                axis=time_axis(tickCount=6),
            ),
            x2="end:T",
            y=_count_y("sum(count):Q", f"messages / {bucket_s} s", _largest(frame, "time", "count")),
            color=alt.Color("status:N", scale=_status_scale(["PROCESSED", "FAILED"]), legend=_legend()),
            tooltip=[
                alt.Tooltip("time:T", title="from", format="%H:%M:%S"),
                alt.Tooltip("status:N"),
                alt.Tooltip("sum(count):Q", title="messages", format=COUNT_FORMAT),
            ],
        )
        .properties(height=HEIGHT)
    )


def volume_by_status(rows: Sequence[dict[str, Any]], bucket_ms: int, domain: Domain = None) -> alt.Chart:
    """Stacked bars of records per bucket by status."""
    frame = _frame(rows, "bucket", bucket_ms)
    return (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=_time_x(domain),
            x2="end:T",
            y=_count_y("sum(messages):Q", "messages", _largest(frame, "bucket", "messages")),
            color=alt.Color("status:N", scale=_status_scale(["PROCESSED", "FAILED"]), legend=_legend()),
            tooltip=[
                alt.Tooltip("bucket:T", title="from", format=TOOLTIP_TIME),
                "status:N",
                alt.Tooltip("sum(messages):Q", title="messages", format=COUNT_FORMAT),
                alt.Tooltip("sum(rows):Q", title="data rows", format=COUNT_FORMAT),
            ],
        )
        .properties(height=HEIGHT)
    )


def volume_by_topic(rows: Sequence[dict[str, Any]], bucket_ms: int, domain: Domain = None) -> alt.Chart:
    """Stacked bars of records per bucket by topic.

    Bars, not lines: traffic comes in bursts, and a line from one burst to the next claimed
    records in the empty buckets between them.
    """
    return _volume_by(_frame(rows, "bucket", bucket_ms), "topic", domain)


#: How the data types read in charts (tombstones are records of their own kind, not failures).
TYPE_LABELS = {"SINGLE_MESSAGE": "JSON message", "CSV_BATCH": "CSV batch", "TOMBSTONE": "Tombstone"}


def volume_by_type(rows: Sequence[dict[str, Any]], bucket_ms: int, domain: Domain = None) -> alt.Chart:
    """Stacked bars of records per bucket by data type: JSON messages, CSV batches, tombstones."""
    frame = _frame(rows, "bucket", bucket_ms)
    if "data_type" in frame:
        frame["type"] = frame["data_type"].map(lambda value: TYPE_LABELS.get(value, value))
    return _volume_by(frame, "type", domain)


def _volume_by(frame: pd.DataFrame, column: str, domain: Domain) -> alt.Chart:
    return (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=_time_x(domain),
            x2="end:T",
            y=_count_y("sum(messages):Q", "messages", _largest(frame, "bucket", "messages")),
            color=alt.Color(f"{column}:N", legend=_legend(frame.get(column, ()))),
            tooltip=[
                alt.Tooltip("bucket:T", title="from", format=TOOLTIP_TIME),
                f"{column}:N",
                alt.Tooltip("sum(messages):Q", title="messages", format=COUNT_FORMAT),
            ],
        )
        .properties(height=HEIGHT + legend_height(frame.get(column, ())))
    )


def failure_rate(rows: Sequence[dict[str, Any]], bucket_ms: int, domain: Domain = None) -> alt.Chart:
    """The failed share per bucket as bars: a bucket without records has no bar (no rate to draw)."""
    frame = _frame(rows, "bucket", bucket_ms)
    return (
        alt.Chart(frame)
        .mark_bar(color=STATUS_COLORS["FAILED"])
        .encode(
            x=_time_x(domain),
            x2="end:T",
            y=alt.Y(
                "rate:Q", title="failed share", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1])
            ),
            y2=alt.datum(0),
            tooltip=[
                alt.Tooltip("bucket:T", title="from", format=TOOLTIP_TIME),
                alt.Tooltip("rate:Q", title="failed", format=PERCENT_FORMAT),
                alt.Tooltip("failed:Q", title="failed messages", format=COUNT_FORMAT),
                alt.Tooltip("total:Q", title="all messages", format=COUNT_FORMAT),
            ],
        )
        .properties(height=HEIGHT)
    )


def gaps_broken(
    rows: Sequence[dict[str, Any]], bucket_ms: int, columns: Sequence[str]
) -> list[dict[str, Any]]:
    """The rows with an empty (None) row in each empty bucket that follows a full one.

    Vega-Lite breaks a line at a missing value, so a percentile line stops where no record was
    timed instead of drawing a slope across the gap.
    """
    present = {int(row["bucket"]) for row in rows}
    last = max(present, default=0)
    holes = sorted(b + bucket_ms for b in present if b + bucket_ms not in present and b + bucket_ms < last)
    return [*rows, *({"bucket": hole, **dict.fromkeys(columns)} for hole in holes)]


def latency(rows: Sequence[dict[str, Any]], bucket_ms: int, domain: Domain = None) -> alt.Chart:
    """p50, p90 and p99 per bucket; the lines break where a bucket has no timings."""
    frame = _frame(gaps_broken(rows, bucket_ms, ["count", "p50", "p90", "p99"]), "bucket")
    if not frame.empty:
        frame = frame.melt(
            id_vars=["bucket", "count"],
            value_vars=["p50", "p90", "p99"],
            var_name="percentile",
            value_name="ms",
        )
    return (
        alt.Chart(frame)
        .mark_line(point=alt.OverlayMarkDef(size=24), invalid="break-paths-show-domains")
        .encode(
            x=_time_x(domain),
            y=alt.Y("ms:Q", title="milliseconds", axis=alt.Axis(format=",~r"), scale=alt.Scale(domainMin=0)),
            color=alt.Color(
                "percentile:N",
                scale=alt.Scale(domain=["p50", "p90", "p99"], range=["#3b82f6", "#e0882b", "#e0454f"]),
                legend=_legend(),
            ),
            tooltip=[
                alt.Tooltip("bucket:T", title="from", format=TOOLTIP_TIME),
                "percentile:N",
                alt.Tooltip("ms:Q", title="ms", format=","),
                alt.Tooltip("count:Q", title="messages", format=COUNT_FORMAT),
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
                alt.Tooltip("bucket:T", title="from", format=TOOLTIP_TIME),
                alt.Tooltip("count:Q", title="values", format=COUNT_FORMAT),
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
                axis=count_axis(),
                scale=alt.Scale(domainMin=0, domainMax=max(largest, 4), nice=True),
            ),
            color=alt.Color("consumer:N", legend=_legend(frame.get("consumer", ()))),
            tooltip=[
                "partition:N",
                "consumer:N",
                alt.Tooltip("lag:Q", format=COUNT_FORMAT),
                alt.Tooltip("position:Q", format="d"),
                alt.Tooltip("highwater:Q", format="d"),
            ],
        )
        .properties(height=max(120, 28 * len(frame)) + legend_height(frame.get("consumer", ())))
    )
