"""Sign-in when AUTH_TOKEN is set: the dashboard asks for the token before it draws anything.

Why here and not in the pages: ``dashboard_app.py`` calls :func:`require_sign_in` before
``st.navigation(...)`` draws the menu and runs a page, so no page, fragment, sidebar status or
navigation entry exists for a session that has not signed in. Navigation is still declared (hidden),
so a deep link such as ``/logs`` opens that page once the token is accepted.

The token is compared in constant time and, once accepted, only a flag is remembered in
``st.session_state`` (server side, this browser tab's session): nothing goes into a cookie or the
URL, and the token is never sent back to the browser. A reload starts a new session and asks again.

Streamlit's own ``st.login`` (OIDC) is not used: an identity provider says who a person is, not
whether they may produce records and stop consumers here, which would need an allowlist the
contract does not have. With AUTH_TOKEN unset nothing here draws anything.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import streamlit as st

from backend.gateway.http_policy import token_matches
from dashboard import runtime

log = logging.getLogger(__name__)

SIGNED_IN = "_auth_signed_in"  # st.session_state key: True once this session gave the token
MAX_TOKEN_CHARS = 1024  # longer input is cut here by Streamlit, server side; a token is a few dozen


def expected_token() -> str | None:
    """The AUTH_TOKEN this dashboard enforces (its backend's), or None when there is none.

    When the backend could not start, AUTH_TOKEN from the environment still guards the page that
    explains why (the start error names settings and paths).
    """
    try:
        return runtime.source().settings.auth_token
    except runtime.StartError:
        return os.environ.get("AUTH_TOKEN") or None


def signed_in() -> bool:
    """Whether this session may see the dashboard: no token configured, or the token was given."""
    return expected_token() is None or bool(st.session_state.get(SIGNED_IN))


def require_sign_in(pages: Mapping[str, Sequence[Any]] | Sequence[Any] | None = None) -> None:
    """Return when the session may see the dashboard; otherwise draw only the sign-in form and stop.

    ``pages`` is what ``dashboard_app.py`` passes to ``st.navigation``: declared here with the menu
    hidden, so the requested page is remembered but nothing of it is drawn. Pages call this again
    (through ``ui.source()``, without ``pages``) in case a page script ever runs on its own.
    """
    expected = expected_token()
    if expected is None or st.session_state.get(SIGNED_IN):
        return
    if pages is not None:
        st.navigation(pages, position="hidden")
    if _sign_in_form(expected):
        st.session_state[SIGNED_IN] = True
        st.rerun()
    st.stop()


def _sign_in_form(expected: str) -> bool:
    """The centered sign-in form; True when the token given matches ``expected``."""
    _, middle, _ = st.columns([1, 1.1, 1])
    with middle:
        st.space("large")
        st.title(":material/lock: Kafka dashboard", anchor=False)
        st.caption(
            "This dashboard is protected by an access token (the `AUTH_TOKEN` it was started with). "
            "Enter it to continue; it is checked on the server and kept for this browser tab only."
        )
        with st.form("sign_in", clear_on_submit=True, enter_to_submit=True):
            given = st.text_input(
                "Access token",
                type="password",
                max_chars=MAX_TOKEN_CHARS,
                autocomplete="current-password",
                placeholder="AUTH_TOKEN",
            )
            submitted = st.form_submit_button(
                "Sign in", type="primary", icon=":material/login:", width="stretch"
            )
        if not submitted:
            return False
        problem = _refusal(expected, given)
        if problem is None:
            return True
        st.error(problem, icon=":material/error:")
        return False


def _refusal(expected: str, given: str | None) -> str | None:
    """Why ``given`` does not sign in (None: it does). Says nothing about the expected token."""
    given = (given or "").strip()
    if not given:
        return "Enter the access token."
    if not token_matches(expected, given):
        log.warning("Dashboard sign-in refused: wrong token")
        return "Wrong token. Check the AUTH_TOKEN the dashboard was started with."
    return None


def sign_out_button() -> None:
    """A "Sign out" button in the sidebar, when there is something to sign out of."""
    if expected_token() is None:
        return
    with st.sidebar:
        st.button(
            "Sign out", key="auth_sign_out", icon=":material/logout:", on_click=_sign_out, width="stretch"
        )


def _sign_out() -> None:
    """Forget the sign-in; the rerun that follows the click draws the form again."""
    st.session_state.pop(SIGNED_IN, None)
