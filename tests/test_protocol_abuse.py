"""Malformed Engine.IO / Socket.IO packets, garbage and oversized frames against the gateway.

For every abuse: the offending connection is closed (or its request refused with a 4xx, or the
packet rejected the way the protocol says), and the server goes on: a Socket.IO client and a /ws
client connected before, and a Socket.IO client connected after, all receive
``processing-completed`` for a record produced afterwards, and /api/health stays 200.

How "the connection survived" is decided without sleeping: after its garbage the attacker sends a
probe the server must answer, a Socket.IO CONNECT to an unknown namespace (answered with
CONNECT_ERROR). The server handles one connection's packets in order, so an answer means the
garbage was handled and the connection left open; a close means it was closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from backend import events
from backend.gateway.transport import MAX_INBOUND_BYTES
from tests.support import ServedBackend, unique

#: How long anything may take before we call it a hang.
DEADLINE = 20.0
#: uvicorn's default ws_max_size; the gateway sets 64 KiB, so frames this size are refused too.
UVICORN_WS_MAX_SIZE = 16 * 1024 * 1024
PROBE_NAMESPACE = "/probe"


@pytest.fixture(scope="module")
def served_settings() -> dict[str, Any]:
    return {"topics": (unique("abuse"),), "consumer_count": 1}


def topic_of(served: ServedBackend) -> str:
    return served.settings.topics[0]


def engineio_url(served: ServedBackend) -> str:
    return f"ws://127.0.0.1:{served.settings.gateway_port}/socket.io/?EIO=4&transport=websocket"


def ws_url(served: ServedBackend) -> str:
    return f"ws://127.0.0.1:{served.settings.gateway_port}/ws"


def polling_url(served: ServedBackend) -> str:
    return f"http://127.0.0.1:{served.settings.gateway_port}/socket.io/"


# --- well-behaved clients -----------------------------------------------------------------------


@dataclass
class Client:
    """A raw websocket client that records what it receives; ``kind`` is "socket.io" or "ws"."""

    kind: str
    ws: Any
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    frames: list[str | bytes] = field(default_factory=list)
    closed: ConnectionClosed | None = None
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    reader: asyncio.Task[None] | None = None

    async def read(self) -> None:
        try:
            async for frame in self.ws:
                if self.kind == "socket.io" and frame == "2":
                    await self.ws.send("3")  # Engine.IO ping -> pong
                    continue
                async with self.changed:
                    self.frames.append(frame)
                    event = self._event(frame)
                    if event:
                        self.events.append(event)
                    self.changed.notify_all()
        except ConnectionClosed as closed:
            self.closed = closed
        finally:
            async with self.changed:
                if self.closed is None:
                    self.closed = ConnectionClosed(None, None)
                self.changed.notify_all()

    def _event(self, frame: str | bytes) -> tuple[str, dict[str, Any]] | None:
        if not isinstance(frame, str):
            return None
        if self.kind == "ws":
            message = json.loads(frame)
            return message["event"], message["data"]
        if frame.startswith("42["):
            name, data, *_ = json.loads(frame[2:])
            return name, data
        return None

    async def wait(self, predicate: Callable[[Client], Any], what: str, timeout: float = DEADLINE) -> Any:
        async with self.changed:
            try:
                await asyncio.wait_for(self.changed.wait_for(lambda: predicate(self)), timeout)
            except TimeoutError:
                raise AssertionError(
                    f"{self.kind} client: timed out after {timeout}s waiting for {what}; "
                    f"last frames: {[str(f)[:80] for f in self.frames[-5:]]}, closed: {self.closed}"
                ) from None
            return predicate(self)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        if self.reader:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)


async def socketio_client(served: ServedBackend, namespace_connect: bool = True) -> Client:
    """Engine.IO handshake, then (unless told not to) a Socket.IO CONNECT to '/' and its answer."""
    ws = await websockets.connect(engineio_url(served), max_size=None, open_timeout=DEADLINE)
    opened = await asyncio.wait_for(ws.recv(), DEADLINE)
    assert isinstance(opened, str) and opened.startswith("0{"), opened
    client = Client("socket.io", ws)
    client.reader = asyncio.create_task(client.read())
    if namespace_connect:
        await ws.send("40")
        await client.wait(lambda c: any(str(f).startswith("40{") for f in c.frames), "the CONNECT answer")
    return client


async def plain_ws_client(served: ServedBackend) -> Client:
    ws = await websockets.connect(ws_url(served), max_size=None, open_timeout=DEADLINE)
    client = Client("ws", ws)
    client.reader = asyncio.create_task(client.read())
    await client.wait(
        lambda c: any(e[0] == events.CONNECTION_SUCCESS for e in c.events), "connection-success"
    )
    return client


async def produce(served: ServedBackend) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=DEADLINE) as http:
        response = await http.post(
            f"{served.producer}/api/producers/send/single",
            params={"topic": topic_of(served)},
            json={"probe": True},
        )
    assert response.status_code == 201, response.text
    return response.json()


async def sees_completed(client: Client, produced: dict[str, Any]) -> None:
    """The client receives processing-completed for the produced record."""

    def log_id(c: Client) -> str | None:
        for name, data in c.events:
            if name == events.MESSAGE_RECEIVED and (data["topic"], data["partition"], data["offset"]) == (
                produced["topic"],
                produced["partition"],
                produced["offset"],
            ):
                return data["logId"]
        return None

    found = await client.wait(log_id, f"message-received for {produced}")
    await client.wait(
        lambda c: any(n == events.PROCESSING_COMPLETED and d["logId"] == found for n, d in c.events),
        f"processing-completed for {found}",
    )


async def assert_server_goes_on(served: ServedBackend, before: list[Client]) -> None:
    """Clients connected before and a client connected now all get the next record's events."""
    after = await socketio_client(served)
    try:
        produced = await produce(served)
        await asyncio.gather(*(sees_completed(client, produced) for client in [*before, after]))
        async with httpx.AsyncClient(timeout=DEADLINE) as http:
            health = await http.get(f"{served.gateway}/api/health")
        assert health.status_code == 200, health.text
    finally:
        await after.close()


