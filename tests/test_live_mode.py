"""What a client receives (docs/CONTRACT.md): ``mode=live``, ``maxRate``, ``topics``, ``records-skipped``.

Against a real backend on Apache Kafka, with real clients: websockets on ``/ws`` and
python-socketio's AsyncClient. The assertions are about behaviour (records whole, counts that add
up, exact final counts, nobody cut off), never about timings.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import websockets

from backend import events
from tests.support import ServedBackend, foreign_producer, unique, wait_for
from tests.test_gateway import StalledClient

TOPIC_A = unique("live-a")
TOPIC_B = unique("live-b")
WHOLE = [events.MESSAGE_RECEIVED, events.PROCESSING_STARTED, events.PROCESSING_COMPLETED]


@pytest.fixture(scope="module")
def served_settings() -> dict[str, Any]:
    return {"topics": (TOPIC_A, TOPIC_B), "consumer_count": 2}


def statistics(served: ServedBackend) -> dict[str, Any]:
    return httpx.get(f"{served.gateway}/api/consumers/statistics").json()


def produce(served: ServedBackend, counts: dict[str, int]) -> None:
    """Records as any other application sends them, as fast as Kafka takes them."""
    producer = foreign_producer(served.bootstrap)
    try:
        for topic, count in counts.items():
            for n in range(count):
                producer.send(topic, json.dumps({"n": n}).encode())
        producer.flush()
    finally:
        producer.close()


class Frames:
    """Everything one client received, as (event, data, seq)."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, dict[str, Any], int]] = []

    def named(self, name: str) -> list[dict[str, Any]]:
        return [data for event, data, _ in self.frames if event == name]

    def records(self) -> dict[str, list[str]]:
        """logId -> the names of its events, in the order received."""
        per_record: dict[str, list[str]] = defaultdict(list)
        for event, data, _ in self.frames:
            if event in events.RECORD_EVENTS:
                per_record[data["logId"]].append(event)
        return dict(per_record)

    def skipped(self) -> int:
        return sum(data["count"] for data in self.named(events.RECORDS_SKIPPED))

    def reached(self, total: int) -> bool:
        return any(data["totalMessages"] == total for data in self.named(events.STATS_UPDATED))

    def seqs(self) -> list[int]:
        return [seq for _, _, seq in self.frames]


async def ws_client(served: ServedBackend, frames: Frames, **query: Any) -> Any:
    ws = await websockets.connect(f"{served.ws}?{urlencode(query)}", max_size=None)
    hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert hello["event"] == events.CONNECTION_SUCCESS, hello

    async def read() -> None:
        async for text in ws:
            frame = json.loads(text)
            frames.frames.append((frame["event"], frame["data"], frame["seq"]))

    return ws, asyncio.create_task(read())


async def sio_handshake(served: ServedBackend, auth: dict[str, Any]) -> tuple[Any, str]:
    """A Socket.IO v5 connection over websocket (Engine.IO open, then CONNECT with ``auth``): the
    socket and the server's answer (``40...``: connected; ``44{"message"}``: refused)."""
    ws = await websockets.connect(served.engineio, max_size=None)
    opened = await asyncio.wait_for(ws.recv(), 10)
    assert opened.startswith("0"), opened
    await ws.send("40" + json.dumps(auth))
    return ws, await asyncio.wait_for(ws.recv(), 10)


async def sio_client(
    served: ServedBackend, frames: Frames, auth: dict[str, Any]
) -> tuple[Any, asyncio.Task[None]]:
    """A Socket.IO client (the protocol as socket.io-client speaks it) collecting its events."""
    ws, answer = await sio_handshake(served, auth)
    assert answer.startswith("40"), answer

    async def read() -> None:
        async for packet in ws:
            if packet == "2":  # ping
                await ws.send("3")
            elif packet.startswith("42"):
                name, data, seq = json.loads(packet[2:])
                if name != events.CONNECTION_SUCCESS:
                    frames.frames.append((name, data, seq))

    return ws, asyncio.create_task(read())


