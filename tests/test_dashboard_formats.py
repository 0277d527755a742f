"""How the dashboard writes times, counts and shares, and the deep-link fix, without a browser.

The chart specs are what Streamlit hands to Vega-Lite, so their axis formats, legends and marks are
checked here; tests/test_dashboard_browser.py looks at the pages themselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import altair as alt
import httpx
import pandas as pd
import pytest
import streamlit
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from dashboard import charts, fmt
from dashboard.deep_links import BASE_SCRIPT, ENTRY, DeepLinks, with_base_url

T0 = 1_764_770_520_000  # a whole minute, in epoch ms
MINUTE = 60_000
INDEX_HTML = Path(streamlit.__file__).parent / "static" / "index.html"


def volume_rows() -> list[dict[str, Any]]:
    """Two bursts with empty buckets between them, on a topic with a long name."""
    rows = []
    for bucket in (T0, T0 + MINUTE, T0 + 7 * MINUTE):
        for topic in ("payments", "inventory-adjustments-from-the-warehouse"):
            rows.append({"bucket": bucket, "topic": topic, "status": "PROCESSED", "messages": 3, "rows": 3})
            rows.append({"bucket": bucket, "topic": topic, "status": "FAILED", "messages": 1, "rows": 0})
    return rows


def every_chart() -> dict[str, alt.Chart]:
    volume = volume_rows()
    rate = [
        {"bucket": T0, "total": 4, "failed": 1, "rate": 0.25},
        {"bucket": T0 + 7 * MINUTE, "total": 3, "failed": 1, "rate": 1 / 3},
    ]
    latency = [
        {"bucket": T0, "count": 4, "p50": 3, "p90": 8, "p99": 9, "max": 9},
        {"bucket": T0 + 7 * MINUTE, "count": 2, "p50": 1, "p90": 2, "p99": 2, "max": 2},
    ]
    series = [{"bucket": T0, "count": 2, "sum": 3.0, "mean": 1.5, "min": 1.0, "max": 2.0}]
    domain = (T0, T0 + 20 * MINUTE)
    return {
        "throughput": charts.throughput([{"time": T0, "status": "PROCESSED", "count": 500}], 5),
        "volume_by_status": charts.volume_by_status(volume, MINUTE, domain),
        "volume_by_topic": charts.volume_by_topic(volume, MINUTE, domain),
        "failure_rate": charts.failure_rate(rate, MINUTE, domain),
        "latency": charts.latency(latency, MINUTE, domain),
        "field_series": charts.field_series(series, "amount", "sum", MINUTE, domain),
        "lag": charts.lag(
            [
                {
                    "partition": "payments-0",
                    "consumer": "consumer-1",
                    "lag": 1200,
                    "position": 5,
                    "highwater": 1205,
                }
            ]
        ),
    }


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every dict in a chart spec, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def spec(chart: alt.Chart) -> dict[str, Any]:
    return chart.to_dict()


# --- times -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in every_chart() if n != "lag"])
def test_every_time_axis_is_on_a_24_hour_clock(name: str) -> None:
    encoding = spec(every_chart()[name])["encoding"]
    x = encoding["x"]
    assert x["type"] == "temporal"
    assert x["axis"]["format"] == charts.TIME_FORMAT, f"{name}: Vega's 12-hour default would show"
    for tooltip in encoding.get("tooltip", []):
        if tooltip.get("type") == "temporal":
            assert tooltip["format"] in (charts.TOOLTIP_TIME, "%H:%M:%S")


def test_the_time_format_reads_13_52_at_13_52_and_shows_seconds_and_days() -> None:
    """Vega picks the specifier by the tick's precision; the specifiers are strftime's own."""
    formats = charts.TIME_FORMAT
    assert not any(directive in value for value in formats.values() for directive in ("%I", "%p", "%l"))
    assert datetime(2026, 12, 3, 13, 52).strftime(formats["minutes"]) == "13:52"
    assert datetime(2026, 12, 3, 14, 0).strftime(formats["hours"]) == "14:00"  # not "02 PM"
    assert datetime(2026, 12, 3, 13, 52, 10).strftime(formats["seconds"]) == "13:52:10"
    assert datetime(2026, 12, 4).strftime(formats["date"]) == "Dec 04"
    assert set(formats) >= {"seconds", "minutes", "hours", "date", "month", "year"}


# --- legends, counts, marks ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["throughput", "volume_by_status", "volume_by_topic", "latency", "lag"])
def test_legend_labels_are_never_cut(name: str) -> None:
    legend = spec(every_chart()[name])["encoding"]["color"]["legend"]
    assert legend["labelLimit"] == charts.LEGEND_PX  # a chart's width ("paymer" for "payments" before)


def test_long_legends_wrap_into_columns_instead_of_running_off_the_chart() -> None:
    assert charts.legend_columns(["inventory-adjustments", "orders", "payments"]) == 0  # one row
    assert charts.legend_columns(["orders", "orders", "payments"]) == 0
    long = [f"dash-{name}-c3dc15cfcb9a" for name in ("csv", "fallback", "live", "mixed", "retry", "flow")]
    assert charts.legend_columns(long) == 1
    assert charts.legend_columns([f"t{n}" for n in range(40)]) == 7
    assert charts.legend_columns(["x" * 300]) == 1
    assert charts.legend_columns([]) == 0
    chart = spec(every_chart()["volume_by_topic"])  # two topics, one of them 41 characters long
    assert chart["encoding"]["color"]["legend"]["columns"] == 1
    # The chart's height includes its legend: each extra row of legend makes the chart taller.
    assert chart["height"] == charts.HEIGHT + charts.LEGEND_ROW_PX
    assert charts.legend_height(long) == 5 * charts.LEGEND_ROW_PX
    assert charts.legend_height(["orders", "payments"]) == charts.legend_height([]) == 0


@pytest.mark.parametrize(
    ("name", "channel"),
    [("throughput", "y"), ("volume_by_status", "y"), ("volume_by_topic", "y"), ("lag", "x")],
)
def test_count_axes_are_whole_numbers_with_separators(name: str, channel: str) -> None:
    axis = spec(every_chart()[name])["encoding"][channel]["axis"]
    assert axis["format"] == ",d" and axis["tickMinStep"] == 1


def test_no_chart_uses_si_prefixes() -> None:
    """ "~s" gave every tick the largest one's prefix: 0 and 500 read "0k" and "0.5k"."""
    for name, chart in every_chart().items():
        formats = [node["format"] for node in walk(spec(chart)) if isinstance(node.get("format"), str)]
        assert not [f for f in formats if f.endswith("s")], f"{name}: {formats}"


