"""The event gateway (:3001) against Apache Kafka: /ws, replay, REST, origins, tokens, slow clients.

Every test talks to a real backend (consumers, store, bus, uvicorn) over real sockets. The
socket.io-client (npm) side is in test_socketio_client.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import websockets
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Opcode
from websockets.uri import parse_uri

import backend.gateway.fanout as fanout_module
from backend import events
from tests.support import (
    ServedBackend,
    foreign_producer,
    served_backend,
    unique,
    wait_for,
)

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SEED_BODY = {"name": "Test", "value": 100}
TOKEN = "s3cret-token"
APP_ORIGIN = "http://app.example"


@pytest.fixture(scope="module")
def served_settings() -> dict[str, Any]:
    """The backend most tests share: default CORS policy, no token, consuming its own topic and 'test'."""
    return {"topics": (unique("gateway"), "test"), "consumer_count": 2}


@pytest.fixture(scope="module")
def secured(kafka: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedBackend]:
    """A backend with AUTH_TOKEN and an explicit CORS_ORIGINS list (no consumers needed)."""
    with served_backend(
        tmp_path_factory.mktemp("secured"),
        kafka.bootstrap,
        topics=(unique("secured"),),
        consumer_count=0,
        auth_token=TOKEN,
        cors_origins=(APP_ORIGIN,),
    ) as running:
        yield running


# --- helpers ----------------------------------------------------------------------------------


async def frames_until(
    ws: Any, done: Callable[[dict[str, Any]], bool], timeout: float = 30.0, what: str = "a frame"
) -> list[dict[str, Any]]:
    """Receive /ws frames until ``done(frame)``; all frames received, in order."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    frames: list[dict[str, Any]] = []
    while True:
        remaining = deadline - loop.time()
        try:
            if remaining <= 0:
                raise TimeoutError
            frame = json.loads(await asyncio.wait_for(ws.recv(), remaining))
        except TimeoutError:
            seen = [(f["event"], f["seq"]) for f in frames[-10:]]
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what}; last frames {seen}"
            ) from None
        frames.append(frame)
        if done(frame):
            return frames


def produce_seed_message(served: ServedBackend, topic: str = "test") -> dict[str, Any]:
    """The seed's curl: POST /api/producers/send/single?topic=test with {"name": "Test", "value": 100}."""
    response = httpx.post(
        f"{served.producer}/api/producers/send/single", params={"topic": topic}, json=SEED_BODY
    )
    assert response.status_code == 201, response.text
    return response.json()


def is_record(frame: dict[str, Any], produced: dict[str, Any]) -> bool:
    data = frame["data"]
    return (
        frame["event"] == events.MESSAGE_RECEIVED
        and data["topic"] == produced["topic"]
        and data["partition"] == produced["partition"]
        and data["offset"] == produced["offset"]
    )


def assert_consecutive(frames: list[dict[str, Any]], after: int) -> None:
    seqs = [frame["seq"] for frame in frames]
    assert seqs == list(range(after + 1, after + 1 + len(seqs))), f"gap or disorder in {seqs}"


def check_seed_payloads(frames: list[dict[str, Any]], produced: dict[str, Any]) -> str:
    """The four events of one record, with the seed's fields and types; returns the logId."""
    received = next(frame for frame in frames if is_record(frame, produced))
    log_id = received["data"]["logId"]
    mine = [frame for frame in frames if frame["data"].get("logId") == log_id]
    assert [frame["event"] for frame in mine] == [
        events.MESSAGE_RECEIVED,
        events.PROCESSING_STARTED,
        events.PROCESSING_COMPLETED,
    ]
    data = received["data"]
    assert isinstance(log_id, str) and log_id
    assert (data["dataType"], data["rowCount"], type(data["partition"]), type(data["offset"])) == (
        "SINGLE_MESSAGE",
        1,
        int,
        str,
    )
    started, completed = mine[1]["data"], mine[2]["data"]
    assert started["status"] == "PROCESSING"
    assert completed["status"] == "PROCESSED" and isinstance(completed["consumerId"], str)
    for frame in mine:
        assert ISO_MS.match(frame["data"]["timestamp"]), frame
    stats = [
        frame for frame in frames if frame["event"] == events.STATS_UPDATED and frame["seq"] > mine[2]["seq"]
    ]
    assert stats, "no stats-updated after processing-completed"
    counters = ("totalMessages", "processedMessages", "failedMessages", "activeConsumers")
    assert all(type(stats[-1]["data"][name]) is int for name in counters), stats[-1]
    assert ISO_MS.match(stats[-1]["data"]["timestamp"])
    return log_id


