"""Producer: send one JSON message, a CSV file as one CSV_BATCH, or demo traffic."""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from backend.events import SINGLE_MESSAGE
from dashboard import fmt, producing, ui
from dashboard.source import Produced

EXAMPLE = '{\n  "orderId": 1001,\n  "customer": "c-4711",\n  "amount": 129.9,\n  "currency": "EUR"\n}'
PREVIEW_ROWS = 20

src = ui.source()
ui.header(
    "Producer",
    "Send records to Kafka. They go through the consumers like any other record; watch them on the Overview.",
)


def sent_message(produced: Produced, what: str) -> str:
    where = f"partition {produced.partition} · offset {produced.offset}"
    return f"{what} sent to **{produced.topic}** · {where}"


single_tab, csv_tab, demo_tab = st.tabs(["JSON message", "CSV file", "Demo traffic"])

# --- one JSON message --------------------------------------------------------------------------
with single_tab:
    left, right = st.columns([3, 2], gap="large")
    with left:
        topic = st.text_input(
            "Topic", value="orders", key="single_topic", help="Created if it does not exist"
        )
        key = st.text_input(
            "Key (optional)", key="single_key", help="Records with the same key keep their order"
        )
        text = st.text_area("JSON value", value=EXAMPLE, height=220, key="single_body")
        value, json_error = producing.json_problem(text or "")
        topic_error = producing.topic_problem(topic.strip())
        if json_error:
            st.error(json_error, icon=":material/data_object:")
        elif topic_error:
            st.error(topic_error, icon=":material/label:")
        else:
            kind = type(value).__name__.replace("dict", "object").replace("list", "array")
            st.caption(f":green[✓] Valid JSON ({kind}), {len(text.encode()):,} bytes.")
        if st.button(
            "Send message",
            type="primary",
            icon=":material/send:",
            disabled=bool(json_error or topic_error),
            key="single_send",
        ):
            value, json_error = producing.json_problem(text or "")
            if json_error is None and topic_error is None:
                try:
                    produced = src.produce(
                        topic.strip(), text.encode("utf-8"), SINGLE_MESSAGE, key.encode() if key else None
                    )
                    st.session_state["single_result"] = ("ok", sent_message(produced, "Message"))
                except Exception as exc:
                    st.session_state["single_result"] = ("error", f"Not sent: {fmt.plain(exc)}")
        result = st.session_state.get("single_result")
        if result:
            (st.success if result[0] == "ok" else st.error)(result[1])
    with right:
        st.markdown("**What is sent**")
        st.caption(
            "The text exactly as typed, as one record with the header `data-type: SINGLE_MESSAGE`, "
            "the same as `POST /api/producers/send/single`. It is checked first with the consumers' "
            "own strict JSON rules (no NaN, no trailing commas), so a message sent here is not "
            "rejected for its syntax."
        )

