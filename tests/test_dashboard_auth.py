"""The dashboard with AUTH_TOKEN set (issue 15, item 7): it asks for the token before drawing anything,
and the browser never receives the token, only short-lived stream tickets for /ws.

Three layers, on the embedded broker (Tansu):
* AppTest, on a real backend installed as the process's source: every page shows only the sign-in form
  until the token is given; a wrong, empty, oversized or non-ASCII token gets an error and nothing else.
* The attached source (``BACKEND_URL``): the stream it hands the browser carries a ticket from
  ``POST /api/stream-tickets``, and that ticket opens /ws.
* Headless Chromium on ``streamlit run dashboard_app.py``: every websocket frame and response body the
  page receives is recorded while it signs in, streams from /ws, receives an event and reconnects; the
  token is in none of them, and /ws is opened with ``ticket=``, the newest ticket the page was given.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from streamlit.testing.v1 import AppTest

from backend import events
from backend.config import Settings
from dashboard import runtime
from dashboard.source import LocalSource, RemoteSource
from tests.support import (
    CHROMIUM,
    ServedBackend,
    chromium,
    ensure_topic,
    free_port,
    served_backend,
    unique,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "dashboard_app.py"
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
TOKEN = "dash-" + secrets.token_hex(16)
PAGES = [
    "pages/overview.py",
    "pages/logs.py",
    "pages/trends.py",
    "pages/failed.py",
    "pages/producer.py",
    "pages/consumers.py",
]
# What the sign-in view is made of; anything else (metrics, tables, charts, the live panel, markdown,
# the sidebar's status) would be the dashboard showing something before the token was given.
SIGN_IN_PARTS = {
    "flex_container",
    "column",
    "space",
    "title",
    "caption",
    "form",
    "text_input",
    "button",
    "error",
}
TAIL_ROWS = '.kd-root[data-part="tail"] tbody tr'
CLOSE_STREAMS = "() => { for (const s of window.__kafkaDashboardHub.streams.values()) s.ws.close(); }"
TICKET = re.compile(rb"\d{13}\.[A-Za-z0-9_-]{43}")


@pytest.fixture(scope="module")
def secured(embedded_broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedBackend]:
    """A backend with AUTH_TOKEN serving HTTP, installed as this process's dashboard source."""
    topic = unique("dash-auth")
    with served_backend(
        tmp_path_factory.mktemp("dash-auth"),
        embedded_broker.bootstrap,
        topics=(topic,),
        consumer_count=1,
        auth_token=TOKEN,
    ) as running:
        runtime.install(LocalSource(running.backend))
        yield running
        runtime.install(None)


def render(page: str) -> AppTest:
    """Run the app on ``page`` (AppTest needs a first run to know the pages)."""
    app = AppTest.from_file(str(APP), default_timeout=30)
    app.run()
    if page != PAGES[0]:
        app.switch_page(page).run()
    return app


def parts(block: Any) -> list[str]:
    """The types of every element and block under ``block``, depth first."""
    found: list[str] = []
    for child in getattr(block, "children", {}).values():
        found.append(child.type)
        found.extend(parts(child))
    return found


def sign_in(app: AppTest, token: str) -> AppTest:
    app.text_input[0].input(token)
    [button] = [b for b in app.button if b.label == "Sign in"]
    return button.click().run()


def assert_only_the_form(app: AppTest) -> None:
    assert not app.exception, app.exception
    assert set(parts(app.main)) <= SIGN_IN_PARTS, parts(app.main)
    assert parts(app.sidebar) == [], parts(app.sidebar)
    assert [t.value for t in app.title] == [":material/lock: Kafka dashboard"]
    [field] = app.text_input
    assert field.label == "Access token" and field.proto.type == field.proto.PASSWORD


# --- AppTest: the form, and nothing else ----------------------------------------------------------


@pytest.mark.parametrize("page", PAGES)
def test_every_page_shows_only_the_sign_in_form(secured: ServedBackend, page: str) -> None:
    app = render(page)
    assert_only_the_form(app)
    assert not app.error


@pytest.mark.parametrize(
    ("given", "error"),
    [
        ("wrong-token", "Wrong token"),
        ("", "Enter the access token"),
        ("   ", "Enter the access token"),
        (TOKEN + "x", "Wrong token"),
        (TOKEN[:-1], "Wrong token"),
        ("tökén ☃ " + TOKEN, "Wrong token"),
        ("x" * 1024, "Wrong token"),
        ("<script>alert(1)</script>", "Wrong token"),
    ],
)
def test_a_wrong_token_gets_an_error_and_nothing_else(secured: ServedBackend, given: str, error: str) -> None:
    app = sign_in(render("pages/logs.py"), given)
    assert [e.value for e in app.error] == [
        "Wrong token. Check the AUTH_TOKEN the dashboard was started with."
        if error == "Wrong token"
        else "Enter the access token."
    ]
    assert_only_the_form(app)
    if given.strip():
        assert not any(given in e.value for e in app.error), "the error does not echo the input"


