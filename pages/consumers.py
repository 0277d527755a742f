"""Consumers: every consumer with its status, partitions and lag; start and stop them."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from backend.config import DEFAULT_TOPIC_PATTERN
from backend.events import ACTIVE, ms_from_iso
from dashboard import charts, fmt, ui

REFRESH_S = 2.0

src = ui.source()
settings = src.settings
ui.header(
    "Consumers",
    "The processing consumers of the group, the partitions each one owns and how far behind it is.",
)
if src.mode == "attached":
    st.caption(f"Attached to `{settings.backend_url}`.")
else:
    if settings.topics:
        subscription = "topics " + ", ".join(f"`{topic}`" for topic in settings.topics)
    elif settings.topic_pattern == DEFAULT_TOPIC_PATTERN:
        subscription = "every topic not starting with `_` and not ending in `.DLQ`"
    else:
        subscription = f"topics matching `{settings.topic_pattern}`"
    st.caption(f"Group `{settings.group_id}` · reads {subscription} (KAFKA_TOPICS).")


def consumer_table(consumers: list) -> pd.DataFrame:
    return pd.DataFrame.from_records(
        [
            {
                "consumer": c.consumer_id,
                "status": c.status,
                "partitions": len(c.partitions),
                "assigned": [p.name for p in c.partitions],
                "lag": c.total_lag,
                "processed": c.processed,
                "failed": c.failed,
                "started": fmt.local_time(ms_from_iso(c.started_at)),
                "last_error": c.last_error,
            }
            for c in consumers
        ],
        columns=[
            "consumer",
            "status",
            "partitions",
            "assigned",
            "lag",
            "processed",
            "failed",
            "started",
            "last_error",
        ],
    )


@st.fragment(run_every=REFRESH_S)
def consumers_view() -> None:
    feed = ui.feed()
    feed.sync(src)  # consumer-status-changed events keep attached views current
    # The button takes the width of its label: in a sixth of the page it read "Start a consu…".
    actions = st.container(horizontal=True, vertical_alignment="center", gap="medium")
    if actions.button("Start a consumer", type="primary", icon=":material/add:", key="consumer_start"):
        with st.spinner("Starting…"):
            try:
                new_id = src.start_consumer()
                notice = f"Started {new_id}; it joins the group and takes over partitions."
            except Exception as exc:  # MAX_CONSUMERS reached, no worker answered, backend away
                notice = f"No consumer was started: {exc}"
        st.session_state["consumer_notice"] = notice
    notice = st.session_state.get("consumer_notice")
    if notice:
        actions.caption(notice)

    consumers = src.consumers()
    active = [c for c in consumers if c.status == ACTIVE]
    summary = st.columns(4)
    summary[0].metric("Active consumers", len(active))
    summary[1].metric("Assigned partitions", sum(len(c.partitions) for c in active))
    lags = [c.total_lag for c in active if c.total_lag is not None]
    summary[2].metric("Total lag", fmt.count(sum(lags)) if lags else "—", help="Messages not yet consumed")
    summary[3].metric("Stopped", fmt.count(len(consumers) - len(active)))

    if not consumers:
        st.info("No consumers. Start one above.", icon=":material/group_off:")
        return

    frame = consumer_table(consumers)
    st.dataframe(
        fmt.styled_status(frame),
        hide_index=True,
        width="stretch",
        key="consumers_table",
        placeholder="—",
        column_config={
            "consumer": "Consumer",
            "status": "Status",
            "partitions": st.column_config.NumberColumn("Partitions", width="small"),
            "assigned": st.column_config.ListColumn("Assigned", width="large"),
            "lag": st.column_config.NumberColumn(
                "Lag", help="Highwater minus position, summed", format=fmt.COUNT_FORMAT
            ),
            "processed": st.column_config.NumberColumn("Processed", format=fmt.COUNT_FORMAT),
            "failed": st.column_config.NumberColumn("Failed", format=fmt.COUNT_FORMAT),
            "started": st.column_config.DatetimeColumn("Started", format="HH:mm:ss"),
            "last_error": st.column_config.TextColumn("Last error", width="medium"),
        },
    )

    if active:
        with st.container(horizontal=True, vertical_alignment="bottom", gap="small"):
            victim = st.selectbox(
                "Stop a consumer",
                [c.consumer_id for c in active],
                key="consumer_victim",
                width=220,
                help="It finishes its batch, commits and leaves the group; others take over its partitions",
            )
            if st.button("Stop", icon=":material/stop_circle:", key="consumer_stop"):
                with st.spinner(f"Stopping {victim}…"):
                    try:
                        src.stop_consumer(victim)
                        notice = f"Stopped {victim}; the others take over its partitions."
                    except Exception as exc:  # its worker did not answer, backend away
                        notice = f"{victim} was not stopped: {exc}"
                st.session_state["consumer_notice"] = notice
                st.rerun(scope="fragment")

    partitions = [
        {
            "consumer": c.consumer_id,
            "partition": p.name,
            "position": p.position,
            "highwater": p.highwater,
            "lag": p.lag,
        }
        for c in active
        for p in c.partitions
    ]
    st.subheader("Lag per partition", anchor=False)
    if not partitions:
        st.caption(
            "No partitions assigned yet: the consumers are joining, or no topic matches the subscription."
        )
        return
    lagging = [p for p in partitions if p["lag"]]
    if lagging:
        st.altair_chart(charts.lag(lagging), width="stretch")
    else:
        st.success("Every assigned partition is caught up: lag 0.", icon=":material/check_circle:")
    st.dataframe(
        pd.DataFrame.from_records(partitions),
        hide_index=True,
        width="stretch",
        placeholder="—",
        height=min(38 + 35 * len(partitions), 420),
        column_config={
            "consumer": "Consumer",
            "partition": st.column_config.TextColumn("Partition", width="large"),
            "position": st.column_config.NumberColumn("Position", help="Next offset it will read"),
            "highwater": st.column_config.NumberColumn("Highwater", help="Offset after the newest record"),
            "lag": st.column_config.NumberColumn("Lag", format=fmt.COUNT_FORMAT),
        },
    )


consumers_view()
