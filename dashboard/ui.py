"""Streamlit pieces shared by the pages: the source, the session's live feed, the sidebar, pickers.

Everything here runs in a script thread of one session. User data (payloads,
errors, keys, topic names) is only ever shown through elements that render
text (dataframes, st.json, st.code, st.text, metrics), never through markdown
or HTML.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import streamlit as st

from dashboard import auth, fmt, runtime
from dashboard.fmt import ago, duration
from dashboard.live import LiveFeed
from dashboard.source import Source

SIDEBAR_REFRESH_S = 5.0  # each fragment run is a React render in the browser: keep them rare


def now_ms() -> int:
    return int(time.time() * 1000)


def source() -> Source:
    """The process's backend; a page that cannot have one shows why and stops.

    Every page starts here, so a session that has not signed in (AUTH_TOKEN) gets the sign-in form
    and nothing else even if a page script runs without ``dashboard_app.py``.
    """
    auth.require_sign_in()
    try:
        return runtime.source()
    except runtime.StartError as exc:
        st.error(f"The backend could not start: {fmt.plain(exc)}", icon=":material/error:")
        st.caption("Fix the setting named above and start the dashboard again.")
        st.stop()
        raise  # unreachable; st.stop() raises


def feed() -> LiveFeed:
    """This session's cursor on the event bus (one per browser tab)."""
    if "live_feed" not in st.session_state:
        st.session_state["live_feed"] = LiveFeed()
    return st.session_state["live_feed"]


def header(title: str, caption: str, refresh: bool = False) -> None:
    """The page title and one line about it; snapshot pages get a Refresh button beside it.

    Snapshot pages read the store when drawn; Refresh draws them again (any widget does too).
    """
    if not refresh:
        st.title(title, anchor=False)
        st.caption(caption)
        return
    left, right = st.columns([6, 1], vertical_alignment="center")
    with left:
        st.title(title, anchor=False)
    with right:
        st.button(
            "Refresh",
            key=f"refresh_{title}",
            icon=":material/refresh:",
            help="Read the latest data from the store",
            width="stretch",
        )
    st.caption(caption)


# --- sidebar -----------------------------------------------------------------------------------


def sidebar(src: Source) -> None:
    """System status, kept current by a fragment (no page rerun)."""
    with st.sidebar:
        _status_fragment(src)


def _line(label: str, badge: str, detail: str = "") -> None:
    # Only our own words and settings here: no user data goes through markdown.
    st.markdown(f"**{label}** &nbsp; {badge}" + (f"  \n{detail}" if detail else ""))


def _gateway_link(url: str) -> str:
    return f"`{url.removeprefix('http://')}` · [API docs]({url}/docs)"


@st.fragment(run_every=SIDEBAR_REFRESH_S)
def _status_fragment(src: Source) -> None:
    status = src.status()
    st.markdown("##### System")
    if status.broker_reachable is None:
        reach = ":gray-badge[unknown]"
    elif status.broker_reachable:
        reach = ":green-badge[:material/check: reachable]"
    else:
        reach = ":red-badge[:material/close: unreachable]"
    _line("Broker", reach, f"`{status.broker}`  \n{status.mode}")
    if not status.healthy and status.reason:
        st.caption(f"Not ready: {status.reason}")
    active = status.active_consumers
    _line("Consumers", f":{'green' if active else 'orange'}-badge[{active} active]")
    if status.gateway_url is None:
        _line("Gateway", ":orange-badge[not serving]")
    elif status.stream_connected is False:
        _line("Gateway", ":red-badge[disconnected]", _gateway_link(status.gateway_url))
    else:
        n = status.gateway_clients
        clients = "" if n is None else f" · {n} client{'' if n == 1 else 's'}"
        _line("Gateway", f":green-badge[serving{clients}]", _gateway_link(status.gateway_url))
    if st.session_state.get("page_is_live", False):
        feed_state = feed()
        feed_state.sync(src)
        last = feed_state.last_event_ms
        seen = f"last event {ago(last, now_ms())}" if last else "waiting for new events"
        _line("This page", ":green-badge[:material/bolt: live]", f"Updates by itself · {seen}")
    else:
        _line("This page", ":gray-badge[snapshot]", "Shows the store when drawn · Refresh for newer data")


# --- pickers -----------------------------------------------------------------------------------

RANGES: dict[str, int | None] = {
    "15 min": 15 * 60,
    "1 hour": 3600,
    "6 hours": 6 * 3600,
    "24 hours": 86400,
    "7 days": 7 * 86400,
    "All": None,
}

BUCKETS: dict[str, int | None] = {
    "Auto": None,
    "1 s": 1000,
    "10 s": 10_000,
    "1 min": 60_000,
    "5 min": 300_000,
    "1 hour": 3_600_000,
    "1 day": 86_400_000,
}
NICE_BUCKETS = [1000, 5000, 10_000, 30_000, 60_000, 300_000, 900_000, 3_600_000, 21_600_000, 86_400_000]


@dataclass(frozen=True)
class TimeRange:
    since_ms: int | None
    until_ms: int | None
    label: str


def time_range(key: str, default: str = "1 hour") -> TimeRange:
    """A time window: the last N (ending now) or all time."""
    choice = st.segmented_control(
        "Time range",
        list(RANGES),
        default=default,
        key=key,
        required=True,
        help="Received time of the records",
    )
    seconds = RANGES.get(choice or default)
    if seconds is None:
        return TimeRange(None, None, "all time")
    return TimeRange(now_ms() - seconds * 1000, None, f"the last {duration(seconds)}")


def bucket_picker(key: str) -> int | None:
    choice = st.segmented_control("Bucket", list(BUCKETS), default="Auto", key=key, required=True)
    return BUCKETS.get(choice or "Auto")


def auto_bucket(span_ms: int, target: int = 60) -> int:
    """The smallest nice bucket that draws the span in at most ``target`` bars."""
    for bucket in NICE_BUCKETS:
        if span_ms / bucket <= target:
            return bucket
    return NICE_BUCKETS[-1]


def bucket_label(bucket_ms: int) -> str:
    return duration(bucket_ms / 1000)
