"""The live counters and live tail: a components-v2 element that updates the DOM itself.

Mounted from a fragment with a snapshot of the session's :class:`LiveFeed`
(about once a second), it also subscribes to the gateway's ``/ws`` in the
browser and applies each event the moment it arrives, without any Streamlit
rerun. See ``static/live_panel.js`` for how the two are merged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

_STATIC = Path(__file__).parent / "static"

_component = st.components.v2.component(
    "kafka_dashboard.live_panel",
    html=(_STATIC / "live_panel.html").read_text(encoding="utf-8"),
    css=(_STATIC / "live_panel.css").read_text(encoding="utf-8"),
    js=(_STATIC / "live_panel.js").read_text(encoding="utf-8"),
)


def live_panel(part: str, snapshot: dict[str, Any], key: str) -> bool:
    """Mount one part ("counters" or "tail") of the live panel with the latest snapshot.

    Returns whether this browser receives the gateway's stream itself (reported by the
    "counters" part, which sets its ``streaming`` state when its /ws opens or closes). The "tail"
    part sets ``joined`` each time its stream has joined the gateway's live feed; the change reruns
    its fragment, whose snapshot brings the records the stream left out before the join.
    """
    result = _component(
        key=key,
        data={**snapshot, "part": part},
        on_streaming_change=_ignore,
        on_joined_change=_ignore,  # the tail's stream joined the gateway's feed: a rerun, a snapshot
    )
    return bool(getattr(result, "streaming", False))


def _ignore() -> None:
    """State callbacks are required to receive state; the page reads the value itself."""
