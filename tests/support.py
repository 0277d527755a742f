"""Helpers shared by the integration tests: a running backend, an event recorder, waiting."""

from __future__ import annotations

import contextlib
import functools
import http.server
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from backend import events
from backend.config import Settings
from backend.events import CSV_BATCH, FAILED, PROCESSED, SINGLE_MESSAGE, Event, make_log_id
from backend.service import Backend
from backend.store import LogRow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll a cheap condition until it holds; fail with ``what`` when the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def create_topic(bootstrap: str, topic: str, partitions: int = 3) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        admin.close()


def foreign_producer(bootstrap: str) -> KafkaProducer:
    """A plain kafka-python producer, as any other application would use: no headers."""
    return KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)


def backend_settings(tmp_path: Path, bootstrap: str | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "data_dir": tmp_path / "data",
        "group_id": unique("group"),
        "gateway_port": free_port(),
        "producer_port": free_port(),
        "consumer_count": 3,
    }
    values.update(overrides)
    return Settings(**values)


def start_backend(settings: Settings, serve_http: bool = False) -> Backend:
    return Backend(settings).start(serve_http=serve_http)


class EventRecorder:
    """Subscribes to a bus and keeps every event, with waits on what arrived."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = threading.Condition()

    def __call__(self, event: Event) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def attach(self, bus: Any) -> EventRecorder:
        """Subscribe, with every event the bus still holds first: a view may have applied records
        (produced before its start) by the time the test subscribes."""
        backlog, _ = bus.subscribe_from(bus.oldest_seq - 1, self)
        with self._changed:
            self.events[:0] = backlog or []
            self._changed.notify_all()
        return self

    def wait(self, predicate: Callable[[list[Event]], bool], timeout: float, what: str) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self.events), timeout):
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    def log_ids_of(self, topic: str) -> set[str]:
        return {
            e.data["logId"]
            for e in list(self.events)
            if e.name == events.MESSAGE_RECEIVED and e.data["topic"] == topic
        }

    def outcomes_for(self, log_ids: set[str]) -> list[Event]:
        terminal = (events.PROCESSING_COMPLETED, events.PROCESSING_FAILED)
        return [e for e in list(self.events) if e.name in terminal and e.data["logId"] in log_ids]

    def by_log_id(self) -> dict[str, list[str]]:
        sequence: dict[str, list[str]] = defaultdict(list)
        for event in list(self.events):
            if "logId" in event.data:
                sequence[event.data["logId"]].append(event.name)
        return sequence


# ============================================================================================
# Added for the bad-input and security tests (test_openapi_fuzz, test_protocol_abuse,
# test_xss_vue): a served backend, topics that may already exist, a static file server and
# headless Chromium.
# ============================================================================================

#: Whether this kernel shares the CPU between sessions first (CONFIG_SCHED_AUTOGROUP).
AUTOGROUPS = Path("/proc/self/autogroup").exists()


def autogroup(pid: int | str = "self") -> str:
    """``/autogroup-<n> nice <k>``: the session's CPU group that ``pid`` is in, and its niceness.

    Empty for a process in init's session (a CI runner's): the kernel prints nothing for the root
    group, which is not an autogroup."""
    return Path(f"/proc/{pid}/autogroup").read_text().strip()


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def ensure_topic(bootstrap: str, topic: str, partitions: int = 3) -> None:
    """Create ``topic`` unless it exists."""
    with contextlib.suppress(TopicAlreadyExistsError):
        create_topic(bootstrap, topic, partitions)


@dataclass
class ServedBackend:
    """A backend serving HTTP (gateway + producer API), and where to reach it."""

    backend: Backend
    settings: Settings

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.settings.gateway_port}"

    @property
    def producer(self) -> str:
        return f"http://127.0.0.1:{self.settings.producer_port}"

    @property
    def ws(self) -> str:
        """The plain WebSocket /ws."""
        return f"ws://127.0.0.1:{self.settings.gateway_port}/ws"

    @property
    def engineio(self) -> str:
        """Socket.IO's Engine.IO v4 endpoint, websocket transport."""
        return f"ws://127.0.0.1:{self.settings.gateway_port}/socket.io/?EIO=4&transport=websocket"

    @property
    def bootstrap(self) -> str:
        """The Kafka cluster it uses."""
        assert self.settings.bootstrap_servers, "this backend runs on the embedded broker"
        return self.settings.bootstrap_servers

    @property
    def topic(self) -> str:
        """The first topic it consumes: the one its tests produce to."""
        return self.settings.topics[0]

    @property
    def auth_headers(self) -> dict[str, str]:
        token = self.settings.auth_token
        return {"Authorization": f"Bearer {token}"} if token else {}