class StalledClient:
    """A websocket client that completes its handshake and then stops reading.

    Its receive buffer is made small, so the server's writes back up after a few MB (the kernel's
    send buffer) instead of tens of MB. Built on the websockets library's sans-I/O protocol, over
    a plain blocking socket, so that "not reading" really means nothing reads the socket.
    """

    def __init__(self, url: str) -> None:
        uri = parse_uri(url)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect((uri.host, uri.port))
        self.protocol = ClientProtocol(uri, max_size=None)
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        self.texts: list[str] = []

    def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.sock.sendall(data)

    def send_text(self, text: str) -> None:
        self.protocol.send_text(text.encode())
        self._flush()

    def read_until(self, done: Callable[[str], bool], timeout: float = 10.0) -> None:
        self.sock.settimeout(timeout)
        while True:
            data = self.sock.recv(4096)
            assert data, "connection closed during the handshake"
            self.protocol.receive_data(data)
            if self._collect(done):
                return

    def _collect(self, done: Callable[[str], bool] | None = None) -> bool:
        for event in self.protocol.events_received():
            if getattr(event, "opcode", None) is Opcode.TEXT:
                self.texts.append(event.data.decode())
                if done and done(self.texts[-1]):
                    return True
        return False

    def drain_until_closed(self, timeout: float) -> bool:
        """Read everything the server still sends; True once the server has closed the connection."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                return False
            except OSError:  # reset: cut off just as well
                return True
            if not data:
                return True
            self.protocol.receive_data(data)
            self._collect()
            if any(text == "1" for text in self.texts[-3:]):  # Engine.IO CLOSE packet
                return True
        return False

    def newest_seq(self) -> int:
        """The newest seq among the /ws frames or Socket.IO event packets received."""
        seqs = [0]
        for text in self.texts:
            if text.startswith("{"):
                seqs.append(json.loads(text)["seq"])
            elif text.startswith("42"):
                seqs.append(json.loads(text[2:])[-1])
        return max(seqs)

    def close(self) -> None:
        self.sock.close()


class EngineIOClient:
    """A minimal Socket.IO v5 client over websocket: connects, answers pings, collects events."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.events: list[tuple[str, dict[str, Any], int]] = []

    @classmethod
    async def connect(cls, url: str, auth: dict[str, Any] | None = None) -> EngineIOClient:
        ws = await websockets.connect(url, max_size=None)
        opened = await asyncio.wait_for(ws.recv(), 10)
        assert opened.startswith("0"), opened
        await ws.send("40" + json.dumps(auth or {}))
        client = cls(ws)
        reply = await client._next_packet(10)
        assert reply.startswith("40"), reply
        return client

    async def _next_packet(self, timeout: float) -> str:
        while True:
            packet = await asyncio.wait_for(self.ws.recv(), timeout)
            if packet == "2":
                await self.ws.send("3")
                continue
            return packet

    async def until(self, done: Callable[[str, dict[str, Any], int], bool], timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            packet = await self._next_packet(max(deadline - loop.time(), 0.001))
            if packet.startswith("42"):
                name, data, seq = json.loads(packet[2:])
                self.events.append((name, data, seq))
                if done(name, data, seq):
                    return


# --- /ws --------------------------------------------------------------------------------------


def test_ws_client_gets_connection_success_then_the_seed_events_with_seq(served: ServedBackend) -> None:
    async def run() -> None:
        async with websockets.connect(served.ws) as ws:
            hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert hello["event"] == events.CONNECTION_SUCCESS
            assert hello["data"]["message"] == "Connected to Consumer Service WebSocket"
            assert ISO_MS.match(hello["data"]["timestamp"])
            assert isinstance(hello["seq"], int)

            produced = await asyncio.to_thread(produce_seed_message, served)
            assert (produced["topic"], type(produced["partition"]), type(produced["offset"])) == (
                "test",
                int,
                str,
            )
            state: dict[str, Any] = {}

            def complete(frame: dict[str, Any]) -> bool:
                if is_record(frame, produced):
                    state["logId"] = frame["data"]["logId"]
                if frame["event"] == events.PROCESSING_COMPLETED and frame["data"]["logId"] == state.get(
                    "logId"
                ):
                    state["completed"] = frame["seq"]
                return frame["event"] == events.STATS_UPDATED and frame["seq"] > state.get(
                    "completed", 1 << 62
                )

            frames = await frames_until(ws, complete, what="the seed message's events")
            assert_consecutive(frames, hello["seq"])
            check_seed_payloads(frames, produced)

    asyncio.run(run())


def test_ws_reconnect_with_last_seq_replays_what_was_missed_then_goes_live(served: ServedBackend) -> None:
    async def run() -> None:
        async with websockets.connect(served.ws) as ws:
            last_seq = json.loads(await asyncio.wait_for(ws.recv(), 10))["seq"]
        # Disconnected: three records are produced and processed meanwhile.
        produced = [await asyncio.to_thread(produce_seed_message, served, served.topic) for _ in range(3)]
        offsets = {(p["partition"], p["offset"]) for p in produced}
        bus = served.backend.bus

        def processed_all() -> bool:
            held = bus.since(last_seq) or []
            mine = {
                e.data["logId"]
                for e in held
                if e.name == events.MESSAGE_RECEIVED
                and e.data["topic"] == served.topic
                and (e.data["partition"], e.data["offset"]) in offsets
            }
            done = {e.data["logId"] for e in held if e.name == events.PROCESSING_COMPLETED}
            return len(mine) == 3 and mine <= done

        await asyncio.to_thread(wait_for, processed_all, 30, "the three records to be processed")
        missed = bus.since(last_seq)
        assert missed is not None

        async with websockets.connect(f"{served.ws}?lastSeq={last_seq}") as ws:
            hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert (hello["event"], hello["seq"]) == (events.CONNECTION_SUCCESS, last_seq)
            replayed = await frames_until(ws, lambda f: f["seq"] == missed[-1].seq, what="the replay")
            assert_consecutive(replayed, last_seq)
            assert [f["event"] for f in replayed] == [e.name for e in missed]
            got = {
                (f["data"]["partition"], f["data"]["offset"])
                for f in replayed
                if f["event"] == "message-received"
            }
            assert offsets <= got
            # ...then live events, continuing the same sequence.
            live = await asyncio.to_thread(produce_seed_message, served, served.topic)
            frames = await frames_until(
                ws, lambda f: is_record(f, live), what="a live event after the replay"
            )
            assert_consecutive(replayed + frames, last_seq)

    asyncio.run(run())


def test_ws_resync_required_when_last_seq_is_not_held(served: ServedBackend) -> None:
    bus = served.backend.bus

    async def resync_then_live(last_seq: int) -> tuple[dict[str, Any], dict[str, Any]]:
        async with websockets.connect(f"{served.ws}?lastSeq={last_seq}") as ws:
            hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
            resync = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert (hello["event"], resync["event"]) == (events.CONNECTION_SUCCESS, events.RESYNC_REQUIRED)
            assert resync["data"]["lastSeq"] == last_seq
            # It continues live from the position it was given, without a gap.
            marker = bus.publish("marker", {}).seq
            frames = await frames_until(ws, lambda f: f["seq"] == marker, what="the live marker event")
            assert_consecutive(frames, hello["seq"])
            assert resync["seq"] == hello["seq"]
            return hello, resync

    # A lastSeq from the future (another store, another server) cannot be continued.
    asyncio.run(resync_then_live(bus.last_seq + 1000))

    # Push an old position out of the ring buffer (it holds the newest 20,000 events).
    old = bus.last_seq
    for i in range(20_001):
        bus.publish("filler", {"i": i})
    _, resync = asyncio.run(resync_then_live(old))
    assert resync["data"]["oldestSeq"] > old + 1


@pytest.mark.parametrize("query", ["lastSeq=-1", "lastSeq=abc", "lastSeq=1.5"])
def test_ws_refuses_a_malformed_last_seq(served: ServedBackend, query: str) -> None:
    async def run() -> None:
        async with websockets.connect(f"{served.ws}?{query}") as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert "lastSeq" in closed.value.rcvd.reason

    asyncio.run(run())


# --- REST -------------------------------------------------------------------------------------


def test_health_statistics_and_docs(served: ServedBackend) -> None:
    health = httpx.get(f"{served.gateway}/api/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    stats = httpx.get(f"{served.gateway}/api/consumers/statistics").json()
    for name in ("totalMessages", "processedMessages", "failedMessages", "activeConsumers"):
        assert type(stats[name]) is int, stats
    assert stats["activeConsumers"] == 2 and ISO_MS.match(stats["timestamp"])
    docs = httpx.get(f"{served.gateway}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    paths = httpx.get(f"{served.gateway}/openapi.json").json()["paths"]
    assert {"/api/health", "/api/consumers/statistics", "/api/consumers/logs", "/api/consumers"} <= set(paths)
    assert "/api/consumers/{consumerId}" in paths
    missing = httpx.get(f"{served.gateway}/api/nothing-here")
    assert missing.status_code == 404 and "error" in missing.json()


def test_logs_are_newest_first_and_filtered(served: ServedBackend, kafka: Any) -> None:
    topic = served.topic
    good = [produce_seed_message(served, topic) for _ in range(2)]
    producer = foreign_producer(kafka.bootstrap)
    bad = producer.send(topic, value=b'{"broken": ', partition=0).get(timeout=15)
    producer.close()
    logs_url = f"{served.gateway}/api/consumers/logs"

    def stored() -> list[dict[str, Any]]:
        return httpx.get(logs_url, params={"topic": topic, "limit": 1000}).json()

    wanted = {(p["partition"], p["offset"]) for p in good} | {(bad.partition, str(bad.offset))}
    rows = wait_for(
        lambda: (r := stored()) and wanted <= {(x["partition"], x["offset"]) for x in r} and r, 30, "logs"
    )
    received = [row["receivedAt"] for row in rows]
    assert received == sorted(received, reverse=True), "not newest first"
    keys = {"logId", "topic", "partition", "offset", "dataType", "rowCount", "status", "consumerId", "error"}
    assert keys | {"receivedAt", "completedAt"} <= set(rows[0])
    assert all(ISO_MS.match(row["receivedAt"]) and ISO_MS.match(row["completedAt"]) for row in rows)

    failed = httpx.get(logs_url, params={"topic": topic, "status": "failed"}).json()
    assert [(row["partition"], row["offset"], row["status"]) for row in failed] == [
        (bad.partition, str(bad.offset), "FAILED")
    ]
    assert "invalid JSON" in failed[0]["error"]
    assert len(httpx.get(logs_url, params={"topic": topic, "limit": 1}).json()) == 1
    assert httpx.get(logs_url, params={"topic": unique("nothing")}).json() == []


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"status": "DONE"}, "status must be one of"),
        ({"topic": "no spaces allowed"}, "not a valid topic"),
        ({"topic": "<script>alert(1)</script>"}, "not a valid topic"),
    ],
)
def test_logs_query_validation_is_a_readable_400(
    served: ServedBackend, params: dict[str, Any], fragment: str
) -> None:
    response = httpx.get(f"{served.gateway}/api/consumers/logs", params=params)
    assert response.status_code == 400
    assert fragment in response.json()["error"]