@contextlib.asynccontextmanager
async def bystanders(served: ServedBackend) -> Any:
    clients = [await socketio_client(served), await plain_ws_client(served)]
    try:
        yield clients
    finally:
        for client in clients:
            await client.close()


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 120))


# --- Socket.IO over websocket ----------------------------------------------------------------------

CLOSED, OPEN = "closed", "open"


async def probe_outcome(attacker: Client) -> str:
    """CLOSED, or OPEN when the connection still answers a CONNECT to an unknown namespace."""
    with contextlib.suppress(ConnectionClosed):
        await attacker.ws.send(f"40{PROBE_NAMESPACE},")
    await attacker.wait(
        lambda c: c.closed is not None or any(str(f).startswith(f"44{PROBE_NAMESPACE},") for f in c.frames),
        "the connection to be closed or to answer the probe",
    )
    return CLOSED if attacker.closed is not None else OPEN


def nested(depth: int) -> str:
    return "42" + "[" * depth + "]" * depth


SOCKETIO_ABUSE: dict[str, tuple[list[str | bytes], set[str]]] = {
    # name: (frames sent after connecting, acceptable outcomes)
    "engineio-type-not-a-digit": (["x"], {CLOSED}),
    "engineio-empty-frame": ([""], {CLOSED}),
    "engineio-type-9": (["9"], {CLOSED}),
    "engineio-type-7-with-data": (["7abc"], {CLOSED}),
    "socketio-type-9": (["49"], {CLOSED}),
    "socketio-connect-error-from-client": (['44{"message":"x"}'], {CLOSED}),
    "broken-json-event": (['42["message-received", {'], {CLOSED}),
    "truncated-event": (["42["], {CLOSED}),
    "event-not-json": (["42garbage"], {CLOSED}),
    "deeply-nested-json": ([nested(30_000)], {CLOSED}),
    "binary-garbage": ([b"\x00\xff\xfe\x80garbage"], {CLOSED}),
    "frame-over-max-inbound-bytes": (
        ["42" + json.dumps(["x", "a" * (MAX_INBOUND_BYTES + 1)])],
        {CLOSED},
    ),
    # Well-formed but useless: the server may ignore these; the connection must stay healthy.
    "event-with-10k-args": (["42" + json.dumps(["x", *range(10_000)])], {OPEN, CLOSED}),
    "unknown-event-name": (['42["processing-completed",{"logId":"forged"}]'], {OPEN, CLOSED}),
}


