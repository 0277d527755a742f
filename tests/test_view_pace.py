"""Workers keep pace with their view through Kafka (backend/view_pace.py), on real brokers.

A view shares its position in the events topic as a consumer group's offset, which the broker's own
``kafka-consumer-groups`` shows, and whether anybody watches it; while it is watched a worker's
consumers poll small batches and only while that view's queue is at most MAX_DELAY_S old. They
never wait for a view that stopped applying, nor for one that nobody watches.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from backend import event_log, view_pace
from backend.config import ConfigError, Settings
from backend.event_topics import ensure_event_topics
from backend.supervisor import WorkerSupervisor
from backend.view_pace import MAX_DELAY_S, ViewPace, view_group
from backend.worker import WorkerIdentity
from scripts.kafka_launcher import CONSUMER_GROUP_COMMAND
from tests.support import (
    backend_settings,
    create_topic,
    foreign_producer,
    run_tool,
    start_backend,
    unique,
    wait_for,
)


@pytest.fixture(params=["kafka", "embedded"])
def bootstrap(request: pytest.FixtureRequest) -> str:
    broker = request.getfixturevalue("kafka" if request.param == "kafka" else "embedded_broker")
    return broker.bootstrap


def test_a_view_shares_its_position_in_its_group(bootstrap: str, tmp_path: Path) -> None:
    """Once the view has applied a burst, its group's committed offset is the events topic's end."""
    topic = unique("pace-src")
    create_topic(bootstrap, topic, 3)
    backend = start_backend(backend_settings(tmp_path, bootstrap, topics=(topic,)))
    try:
        producer = foreign_producer(bootstrap)
        for number in range(300):
            producer.send(topic, f'{{"n": {number}}}'.encode())
        producer.flush()
        producer.close()
        wait_for(lambda: backend.statistics()["processedMessages"] == 300, 60, "the burst stored")
        events_topic = backend.settings.events_topic
        group = view_group(events_topic, backend.instance)
        reader = _group_reader(bootstrap, group)
        partition = TopicPartition(events_topic, 0)
        try:
            end = lambda: reader.end_offsets([partition])[partition]  # noqa: E731
            shared = lambda: reader.committed(partition, metadata=True)  # noqa: E731
            # At least the end: the embedded broker may answer less (ListOffsets "latest" is its last
            # batch's base offset + 1); on Apache Kafka it is the end (the next test checks lag 0).
            wait_for(lambda: shared().offset >= end(), 30, "the view's position shared")
            if backend.settings.embedded or shared().metadata is None:
                return  # the embedded broker keeps no commit metadata (its workers always keep pace)
            assert shared().metadata == ""  # nobody watches: no client, no dashboard session
            backend.bus.since(backend.bus.last_seq)  # a dashboard session reads the bus
            wait_for(lambda: shared().metadata == view_pace.WATCHED, 30, "the view shared that it is watched")
            assert shared().offset >= end()
        finally:
            reader.close()
    finally:
        backend.stop()


def test_the_brokers_own_tool_shows_how_far_a_view_is_behind(kafka: Any, tmp_path: Path) -> None:
    backend = start_backend(backend_settings(tmp_path, kafka.bootstrap, topics=(unique("pace-tool"),)))
    try:
        group = view_group(backend.settings.events_topic, backend.instance)
        described = {}

        def described_with_lag() -> bool:
            shown = run_tool(
                CONSUMER_GROUP_COMMAND, "--describe", bootstrap_server=kafka.bootstrap, group=group
            )
            rows = [line.split() for line in shown.splitlines() if backend.settings.events_topic in line]
            described.update(rows=rows)
            return bool(rows) and rows[0][-4] == "0"  # LAG (then CONSUMER-ID HOST CLIENT-ID: "-")

        wait_for(described_with_lag, 60, f"the group {group} described with lag 0")
        assert described["rows"][0][:3] == [group, backend.settings.events_topic, "0"]
    finally:
        backend.stop()


@pytest.fixture
def events_topic(bootstrap: str) -> Iterator[tuple[Settings, str]]:
    settings = Settings(bootstrap_servers=bootstrap, group_id=unique("pace"))
    ensure_event_topics(bootstrap, settings)
    yield settings, bootstrap


@contextlib.contextmanager
def paced_by_a_view(settings: Settings, bootstrap: str) -> Iterator[tuple[ViewPace, _FakeViewPosition, int]]:
    """A worker's pace, the view it follows (positions committed by hand), and the events topic's
    end after 10 records."""
    instance = unique("view")
    view = _FakeViewPosition(bootstrap, settings, instance)
    pace = ViewPace(bootstrap, settings, instance)
    pace.start()
    try:
        yield pace, view, _write_records(bootstrap, settings, 10)
    finally:
        pace.stop()
        view.close()


def _waiting_consumer(pace: ViewPace) -> threading.Event:
    """A consumer thread waiting for its turn; the event is set once it may poll."""
    went = threading.Event()

    def consumer() -> None:
        pace.wait_turn(threading.Event(), lambda: None)
        went.set()

    threading.Thread(target=consumer, daemon=True).start()
    return went


def test_consumers_wait_while_the_view_is_behind_and_go_once_it_catches_up(
    events_topic: tuple[Settings, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(view_pace, "STALLED_S", 60.0)  # only catching up lets the consumer go here
    monkeypatch.setattr(view_pace, "MAX_WAIT_S", 60.0)
    with paced_by_a_view(*events_topic) as (pace, view, end):
        view.commit(0)
        pace.handed_off(view_pace.BUSY_RECORDS_PER_S)
        wait_for(lambda: pace.behind == end, 30, "the pace to see the view behind")
        wait_for(lambda: not pace.may_poll(), 30, f"the view's queue to be {MAX_DELAY_S} s old")
        assert pace.delay > MAX_DELAY_S
        went = _waiting_consumer(pace)
        view.commit(end)  # the view caught up
        assert went.wait(30), "the consumer did not go on once the view caught up"
        assert (pace.behind, pace.delay) == (0, 0.0)
        assert pace.may_poll()


def test_a_view_that_stops_applying_is_not_waited_for(
    events_topic: tuple[Settings, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full, killed, or gone: its position stands still, and after STALLED_S the workers go on."""
    monkeypatch.setattr(view_pace, "MAX_WAIT_S", 60.0)  # only the stall lets the consumer go here
    with paced_by_a_view(*events_topic) as (pace, view, end):
        view.commit(1)
        pace.handed_off(view_pace.BUSY_RECORDS_PER_S)
        wait_for(lambda: pace.behind == end - 1, 30, "the pace to see the view behind")
        went = _waiting_consumer(pace)
        wait_for(pace.may_poll, 30, "a stalled view to be let go")
        assert went.wait(30)
        assert pace.behind == end - 1  # still behind: let go because it stopped, not because it caught up