# --- a CSV file --------------------------------------------------------------------------------
with csv_tab:
    left, right = st.columns([3, 2], gap="large")
    with left:
        csv_topic = st.text_input("Topic", value="csv-uploads", key="csv_topic")
        upload = st.file_uploader("CSV file with a header row", type=["csv"], key="csv_file")
    with right:
        st.markdown("**What is sent**")
        st.caption(
            "The whole file as **one** record with `data-type: CSV_BATCH`, the same as "
            "`POST /api/producers/send/csv`. A file larger than the message limit "
            f"({src.settings.max_message_bytes:,} bytes) is split into several batches, each with the header."
        )
    if upload is not None:
        data = upload.getvalue()
        try:
            header, rows = producing.parse_csv(data)
        except producing.DecodeError as exc:
            st.error(f"This file cannot be sent: {fmt.plain(exc)}", icon=":material/table_rows:")
        else:
            chunks = producing.csv_chunks(header, rows, src.settings.max_message_bytes)
            stats = st.columns(4)
            stats[0].metric("Data rows", f"{len(rows):,}")
            stats[1].metric("Columns", len(header))
            stats[2].metric("Size", f"{len(data) / 1024:,.1f} KiB")
            stats[3].metric("Records to send", len(chunks))
            st.caption(f"Preview: the first {min(PREVIEW_ROWS, len(rows))} of {len(rows):,} rows")
            st.dataframe(
                pd.DataFrame.from_records(rows[:PREVIEW_ROWS], columns=header),
                hide_index=True,
                width="stretch",
            )
            csv_topic_error = producing.topic_problem(csv_topic.strip())
            if csv_topic_error:
                st.error(csv_topic_error)
            label = "Send as one CSV batch" if len(chunks) == 1 else f"Send as {len(chunks)} CSV batches"
            if st.button(
                label,
                type="primary",
                icon=":material/upload:",
                disabled=bool(csv_topic_error),
                key="csv_send",
            ):
                progress = st.progress(0.0, text="Sending…")
                try:
                    results = producing.send_batches(
                        src.produce,
                        csv_topic.strip(),
                        chunks,
                        lambda sent, total: progress.progress(sent / total, text=f"Sent {sent} of {total}"),
                    )
                except producing.PartialSend as exc:
                    before = fmt.plural(len(exc.sent), "batch", "batches")
                    st.session_state["csv_result"] = (
                        "error",
                        f"Stopped after {before}: {fmt.plain(exc.error)}",
                    )
                else:
                    first = results[0]
                    text = sent_message(first, f"{len(rows):,} rows")
                    if len(results) > 1:
                        text += f" (and {len(results) - 1} more batches)"
                    st.session_state["csv_result"] = ("ok", text)
    result = st.session_state.get("csv_result")
    if result:
        (st.success if result[0] == "ok" else st.error)(result[1])

# --- demo traffic ------------------------------------------------------------------------------
generator = producing.traffic
with demo_tab:
    st.caption(
        "Realistic orders (with numeric fields to chart on Trends) and a share of malformed records "
        "that the consumers reject: cut-off JSON, invalid UTF-8, NaN, ragged CSV."
    )
    current = generator.current
    running = current is not None and current.running
    cols = st.columns(4, vertical_alignment="bottom")
    demo_topic = cols[0].text_input("Topic", value="demo-orders", key="demo_topic", disabled=running)
    rate = cols[1].slider("Messages per second", 1, producing.MAX_RATE, 20, key="demo_rate", disabled=running)
    duration = cols[2].slider(
        "Duration (s)", 5, producing.MAX_DURATION_S, 60, step=5, key="demo_duration", disabled=running
    )
    bad = cols[3].slider("Bad records", 0, 50, 10, format="%d %%", key="demo_bad", disabled=running)
    buttons = st.container(horizontal=True, gap="small")
    if buttons.button(
        "Start", type="primary", icon=":material/play_arrow:", disabled=running, key="demo_start"
    ):
        problem = producing.topic_problem(demo_topic.strip())
        if problem:
            st.error(problem)
        else:
            generator.start(src.produce, demo_topic.strip(), rate, duration, bad / 100)
            running = True
    if buttons.button("Stop", icon=":material/stop:", disabled=not running, key="demo_stop"):
        generator.stop()

    @st.fragment(run_every=1.0 if running else None)
    def demo_progress() -> None:
        run = generator.current
        if run is None:
            limits = f"{producing.MAX_RATE} messages per second for {producing.MAX_DURATION_S // 60} minutes"
            st.caption(f"At most {limits}; one run at a time.")
            return
        elapsed = (run.finished or time.monotonic()) - run.started
        share = run.sent / run.planned if run.planned else 1.0
        state = "running" if run.running else ("stopped" if run.stopped else "finished")
        st.progress(
            min(share, 1.0),
            text=f"{state} · {run.sent:,} of {run.planned:,} sent to {run.topic} in {elapsed:,.0f} s",
        )
        numbers = st.columns(4)
        numbers[0].metric("Sent", f"{run.sent:,}")
        numbers[1].metric("Of them bad", f"{run.bad:,}")
        numbers[2].metric("Send errors", f"{run.errors:,}")
        numbers[3].metric("Rate", f"{run.rate}/s")
        if run.last_error:
            st.error(f"Last send error: {fmt.plain(run.last_error)}")

    demo_progress()
