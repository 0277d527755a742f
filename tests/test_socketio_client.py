"""The real socket.io-client from npm against the gateway: the seed's options, transports, restart, security;
and the example Vue page in headless Chromium.

The Node probe (tests/js/socketio_probe.mjs) writes one JSON line per thing that happens to the client;
:class:`Probe` collects them and waits on them with deadlines.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend import events
from backend.config import Settings
from tests.support import (
    ServedBackend,
    backend_settings,
    chromium,
    ensure_topic,
    foreign_producer,
    free_port,
    npm_install,
    serve_backend,
    static_server,
    unique,
    wait_for,
)

REPO = Path(__file__).resolve().parent.parent
JS_DIR = REPO / "tests" / "js"
VUE_DIR = REPO / "examples" / "vue-client"
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SEED_OPTIONS = {
    "transports": ["websocket", "polling"],
    "reconnection": True,
    "reconnectionDelay": 1000,
    "reconnectionAttempts": 5,
}
TOKEN = "socketio-token"
SEED_FLOW = (events.MESSAGE_RECEIVED, events.PROCESSING_STARTED, events.PROCESSING_COMPLETED)


@pytest.fixture(scope="session")
def probe_ready() -> None:
    npm_install(JS_DIR, "socket.io-client")


class Probe:
    """One socket.io-client in a Node process."""

    def __init__(self, url: str, config: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(
            ["node", str(JS_DIR / "socketio_probe.mjs"), url, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=JS_DIR,
        )
        self.records: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.records.append(json.loads(line))
                self._changed.notify_all()

    def wait(
        self, matches: Callable[[dict[str, Any]], bool], timeout: float, what: str, start: int = 0
    ) -> tuple[int, dict[str, Any]]:
        """The first record from index ``start`` on that ``matches``, and its index."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for index in range(start, len(self.records)):
                    if matches(self.records[index]):
                        return index, self.records[index]
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.proc.poll() is not None:
                    tail = [
                        (r["type"], r.get("name") or r.get("reason") or r.get("message"))
                        for r in self.records[-8:]
                    ]
                    stderr = (
                        self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else ""
                    )
                    raise AssertionError(
                        f"timed out after {timeout}s waiting for {what}; last: {tail} {stderr}"
                    )
                self._changed.wait(remaining)

    def event(
        self, name: str, timeout: float = 30.0, start: int = 0, **data: Any
    ) -> tuple[int, dict[str, Any]]:
        def matches(record: dict[str, Any]) -> bool:
            return (
                record["type"] == "event"
                and record["name"] == name
                and all(record["args"][0].get(k) == v for k, v in data.items())
            )

        return self.wait(matches, timeout, f"{name} {data or ''}", start)

    def events_from(self, start: int) -> list[dict[str, Any]]:
        with self._changed:
            return [r for r in self.records[start:] if r["type"] == "event"]

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": command}) + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send("exit")
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@contextlib.contextmanager
def probe(url: str, **config: Any) -> Iterator[Probe]:
    client = Probe(url, config)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def served_settings(probe_ready: None) -> dict[str, Any]:
    return {"topics": ("test",), "consumer_count": 2}


def seed_curl(producer: str, topic: str = "test", headers: dict[str, str] | None = None) -> dict[str, Any]:
    """POST /api/producers/send/single?topic=test with {"name": "Test", "value": 100}, as in the seed."""
    response = httpx.post(
        f"{producer}/api/producers/send/single",
        params={"topic": topic},
        json={"name": "Test", "value": 100},
        headers=headers or {},
    )
    assert response.status_code == 201, response.text
    return response.json()