async def until(predicate: Any, what: str, timeout: float = 120.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def assert_sampled_whole(frames: Frames, produced: int, who: str) -> None:
    records = frames.records()
    partial = {log_id: names for log_id, names in records.items() if names != WHOLE}
    assert not partial, f"{who} got records partially: {list(partial.items())[:3]}"
    assert 0 < len(records) < produced, f"{who} was not sampled: {len(records)} of {produced}"
    assert len(records) + frames.skipped() == produced, f"{who}: delivered + skipped != produced"
    seqs = frames.seqs()
    assert seqs == sorted(set(seqs)), f"{who}: seqs do not increase"


def test_live_clients_get_whole_records_and_the_counts_add_up_while_all_clients_get_everything(
    served: ServedBackend,
) -> None:
    counts = {TOPIC_A: 1500, TOPIC_B: 500}
    produced = sum(counts.values())

    async def run() -> tuple[Frames, Frames, Frames, Frames, int]:
        everything, live_ws, live_sio, only_a = Frames(), Frames(), Frames(), Frames()
        before = statistics(served)["totalMessages"]
        clients = [
            await ws_client(served, everything),
            await ws_client(served, live_ws, mode="live", maxRate=20),
            await ws_client(served, only_a, topics=TOPIC_A),
        ]
        clients.append(await sio_client(served, live_sio, {"mode": "live", "maxRate": 20}))
        await asyncio.to_thread(produce, served, counts)
        final = before + produced
        for who, frames in (("all", everything), ("live /ws", live_ws), ("live Socket.IO", live_sio)):
            await until(lambda frames=frames: frames.reached(final), f"the {who} client's final counts")
        outcomes = (events.PROCESSING_COMPLETED, events.PROCESSING_FAILED)
        await until(lambda: sum(map(len, map(only_a.named, outcomes))) >= counts[TOPIC_A], "topic a")
        for ws, reader in clients:
            await ws.close()
            await reader
        return everything, live_ws, live_sio, only_a, final

    everything, live_ws, live_sio, only_a, final = asyncio.run(run())
    assert len(everything.records()) == produced
    assert all(names == WHOLE for names in everything.records().values())
    assert not everything.named(events.RECORDS_SKIPPED)
    for who, frames in (("live /ws", live_ws), ("live Socket.IO", live_sio)):
        assert_sampled_whole(frames, produced, who)
        stats = frames.named(events.STATS_UPDATED)
        # Never more than a mode=all client gets. (A view publishes one stats-updated per worker batch,
        # up to 2,000 records, so an all client may get few too; the coalescing itself is tested in
        # tests/test_fanout.py.)
        # (+1: a live client gets the current counts when it connects)
        assert len(stats) <= len(everything.named(events.STATS_UPDATED)) + 1, f"{who}: stats not coalesced"
        assert stats[-1]["totalMessages"] == final and stats[-1] == statistics(served) | {
            "timestamp": stats[-1]["timestamp"]
        }, f"{who}: the last stats-updated is not the final count"
    topic_of = {data["logId"]: data["topic"] for data in everything.named(events.MESSAGE_RECEIVED)}
    assert {topic_of[log_id] for log_id in only_a.records()} == {TOPIC_A}
    assert len(only_a.records()) == counts[TOPIC_A]
    assert all(names == WHOLE for names in only_a.records().values())
    assert only_a.named(events.STATS_UPDATED)[-1]["totalMessages"] == final, "counts stay global"


def test_a_live_client_of_one_topic_is_sampled_among_that_topic_only(served: ServedBackend) -> None:
    counts = {TOPIC_A: 300, TOPIC_B: 600}

    async def run() -> tuple[Frames, Frames]:
        live_b, everything = Frames(), Frames()
        before = statistics(served)["totalMessages"]
        clients = [
            await ws_client(served, everything),
            await ws_client(served, live_b, mode="live", maxRate="10", topics=TOPIC_B),
        ]
        await asyncio.to_thread(produce, served, counts)
        final = before + sum(counts.values())
        # Both: a live feed is drained at its tick, not after the rounds of every event, so either
        # client may see the final counts first.
        for who, frames in (("live", live_b), ("all", everything)):
            await until(lambda frames=frames: frames.reached(final), f"the {who} client's final counts")
        for ws, reader in clients:
            await ws.close()
            await reader
        return live_b, everything

    live_b, everything = asyncio.run(run())
    topic_of = {data["logId"]: data["topic"] for data in everything.named(events.MESSAGE_RECEIVED)}
    assert {topic_of[log_id] for log_id in live_b.records()} == {TOPIC_B}
    assert_sampled_whole(live_b, counts[TOPIC_B], "live topic b")


BAD_SUBSCRIPTIONS = [
    ({"mode": "fast"}, "mode must be all or live"),
    ({"mode": "LIVE"}, "mode must be all or live"),
    ({"mode": "live", "maxRate": "-1"}, "maxRate must be an integer"),
    ({"mode": "live", "maxRate": "lots"}, "maxRate must be an integer"),
    ({"mode": "live", "maxRate": "10001"}, "maxRate must be an integer from 0 to 10000"),
    ({"mode": "live", "maxRate": "9" * 400}, "maxRate must be an integer"),
    ({"maxRate": "50"}, "maxRate applies to mode=live only"),
    ({"topics": ""}, "topics must name at least one topic"),
    ({"topics": ","}, "topics must name at least one topic"),
    ({"topics": "a,b c"}, "is not a Kafka topic name"),
    ({"topics": "x" * 250}, "is not a Kafka topic name"),
    ({"topics": ",".join(f"t{n}" for n in range(101))}, "more than 100 topics"),
]


@pytest.mark.parametrize(("query", "reason"), BAD_SUBSCRIPTIONS)
def test_ws_refuses_an_invalid_subscription_with_the_reason(
    served: ServedBackend, query: dict[str, str], reason: str
) -> None:
    async def run() -> websockets.ConnectionClosed:
        async with websockets.connect(f"{served.ws}?{urlencode(query)}") as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            return closed.value

    closed = asyncio.run(run())
    assert closed.rcvd is not None and closed.rcvd.code == 1008
    assert reason in closed.rcvd.reason


@pytest.mark.parametrize(
    ("auth", "reason"),
    [
        *BAD_SUBSCRIPTIONS[:2],
        ({"mode": "live", "maxRate": -5}, "maxRate must be an integer"),
        ({"mode": "live", "maxRate": 2.5}, "maxRate must be an integer"),
        ({"mode": "live", "maxRate": True}, "maxRate must be an integer"),
        ({"topics": []}, "topics must name at least one topic"),
        ({"topics": [TOPIC_A, 7]}, "topics must be a comma-separated string or a list"),
        ({"topics": {"a": 1}}, "topics must be a comma-separated string or a list"),
    ],
)
def test_socketio_refuses_an_invalid_subscription_with_a_connect_error(
    served: ServedBackend, auth: dict[str, Any], reason: str
) -> None:
    async def run() -> str:
        ws, answer = await sio_handshake(served, auth)
        await ws.close()
        return answer

    answer = asyncio.run(run())
    assert answer.startswith("44"), answer
    assert reason in json.loads(answer[2:])["message"]


def test_a_live_client_that_stops_reading_stays_connected_and_then_gets_the_latest_stats(
    served: ServedBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="backend.gateway")
    gateway = served.backend._http.gateway  # type: ignore[union-attr]
    bus = served.backend.bus
    stalled = StalledClient(f"{served.ws}?mode=live&maxRate=10000")
    try:
        stalled.read_until(lambda text: "connection-success" in text)
        (stream,) = [s for s in gateway._ws_clients if s.subscription.live]
        pad = "x" * 8192
        published = 0
        # Records (synthetic, straight onto the bus) until the client's queue has been coalesced
        # several times: it has fallen far behind, and would long have been cut off in mode=all.
        while stream.coalesced < 3 and published < 40_000:
            items = []
            for _ in range(200):
                log_id = f"stall-{published}"
                published += 1
                data = {"logId": log_id, "topic": TOPIC_A, "pad": pad}
                items += [(events.MESSAGE_RECEIVED, data), (events.PROCESSING_STARTED, {"logId": log_id})]
                items.append((events.PROCESSING_COMPLETED, {"logId": log_id}))
            bus.publish_many(items)
            wait_for(lambda: gateway.fanout.dispatched == bus.last_seq, 30, "the fan-out")
        assert stream.coalesced >= 3, f"the client never fell behind after {published} records"
        produce(served, {TOPIC_A: 1})
        final = statistics(served)
        assert stream in gateway._ws_clients, "the live client was disconnected"
        assert not [r for r in caplog.records if r.getMessage().startswith("Disconnecting slow client")]
        # It reads again: it gets the newest counts, not the whole backlog.
        wait_for(lambda: statistics(served)["totalMessages"] == final["totalMessages"], 30, "the record")
        stalled.read_until(
            lambda text: (
                '"stats-updated"' in text
                and json.loads(text)["data"]["totalMessages"] >= final["totalMessages"]
            ),
            timeout=60,
        )
        frames = [json.loads(text) for text in stalled.texts]
        received = sum(1 for f in frames if f["event"] == events.MESSAGE_RECEIVED)
        assert received < published, "it was sent the backlog, not the newest state"
        records: dict[str, list[str]] = defaultdict(list)
        for frame in frames:
            if frame["event"] in events.RECORD_EVENTS and frame["data"]["logId"].startswith("stall-"):
                records[frame["data"]["logId"]].append(frame["event"])
        partial = {log_id: names for log_id, names in records.items() if names != WHOLE}
        assert records and not partial, list(partial.items())[:3]
    finally:
        stalled.close()
