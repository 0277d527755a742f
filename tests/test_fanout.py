"""The gateway's fan-out on its own: a real bus and event loop, client streams without sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

import backend.gateway.fanout as gateway
from backend.bus import EventBus


class Recorder:
    """A client that keeps up: every batch the fan-out writes to it, as seqs."""

    def __init__(self) -> None:
        self.writes: list[list[int]] = []
        self.written = asyncio.Event()

    def __call__(self, batch: gateway.Batch) -> bool:
        assert batch.ws_frames == b"".join(item.ws_frame for item in batch)
        self.writes.append([item.seq for item in batch])
        self.written.set()
        return True


@asynccontextmanager
async def fanout_with_one_client(linger_s: float) -> AsyncIterator[tuple[EventBus, Recorder]]:
    """A started fan-out with one client that keeps up, as if its last round had taken ``linger_s``."""
    bus = EventBus()
    fanout = gateway.Fanout()
    fanout.start(bus)
    stream = gateway.ClientStream("test", on_overflow=lambda: None)
    recorder = Recorder()
    stream.write_now = recorder
    fanout.attach(stream, last_seq=None)
    fanout._linger = linger_s
    try:
        yield bus, recorder
    finally:
        fanout.stop()


def test_a_lone_event_is_not_held_for_the_whole_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway, "FANOUT_LINGER_MAX_S", 600.0)

    async def scenario() -> None:
        async with fanout_with_one_client(linger_s=600.0) as (bus, recorder):
            event = bus.publish("x", {"i": 1})
            # Nothing else comes: the round starts once the bus was quiet for FANOUT_QUIET_S, not
            # after the 600-s linger.
            await asyncio.wait_for(recorder.written.wait(), timeout=30)
            assert recorder.writes == [[event.seq]]

    asyncio.run(scenario())


def test_a_burst_is_written_to_a_client_in_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway, "FANOUT_LINGER_MAX_S", 600.0)

    async def scenario() -> None:
        async with fanout_with_one_client(linger_s=600.0) as (bus, recorder):
            first = bus.publish("x", {"i": 1})
            await asyncio.sleep(0)  # the fan-out wakes and starts lingering
            burst = [bus.publish("x", {"i": i}) for i in range(2, 5)]
            await asyncio.wait_for(recorder.written.wait(), timeout=30)
            assert recorder.writes == [[first.seq, *(event.seq for event in burst)]]

    asyncio.run(scenario())