def test_consumers_can_be_listed_started_and_stopped(served: ServedBackend) -> None:
    async def run() -> None:
        async with websockets.connect(served.ws) as ws:
            hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
            listed = httpx.get(f"{served.gateway}/api/consumers").json()
            assert {"consumer-1", "consumer-2"} <= {c["consumerId"] for c in listed}
            assert all(isinstance(c["partitions"], list) and c["status"] for c in listed)
            assert all(re.fullmatch(r".+-\d+", p) for c in listed for p in c["partitions"])

            created = await asyncio.to_thread(httpx.post, f"{served.gateway}/api/consumers")
            assert created.status_code == 201
            new_id = created.json()["consumerId"]

            def status_of(wanted: str) -> Callable[[dict[str, Any]], bool]:
                return lambda f: (
                    f["event"] == events.CONSUMER_STATUS_CHANGED
                    and f["data"]
                    == {
                        **f["data"],
                        "consumerId": new_id,
                        "status": wanted,
                    }
                )

            frames = await frames_until(ws, status_of("ACTIVE"), what="consumer-status-changed ACTIVE")
            assert new_id in {c["consumerId"] for c in httpx.get(f"{served.gateway}/api/consumers").json()}

            deleted = await asyncio.to_thread(
                httpx.delete, f"{served.gateway}/api/consumers/{new_id}", timeout=30
            )
            assert deleted.status_code == 200
            frames += await frames_until(ws, status_of("INACTIVE"), what="consumer-status-changed INACTIVE")
            assert_consecutive(frames, hello["seq"])
            again = await asyncio.to_thread(httpx.delete, f"{served.gateway}/api/consumers/{new_id}")
            assert again.status_code == 404 and new_id in again.json()["error"]

    asyncio.run(run())