def test_a_view_that_nobody_watches_holds_nobody_back(kafka: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nobody would see the latency a short queue buys: the workers run at full speed. (Apache Kafka
    only: the embedded broker keeps no commit metadata, so there the workers always keep pace.)"""
    monkeypatch.setattr(view_pace, "STALLED_S", 60.0)  # the view below stands still
    settings = Settings(bootstrap_servers=kafka.bootstrap, group_id=unique("pace"))
    ensure_event_topics(kafka.bootstrap, settings)
    with paced_by_a_view(settings, kafka.bootstrap) as (pace, view, end):
        view.commit(0, watched=False)
        pace.handed_off(view_pace.BUSY_RECORDS_PER_S)
        wait_for(lambda: pace.behind == end and pace.delay > MAX_DELAY_S, 30, "the view's queue to be old")
        assert not pace.watched
        assert pace.may_poll()
        view.commit(1)  # somebody opened the dashboard
        wait_for(lambda: pace.watched, 30, "the pace to see the view watched")
        wait_for(lambda: not pace.may_poll(), 30, "the workers to keep pace")
        assert pace.behind == end - 1


def test_an_idle_worker_knows_whether_its_view_is_watched(
    kafka: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """So that a burst starts with a watched view's small batches. Before, a worker learnt it only
    from the probes of a busy second, and that first second ran at full speed: 2,000-record batches
    queued up to a second of the view's work. (Apache Kafka only, like the test above.)"""
    monkeypatch.setattr(view_pace, "LOOK_EVERY_S", 0.05)
    settings = Settings(bootstrap_servers=kafka.bootstrap, group_id=unique("pace"))
    ensure_event_topics(kafka.bootstrap, settings)
    with paced_by_a_view(settings, kafka.bootstrap) as (pace, view, _end):
        view.commit(0)  # somebody opened the dashboard
        wait_for(lambda: pace.watched, 30, "the idle pace to see the view watched")
        view.commit(0, watched=False)  # and closed it
        wait_for(lambda: not pace.watched, 30, "the idle pace to see nobody watching")
        assert pace.probes == 0 and not pace.probing()  # it only looked: nothing was handed over


def test_a_trickle_starts_no_probes(events_topic: tuple[Settings, str]) -> None:
    """Probing at every record of 50 a second cost the end-to-end latency ~8 ms at the median."""
    settings, bootstrap = events_topic
    pace = ViewPace(bootstrap, settings, unique("view"))
    for _ in range(10):
        pace.handed_off(1)
    assert not pace.probing()
    pace.handed_off(view_pace.BUSY_RECORDS_PER_S)
    assert pace.probing()


def test_a_view_that_never_shared_a_position_holds_nobody_back(events_topic: tuple[Settings, str]) -> None:
    settings, bootstrap = events_topic
    pace = ViewPace(bootstrap, settings, unique("nobody"))
    pace.start()
    try:
        _write_records(bootstrap, settings, 10)
        pace.handed_off(view_pace.BUSY_RECORDS_PER_S)
        wait_for(lambda: pace.probes >= 2, 30, "two probes")
        assert pace.behind is None
        assert pace.may_poll()
    finally:
        pace.stop()


def test_worker_pace_view_is_checked_and_set_only_for_a_views_own_workers(tmp_path: Path) -> None:
    settings = Settings(bootstrap_servers="127.0.0.1:9", data_dir=tmp_path)
    env = {"WORKER_ID": "w1"}
    assert WorkerIdentity.from_env(env, settings).pace_view is None
    assert WorkerIdentity.from_env({**env, "WORKER_PACE_VIEW": "ab12cd34"}, settings).pace_view == "ab12cd34"
    for hostile in ("a b", "../x", "x" * 101, "view;rm"):
        with pytest.raises(ConfigError, match="WORKER_PACE_VIEW"):
            WorkerIdentity.from_env({**env, "WORKER_PACE_VIEW": hostile}, settings)

    def child_env(role: str) -> dict[str, str]:
        supervisor = WorkerSupervisor(
            Settings(bootstrap_servers="127.0.0.1:9", role=role), "b:9", "c", "ab12cd34"
        )
        return supervisor.child_env("ab12cd34-w1", ("consumer-1",))

    assert child_env("all")["WORKER_PACE_VIEW"] == "ab12cd34"
    assert "WORKER_PACE_VIEW" not in child_env("worker")


class _FakeViewPosition:
    """Commits a view's position as the view's reader does (assigned, never subscribed)."""

    def __init__(self, bootstrap: str, settings: Settings, instance: str) -> None:
        self.partition = TopicPartition(settings.events_topic, 0)
        self.consumer = _group_reader(bootstrap, view_group(settings.events_topic, instance))
        self.consumer.assign([self.partition])

    def commit(self, offset: int, watched: bool = True) -> None:
        metadata = view_pace.WATCHED if watched else ""
        self.consumer.commit({self.partition: OffsetAndMetadata(offset, metadata, -1)})

    def close(self) -> None:
        self.consumer.close()


def _group_reader(bootstrap: str, group: str) -> KafkaConsumer:
    return KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)


def _write_records(bootstrap: str, settings: Settings, count: int) -> int:
    """``count`` plain records on the events topic (what is in them does not matter here); its end."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for _ in range(count):
            producer.send(
                settings.events_topic, b"{}", headers=event_log.headers_for(event_log.ROWS), partition=0
            )
            # One record per batch: the embedded broker (Tansu) answers ListOffsets "latest" with the
            # last batch's base offset + 1, not the offset after its last record.
            producer.flush()
    finally:
        producer.close()
    return count