@pytest.mark.parametrize("name", ["volume_by_topic", "failure_rate"])
def test_bucket_charts_are_bars_so_no_line_joins_separate_buckets(name: str) -> None:
    chart = spec(every_chart()[name])
    assert chart["mark"]["type"] == "bar"
    assert chart["encoding"]["x2"]["field"] == "end"  # each bar ends where its bucket ends


def test_latency_lines_break_at_an_empty_bucket() -> None:
    chart = spec(every_chart()["latency"])
    assert chart["mark"]["invalid"] == "break-paths-show-domains"
    values = next(iter(chart["datasets"].values()))
    gap = [v for v in values if v["ms"] is None]
    assert sorted(v["percentile"] for v in gap) == ["p50", "p90", "p99"]
    # One empty row, in the bucket after the first: the line stops there and starts again 6 minutes on.
    assert {v["bucket"] for v in gap} == {pd.Timestamp(T0 + MINUTE, unit="ms", tz="UTC").isoformat()}


def test_gaps_broken_adds_one_empty_row_after_each_run_of_buckets() -> None:
    rows = [{"bucket": b, "p50": 1} for b in (0, 10, 50, 60)]
    broken = charts.gaps_broken(rows, 10, ["p50"])
    assert [r for r in broken if r["p50"] is None] == [{"bucket": 20, "p50": None}]
    assert charts.gaps_broken([], 10, ["p50"]) == []


# --- numbers in text and tables --------------------------------------------------------------


def test_counts_have_thousands_separators() -> None:
    assert fmt.count(200_000) == "200,000"
    assert fmt.count(200_101) == "200,101"
    assert fmt.count(0) == "0"
    assert fmt.count(None) == "—"
    assert fmt.COUNT_FORMAT == "%,d"  # st.column_config's printf for the same "200,000"