def serve_backend(settings: Settings, timeout: float = 60.0) -> ServedBackend:
    """Start a backend with its HTTP servers and wait until /api/health says 200."""
    served = ServedBackend(start_backend(settings, serve_http=True), settings)
    url = f"{served.gateway}/api/health"

    def healthy() -> bool:
        try:
            return httpx.get(url, headers=served.auth_headers, timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(healthy, timeout, "the backend to be healthy")
    except BaseException:
        served.backend.stop()
        raise
    return served


@contextlib.contextmanager
def served_backend(tmp_dir: Path, bootstrap: str | None, **overrides: Any) -> Iterator[ServedBackend]:
    """A backend serving HTTP for a block of tests, stopped at the end; ``overrides`` are Settings.

    On a cluster (``bootstrap``) the topics it consumes are created first, so its consumers have
    their partitions from the start; ``bootstrap=None`` runs it on its own embedded broker.
    """
    if bootstrap:
        for topic in overrides.get("topics", ()):
            ensure_topic(bootstrap, topic)
    running = serve_backend(backend_settings(tmp_dir, bootstrap, **overrides))
    try:
        yield running
    finally:
        running.backend.stop()


def npm_install(directory: Path, module: str) -> None:
    """Install a package.json's dependencies unless they are there (scripts/test.sh does it up front)."""
    if (directory / "node_modules" / module / "package.json").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise AssertionError(f"npm is needed to install {directory / 'package.json'}")
    subprocess.run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=directory, check=True)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


@contextlib.contextmanager
def static_server(directory: Path) -> Iterator[int]:
    """Serve ``directory`` over HTTP on 127.0.0.1; yields the port."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(directory))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def chromium(*extra_args: str) -> Iterator[Any]:
    """Debian's headless Chromium driven by Playwright; yields the browser."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise AssertionError(f"{CHROMIUM} is missing: apt-get install chromium (scripts/test.sh does)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *extra_args])
        try:
            yield browser
        finally:
            browser.close()


# ============================================================================================
# Stored records for the dashboard tests (test_dashboard_apptest, test_analytics).
# ============================================================================================

#: Markup in a payload, for the pages to show as text.
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


def stored_rows(now_ms: int) -> list[LogRow]:
    """A spread of records: processed and failed, JSON and CSV, with and without payloads."""
    rows = []
    for offset in range(120):
        received = now_ms - (120 - offset) * 1000
        failed = offset % 6 == 0
        decode_failure = failed and offset % 12 == 0
        csv = offset % 10 == 5
        payload: object = {
            "orderId": offset,
            "amount": offset * 1.5,
            "note": HOSTILE if offset == 7 else "ok",
        }
        if csv:
            payload = [{"sku": "a", "qty": "2"}, {"sku": "b", "qty": "3"}]
        rows.append(
            LogRow(
                log_id=make_log_id("apptest", "orders", offset % 3, offset),
                cluster_id="apptest",
                topic="orders" if offset % 4 else "payments",
                partition=offset % 3,
                offset=offset,
                record_key=f"k{offset}" if offset % 5 == 0 else None,
                data_type=CSV_BATCH if csv else SINGLE_MESSAGE,
                row_count=2 if csv else 1,
                status=FAILED if failed else PROCESSED,
                consumer_id=f"consumer-{offset % 3 + 1}",
                error=(
                    f"invalid JSON: Expecting value at line 1 column {offset}"
                    if decode_failure
                    else ("ValueError: amount <script>alert(1)</script> too high" if failed else None)
                ),
                produced_ms=received - 5,
                received_ms=received,
                started_ms=received + 1,
                completed_ms=received + 2 + offset % 7,
                size_bytes=40,
                payload=None if decode_failure else payload,
            )
        )
    return rows


# --- Apache Kafka's own command-line tools (scripts/kafka_launcher.py) -------------------------


def run_tool(main_class: str, *args: str, stdin: str = "", **options: str) -> str:
    """Run a Kafka tool through kafka_tool(); return its stdout, failing with its stderr."""
    from scripts.kafka_launcher import kafka_tool

    result = subprocess.run(
        kafka_tool(main_class, *args, **options), input=stdin, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Each partition's log-end offset as the broker's own GetOffsetShell reports it."""
    from scripts.kafka_launcher import GET_OFFSET_SHELL

    shown = run_tool(GET_OFFSET_SHELL, bootstrap_server=bootstrap, topic=topic)
    return {int(p): int(o) for p, o in (line.rsplit(":", 2)[1:] for line in shown.split())}
