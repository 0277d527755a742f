"""The soak's moving parts: the monitor client that must see every event once, and the adversaries.

Everything here talks to a running ``python -m backend`` over loopback only. The producers run in
threads (kafka-python and http.client block); the socket adversaries and the monitor are asyncio
tasks on the soak's one event loop. Each part counts what happened in a :class:`Tally`, so that
the report can say how much of the mix actually ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import itertools
import json
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from bench.common import HOST

# --- what the mix sends -----------------------------------------------------------------------


@dataclass(frozen=True)
class Mix:
    """How much of each adversary; rates are per second, periods in seconds."""

    api_json_per_s: float = 8.0  # good JSON through POST /api/producers/send/single
    api_csv_every_s: float = 2.0  # a good 20-row CSV through /send/csv
    kafka_json_per_s: float = 8.0  # good JSON from a plain KafkaProducer
    burst_every_s: float = 30.0  # a burst of burst_records from the plain producer...
    burst_first_s: float = 10.0  # ...the first one this long after the start
    burst_records: int = 1_000
    poison_every_s: float = 15.0  # one of the 1 MB CSVs, to Kafka and to the producer API
    bad_every_s: float = 5.0  # broken JSON and invalid UTF-8, to Kafka and to the producer API
    idle_sockets: int = 300  # sockets that never send, re-opened when the server closes them
    slowloris: int = 5  # sockets sending a request's headers at one byte every slowloris_every_s
    slowloris_every_s: float = 3.0
    churners: int = 4  # tasks connecting and leaving Socket.IO over and over
    log_query_every_s: float = 5.0  # GET /api/consumers/logs?limit=1000&topic=...


def poison_csv(columns: int, name_chars: int, rows: int) -> bytes:
    """The issue's poison: a header of long column names, then empty rows (about 1 MB)."""
    header = ",".join(f"c{i:04d}".ljust(name_chars, "x") for i in range(columns))
    return (header + "\n" + ("," * (columns - 1) + "\n") * rows).encode()


#: name -> (value, data-type header for Kafka, producer API path, Content-Type)
POISON = {
    "csv_250x2000": (poison_csv(250, 2_000, 2_191), "CSV_BATCH", "/send/csv", "text/csv"),
    "csv_1000x200": (poison_csv(1_000, 200, 846), "CSV_BATCH", "/send/csv", "text/csv"),
}
BAD = {
    "invalid_utf8": (b'{"soak": "\xff\xfe\xfd"}', "SINGLE_MESSAGE", "/send/single", "application/json"),
    "broken_json": (b'{"soak": [1, 2, ', "SINGLE_MESSAGE", "/send/single", "application/json"),
}
GOOD_CSV = ("id,name,value\n" + "".join(f"{i},row-{i},{i * 1.5}\n" for i in range(20))).encode()