@pytest.mark.parametrize("case", SOCKETIO_ABUSE)
def test_malformed_socketio_packets_close_the_connection_and_the_server_goes_on(
    served: ServedBackend, case: str
) -> None:
    frames, acceptable = SOCKETIO_ABUSE[case]

    async def scenario() -> str:
        async with bystanders(served) as before:
            attacker = await socketio_client(served)
            try:
                for frame in frames:
                    await attacker.ws.send(frame)
                outcome = await probe_outcome(attacker)
                await assert_server_goes_on(served, before)
                if outcome == OPEN:  # left open: then it must still work like any client
                    await sees_completed(attacker, await produce(served))
                # A forged event from a client never reaches the others.
                assert not any(d.get("logId") == "forged" for c in before for _, d in c.events)
                return outcome
            finally:
                await attacker.close()

    outcome = run(scenario())
    assert outcome in acceptable, f"{case}: the connection was left {outcome}"


def test_connect_to_an_unknown_namespace_is_refused_and_the_server_goes_on(served: ServedBackend) -> None:
    async def scenario() -> None:
        async with bystanders(served) as before:
            attacker = await socketio_client(served, namespace_connect=False)
            try:
                await attacker.ws.send("40/admin,")
                refusal = await attacker.wait(
                    lambda c: next((f for f in c.frames if str(f).startswith("44/admin,")), None),
                    "CONNECT_ERROR for /admin",
                )
                assert json.loads(refusal[len("44/admin,") :]), refusal  # a reason comes with it
                await assert_server_goes_on(served, before)
                # Never connected to '/', so it was sent nothing else.
                assert not attacker.events, attacker.events
            finally:
                await attacker.close()

    run(scenario())


def test_binary_event_announcing_endless_attachments_is_cut_off(served: ServedBackend) -> None:
    attachments, size = 200, 60_000  # 12 MB, each frame under MAX_INBOUND_BYTES

    async def scenario() -> None:
        async with bystanders(served) as before:
            attacker = await socketio_client(served)
            try:
                await attacker.ws.send('45999999-["x",{"_placeholder":true,"num":0}]')
                with contextlib.suppress(ConnectionClosed):
                    for _ in range(attachments):
                        await attacker.ws.send(b"\0" * size)
                held = await wait_held_attachments(served, attachments * size, attacker)
                await assert_server_goes_on(served, before)
                assert attacker.closed is not None and held < attachments * size, (
                    f"the server holds {held} bytes of attachments and the connection is open"
                )
            finally:
                await attacker.close()

    run(scenario())


async def wait_held_attachments(served: ServedBackend, expected: int, attacker: Client) -> int:
    """Bytes of binary attachments python-socketio holds for pending packets, once they are all
    in (or the attacker's connection is closed)."""
    sio = gateway_of(served).sio
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while True:
        # The server's loop owns these; a snapshot read from here is enough to count bytes.
        held = sum(len(a) for pkt in list(sio._binary_packet.values()) for a in pkt.attachments)
        if held >= expected or attacker.closed is not None or asyncio.get_running_loop().time() > deadline:
            return held
        await asyncio.sleep(0.05)  # polling a condition with a deadline, not a fixed wait


