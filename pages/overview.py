"""Overview: counters, throughput by status, per-topic breakdown and the live tail, as it happens."""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from dashboard import charts, fmt, producing, ui
from dashboard.live_panel import live_panel

LIVE_EVERY_S = 1.0  # when the browser cannot reach the gateway: the snapshots are the live feed
STREAMING_EVERY_S = 15.0  # when it streams from /ws itself: snapshots are only a safety net
CHARTS_EVERY_S = 5.0
EMPTY_EVERY_S = 1.0  # while nothing has arrived: the invitation goes within a second of the first record
THROUGHPUT_MINUTES = 5
BUCKET_S = 5
TOPICS_EVERY_S = 2.0

src = ui.source()
ui.header(
    "Overview",
    "What the consumers are doing right now. Counters and the tail stream live from the event gateway; "
    "the charts refresh every 5 s.",
)


def topic_rows() -> list[dict]:
    """Per-topic totals from the store, read again only after new outcomes (at most every 2 s)."""
    feed = ui.feed()
    cached = st.session_state.get("overview_topics")
    fresh = cached and cached[0] == feed.outcomes_seen and cached[1] is feed.bus
    recent = cached and time.monotonic() - cached[2] < TOPICS_EVERY_S
    stale_empty = cached and not cached[3] and feed.stats.get("totalMessages")  # the first records
    if cached and (fresh or recent) and not stale_empty:
        return cached[3]
    rows = src.topic_summary()
    st.session_state["overview_topics"] = (feed.outcomes_seen, feed.bus, time.monotonic(), rows)
    return rows


def topics_table(rows: list[dict]) -> None:
    if not rows:
        st.caption("No topics yet: nothing has been consumed.")
        return
    frame = pd.DataFrame.from_records(rows)
    frame["failed_share"] = 100 * frame["failed"] / frame["total"].where(frame["total"] > 0)
    frame["last"] = frame["last_ms"].map(fmt.local_time)
    st.dataframe(
        frame[["topic", "total", "failed", "failed_share", "last"]],
        hide_index=True,
        width="stretch",
        height=min(38 + 35 * len(frame), 300),
        # Every width fixed, 400 px in all: a topic column sized to its longest name pushed "Last"
        # out of the half-page column (about 390-460 px from a 1280 to a 1440 px window). Space
        # beyond 400 px is shared evenly; a long topic name is cut (a drag widens its column).
        column_config={
            "topic": st.column_config.TextColumn("Topic", width=130),
            "total": st.column_config.NumberColumn("Messages", format=fmt.COUNT_FORMAT, width=75),
            "failed": st.column_config.NumberColumn("Failed", format=fmt.COUNT_FORMAT, width=55),
            "failed_share": st.column_config.ProgressColumn(
                "Failed %", format=fmt.PERCENT_FORMAT, min_value=0, max_value=100, color="red", width=75
            ),
            "last": st.column_config.DatetimeColumn("Last", format="HH:mm:ss", width=65),
        },
    )


def welcome() -> None:
    """First run: nothing consumed yet. One click makes the dashboard move."""
    with st.container(border=True, horizontal=True, vertical_alignment="center", gap="medium"):
        st.markdown(
            "**Nothing has arrived yet.** Start demo traffic (orders on `demo-orders`, 20 per second "
            "for a minute, one in ten malformed) or send your own records from the **Producer** page.",
            width="stretch",
        )
        if st.button("Start demo traffic", type="primary", icon=":material/play_arrow:", key="welcome_demo"):
            producing.traffic.start(src.produce, "demo-orders", 20, 60, 0.1)


def live_snapshot() -> dict:
    """Fold new bus events into this session's feed; what the live panel draws from."""
    feed = ui.feed()
    feed.sync(src)
    return feed.snapshot(src.browser_stream())


# Three fragments, so each part reruns only as often as it changes. The live panel parts get a
# snapshot every second while the browser has no stream of its own; once the panel reports that its
# /ws is open they slow to a safety net, because every fragment run costs the browser a React
# render, which measurably delays the events the stream delivers (p50 ~100 ms instead of ~20 ms
# under 20 msg/s). The charts follow once per 5 s bucket.
streaming = st.session_state.get("overview_streaming", False)
live_every = STREAMING_EVERY_S if streaming else LIVE_EVERY_S
# The charts' cadence is 5 s; on an empty store it is 1 s, so that the invitation, the empty chart
# and "No topics yet" do not stay up to 5 s beside counters that already stream the first records.
ui.feed().sync(src)
empty = not ui.feed().stats.get("totalMessages")


@st.fragment(run_every=live_every)
def counters() -> None:
    now_streaming = live_panel("counters", live_snapshot(), key="overview-counters")
    if now_streaming != streaming:
        # The cadence is fixed when the fragments are defined: one full run switches it (rare:
        # when the browser's stream opens or drops, never for live data).
        st.session_state["overview_streaming"] = now_streaming
        st.rerun(scope="app")


@st.fragment(run_every=EMPTY_EVERY_S if empty else CHARTS_EVERY_S)
def charts_and_topics() -> None:
    feed = ui.feed()
    feed.sync(src)
    if empty and feed.stats.get("totalMessages"):
        st.rerun(scope="app")  # the first records: draw them, at the 5-s cadence from now on
    # Here, not with the counters: this fragment runs every 5 s also while the browser streams, so
    # the invitation goes away soon after the first records arrive (the counters' run is every 15 s).
    if not feed.stats.get("totalMessages") and not producing.traffic.current:
        welcome()
    left, right = st.columns(2, gap="large")
    with left:
        st.subheader("Throughput", anchor=False)
        st.caption(f"Outcomes per {BUCKET_S} s over the last {THROUGHPUT_MINUTES} minutes, by status.")
        rows = feed.throughput(THROUGHPUT_MINUTES, BUCKET_S)
        st.altair_chart(charts.throughput(rows, BUCKET_S), width="stretch")
    with right:
        st.subheader("Topics", anchor=False)
        st.caption("Everything stored, per topic.")
        topics_table(topic_rows())


@st.fragment(run_every=live_every)
def tail() -> None:
    st.subheader("Live tail", anchor=False)
    st.caption("The newest records first; a row's status changes in place as it is processed.")
    live_panel("tail", live_snapshot(), key="overview-tail")


# Drawn top to bottom, run live parts first: the charts' run (a store query, a chart spec, a table)
# took 30-470 ms on a first load, and the tail waited for it.
top, middle, bottom = st.container(), st.container(), st.container()
with top:
    counters()
with bottom:
    tail()
with middle:
    charts_and_topics()
