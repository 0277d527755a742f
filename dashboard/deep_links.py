"""Deep links that work like the app's root: no 404s, the entry script on the first run.

Opening a page's own URL (``/logs``) made the browser ask for ``/logs/_stcore/health`` and
``/logs/_stcore/host-config`` and get two 404s before it found the server one level up. That is
Streamlit's frontend, not this project: it does not know which part of the path is the page, so it
probes the whole path first, then its parent (``getPossibleBaseUris``; streamlit/streamlit#7074,
open since 2023). Streamlit reads the server's base URL from ``window.__streamlit.BACKEND_BASE_URL``
when a page defines it (streamlit/streamlit#11378), and its maintainers named setting it in the
served ``index.html`` as the fix for these 404s (streamlit/streamlit#11537), which Streamlit itself
does not do yet. This middleware does exactly that, and nothing else:

- only for a browser's navigation (``Accept: text/html``) and only in Streamlit's own index page
  (recognised by its entry script), so assets, the API and the websocket pass untouched;
- the base is the page URL resolved against ``.``: page paths are one segment (``/logs``), so it is
  the app's root, behind ``server.baseUrlPath`` or a proxy's prefix too, like the page's own
  ``./static/...`` assets;
- a page without the marker (another Streamlit release) is served as it came: the 404s return,
  nothing breaks, and ``tests/test_dashboard_browser.py`` notices.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Streamlit's index.html loads its bundle with this tag; the configuration must run before it.
ENTRY = b'<script type="module" crossorigin src="./static/js/index.'
#: Our constant text only (no request data): the app root, resolved like the page's own assets.
BASE_SCRIPT = (
    b"<script>window.__streamlit = Object.assign({}, window.__streamlit, "
    b'{BACKEND_BASE_URL: new URL(".", window.location.href).href});</script>\n    '
)


def with_base_url(html: bytes) -> bytes:
    """Streamlit's index page with the base URL set before its bundle; any other page unchanged."""
    at = html.find(ENTRY)
    if at < 0 or b"window.__streamlit" in html[:at]:
        return html
    return html[:at] + BASE_SCRIPT + html[at:]


def navigation_only() -> None:
    """Make the first run of every session go through ``st.navigation``, deep links included.

    Streamlit treats a ``pages/`` folder beside the entry script as a multipage app of its first
    kind until some run calls ``st.navigation``, which then clears this process-wide flag
    (``streamlit/commands/navigation.py``). Until then every run skips the entry script and runs the
    requested file alone: a server whose first visitor opened ``/logs`` showed ``pages/logs.py``
    without the sidebar's status, under a navigation of file names ("dashboard app", "consumers"),
    and kept doing so for every deep link until someone opened ``/``. Called when the server
    imports the app, before any session, it gives the first run what ``st.navigation`` would.
    """
    from streamlit.runtime.pages_manager import PagesManager

    PagesManager.uses_pages_directory = False


def _header(scope: Scope, name: bytes) -> bytes:
    return next((value for key, value in scope.get("headers", ()) if key.lower() == name), b"")


class DeepLinks:
    """ASGI middleware (``st.App(middleware=[Middleware(DeepLinks)])``) that applies ``with_base_url``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._is_navigation(scope):
            await self.app(scope, receive, send)
            return
        # The page is ~5 kB: asked for uncompressed, it can be edited (Streamlit gzips otherwise).
        scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k.lower() != b"accept-encoding"]}
        await self.app(scope, receive, _Rewriter(send))

    @staticmethod
    def _is_navigation(scope: Scope) -> bool:
        return (
            scope["type"] == "http"
            and scope["method"] == "GET"
            and b"text/html" in _header(scope, b"accept")
            and "/_stcore/" not in scope["path"]
        )


class _Rewriter:
    """Holds back an HTML answer until its body is complete, then sends it with the base URL."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.start: Message | None = None
        self.body = bytearray()

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = dict(message.get("headers", ()))
            if b"text/html" in headers.get(b"content-type", b"") and message.get("status") == 200:
                self.start = message
                return
        elif message["type"] == "http.response.body" and self.start is not None:
            self.body += message.get("body", b"")
            if message.get("more_body", False):
                return
            await self._flush()
            return
        await self.send(message)

    async def _flush(self) -> None:
        assert self.start is not None
        body = with_base_url(bytes(self.body))
        headers = [(k, v) for k, v in self.start.get("headers", ()) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await self.send({**self.start, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})