def gateway_of(served: ServedBackend) -> Any:
    gateway = served.backend._http.gateway  # noqa: SLF001 - white-box: what the server holds
    assert gateway is not None, "no gateway app found"
    return gateway


# --- oversized frames ----------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["socket.io", "ws"])
def test_a_frame_over_the_servers_max_size_closes_the_connection_with_1009(
    served: ServedBackend, endpoint: str
) -> None:
    async def scenario() -> None:
        async with bystanders(served) as before:
            attacker = await (socketio_client(served) if endpoint == "socket.io" else plain_ws_client(served))
            try:
                with contextlib.suppress(ConnectionClosed):
                    await attacker.ws.send("4" + "a" * UVICORN_WS_MAX_SIZE)
                await attacker.wait(lambda c: c.closed is not None, "the connection to be closed")
                assert attacker.closed.rcvd is not None and attacker.closed.rcvd.code == 1009, attacker.closed
                await assert_server_goes_on(served, before)
            finally:
                await attacker.close()

    run(scenario())


def test_ws_refuses_a_frame_larger_than_any_client_needs(served: ServedBackend) -> None:
    """/ws clients send nothing; a 1 MiB frame should be refused like one to Socket.IO (64 KiB)."""

    async def scenario() -> None:
        async with bystanders(served) as before:
            attacker = await plain_ws_client(served)
            try:
                with contextlib.suppress(ConnectionClosed):
                    await attacker.ws.send("a" * 1024 * 1024)
                produced = await produce(served)
                await asyncio.gather(*(sees_completed(c, produced) for c in before))
                # Either it was closed, or it is still open and gets the record's events.
                closed = asyncio.create_task(attacker.wait(lambda c: c.closed is not None, "the close"))
                working = asyncio.create_task(sees_completed(attacker, produced))
                await asyncio.wait({closed, working}, timeout=DEADLINE, return_when=asyncio.FIRST_COMPLETED)
                for task in (closed, working):
                    task.cancel()
                await asyncio.gather(closed, working, return_exceptions=True)
                assert attacker.closed is not None, "the connection was left open"
                assert attacker.closed.rcvd is not None and attacker.closed.rcvd.code == 1009, attacker.closed
            finally:
                await attacker.close()

    run(scenario())


def test_garbage_frames_on_ws_are_ignored_and_the_connection_keeps_working(served: ServedBackend) -> None:
    """/ws reads and ignores what clients send (the protocol is server -> client)."""

    async def scenario() -> None:
        async with bystanders(served) as before:
            attacker = await plain_ws_client(served)
            try:
                for frame in ("garbage", "{", "[" * 30_000, b"\x00\xff\xfe", json.dumps({"event": "x"})):
                    await attacker.ws.send(frame)
                await assert_server_goes_on(served, before)
                await sees_completed(attacker, await produce(served))
            finally:
                await attacker.close()

    run(scenario())


# --- clients that talk, clients that leave (issue 15, item 10) ------------------------------------

#: Client events in the shapes socket.io-client sends them: plain, with an ack id, with a namespace.
CLIENT_EVENTS = ('42["flood",{"n":%d}]', '42%d["flood",{"x":1}]', '42/,["flood",%d]', '43%d["ack"]')


