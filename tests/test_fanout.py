"""The gateway's fan-out on its own: a real bus and event loop, client streams without sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

import backend.gateway.fanout as gateway
from backend import events
from backend.bus import EventBus
from backend.events import Event
from backend.gateway.subscriptions import LiveSampler, parse_subscription


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


# --- live feeds and streams (mode=live, topics) ----------------------------------------------------


def record_events(bus: EventBus, n: int, topic: str = "a", outcome: bool = True) -> list[str]:
    """Publish ``n`` records' received+started (and outcomes), as a consumer's batch does; their logIds."""
    ids = [f"{topic}-{bus.last_seq}-{i}" for i in range(n)]
    items = []
    for log_id in ids:
        items.append((events.MESSAGE_RECEIVED, {"logId": log_id, "topic": topic}))
        items.append((events.PROCESSING_STARTED, {"logId": log_id}))
    bus.publish_many(items)
    if outcome:
        bus.publish_many([(events.PROCESSING_COMPLETED, {"logId": log_id}) for log_id in ids])
    return ids


def per_record(sent: list[Event]) -> dict[str, list[str]]:
    records: dict[str, list[str]] = {}
    for event in sent:
        if event.name in events.RECORD_EVENTS:
            records.setdefault(event.data["logId"], []).append(event.name)
    return records


WHOLE = [events.MESSAGE_RECEIVED, events.PROCESSING_STARTED, events.PROCESSING_COMPLETED]


def test_a_sample_keeps_the_newest_records_whole_and_counts_the_others() -> None:
    bus = EventBus()
    clock = [0.0]
    sampler = LiveSampler(parse_subscription("live", 100), clock=lambda: clock[0])
    ids = record_events(bus, 50)
    stats = [bus.publish(events.STATS_UPDATED, {"totalMessages": n}) for n in (1, 2)]
    sampler.add(gateway.Outgoing(event) for event in bus.since(0) or [])
    sample = sampler.flush(gateway.Outgoing)
    assert sample is not None
    sent = [item.event for item in sample.items]
    assert per_record(sent) == {log_id: WHOLE for log_id in ids[-10:]}  # 100/s: 10 per 100 ms, newest
    skipped = [event for event in sent if event.name == events.RECORDS_SKIPPED]
    assert [event.data["count"] for event in skipped] == [40]
    assert [event for event in sent if event.name == events.STATS_UPDATED] == [stats[-1]]
    seqs = [event.seq for event in sent]
    assert seqs == sorted(set(seqs)), "seqs must increase through the sample"

    # The bucket is empty: a record received now is skipped, until time refills it.
    later = record_events(bus, 1, outcome=False)
    sampler.add(gateway.Outgoing(e) for e in bus.since(stats[-1].seq) or [])
    sample = sampler.flush(gateway.Outgoing)
    assert sample is not None
    assert [event.name for event in (item.event for item in sample.items)] == [events.RECORDS_SKIPPED]
    outcome = bus.publish(events.PROCESSING_COMPLETED, {"logId": later[0]})
    clock[0] += 1.0
    sampler.add([gateway.Outgoing(outcome)])
    assert sampler.flush(gateway.Outgoing) is None, "a skipped record's outcome is left out too"
    assert sampler.skipped_total == 41


def test_a_sampled_record_keeps_its_later_events_and_topics_filter_before_sampling() -> None:
    bus = EventBus()
    sampler = LiveSampler(parse_subscription("live", 100, "a"), clock=lambda: 0.0)
    mine = record_events(bus, 2, topic="a", outcome=False)
    record_events(bus, 5, topic="b")
    sampler.add(gateway.Outgoing(event) for event in bus.since(0) or [])
    first = sampler.flush(gateway.Outgoing)
    assert first is not None
    assert per_record([item.event for item in first.items]) == {log_id: WHOLE[:2] for log_id in mine}, (
        "topic b is not subscribed to, and not counted as skipped"
    )
    last = bus.last_seq
    bus.publish_many([(events.PROCESSING_COMPLETED, {"logId": log_id}) for log_id in mine])
    sampler.add(gateway.Outgoing(event) for event in bus.since(last) or [])
    second = sampler.flush(gateway.Outgoing)
    assert second is not None
    assert per_record([item.event for item in second.items]) == {log_id: WHOLE[2:] for log_id in mine}
    assert sampler.skipped_total == 0


class LiveFeed:
    """A live sampler over a bus, flushed by hand: each call, the batch of the events since the last."""

    def __init__(self, bus: EventBus, max_rate: int) -> None:
        self.bus, self.seen = bus, bus.last_seq
        self.sampler = LiveSampler(parse_subscription("live", max_rate), clock=lambda: 0.0)

    def __call__(self) -> gateway.LiveBatch:
        self.sampler.add(gateway.Outgoing(event) for event in self.bus.since(self.seen) or [])
        self.seen = self.bus.last_seq
        flushed = self.sampler.flush(gateway.Outgoing)
        assert flushed is not None
        return gateway.LiveBatch(flushed.items, flushed.record_seqs)


def test_a_live_stream_that_falls_behind_is_coalesced_whole_never_cut_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gateway, "LIVE_PENDING_MAX", 3)
    bus = EventBus()
    feed = LiveFeed(bus, max_rate=10_000)
    stream = gateway.LiveStream("slow", parse_subscription("live", 10_000))
    delivered: list[Event] = []
    # It takes the first batch (a record's received and started), then stops reading.
    stream.write_now = lambda items: delivered.extend(item.event for item in items) or True
    first = record_events(bus, 1, outcome=False)
    stream.offer(feed())
    stream.write_now = None
    total, open_ids = 1, list(first)
    for n in range(7):
        open_ids += record_events(bus, 3, outcome=False)
        if n % 2:  # outcomes come late, some batches later
            bus.publish_many([(events.PROCESSING_COMPLETED, {"logId": log_id}) for log_id in open_ids])
            open_ids = []
        total += 3
        bus.publish(events.STATS_UPDATED, {"totalMessages": total})
        stream.offer(feed())
    assert stream.coalesced > 0 and not stream.overflowed
    assert stream.behind < 3 * 3 * 7, "the queue holds the newest state, not the backlog"
    # It reads again: the coalesced state, then the shared batches, where the outcomes of records
    # coalesced away are left out as well.
    delivered += [item.event for item in asyncio.run(stream.take(10**6))]
    bus.publish_many([(events.PROCESSING_COMPLETED, {"logId": log_id}) for log_id in open_ids])
    stream.write_now = lambda items: delivered.extend(item.event for item in items) or True
    stream.offer(feed())
    records = per_record(delivered)
    assert records[first[0]] == WHOLE, "a record it had the beginning of stays whole"
    assert all(names == WHOLE for names in records.values()), records
    skipped = sum(e.data["count"] for e in delivered if e.name == events.RECORDS_SKIPPED)
    assert skipped > 0 and len(records) + skipped == total
    stats = [e for e in delivered if e.name == events.STATS_UPDATED]
    assert stats[-1].data["totalMessages"] == total
    seqs = [e.seq for e in delivered]
    assert seqs == sorted(set(seqs))


def test_a_live_client_resumes_with_the_newest_counts_not_a_replay_of_records() -> None:
    async def scenario() -> None:
        bus = EventBus()
        fanout = gateway.Fanout()
        fanout.start(bus)
        try:
            record_events(bus, 3)
            status = bus.publish(events.CONSUMER_STATUS_CHANGED, {"consumerId": "consumer-1"})
            old_stats = bus.publish(events.STATS_UPDATED, {"totalMessages": 2})
            record_events(bus, 2)
            stats = bus.publish(events.STATS_UPDATED, {"totalMessages": 5})
            for _ in range(3000):  # polled: the fan-out has no event to await
                if fanout.dispatched == bus.last_seq:
                    break
                await asyncio.sleep(0.01)
            assert fanout.dispatched == bus.last_seq, "the fan-out did not dispatch the events"
            live = parse_subscription("live")
            resumed = gateway.LiveStream("resumed", live)
            fanout.attach(resumed, last_seq=status.seq - 1)
            assert [item.event for item in resumed.backlog] == [status, stats]
            assert resumed.start_seq == status.seq - 1 and resumed.resync is None
            fresh = gateway.LiveStream("fresh", live)
            fanout.attach(fresh, last_seq=None)
            assert [item.event for item in fresh.backlog] == [stats]
            assert fresh.start_seq == stats.seq - 1, "its stream continues from just before those counts"
            current = gateway.LiveStream("current", live)
            fanout.attach(current, last_seq=stats.seq)
            assert current.backlog == [] and old_stats.seq < stats.seq
            assert len(fanout.groups) == 1, "clients of one subscription share one feed"
            for stream in (resumed, fresh, current):
                fanout.detach(stream)
            assert not fanout.groups
        finally:
            fanout.stop()

    asyncio.run(scenario())


def test_a_client_behind_the_bus_is_replayed_from_the_history_then_the_bus() -> None:
    """The bus holds the newest events only; older ones come from ``history`` (the store's journal)."""
    published: list[Event] = []

    def history(after: int, until: int) -> list[Event] | None:
        return [e for e in published if after < e.seq <= until] if after >= 2 else None

    async def scenario() -> None:
        bus = EventBus(capacity=5)
        bus.subscribe(published.append)
        fanout = gateway.Fanout()
        fanout.start(bus, history)
        try:
            for i in range(12):
                bus.publish("x", {"i": i})
            for _ in range(3000):  # polled: the fan-out has no event to await
                if fanout.dispatched == bus.last_seq:
                    break
                await asyncio.sleep(0.01)
            assert bus.since(3) is None, "the bus no longer holds seq 4"
            behind = gateway.ClientStream("behind", on_overflow=lambda: None)
            fanout.attach(behind, 3, await fanout.older(behind, 3))
            assert [item.seq for item in behind.backlog] == list(range(4, 13)) and behind.resync is None
            gone = gateway.ClientStream("gone", on_overflow=lambda: None)
            fanout.attach(gone, 1, await fanout.older(gone, 1))
            assert gone.backlog == [] and gone.resync is not None
            held = gateway.ClientStream("held", on_overflow=lambda: None)
            assert await fanout.older(held, 10) == []
            live = gateway.LiveStream("live", parse_subscription("live"))
            assert await fanout.older(live, 3) is None, "a live client is not replayed from the history"
            fanout.attach(held, 10, [])
            assert [item.seq for item in held.backlog] == [11, 12]
        finally:
            fanout.stop()

    asyncio.run(scenario())


def test_a_live_feed_gets_the_newest_counts_without_waiting_for_the_rounds() -> None:
    """One events-topic record brings thousands of events with its stats-updated last: a live feed
    takes them all at its tick, not after the rounds of FANOUT_CHUNK that the other clients get."""

    async def scenario() -> None:
        bus = EventBus()
        fanout = gateway.Fanout()
        fanout.start(bus)
        try:
            live = gateway.LiveStream("live", parse_subscription("live", 10))
            fanout.attach(live, last_seq=None)
            ids = record_events(bus, 10 * gateway.FANOUT_CHUNK)
            stats = bus.publish(events.STATS_UPDATED, {"totalMessages": len(ids)})
            # No await since the publish: the fan-out task has not offered a single round yet.
            assert fanout.dispatched < stats.seq
            fanout._drain_live()  # what the ticker does first when a tick is due
            (group,) = fanout.groups.values()
            assert group.sampler is not None
            sample = group.sampler.flush(gateway.Outgoing)
            assert sample is not None
            sent = [item.event for item in sample.items]
            assert sent[-1] == stats, "the newest counts are in this tick's batch"
            assert fanout.latest_stats is not None and fanout.latest_stats.event == stats
            assert sum(e.data["count"] for e in sent if e.name == events.RECORDS_SKIPPED) == len(ids) - 1
            assert fanout.live_dispatched == stats.seq
        finally:
            fanout.stop()

    asyncio.run(scenario())


class FakeClock:
    """The ticker's clock and sleep: each sleep is recorded and advances the clock, and so does each
    write to a client (``work_s``), so the ticker's schedule is checked without waiting. Each sleep
    also brings new counts, so that every tick has a batch to write."""

    def __init__(self, work_s: float, ticks: int, bus: EventBus, fanout: gateway.Fanout) -> None:
        self.now, self.work_s, self.ticks = 0.0, work_s, ticks
        self.bus, self.fanout = bus, fanout
        self.sleeps: list[float] = []
        self.writes: list[float] = []

    def time(self) -> float:
        return self.now

    def get_running_loop(self) -> FakeClock:
        return self

    async def sleep(self, seconds: float) -> None:
        if len(self.sleeps) == self.ticks:
            raise asyncio.CancelledError
        self.sleeps.append(round(seconds, 6))
        self.now += seconds
        self.fanout._live_inbox.append(self.bus.publish(events.STATS_UPDATED, {"at": self.now}))

    def write(self, items: gateway.Batch) -> bool:
        self.writes.append(round(self.now, 6))
        self.now += self.work_s
        return True


@pytest.mark.parametrize(("work_s", "sleeps"), [(0.06, [0.1, 0.04, 0.04, 0.04]), (0.15, [0.1, 0, 0, 0])])
def test_live_ticks_begin_an_interval_apart_whatever_their_work_takes(
    monkeypatch: pytest.MonkeyPatch, work_s: float, sleeps: list[float]
) -> None:
    """A tick's writes (one per client) no longer stretch the period to interval + work; ticks
    still never begin less than LIVE_INTERVAL_S apart, so a client gets at most one batch per tick."""
    monkeypatch.setattr(gateway, "LIVE_INTERVAL_S", 0.1)

    async def scenario() -> FakeClock:
        bus = EventBus()
        fanout = gateway.Fanout()
        fanout.start(bus)
        fanout.stop()  # its own tasks and bus subscription: the ticker is driven by hand below
        live = gateway.LiveStream("live", parse_subscription("live", 10))
        fanout.attach(live, last_seq=None)
        clock = FakeClock(work_s, len(sleeps), bus, fanout)
        live.write_now = clock.write
        monkeypatch.setattr(gateway, "asyncio", clock)
        with pytest.raises(asyncio.CancelledError):
            await fanout._tick()
        return clock

    clock = asyncio.run(scenario())
    assert clock.sleeps == sleeps
    assert len(clock.writes) == len(sleeps), "one batch per tick"
    gaps = [later - earlier for earlier, later in zip(clock.writes, clock.writes[1:], strict=False)]
    assert all(gap >= 0.1 - 1e-9 for gap in gaps), clock.writes