def test_shares_have_one_decimal_everywhere() -> None:
    assert [fmt.percent(v) for v in (0.303, 0.25, 0.29166, 0.0, 1.0)] == [
        "30.3%",
        "25.0%",
        "29.2%",
        "0.0%",
        "100.0%",
    ]
    assert fmt.percent(None) == "—"
    assert fmt.PERCENT_FORMAT % 29.166 == "29.2%"  # the tables' printf, on a 0-100 share
    assert charts.PERCENT_FORMAT == ".1%"  # the charts' d3 format: one decimal too


# --- deep links ------------------------------------------------------------------------------


def test_the_base_url_goes_into_streamlit_s_index_page_before_its_bundle() -> None:
    html = INDEX_HTML.read_bytes()
    assert ENTRY in html, "Streamlit's index.html changed: see dashboard/deep_links.py"
    edited = with_base_url(html)
    assert edited.index(BASE_SCRIPT) + len(BASE_SCRIPT) == edited.index(ENTRY)
    assert with_base_url(edited) == edited  # never twice


@pytest.mark.parametrize("page", [b"", b"<html><body>not Streamlit</body></html>", b"\x1f\x8b\x08 gzip"])
def test_any_other_page_is_left_as_it_came(page: bytes) -> None:
    assert with_base_url(page) == page


def serve(*requests: tuple[str, str, dict[str, str]]) -> list[httpx.Response]:
    """Streamlit's index page and a script behind gzip (as Streamlit serves them), then DeepLinks."""

    def index(_: Any) -> FileResponse:
        return FileResponse(INDEX_HTML)

    def script(_: Any) -> Response:
        return Response(SCRIPT, media_type="text/javascript")

    app = Starlette(
        routes=[
            Route("/logs", index, methods=["GET", "HEAD"]),
            Route("/static/app.js", script),
            Route("/_stcore/page.html", index),
        ],
        middleware=[Middleware(DeepLinks), Middleware(GZipMiddleware, minimum_size=10)],
    )

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://dash") as client:
            return [await client.request(method, path, headers=headers) for method, path, headers in requests]

    return asyncio.run(run())


SCRIPT = b"console.log(1);" * 200
NAVIGATION = {"Accept": "text/html,application/xhtml+xml", "Accept-Encoding": "gzip, br"}
FETCH = {"Accept": "*/*", "Accept-Encoding": "gzip"}


def test_a_navigation_gets_the_page_with_its_base_url() -> None:
    [answer] = serve(("GET", "/logs", NAVIGATION))
    assert answer.status_code == 200
    assert BASE_SCRIPT in answer.content
    assert answer.content.replace(BASE_SCRIPT, b"") == INDEX_HTML.read_bytes()
    assert int(answer.headers["content-length"]) == len(answer.content)
    assert "content-encoding" not in answer.headers


def test_everything_else_passes_untouched() -> None:
    fetched, asset, opened, reserved, head = serve(
        ("GET", "/logs", FETCH),  # a script's fetch, not a navigation
        ("GET", "/static/app.js", FETCH),
        ("GET", "/static/app.js", NAVIGATION),  # a script opened as a page: not HTML, not edited
        ("GET", "/_stcore/page.html", NAVIGATION),
        ("HEAD", "/logs", NAVIGATION),
    )
    assert fetched.content == INDEX_HTML.read_bytes()
    assert fetched.headers["content-encoding"] == "gzip"  # compression is refused to navigations only
    assert asset.headers["content-encoding"] == "gzip" and asset.content == SCRIPT
    assert opened.content == SCRIPT
    assert BASE_SCRIPT not in reserved.content
    assert head.status_code == 200 and not head.content
    assert int(head.headers["content-length"]) == INDEX_HTML.stat().st_size


def test_every_chart_draws_an_empty_range() -> None:
    """No rows (a quiet topic, a range before the first record): an empty chart, not an error."""
    empty = [
        charts.throughput([], 5),
        charts.volume_by_status([], MINUTE),
        charts.volume_by_topic([], MINUTE),
        charts.failure_rate([], MINUTE),
        charts.latency([], MINUTE),
        charts.field_series([], "amount", "sum", MINUTE),
        charts.lag([]),
    ]
    for chart in empty:
        assert spec(chart)["encoding"]