class Tally:
    """A Counter and maxima shared by threads and tasks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.maxima: dict[str, float] = {}

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def peak(self, key: str, value: float) -> None:
        with self._lock:
            self.maxima[key] = max(value, self.maxima.get(key, value))

    def __getitem__(self, key: str) -> int:
        return self.counts[key]


class Every:
    """A periodic chore inside a producer loop: ``due()`` is true once per period."""

    def __init__(self, period: float, first: float = 0.0) -> None:
        self.period = period
        self.next = time.monotonic() + first

    def due(self) -> bool:
        if time.monotonic() < self.next:
            return False
        self.next += self.period
        return True


# --- the monitor ------------------------------------------------------------------------------

RECORD_EVENTS = {
    "message-received": "R",
    "processing-started": "S",
    "processing-completed": "C",
    "processing-failed": "F",
}
GOOD_SEQUENCES = ("RSC", "RSF")


class Monitor:
    """A /ws client that must receive every event exactly once, reconnecting with ``lastSeq``.

    It connects with ``lastSeq=0`` from the start, so it also gets the events of a fresh backend
    sent before it connected (the replay), and every reconnect with the newest ``seq`` it saw.
    ``seq`` must then grow by one: a jump is a gap (lost events), a repeat a duplicate. Per
    ``logId`` it keeps the events' initials, which must be ``RSC`` or ``RSF`` (received, started,
    one outcome).
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.last = 0  # a fresh backend's first event is seq 1
        self.received = 0
        self.gaps = 0
        self.duplicates = 0
        self.resyncs = 0
        self.connections = 0
        self.position_mismatches = 0  # a reconnect's connection-success not at our lastSeq
        self.by_log: defaultdict[str, str] = defaultdict(str)
        self.stats: dict[str, Any] | None = None
        self.connected = asyncio.Event()

    def url(self) -> str:
        return f"ws://{HOST}:{self.port}/ws?lastSeq={self.last}"

    async def run(self) -> None:
        """Read events until cancelled; a dropped connection is re-opened with lastSeq."""
        while True:
            with contextlib.suppress(OSError, WebSocketException, TimeoutError):
                async with connect(self.url(), max_size=None, max_queue=4096, open_timeout=10) as ws:
                    self.connections += 1
                    self.connected.set()
                    async for text in ws:
                        self.on_frame(json.loads(text))
            await asyncio.sleep(0.2)

    def on_frame(self, frame: dict[str, Any]) -> None:
        name, seq, data = frame.get("event"), frame.get("seq"), frame.get("data") or {}
        if name == "connection-success":
            if seq != self.last:
                self.position_mismatches += 1
            return
        if name == "resync-required":  # what we asked for is gone: the next event shows the gap
            self.resyncs += 1
            return
        if not isinstance(seq, int):
            return
        if seq <= self.last:
            self.duplicates += 1
            return
        self.gaps += seq - self.last - 1
        self.last = seq
        self.received += 1
        initial = RECORD_EVENTS.get(str(name))
        if initial:
            self.by_log[data["logId"]] += initial
        elif name == "stats-updated":
            self.stats = data

    def outcomes(self) -> Counter[str]:
        """How many logIds ended completed (C) / failed (F); the others are incomplete or wrong."""
        return Counter(events[-1] for events in self.by_log.values() if events in GOOD_SEQUENCES)

    def wrong_sequences(self) -> list[tuple[str, str]]:
        return [(log_id, ev) for log_id, ev in self.by_log.items() if ev not in GOOD_SEQUENCES]


# --- producers (threads) ----------------------------------------------------------------------


