"""The Kafka dashboard: ``streamlit run dashboard_app.py``.

This file has two roles. ``streamlit run`` finds the ``st.App`` below, imports
this module and serves the app with uvicorn; the app's lifespan starts the
backend (broker, consumers, event gateway, producer API) once, when the
server starts, and stops it with the server. Streamlit then runs this same
file as ``__main__`` for every browser session, which draws the pages.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboard import runtime

if __name__ != "__main__":
    from starlette.middleware import Middleware

    from dashboard.deep_links import DeepLinks, navigation_only

    # Imported by the server: the process-wide app, whose lifespan owns the backend. A page
    # opened by its own URL (/logs) runs through the navigation below and finds the server
    # without probing /logs/_stcore (dashboard/deep_links.py).
    navigation_only()  # pages/ is not an old-style multipage folder: no page runs without sign-in
    app = st.App(__file__, lifespan=runtime.lifespan, middleware=[Middleware(DeepLinks)])
else:
    from dashboard import auth, ui

    st.set_page_config(
        page_title="Kafka dashboard",
        page_icon=str(Path(__file__).parent / "dashboard" / "static" / "favicon.png"),
        layout="wide",
        initial_sidebar_state="expanded",
    )
    pages = {
        "Monitor": [
            st.Page("pages/overview.py", title="Overview", icon=":material/monitoring:", default=True),
            st.Page("pages/logs.py", title="Logs explorer", icon=":material/manage_search:", url_path="logs"),
            st.Page("pages/trends.py", title="Trends", icon=":material/insights:", url_path="trends"),
            st.Page("pages/failed.py", title="Failed messages", icon=":material/error:", url_path="failed"),
        ],
        "Operate": [
            st.Page("pages/producer.py", title="Producer", icon=":material/send:", url_path="producer"),
            st.Page("pages/consumers.py", title="Consumers", icon=":material/groups:", url_path="consumers"),
        ],
    }
    # --- sign-in (AUTH_TOKEN, dashboard/auth.py): before navigation draws anything ---------------
    auth.require_sign_in(pages)
    # -----------------------------------------------------------------------------------------------
    page = st.navigation(pages)
    source = ui.source()
    # Pages that update by themselves (fragments on the event stream); the others are snapshots.
    st.session_state["page_is_live"] = page.title in ("Overview", "Consumers")
    ui.sidebar(source)
    auth.sign_out_button()
    page.run()