def check_seed_flow(client: Probe, produced: dict[str, Any], start: int) -> tuple[int, str]:
    """The seed's four events for one produced record, with the seed's fields and types and seq last."""
    _, received = client.event(
        events.MESSAGE_RECEIVED, start=start, partition=produced["partition"], offset=produced["offset"]
    )
    data, seq = received["args"]
    log_id = data["logId"]
    assert isinstance(log_id, str) and isinstance(seq, int)
    assert {k: data[k] for k in ("topic", "dataType", "rowCount")} == {
        "topic": produced["topic"],
        "dataType": "SINGLE_MESSAGE",
        "rowCount": 1,
    }
    assert type(data["partition"]) is int and type(data["offset"]) is str and ISO_MS.match(data["timestamp"])
    index, completed = client.event(events.PROCESSING_COMPLETED, start=start, logId=log_id)
    assert completed["args"][0]["status"] == "PROCESSED" and isinstance(
        completed["args"][0]["consumerId"], str
    )
    _, started = client.event(events.PROCESSING_STARTED, start=start, logId=log_id)
    assert started["args"][0]["status"] == "PROCESSING" and ISO_MS.match(started["args"][0]["timestamp"])
    mine = [r for r in client.events_from(start) if r["args"][0].get("logId") == log_id]
    assert [r["name"] for r in mine] == list(SEED_FLOW)
    assert [r["args"][1] for r in mine] == sorted(r["args"][1] for r in mine)
    stats_index, stats = client.wait(
        lambda r: (
            r["type"] == "event" and r["name"] == events.STATS_UPDATED and r["args"][1] > completed["args"][1]
        ),
        30,
        "stats-updated after processing-completed",
        start,
    )
    counters, stats_seq = stats["args"]
    for name in ("totalMessages", "processedMessages", "failedMessages", "activeConsumers"):
        assert type(counters[name]) is int, counters
    assert (
        counters["processedMessages"] >= 1
        and ISO_MS.match(counters["timestamp"])
        and isinstance(stats_seq, int)
    )
    # A seed-style handler with one argument sees the payload itself.
    client.wait(
        lambda r: r["type"] == "handler" and r["name"] == events.STATS_UPDATED and r["data"] == counters,
        10,
        "the one-argument stats-updated handler",
        start,
    )
    return max(index, stats_index), log_id


def assert_consecutive(records: list[dict[str, Any]], after: int) -> None:
    seqs = [r["args"][-1] for r in records]
    assert seqs == list(range(after + 1, after + 1 + len(seqs))), f"gap or disorder: {seqs}"


# --- the seed's client, every transport ----------------------------------------------------------

TRANSPORTS = {
    "seed-options": (SEED_OPTIONS, "websocket", None),
    "websocket-only": ({**SEED_OPTIONS, "transports": ["websocket"]}, "websocket", None),
    "polling-only": ({**SEED_OPTIONS, "transports": ["polling"]}, "polling", None),
    "default-upgrade": ({k: v for k, v in SEED_OPTIONS.items() if k != "transports"}, "polling", "websocket"),
}


@pytest.mark.parametrize("variant", list(TRANSPORTS))
def test_seed_client_gets_connection_success_and_the_seed_events(served: ServedBackend, variant: str) -> None:
    options, transport, upgraded_to = TRANSPORTS[variant]
    with probe(served.gateway, io=options) as client:
        _, opened = client.wait(lambda r: r["type"] == "open", 15, "the Engine.IO connection")
        assert opened["transport"] == transport
        client.wait(lambda r: r["type"] == "connect", 15, "connect")
        start, hello = client.event(events.CONNECTION_SUCCESS, timeout=10)
        data, position = hello["args"]
        assert data["message"] == "Connected to Consumer Service WebSocket" and ISO_MS.match(
            data["timestamp"]
        )
        assert isinstance(position, int)
        if upgraded_to:
            _, upgrade = client.wait(lambda r: r["type"] == "upgrade", 15, "the upgrade to websocket")
            assert upgrade["transport"] == upgraded_to

        produced = seed_curl(served.producer)
        last, _ = check_seed_flow(client, produced, start)
        assert_consecutive(client.events_from(start + 1)[: last - start], position)
        if variant == "polling-only":
            assert not [r for r in client.records if r["type"] == "upgrade"]
        assert not [r for r in client.records if r["type"] in ("disconnect", "connect_error")]


@pytest.mark.parametrize("transports", [["websocket"], ["polling"]])
def test_live_mode_client_gets_whole_records_records_skipped_and_the_final_counts(
    served: ServedBackend, transports: list[str]
) -> None:
    """socket.io-client with auth {mode: "live", maxRate: 5}: a burst arrives sampled, records whole."""
    produced = 300
    before = httpx.get(f"{served.gateway}/api/consumers/statistics").json()["totalMessages"]
    auth = {"mode": "live", "maxRate": 5, "topics": ["test"]}
    with probe(served.gateway, io={**SEED_OPTIONS, "transports": transports}, auth=auth) as client:
        start, _ = client.event(events.CONNECTION_SUCCESS, timeout=15)
        producer = foreign_producer(served.bootstrap)
        for n in range(produced):
            producer.send("test", json.dumps({"n": n}).encode())
        producer.flush()
        producer.close()
        client.event(events.STATS_UPDATED, timeout=120, start=start, totalMessages=before + produced)
        received = client.events_from(start + 1)
        assert not [r for r in client.records if r["type"] in ("disconnect", "connect_error")]
    per_record: dict[str, list[str]] = {}
    for record in received:
        if record["name"] in events.RECORD_EVENTS:
            per_record.setdefault(record["args"][0]["logId"], []).append(record["name"])
    assert per_record and all(names == list(SEED_FLOW) for names in per_record.values()), per_record
    skipped = sum(r["args"][0]["count"] for r in received if r["name"] == events.RECORDS_SKIPPED)
    assert skipped > 0 and len(per_record) + skipped == produced
    seqs = [r["args"][-1] for r in received]
    assert seqs == sorted(set(seqs))