def test_events_sent_by_clients_are_dropped_unread_and_the_connection_keeps_working(
    served: ServedBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """Clients only listen: 20,000 events from one do nothing, even with a handler registered for
    them, and are logged once; the connection and everyone else keep receiving."""
    caplog.set_level(logging.INFO, logger="backend.gateway")
    sio = served.backend._http.gateway.sio  # the running gateway's Socket.IO server
    handled: list[Any] = []

    async def handler(sid: str, *args: Any) -> None:
        handled.append(args)

    sio.on("flood", handler)

    async def scenario() -> None:
        async with bystanders(served) as before:
            talker = await socketio_client(served)
            try:
                for n in range(20_000):
                    await talker.ws.send(CLIENT_EVENTS[n % len(CLIENT_EVENTS)] % n)
                assert await probe_outcome(talker) == OPEN  # every event above was handled before it
                await assert_server_goes_on(served, [*before, talker])
            finally:
                await talker.close()

    try:
        run(scenario())
    finally:
        sio.handlers["/"].pop("flood", None)
    assert handled == []
    assert len([m for m in caplog.messages if m.startswith("Ignoring events sent by")]) == 1, caplog.messages


def test_frames_sent_to_ws_are_discarded_unread_and_the_stream_goes_on(served: ServedBackend) -> None:
    """/ws clients only listen too: 20,000 frames from one are read and dropped, never parsed."""

    async def scenario() -> None:
        async with bystanders(served) as before:
            talker = await plain_ws_client(served)
            try:
                for n in range(20_000):
                    await talker.ws.send(json.dumps({"event": "flood", "data": {"n": n}}))
                await assert_server_goes_on(served, [*before, talker])
            finally:
                await talker.close()

    run(scenario())


QUIET_LOGGERS = ("backend", "uvicorn", "asyncio", "engineio", "socketio")


@pytest.mark.parametrize("kind", ["socket.io", "ws"])
def test_a_client_leaving_mid_send_is_one_info_line(
    served: ServedBackend, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """A client that asks for a big replay and drops its TCP connection after a few frames, while
    the server is still sending: "Client disconnected" once, no warning, no error, no traceback."""
    last_seq = served.backend.bus.last_seq
    served.backend.bus.publish_many(
        (events.STATS_UPDATED, {"totalMessages": n, "padding": "x" * 500}) for n in range(20_000)
    )
    caplog.set_level(logging.INFO)

    async def leave_mid_send() -> str:
        if kind == "ws":
            ws = await websockets.connect(f"{ws_url(served)}?lastSeq={last_seq}", max_size=None, proxy=None)
            name = f"/ws client 127.0.0.1:{ws.local_address[1]}"
        else:
            ws = await websockets.connect(engineio_url(served), max_size=None, proxy=None)
            await ws.recv()  # Engine.IO OPEN
            await ws.send("40" + json.dumps({"lastSeq": last_seq}))
            connected = await ws.recv()
            assert connected.startswith("40{"), connected
            name = json.loads(connected[2:])["sid"]
        for _ in range(3):
            await ws.recv()
        ws.transport.abort()  # gone, with ~20,000 events still to send
        return name

    async def scenario() -> list[str]:
        names = [await leave_mid_send() for _ in range(3)]
        async with bystanders(served) as before:
            await assert_server_goes_on(served, before)
        return names

    names = run(scenario())
    for name in names:
        left = [m for m in caplog.messages if m.split(" (")[0] == f"Client disconnected: {name}"]
        assert len(left) == 1, (name, left)
    noisy = [
        f"{r.levelname} {r.name}: {r.getMessage()[:160]}"
        for r in caplog.records
        if r.name.startswith(QUIET_LOGGERS)
        and (r.levelno >= logging.WARNING or r.exc_info)
        and not _cut_off_bystander(r.getMessage(), names)
    ]
    assert noisy == []


def _cut_off_bystander(message: str, ours: list[str]) -> bool:
    """The slow-client warning for a client of an earlier test still open (an idle polling session):
    the 20,000 events fill its queue too. Not about the clients of this test."""
    return message.startswith("Disconnecting slow client") and not any(name in message for name in ours)


# --- the polling transport -------------------------------------------------------------------------


def polling_session(http: httpx.Client, served: ServedBackend) -> str:
    """An Engine.IO polling session connected to Socket.IO's '/': its sid."""
    url = polling_url(served)
    opened = http.get(url, params={"EIO": "4", "transport": "polling"})
    assert opened.status_code == 200 and opened.text.startswith("0{"), opened.text
    sid = json.loads(opened.text[1:])["sid"]
    assert http.post(url, params=session_params(sid), content=b"40").status_code == 200
    answer = http.get(url, params=session_params(sid))
    assert answer.status_code == 200 and "40{" in answer.text, answer.text
    return sid


def session_params(sid: str) -> dict[str, str]:
    return {"EIO": "4", "transport": "polling", "sid": sid}


@pytest.mark.parametrize(
    "method, params",
    [
        ("POST", {"EIO": "4", "transport": "polling"}),  # no session
        ("POST", {"EIO": "4", "transport": "polling", "sid": "no-such-session"}),
        ("GET", {"EIO": "3", "transport": "polling"}),  # Engine.IO v3 is not served
        ("GET", {"EIO": "x", "transport": "polling"}),
        ("GET", {"EIO": "4", "transport": "carrier-pigeon"}),
        ("PUT", {"EIO": "4", "transport": "polling"}),
    ],
)
def test_garbage_polling_requests_are_refused_with_a_4xx(
    served: ServedBackend, method: str, params: dict[str, str]
) -> None:
    with httpx.Client(timeout=DEADLINE) as http:
        response = http.request(method, polling_url(served), params=params, content=b"4garbage")
    assert 400 <= response.status_code < 500, (response.status_code, response.text)

    async def scenario() -> None:
        async with bystanders(served) as before:
            await assert_server_goes_on(served, before)

    run(scenario())


POLLING_GARBAGE = {
    "not-a-packet": b"xyz",
    "engineio-type-9": b"9",
    # A known type that only the server sends: engineio closed the session but never answered.
    "engineio-open-from-client": b"0",
    "truncated-event": b"42[",
    "not-utf8": b"\xff\xfe\xfd",
    "deeply-nested-json": nested(30_000).encode(),
}


def engineio_packets(payload: str) -> list[str]:
    return payload.split("\x1e")


def refused_or_closed(response: httpx.Response) -> bool:
    """A polling answer that ends the session: a 4xx, or a CLOSE packet in the payload."""
    return 400 <= response.status_code < 500 or "1" in engineio_packets(response.text)


@pytest.mark.parametrize("body", POLLING_GARBAGE)
def test_garbage_posted_to_a_polling_session_is_refused(served: ServedBackend, body: str) -> None:
    url = polling_url(served)
    with httpx.Client(timeout=DEADLINE) as http:
        sid = polling_session(http, served)
        posted = http.post(url, params=session_params(sid), content=POLLING_GARBAGE[body])
        if 400 <= posted.status_code < 500:
            return
        assert posted.status_code == 200, posted.text
        # Accepted: then the session must have been closed. Ask it something it must answer.
        http.post(url, params=session_params(sid), content=f"40{PROBE_NAMESPACE},".encode())
        for _ in range(10):  # each poll returns at once while packets are queued
            poll = http.get(url, params=session_params(sid))
            if refused_or_closed(poll):
                return
            assert not any(p.startswith(f"44{PROBE_NAMESPACE},") for p in engineio_packets(poll.text)), (
                f"{body}: answered {posted.status_code} and the session still works"
            )
        raise AssertionError(f"{body}: the session neither closed nor answered the probe")


def test_oversized_polling_post_is_refused_at_once(served: ServedBackend) -> None:
    with httpx.Client(timeout=DEADLINE) as http:
        sid = polling_session(http, served)
        body = b"4" + b"a" * (MAX_INBOUND_BYTES + 1)
        try:
            posted = http.post(polling_url(served), params=session_params(sid), content=body, timeout=5)
        except httpx.ReadTimeout:
            raise AssertionError("an oversized POST got no answer within 5 s") from None
    assert posted.status_code == 413 or 400 <= posted.status_code < 500, posted.status_code
