"""The pieces behind the dashboard's pages, without Streamlit: analytics over a known store, the
live feed that follows the bus, and the producing helpers (retry, CSV batches, demo traffic).
The same reads attached over REST: test_remote_source.py.

The live-feed tests use a backend on the embedded broker (Tansu), without HTTP servers or
consumers: they publish on its bus themselves and read its store.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backend import analytics, events
from backend.bus import EventBus
from backend.events import CSV_BATCH, FAILED, PROCESSED, SINGLE_MESSAGE
from backend.service import Backend
from backend.store import Store
from dashboard import producing, retry
from dashboard.live import RECORDS_PER_SYNC, LiveFeed
from dashboard.source import LocalSource, Produced
from tests.support import backend_settings, start_backend, stored_rows, wait_for


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    settings = backend_settings(tmp_path_factory.mktemp("analytics"), None, consumer_count=0)
    started = start_backend(settings)
    wait_for(lambda: started.health().ok, 30, "the backend to reach the embedded broker")
    yield started
    started.stop()


def test_analytics_on_a_known_store(tmp_path: Path) -> None:
    store = Store(tmp_path)
    now = int(time.time() * 1000)
    store.save(stored_rows(now))
    volume = analytics.volume(store, 60_000)
    assert sum(r["messages"] for r in volume) == 120
    assert {r["status"] for r in volume} == {PROCESSED, FAILED}
    rate = analytics.failure_rate(store, 3_600_000)
    assert sum(r["failed"] for r in rate) == 20
    latency = analytics.latency(store, 3_600_000)
    assert latency and all(r["p50"] <= r["p90"] <= r["p99"] <= r["max"] for r in latency)
    assert max(r["max"] for r in latency) == 8
    groups = analytics.error_groups(store)
    assert [g.count for g in groups] == [10, 10]
    assert sorted(g.retriable for g in groups) == [0, 10]
    decode = next(g for g in groups if g.pattern.startswith("invalid JSON"))
    assert decode.pattern == "invalid JSON: Expecting value at line # column #"
    assert len(analytics.failed_records(store, decode.errors, 5)) == 5
    fields = {f["field"]: f["count"] for f in analytics.numeric_fields(store)}
    assert fields["amount"] == 88 and fields["qty"] == 2 * 12  # CSV text that spells a number counts
    series = analytics.field_series(store, "amount", 3_600_000)
    expected = sum(o * 1.5 for o in range(120) if o % 6 and o % 10 != 5)
    assert sum(r["sum"] for r in series) == pytest.approx(expected)
    assert max(r["max"] for r in series) == 119 * 1.5
    topics = {t["topic"]: t for t in analytics.topic_summary(store)}
    assert topics["payments"]["total"] == 30


def publish_records(bus: EventBus, prefix: str, count: int, base: dict[str, Any]) -> dict[str, Any]:
    """``count`` records' events, as the pipeline publishes them, then the exact counts after them."""
    at = events.now_ms()
    for number in range(count):
        log_id = f"{prefix}-{number}"
        bus.publish_many(
            (
                (
                    events.MESSAGE_RECEIVED,
                    events.message_received(log_id, prefix, 0, number, SINGLE_MESSAGE, 1, at),
                ),
                (events.PROCESSING_STARTED, events.processing_started(log_id, "consumer-1", at)),
                (events.PROCESSING_COMPLETED, events.processing_completed(log_id, "consumer-1", at)),
            )
        )
    stats = {
        **base,
        "totalMessages": base["totalMessages"] + count,
        "processedMessages": base["processedMessages"] + count,
        "timestamp": events.now_iso(),
    }
    bus.publish(events.STATS_UPDATED, stats)
    return stats


def test_a_live_feed_follows_the_bus_and_stays_bounded(backend: Backend) -> None:
    feed = LiveFeed()
    source = LocalSource(backend)
    feed.sync(source)
    start = feed.cursor
    stats = publish_records(backend.bus, "feed", 80, feed.stats)
    new = feed.sync(source)
    assert new >= 3 * 80 + 1  # and whatever the backend published meanwhile
    assert feed.cursor == start + new
    assert feed.skipped == 0 and feed.stats == stats  # below RECORDS_PER_SYNC: every record, no skips
    assert feed.tail(3)[0]["logId"] == "feed-79" and feed.tail(3)[0]["status"] == PROCESSED
    assert [int(row["offset"]) for row in feed.tail(80)] == list(range(79, -1, -1))
    assert sum(r["count"] for r in feed.throughput(5, 5)) >= 80
    snapshot = feed.snapshot(None)
    assert snapshot["seq"] == feed.cursor and len(snapshot["rows"]) == 50 and snapshot["skipped"] == 0