def test_an_invalid_subscription_is_a_connect_error_with_the_reason(served: ServedBackend) -> None:
    with probe(served.gateway, io=SEED_OPTIONS, auth={"mode": "live", "maxRate": "fast"}) as client:
        _, refused = client.wait(lambda r: r["type"] == "connect_error", 15, "connect_error")
        assert "maxRate must be an integer" in refused["message"]
        assert not [r for r in client.records if r["type"] in ("connect", "event")]


def test_zero_config_embedded_broker_serves_the_seed_client(tmp_path: Path, probe_ready: None) -> None:
    """No KAFKA_BOOTSTRAP_SERVERS: the embedded broker starts and the seed's flow works end to end."""
    settings = Settings(data_dir=tmp_path / "data", gateway_port=free_port(), producer_port=free_port())
    running = serve_backend(settings)
    try:
        with probe(running.gateway, io=SEED_OPTIONS) as client:
            start, _ = client.event(events.CONNECTION_SUCCESS, timeout=15)
            check_seed_flow(client, seed_curl(running.producer), start)
    finally:
        running.backend.stop()


# --- reconnection -------------------------------------------------------------------------------


def test_client_reconnects_after_a_restart_and_gets_what_it_missed(
    kafka: Any, tmp_path: Path, probe_ready: None
) -> None:
    """The seed's reconnection test: stop the service -> the client reports the disconnect; start it
    again (same DATA_DIR, same ports) -> it reconnects by itself and, with lastSeq, gets what it missed."""
    topic = unique("restart")
    ensure_topic(kafka.bootstrap, topic)
    settings = backend_settings(tmp_path, kafka.bootstrap, topics=(topic,), consumer_count=2)
    running = serve_backend(settings)
    client = Probe(running.gateway, {"io": SEED_OPTIONS, "trackLastSeq": True})
    try:
        start, _ = client.event(events.CONNECTION_SUCCESS, timeout=15)
        check_seed_flow(client, seed_curl(running.producer, topic), start)
        last_seen = max(r["args"][-1] for r in client.events_from(0))

        running.backend.stop()
        down, gone = client.wait(lambda r: r["type"] == "disconnect", 15, "the disconnect")
        assert gone["reason"] == "transport close"
        # While it is down, another application produces three records.
        producer = foreign_producer(kafka.bootstrap)
        sent = [producer.send(topic, value=b'{"offline": true}') for _ in range(3)]
        places = {(meta.partition, str(meta.offset)) for meta in (future.get(timeout=15) for future in sent)}
        producer.close()
        running = serve_backend(settings)

        _, reconnected = client.wait(lambda r: r["type"] == "connect", 30, "the reconnect", down)
        assert reconnected["lastSeq"] == last_seen
        index, hello = client.event(events.CONNECTION_SUCCESS, start=down)
        assert hello["args"][1] == last_seen  # the stream continues right after what it has

        def received_all() -> bool:
            got = {
                (r["args"][0]["partition"], r["args"][0]["offset"])
                for r in client.events_from(index)
                if r["name"] == events.MESSAGE_RECEIVED
            }
            return places <= got

        wait_for(received_all, 30, "the records produced while the backend was down")
        missed = client.events_from(index + 1)
        assert_consecutive(missed, last_seen)  # every event after lastSeq, none twice, in order
        # These were published before the restarted gateway listened: only the replay can bring them.
        restarted = {
            r["args"][0]["consumerId"] for r in missed if r["name"] == events.CONSUMER_STATUS_CHANGED
        }
        assert {"consumer-1", "consumer-2"} <= restarted
        assert not [r for r in client.records if r["type"] == "reconnect_failed"]
    finally:
        client.close()
        running.backend.stop()