def test_the_right_token_shows_the_page_until_signing_out(secured: ServedBackend) -> None:
    app = sign_in(render("pages/logs.py"), TOKEN)
    assert not app.exception and not app.error, (app.exception, app.error)
    assert [t.value for t in app.title] == ["Logs explorer"]
    assert not app.text_input(key="logs_text").value, "the page's own widgets are drawn"
    assert "Access token" not in [field.label for field in app.text_input], "no sign-in form once signed in"
    # The whole app (navigation, sidebar) for the same session: still signed in.
    app.switch_page(str(APP)).run()
    assert [t.value for t in app.title] == ["Overview"]
    assert "bidi_component" in parts(app.main), "the live panel is drawn once signed in"
    [sign_out] = [b for b in app.sidebar.button if b.label == "Sign out"]
    sign_out.click().run()
    assert_only_the_form(app)


def test_without_auth_token_there_is_no_form(secured: ServedBackend) -> None:
    open_source = LocalSource(secured.backend)
    open_source.settings = dataclasses.replace(secured.settings, auth_token=None)
    runtime.install(open_source)
    try:
        app = render(PAGES[0])
        assert not app.exception, app.exception
        assert [t.value for t in app.title] == ["Overview"]
        assert not app.text_input
        assert not [b for b in app.sidebar.button if b.label == "Sign out"]
    finally:
        runtime.install(LocalSource(secured.backend))


# --- what the sources hand the browser -----------------------------------------------------------


async def ws_first_event(url: str) -> str:
    async with websockets.connect(url, proxy=None, open_timeout=10) as ws:
        return json.loads(await asyncio.wait_for(ws.recv(), 10))["event"]


def test_the_local_source_hands_out_a_ticket_that_opens_ws(secured: ServedBackend) -> None:
    stream = LocalSource(secured.backend).browser_stream()
    assert stream is not None and TOKEN not in json.dumps(stream)
    assert set(stream) == {"url", "ticket", "sameHost"} and TICKET.fullmatch(stream["ticket"].encode())
    opened = asyncio.run(ws_first_event(f"{stream['url']}?ticket={stream['ticket']}"))
    assert opened == events.CONNECTION_SUCCESS


def test_the_attached_source_hands_out_a_ticket_from_the_backend(secured: ServedBackend) -> None:
    attached = Settings(
        backend_url=secured.gateway, producer_port=secured.settings.producer_port, auth_token=TOKEN
    )
    remote = RemoteSource(attached).start()
    try:
        stream = remote.browser_stream()
        assert stream is not None and TOKEN not in json.dumps(stream)
        opened = asyncio.run(ws_first_event(f"{stream['url']}?ticket={stream['ticket']}"))
        assert opened == events.CONNECTION_SUCCESS
    finally:
        remote.close()
    refused = RemoteSource(dataclasses.replace(attached, auth_token="not-the-token"))
    assert refused.browser_stream() is None, "no ticket without the right token: the panel uses snapshots"


# --- headless Chromium: the token never reaches the browser ---------------------------------------