def raw_request(
    port: int, method: str, path: str, body: bytes | None = None, content_type: str = "", timeout: float = 30
) -> tuple[int, bytes]:
    """One request on a fresh connection; (status, body)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": content_type} if content_type else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def api_producer(port: int, topics: list[str], mix: Mix, tally: Tally, stop: threading.Event) -> None:
    """Good JSON and CSV through the producer API; poison that it must refuse with 400/413."""
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    csv_due, poison_due, bad_due = (
        Every(mix.api_csv_every_s),
        Every(mix.poison_every_s),
        Every(mix.bad_every_s),
    )
    poisons, bads = itertools.cycle(POISON.items()), itertools.cycle(BAD.items())
    started = time.monotonic()
    for i in itertools.count():
        if stop.is_set():
            break
        topic = topics[i % len(topics)]
        body = json.dumps({"soak": i, "via": "api"}).encode()
        _post_good(conn, f"/api/producers/send/single?topic={topic}", body, "application/json", tally)
        if csv_due.due():
            _post_good(conn, f"/api/producers/send/csv?topic={topic}", GOOD_CSV, "text/csv", tally)
        for due, kinds in ((poison_due, poisons), (bad_due, bads)):
            if due.due():
                name, (value, _, path, kind) = next(kinds)
                _post_poison(port, f"/api/producers{path}?topic={topic}", value, kind, name, tally)
        _sleep_until(started + (i + 1) / mix.api_json_per_s, stop)
    conn.close()


def _post_good(conn: http.client.HTTPConnection, path: str, body: bytes, kind: str, tally: Tally) -> None:
    started = time.monotonic()
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": kind})
        response = conn.getresponse()
        response.read()
    except (OSError, http.client.HTTPException) as exc:
        conn.close()  # http.client reconnects on the next request
        tally.add(f"api_error_{type(exc).__name__}")
        return
    tally.peak("api_post_max_ms", (time.monotonic() - started) * 1000)
    tally.add("api_ok" if response.status == 201 else f"api_status_{response.status}")


def _post_poison(port: int, path: str, value: bytes, kind: str, name: str, tally: Tally) -> None:
    try:
        status, _ = raw_request(port, "POST", path, value, kind)
    except (OSError, http.client.HTTPException) as exc:
        tally.add(f"api_error_{type(exc).__name__}")
        return
    tally.add("api_poison_accepted" if status == 201 else "api_poison_refused")
    tally.add(f"api_poison_{name}_{status}")


def kafka_producer(bootstrap: str, topics: list[str], mix: Mix, tally: Tally, stop: threading.Event) -> None:
    """Good JSON (with and without a data-type header), bursts, and poison from a plain producer.

    Only acknowledged sends count as produced: the soak's exact counts are built on them.
    """
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=2_097_152, linger_ms=2)
    burst_due = Every(mix.burst_every_s, mix.burst_first_s)
    poison_due, bad_due = Every(mix.poison_every_s), Every(mix.bad_every_s, mix.bad_every_s / 2)
    poisons, bads = itertools.cycle(POISON.items()), itertools.cycle(BAD.items())
    started = time.monotonic()
    for i in itertools.count():
        if stop.is_set():
            break
        headers = [("data-type", b"SINGLE_MESSAGE")] if i % 4 else []  # every 4th: no header at all
        _send(
            producer,
            topics[i % len(topics)],
            json.dumps({"soak": i, "via": "kafka"}).encode(),
            headers,
            "kafka",
            tally,
        )
        if burst_due.due():
            tally.add("bursts")
            for j in range(mix.burst_records):
                value = json.dumps({"burst": j}).encode()
                _send(producer, topics[j % len(topics)], value, [], "kafka", tally)
        for due, kinds in ((poison_due, poisons), (bad_due, bads)):
            if due.due():
                _, (value, data_type, _, _) = next(kinds)
                headers = [("data-type", data_type.encode())]
                _send(producer, topics[i % len(topics)], value, headers, "kafka_poison", tally)
        _sleep_until(started + (i + 1) / mix.kafka_json_per_s, stop)
    producer.flush(timeout=60)
    producer.close(timeout=10)


def _send(producer: KafkaProducer, topic: str, value: bytes, headers: list, kind: str, tally: Tally) -> None:
    future = producer.send(topic, value=value, headers=headers)
    future.add_callback(lambda _: tally.add(f"{kind}_ok"))
    future.add_errback(lambda exc: tally.add(f"{kind}_error_{type(exc).__name__}"))


def log_queries(port: int, topics: list[str], mix: Mix, tally: Tally, stop: threading.Event) -> None:
    """The issue's big log query, over and over: its time and status."""
    for i in itertools.count():
        if stop.wait(mix.log_query_every_s):
            return
        started = time.monotonic()
        try:
            status, body = raw_request(
                port, "GET", f"/api/consumers/logs?limit=1000&topic={topics[i % len(topics)]}"
            )
        except (OSError, http.client.HTTPException) as exc:
            tally.add(f"logs_error_{type(exc).__name__}")
            continue
        tally.peak("logs_max_ms", (time.monotonic() - started) * 1000)
        tally.peak("logs_max_kb", len(body) / 1024)
        tally.add("logs_ok" if status == 200 else f"logs_status_{status}")


def _sleep_until(moment: float, stop: threading.Event) -> None:
    stop.wait(max(moment - time.monotonic(), 0.0))


# --- socket adversaries (asyncio) -------------------------------------------------------------


async def idle_socket(port: int, tally: Tally) -> None:
    """A socket that never sends; when the server closes it, another one takes its place."""
    while True:
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            tally.add("idle_open_failed")
            await asyncio.sleep(1.0)
            continue
        opened = time.monotonic()
        tally.add("idle_opened")
        try:
            await reader.read()  # b"" once the server closed it
            tally.add("idle_closed_by_server")
            tally.peak("idle_held_max_s", time.monotonic() - opened)
        except OSError:
            tally.add("idle_reset")
        finally:
            writer.close()