# --- security -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured(
    kafka: Any, tmp_path_factory: pytest.TempPathFactory, probe_ready: None
) -> Iterator[ServedBackend]:
    settings = backend_settings(
        tmp_path_factory.mktemp("sio-secured"),
        kafka.bootstrap,
        topics=(unique("unused"),),
        consumer_count=0,
        auth_token=TOKEN,
    )
    running = serve_backend(settings)
    yield running
    running.backend.stop()


@pytest.mark.parametrize("transports", [["websocket"], ["polling"]])
def test_missing_or_wrong_token_is_a_connect_error(secured: ServedBackend, transports: list[str]) -> None:
    options = {**SEED_OPTIONS, "transports": transports}
    for token in (None, "wrong"):
        config: dict[str, Any] = {"io": options} if token is None else {"io": options, "token": token}
        with probe(secured.gateway, **config) as client:
            _, refused = client.wait(lambda r: r["type"] == "connect_error", 15, "connect_error")
            assert "unauthorized" in refused["message"]
            assert not [r for r in client.records if r["type"] in ("connect", "event")]
    with probe(secured.gateway, io=options, token=TOKEN) as client:
        client.wait(lambda r: r["type"] == "connect", 15, "connect with the right token")
        client.event(events.CONNECTION_SUCCESS, timeout=10)


def test_disallowed_origin_is_refused_on_the_websocket_handshake(
    served: ServedBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="backend.gateway")
    options = {**SEED_OPTIONS, "transports": ["websocket"], "reconnection": False}
    with probe(served.gateway, io={**options, "extraHeaders": {"Origin": "http://evil.example"}}) as client:
        client.wait(lambda r: r["type"] == "connect_error", 15, "connect_error")
        assert not [r for r in client.records if r["type"] in ("connect", "event")]
    assert any("origin http://evil.example" in m for m in caplog.messages)
    with probe(served.gateway, io={**options, "extraHeaders": {"Origin": "http://localhost:5173"}}) as client:
        client.event(events.CONNECTION_SUCCESS, timeout=15)


# --- the example Vue page in headless Chromium ----------------------------------------------------


def test_vue_example_shows_connected_and_counters_that_follow_produced_messages(
    served: ServedBackend,
) -> None:
    npm_install(VUE_DIR, "vue")
    with static_server(VUE_DIR) as port, chromium() as browser:
        page = browser.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(f"http://127.0.0.1:{port}/index.html?gateway={served.gateway}")
        status = page.get_by_test_id("status")
        status.filter(has_text="WebSocket: connected").wait_for(timeout=15_000)

        def shown(name: str) -> int:
            return int(page.get_by_test_id(name).inner_text())

        def server(name: str) -> int:
            return httpx.get(f"{served.gateway}/api/consumers/statistics").json()[name]

        before = server("processedMessages")
        wait_for(lambda: shown("processedMessages") == before, 15, "the page to show the current counters")
        for _ in range(3):
            seed_curl(served.producer)
        wait_for(lambda: shown("processedMessages") == before + 3, 30, "the counter to follow the messages")
        assert shown("totalMessages") >= before + 3 and shown("activeConsumers") == 2
        page.get_by_test_id("log-status").filter(has_text="processed").first.wait_for(timeout=10_000)
        assert "test" in page.get_by_test_id("logs").inner_text()
        assert problems == []


def test_vue_example_from_a_disallowed_origin_is_refused_everywhere(
    served: ServedBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """ServedBackend from http://evil.example (mapped to 127.0.0.1 inside Chromium): the browser sends that
    Origin; Socket.IO (websocket and polling) and REST refuse it, so the page never connects."""
    npm_install(VUE_DIR, "vue")
    caplog.set_level(logging.INFO, logger="backend.gateway")
    with (
        static_server(VUE_DIR) as port,
        chromium("--host-resolver-rules=MAP evil.example 127.0.0.1") as browser,
    ):
        page = browser.new_page()
        page.goto(f"http://evil.example:{port}/index.html?gateway={served.gateway}")
        page.get_by_test_id("status").filter(has_text="WebSocket: disconnected").wait_for(timeout=15_000)
        page.get_by_test_id("error").wait_for(timeout=10_000)
        assert page.get_by_test_id("processedMessages").inner_text() == "0"
    refused = [m for m in caplog.messages if f"http://evil.example:{port}" in m]
    assert any("Socket.IO" in m for m in refused) and any("Refused GET /api/" in m for m in refused)