@pytest.fixture(scope="module")
def dashboard(embedded_broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``streamlit run dashboard_app.py`` with AUTH_TOKEN, on free ports and a temporary DATA_DIR."""
    work = tmp_path_factory.mktemp("dash-auth-browser")
    topic = unique("dash-auth-browser")
    ensure_topic(embedded_broker.bootstrap, topic)
    port, gateway_port, producer_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "AUTH_TOKEN": TOKEN,
        "KAFKA_BOOTSTRAP_SERVERS": embedded_broker.bootstrap,
        "KAFKA_TOPICS": topic,
        "KAFKA_GROUP_ID": unique("dash-auth-group"),
        "CONSUMER_COUNT": "1",
        "DATA_DIR": str(work / "data"),
        "GATEWAY_PORT": str(gateway_port),
        "PRODUCER_PORT": str(producer_port),
    }
    log_path = work / "streamlit.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port),
             "--server.headless", "true", "--theme.base", "light"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    served = {
        "url": f"http://127.0.0.1:{port}",
        "gateway": f"http://127.0.0.1:{gateway_port}",
        "producer": f"http://127.0.0.1:{producer_port}",
        "topic": topic,
    }
    try:
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        wait_for(
            lambda: _ok(f"{served['gateway']}/api/health", bearer) or process.poll() is not None,
            120,
            "the backend",
        )
        assert process.poll() is None, log_path.read_text(errors="replace")[-3000:]
        wait_for(lambda: _ok(f"{served['url']}/_stcore/health", {}), 60, "the Streamlit server")
        yield served
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def _ok(url: str, headers: dict[str, str]) -> bool:
    try:
        return httpx.get(url, headers=headers, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


class Recorder:
    """Everything the page receives: websocket frames (in order, with the socket's URL) and responses."""

    def __init__(self, page: Any) -> None:
        self.opened: list[str] = []  # websocket URLs, in the order the page opened them
        self.frames: list[tuple[str, bytes]] = []  # (websocket URL, payload) as received
        self.responses: list[Any] = []
        page.on("websocket", self._websocket)
        page.on("response", lambda response: self.responses.append(response))

    def _websocket(self, ws: Any) -> None:
        self.opened.append(ws.url)
        ws.on("framereceived", lambda payload: self.frames.append((ws.url, _bytes(payload))))

    def gateway_sockets(self) -> list[str]:
        return [url for url in self.opened if urllib.parse.urlsplit(url).path == "/ws"]

    def tickets_from_streamlit(self) -> list[bytes]:
        """Tickets found in Streamlit's frames, in the order received."""
        return [t for url, data in self.frames if "/_stcore/stream" in url for t in TICKET.findall(data)]

    def bodies(self) -> list[bytes]:
        found = []
        for response in self.responses:
            try:
                found.append(response.body())
            except Exception:  # redirects, the websocket upgrades: no body to read
                continue
        return found


def pump_until(page: Any, predicate: Callable[[], Any], timeout: float, what: str) -> None:
    """Wait for a condition on recorded events: Playwright delivers events only while it runs, so
    this polls through the page (100 ms at a time) rather than sleeping in Python."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        page.wait_for_timeout(100)


def _bytes(payload: str | bytes) -> bytes:
    return payload if isinstance(payload, bytes) else payload.encode()


def _query(url: str) -> dict[str, list[str]]:
    return urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)


def test_the_browser_never_receives_the_token(dashboard: dict[str, Any]) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("needs /usr/bin/chromium")
    expect = playwright_api.expect
    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1440, "height": 900}, color_scheme="light")
        page = context.new_page()
        seen = Recorder(page)
        page.goto(dashboard["url"] + "/logs")  # a deep link: signs in, then shows that page
        password = page.locator("input[type=password]")
        password.wait_for()
        assert page.locator('[data-testid="stSidebarNav"]').count() == 0, "no navigation before sign-in"
        assert page.get_by_role("button", name="Sign out").count() == 0
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "sign-in.png"))

        password.fill("not-the-token")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_text("Wrong token.")).to_be_visible(timeout=30_000)
        assert not seen.gateway_sockets(), "nothing streams before sign-in"
        page.screenshot(path=str(SCREENSHOTS / "sign-in-wrong-token.png"))

        password.fill(TOKEN)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Logs explorer")).to_be_visible(timeout=30_000)
        page.get_by_role("link", name="Overview").click()
        counters = page.locator('.kd-root[data-part="counters"]')
        expect(counters).to_have_attribute("data-mode", "ws", timeout=30_000)

        # An event reaches the page over /ws.
        response = httpx.post(
            f"{dashboard['producer']}/api/producers/send/single",
            params={"topic": dashboard["topic"]},
            json={"orderId": 1, "note": "through the stream"},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=10,
        )
        assert response.status_code == 201, response.text
        topic = dashboard["topic"]
        expect(page.locator(TAIL_ROWS).filter(has_text=topic)).to_have_count(1, timeout=30_000)
        page.screenshot(path=str(SCREENSHOTS / "signed-in-overview.png"))
        assert any(
            b'"message-received"' in data and topic.encode() in data
            for url, data in seen.frames
            if urllib.parse.urlsplit(url).path == "/ws"
        ), "the record's message-received came over /ws"

        # Reconnecting uses the newest ticket the page was given, not the first one.
        [first] = seen.gateway_sockets()
        first_ticket = _query(first)["ticket"][0].encode()
        pump_until(page, lambda: seen.tickets_from_streamlit()[-1] != first_ticket, 60, "a newer ticket")
        newest_before_close = len(seen.tickets_from_streamlit()) - 1
        with page.expect_websocket(lambda ws: urllib.parse.urlsplit(ws.url).path == "/ws", timeout=30_000):
            page.evaluate(CLOSE_STREAMS)
        expect(counters).to_have_attribute("data-mode", "ws", timeout=30_000)
        second = seen.gateway_sockets()[1]
        second_ticket = _query(second)["ticket"][0].encode()
        assert second_ticket != first_ticket
        # The newest it had when the stream closed, or one given since (the page gets fresh ones
        # while it runs: CI once saw one arrive between the reconnect and this check).
        given_since = seen.tickets_from_streamlit()[newest_before_close:]
        assert second_ticket in given_since, "the newest ticket the page was given"

        # What the page received: no token anywhere; /ws opened with tickets only.
        for url in seen.gateway_sockets():
            query = set(_query(url))
            assert query <= {"ticket", "lastSeq", "mode", "maxRate"} and "ticket" in query, url
        token = TOKEN.encode()
        assert seen.frames and any("/_stcore/stream" in url for url, _ in seen.frames)
        leaks = [url for url, data in seen.frames if token in data]
        assert not leaks, f"the token was in frames of {leaks}"
        bodies = seen.bodies()
        assert len(bodies) > 5, "the page's scripts and styles were read"
        assert not [body[:80] for body in bodies if token in body]
        context.close()