def test_a_burst_is_coalesced_to_the_newest_records_whole(backend: Backend) -> None:
    """5,000 records between two syncs: the newest RECORDS_PER_SYNC are taken with all their events,
    the others counted as skipped, the counters are the newest stats-updated (exact)."""
    feed = LiveFeed()
    source = LocalSource(backend)
    feed.sync(source)
    stats = publish_records(backend.bus, "burst", 5_000, feed.stats)
    feed.sync(source)
    assert feed.stats == stats
    assert feed.skipped == 5_000 - RECORDS_PER_SYNC
    assert feed.snapshot(None)["skipped"] == 5_000 - RECORDS_PER_SYNC
    taken = [row for row in feed.rows.values() if row["topic"] == "burst"]
    assert [int(row["offset"]) for row in taken] == list(range(5_000 - RECORDS_PER_SYNC, 5_000))
    assert {row["status"] for row in taken} == {PROCESSED}  # whole: every event of a taken record
    # The chart counts every outcome from the exact counts, not the sampled records.
    assert sum(r["count"] for r in feed.throughput(5, 5)) >= 5_000


def test_a_feed_that_fell_behind_the_bus_keeps_its_newest_part(backend: Backend) -> None:
    """More events than the bus holds (its ring: 20,000) between two syncs: no reload from the store;
    the newest records are taken and every record left out is counted, also those the bus dropped."""
    feed = LiveFeed()
    source = LocalSource(backend)
    feed.sync(source)
    stats = publish_records(backend.bus, "behind", 8_000, feed.stats)  # 24,001 events
    assert backend.bus.since(feed.cursor) is None
    feed.sync(source)
    assert feed.resyncs == 0 and feed.cursor == backend.bus.last_seq
    assert feed.stats == stats
    assert feed.skipped == 8_000 - RECORDS_PER_SYNC
    assert feed.tail(1)[0]["logId"] == "behind-7999"