# --- origins and tokens -----------------------------------------------------------------------


@pytest.mark.parametrize("origin", ["http://localhost:5173", "http://127.0.0.1:8080", "http://localhost"])
def test_default_policy_allows_local_origins(served: ServedBackend, origin: str) -> None:
    response = httpx.get(f"{served.gateway}/api/consumers/statistics", headers={"Origin": origin})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == origin
    preflight = httpx.options(
        f"{served.producer}/api/producers/send/single",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == origin

    async def ws_hello() -> str:
        async with websockets.connect(served.ws, origin=origin) as ws:
            return json.loads(await asyncio.wait_for(ws.recv(), 10))["event"]

    assert asyncio.run(ws_hello()) == events.CONNECTION_SUCCESS


@pytest.mark.parametrize(
    "origin", ["http://evil.example", "http://localhost.evil.example", "https://localhost:5173", "null"]
)
def test_default_policy_refuses_other_origins_on_every_surface(served: ServedBackend, origin: str) -> None:
    for url in (
        f"{served.gateway}/api/consumers/statistics",
        f"{served.gateway}/socket.io/?EIO=4&transport=polling",
    ):
        response = httpx.get(url, headers={"Origin": origin})
        assert response.status_code in (400, 403), (url, response.status_code)
        assert "access-control-allow-origin" not in response.headers
    assert (
        "not allowed" in httpx.get(f"{served.gateway}/api/health", headers={"Origin": origin}).json()["error"]
    )
    posted = httpx.post(f"{served.gateway}/api/consumers", headers={"Origin": origin})
    assert posted.status_code == 403  # a foreign page cannot start consumers through a user's browser

    async def ws_handshake(url: str) -> None:
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(url, origin=origin):
                pass
        assert refused.value.response.status_code in (400, 403)

    asyncio.run(ws_handshake(served.ws))
    asyncio.run(ws_handshake(served.engineio))


def test_token_is_required_on_rest_and_ws(secured: ServedBackend) -> None:
    url = f"{secured.gateway}/api/consumers/statistics"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        response = httpx.get(url, headers=headers)
        assert response.status_code == 401 and "error" in response.json(), headers
        assert response.headers["www-authenticate"] == "Bearer"
    assert httpx.post(f"{secured.gateway}/api/consumers").status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert httpx.get(f"{secured.gateway}/api/health").status_code == 401

    async def refused(query: str) -> tuple[int, str]:
        async with websockets.connect(f"{secured.ws}{query}") as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None
        return closed.value.rcvd.code, closed.value.rcvd.reason

    assert asyncio.run(refused(""))[0] == 1008
    code, reason = asyncio.run(refused("?token=wrong"))
    assert code == 1008 and "unauthorized" in reason

    async def hello() -> str:
        async with websockets.connect(f"{secured.ws}?token={TOKEN}", origin=APP_ORIGIN) as ws:
            return json.loads(await asyncio.wait_for(ws.recv(), 10))["event"]

    assert asyncio.run(hello()) == events.CONNECTION_SUCCESS


def test_explicit_origin_list_replaces_the_localhost_default(secured: ServedBackend) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    url = f"{secured.gateway}/api/consumers/statistics"
    allowed = httpx.get(url, headers={**auth, "Origin": APP_ORIGIN})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == APP_ORIGIN
    preflight = httpx.options(
        url,
        headers={
            "Origin": APP_ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 200  # no token on a preflight: browsers never send one
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    assert httpx.get(url, headers={**auth, "Origin": "http://localhost:5173"}).status_code == 403

    async def ws_refused() -> int:
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(f"{secured.ws}?token={TOKEN}", origin="http://localhost:5173"):
                pass
        return refused.value.response.status_code

    assert asyncio.run(ws_refused()) == 403


# --- slow clients -----------------------------------------------------------------------------


def test_slow_clients_are_cut_off_while_others_keep_receiving(
    served: ServedBackend, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A /ws client and a Socket.IO client that stop reading are disconnected with a logged reason;
    a /ws client and a Socket.IO client that keep reading get every event, in order."""
    monkeypatch.setattr(fanout_module, "CLIENT_QUEUE_MAX", 1000)
    caplog.set_level(logging.INFO, logger="backend.gateway")
    bus = served.backend.bus
    stalled_ws = StalledClient(served.ws)
    stalled_ws.read_until(lambda text: "connection-success" in text)
    stalled_sio = StalledClient(served.engineio)
    stalled_sio.read_until(lambda text: text.startswith("0"))
    stalled_sio.send_text("40{}")
    stalled_sio.read_until(lambda text: text.startswith("40"))
    pad = "x" * 8192

    def cut_off() -> list[str]:
        return [
            r.getMessage() for r in caplog.records if r.getMessage().startswith("Disconnecting slow client")
        ]

    async def run() -> tuple[int, int, int]:
        fast_ws = await websockets.connect(served.ws, max_size=None)
        start = json.loads(await asyncio.wait_for(fast_ws.recv(), 10))["seq"]
        fast_sio = await EngineIOClient.connect(served.engineio)
        await fast_sio.until(lambda name, data, seq: name == events.CONNECTION_SUCCESS)
        clients = httpx.get(f"{served.gateway}/api/health").json()["gatewayClients"]
        frames: list[dict[str, Any]] = []
        published = 0
        # Publish in steps, each only after both readers have everything so far: the readers keep
        # up, the stalled ones fall behind until the server gives up on them (or 256 MB went out).
        while len(cut_off()) < 2 and published < 32_000:
            for _ in range(200):
                last = bus.publish("filler", {"n": published, "pad": pad}).seq
                published += 1
            frames += await frames_until(
                fast_ws, lambda f, last=last: f["seq"] >= last, what="the fast /ws client"
            )
            await fast_sio.until(lambda name, data, seq, last=last: seq >= last)
        assert_consecutive(frames, start)
        sio_seqs = [seq for name, data, seq in fast_sio.events if name == "filler"]
        assert sio_seqs == list(range(sio_seqs[0], last + 1)) and sio_seqs[0] == start + 1
        await fast_ws.close()
        await fast_sio.ws.close()
        return clients, published, last

    try:
        clients_before, published, last = asyncio.run(run())
        messages = cut_off()
        assert len(messages) == 2, f"slow clients were not cut off after {published} events: {messages}"
        assert any("/ws client" in m for m in messages) and any("Socket.IO client" in m for m in messages)
        assert all("events behind" in m for m in messages)
        assert clients_before == 4
        health = f"{served.gateway}/api/health"
        wait_for(lambda: httpx.get(health).json()["gatewayClients"] == 0, 10, "the clients to be gone")
        # Reading again, each stalled client finds its connection closed, well short of the last event.
        for client in (stalled_ws, stalled_sio):
            assert client.drain_until_closed(30), "the server did not close the slow client's connection"
            assert 0 < client.newest_seq() < last
    finally:
        stalled_ws.close()
        stalled_sio.close()