async def slowloris(port: int, every: float, tally: Tally) -> None:
    """A request's headers at one byte every ``every`` seconds, until the server hangs up."""
    request = f"GET /api/health HTTP/1.1\r\nHost: {HOST}:{port}\r\nX-Soak: " + "s" * 4096
    while True:
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            await asyncio.sleep(1.0)
            continue
        opened = time.monotonic()
        try:
            for byte in request.encode():
                writer.write(bytes([byte]))
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    if await asyncio.wait_for(reader.read(1024), every) == b"":
                        break
            tally.add("slowloris_closed_by_server")
        except OSError:
            tally.add("slowloris_closed_by_server")
        finally:
            tally.peak("slowloris_held_max_s", time.monotonic() - opened)
            writer.close()


async def sio_connect(port: int) -> ClientConnection:
    """A Socket.IO v5 client over Engine.IO's websocket transport, up to the namespace CONNECT."""
    ws = await connect(f"ws://{HOST}:{port}/socket.io/?EIO=4&transport=websocket", open_timeout=10)
    opening = await asyncio.wait_for(ws.recv(), 10)
    if not str(opening).startswith("0"):
        raise ConnectionError(f"no Engine.IO OPEN packet: {str(opening)[:40]!r}")
    await ws.send("40")
    while not str(reply := await asyncio.wait_for(ws.recv(), 10)).startswith("40"):
        if str(reply).startswith("44"):
            raise ConnectionError(f"Socket.IO CONNECT refused: {str(reply)[:80]!r}")
    return ws


async def ws_connect(port: int) -> ClientConnection:
    """A plain /ws client (from the live position: it is not checked, only churned)."""
    return await connect(f"ws://{HOST}:{port}/ws", open_timeout=10)


async def churn(port: int, tally: Tally, seed: int) -> None:
    """Clients that connect and leave: cleanly, abruptly mid-send, or after emitting events.

    Three in four are Socket.IO clients (over Engine.IO's websocket transport), one in four /ws.
    """
    rng = random.Random(seed)
    endings: list[Callable[[ClientConnection, str], Any]] = [
        _leave_cleanly,
        _leave_mid_send,
        _emit_then_leave,
    ]
    while True:
        kind, opener = ("sio", sio_connect) if rng.random() < 0.75 else ("ws", ws_connect)
        try:
            ws = await opener(port)
        except (OSError, WebSocketException, TimeoutError, ConnectionError) as exc:
            tally.add(f"churn_{kind}_connect_failed_{type(exc).__name__}")
            await asyncio.sleep(1.0)
            continue
        ending = rng.choice(endings)
        name = f"churn_{kind}_{ending.__name__.strip('_')}"
        try:
            await _listen(ws, rng.uniform(0.1, 1.5))
            await ending(ws, kind)
            tally.add(name)
        except (OSError, WebSocketException, TimeoutError):
            tally.add(f"{name}_closed_by_server")
        finally:
            ws.transport.abort()
        await asyncio.sleep(rng.uniform(0.0, 0.3))


async def _listen(ws: ClientConnection, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            async for _ in ws:
                pass


async def _leave_cleanly(ws: ClientConnection, kind: str) -> None:
    if kind == "sio":
        await ws.send("41")  # Socket.IO DISCONNECT
    await ws.close()


async def _leave_mid_send(ws: ClientConnection, kind: str) -> None:
    """Drop the TCP connection while the server is writing events to it (no close frame)."""
    ws.transport.abort()


async def _emit_then_leave(ws: ClientConnection, kind: str) -> None:
    """Events sent at a server that only talks: it must ignore them cheaply or close."""
    prefix = "42" if kind == "sio" else ""
    for i in range(500):
        await ws.send(f'{prefix}["soak-spam",{{"i":{i},"pad":"{"p" * 200}"}}]')
    await _listen(ws, 0.5)
    await ws.close()