def test_the_rate_is_the_change_of_the_exact_counts(backend: Backend) -> None:
    """Messages per second from stats-updated over time, whatever the sample of records."""
    feed = LiveFeed()
    source = LocalSource(backend)
    feed.sync(source)
    base = events.now_ms()
    for second in range(0, 21):
        stats = {**feed.stats, "processedMessages": 1_000 + 300 * second, "failedMessages": 20 * second}
        backend.bus.publish(
            events.STATS_UPDATED, {**stats, "timestamp": events.iso_from_ms(base + 1000 * second)}
        )
        feed.sync(source)
    assert feed.rate() == pytest.approx(320.0)
    per_second = feed.per_second
    assert [per_second[(base + 1000 * second) // 1000] for second in range(5, 15)] == [[300, 20]] * 10


def test_a_feed_started_mid_processing_shows_the_records_in_flight(backend: Backend) -> None:
    """The store holds a record once its outcome is stored; one still being processed exists only
    on the bus. A feed that starts then must still get a row for it, or its outcome finds none."""
    at = events.now_ms()
    for log_id in ("flight-done", "flight-open"):
        backend.bus.publish(
            events.MESSAGE_RECEIVED, events.message_received(log_id, "flight", 0, 1, SINGLE_MESSAGE, 1, at)
        )
    backend.bus.publish(events.PROCESSING_COMPLETED, events.processing_completed("flight-done", "c-1", at))
    feed = LiveFeed()
    source = LocalSource(backend)
    feed.sync(source)
    assert "flight-done" not in feed.rows  # finished: the store has it (or, here, had it)
    assert feed.rows["flight-open"]["status"] == events.RECEIVED
    assert feed.stats["totalMessages"] == backend.statistics()["totalMessages"]  # the store counts it later
    backend.bus.publish(events.PROCESSING_COMPLETED, events.processing_completed("flight-open", "c-1", at))
    feed.sync(source)
    assert feed.tail(1)[0]["logId"] == "flight-open" and feed.tail(1)[0]["status"] == PROCESSED


def test_retry_sends_the_decoded_payload_again() -> None:
    rows = stored_rows(int(time.time() * 1000))
    json_row = next(
        r for r in rows if r.status == FAILED and r.payload is not None and r.data_type == SINGLE_MESSAGE
    )
    value, data_type = producing.retry_payload(json_row)
    assert data_type == SINGLE_MESSAGE and json.loads(value) == json_row.payload
    csv_row = next(r for r in rows if r.data_type == CSV_BATCH)
    value, data_type = producing.retry_payload(csv_row)
    assert data_type == CSV_BATCH and value == b"sku,qty\na,2\nb,3\n"
    assert producing.retry_payload(next(r for r in rows if r.payload is None)) is None


def test_large_csv_files_are_split_into_batches_that_fit() -> None:
    header = ["id", "text"]
    rows = [{"id": str(i), "text": "x" * 50} for i in range(1000)]
    chunks = producing.csv_chunks(header, rows, 10_000)
    assert len(chunks) > 1 and all(len(c) <= 10_000 for c in chunks)
    assert all(c.startswith(b"id,text\n") for c in chunks)
    assert sum(c.count(b"\n") - 1 for c in chunks) == 1000
    assert producing.csv_chunks(header, rows[:3], 10_000) == [producing.to_csv(header, rows[:3])]


def test_demo_traffic_is_bounded_and_stoppable() -> None:
    sent: list[tuple[str, bytes, str]] = []

    def produce(topic: str, value: bytes, data_type: str, key: bytes | None) -> object:
        sent.append((topic, value, data_type))
        return None

    generator = producing.TrafficGenerator()
    run = generator.start(produce, "demo", 10_000, 10_000, 0.5)
    assert run.rate == producing.MAX_RATE and run.duration_s == producing.MAX_DURATION_S
    with pytest.raises(RuntimeError):
        generator.start(produce, "demo", 1, 1, 0)
    wait_for(lambda: run.sent >= 20, 10, "some demo records")
    generator.stop()
    wait_for(lambda: not run.running, 10, "the generator to stop")
    assert run.stopped and run.sent < run.planned
    assert 0 < run.bad < run.sent
    good = [
        json.loads(v)
        for _, v, t in sent
        if t == SINGLE_MESSAGE and b'"customer"' in v  # a good order, not one of the bad kinds
    ]
    assert good and all(isinstance(g["amount"], float) for g in good)


class FakeSource:
    """The two Source methods a retry uses, over stored rows; the first produce fails."""

    def __init__(self, rows: list) -> None:
        self.rows = {row.log_id: row for row in rows}
        self.sent: list[tuple[str, bytes, str, bytes | None]] = []
        self.calls = 0

    def log(self, log_id: str) -> object:
        return self.rows.get(log_id)

    def produce(self, topic: str, value: bytes, data_type: str, key: bytes | None = None) -> Produced:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("broker down")
        self.sent.append((topic, value, data_type, key))
        return Produced(topic, 0, len(self.sent))


def test_a_retry_resends_what_can_be_and_says_why_not_the_rest() -> None:
    rows = [r for r in stored_rows(int(time.time() * 1000)) if r.status == FAILED]
    source = FakeSource(rows)
    records = [{"log_id": r.log_id} for r in rows] + [{"log_id": "gone"}]
    seen: list[tuple[int, int, int]] = []
    report = retry.resend(source, records, lambda *progress: seen.append(progress))  # type: ignore[arg-type]
    sendable = [r for r in rows if r.payload is not None][1:]  # the first one met the broker down
    assert report.sent == len(sendable) == len(source.sent) == len(report.resent) > 0
    assert [s[0] for s in source.sent] == [r.topic for r in sendable]
    assert [s[3] for s in source.sent] == [r.record_key.encode() if r.record_key else None for r in sendable]
    assert len(report.problems) == len(records) - len(sendable)
    assert any("no stored payload" in p for p in report.problems)
    assert any("broker down" in p for p in report.problems)
    assert seen[-1][1:] == (report.sent, len(records))
    assert (
        report.resent[0]["failed record"]
        == f"{sendable[0].topic}/{sendable[0].partition}@{sendable[0].offset}"
    )


def test_csv_batches_are_sent_in_order_and_stop_at_the_first_error() -> None:
    sent: list[bytes] = []

    def produce(topic: str, value: bytes, data_type: str, key: bytes | None) -> Produced:
        if value == b"bad":
            raise RuntimeError("too large")
        sent.append(value)
        return Produced(topic, 0, len(sent))

    progress: list[tuple[int, int]] = []
    results = producing.send_batches(produce, "t", [b"a", b"b"], lambda *p: progress.append(p))
    assert [r.offset for r in results] == [1, 2] and progress == [(1, 2), (2, 2)]
    with pytest.raises(producing.PartialSend) as stopped:
        producing.send_batches(produce, "t", [b"c", b"bad", b"d"])
    assert [r.offset for r in stopped.value.sent] == [3] and str(stopped.value.error) == "too large"
    assert sent == [b"a", b"b", b"c"]


def test_tombstones_are_counted_as_their_own_data_type(tmp_path: Path) -> None:
    """A compacted topic's tombstones are processed records of their own kind, not failures."""
    import dataclasses

    from backend.events import TOMBSTONE
    from dashboard import charts

    store = Store(tmp_path)
    now = int(time.time() * 1000)
    rows = stored_rows(now)
    tombstones = [
        dataclasses.replace(
            rows[1],
            log_id=f"tomb-{i}",
            offset=1000 + i,
            data_type=TOMBSTONE,
            row_count=0,
            status=PROCESSED,
            error=None,
            payload=None,
            payload_json=None,
        )  # fmt: skip
        for i in range(4)
    ]
    store.save(rows + tombstones)
    try:
        volume = analytics.volume(store, 60_000)
    finally:
        store.close()
    by_type: dict[str, int] = {}
    for row in volume:
        by_type[row["data_type"]] = by_type.get(row["data_type"], 0) + row["messages"]
    assert by_type[TOMBSTONE] == 4
    assert sum(by_type.values()) == 124
    assert {r["status"] for r in volume if r["data_type"] == TOMBSTONE} == {PROCESSED}
    spec = charts.volume_by_type(volume, 60_000).to_dict()
    assert spec["encoding"]["color"]["field"] == "type"
    drawn = {row["type"] for row in next(iter(spec["datasets"].values()))}
    assert drawn == {"JSON message", "CSV batch", "Tombstone"}
