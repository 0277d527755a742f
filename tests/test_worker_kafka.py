"""``python -m backend.worker`` as a real process against real brokers.

On Apache Kafka a worker writes each batch's rows and commits its offsets in one transaction:
a ``read_committed`` reader of the events topic sees every source record exactly once, also when
the worker is killed with SIGKILL in the middle of a burst and started again with the same
WORKER_ID. On the embedded broker (no transactions) every record arrives at least once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType

from backend import event_log
from backend.config import Settings
from backend.event_log import Command, ConsumerReport, RowsEntry, WorkerReport
from backend.event_topics import ensure_event_topics
from tests.support import create_topic, wait_for

ROOT = Path(__file__).resolve().parent.parent


class Worker:
    """One ``python -m backend.worker`` child; its output goes to a file (shown when a test fails)."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.log_path = tmp_path / f"worker-{uuid.uuid4().hex[:6]}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "backend.worker"],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(30)

    def terminate(self) -> int:
        self.process.terminate()
        return self.process.wait(60)

    def close(self) -> None:
        if self.process.poll() is None:
            self.kill()
        self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


class EventsReader:
    """Reads the events topic from its start as a view does (read_committed), decoding each entry."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.partition = TopicPartition(topic, 0)
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed"
        )
        self.consumer.assign([self.partition])
        self.consumer.seek_to_beginning(self.partition)
        self.entries: list[Any] = []

    def read(self) -> list[Any]:
        for records in self.consumer.poll(timeout_ms=200).values():
            for record in records:
                self.entries.append(event_log.decode_entry(record.headers, record.value))
        return self.entries

    def log_ids(self) -> Counter[str]:
        return Counter(row.log_id for e in self.entries if isinstance(e, RowsEntry) for row in e.rows)

    def reports(self, consumer_id: str | None = None) -> list[ConsumerReport]:
        return [
            e
            for e in self.entries
            if isinstance(e, ConsumerReport) and (consumer_id is None or e.consumer_id == consumer_id)
        ]

    def read_to_end(self, timeout: float = 60) -> None:
        """Read up to the end a read_committed reader can see (the last stable offset)."""
        end = self.consumer.end_offsets([self.partition])[self.partition]
        wait_for(
            lambda: self.read() is not None and self.consumer.position(self.partition) >= end,
            timeout,
            "the end",
        )

    def close(self) -> None:
        self.consumer.close()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Worker]]:
    started: list[Worker] = []

    def start(env: dict[str, str]) -> Worker:
        worker = Worker(tmp_path, env)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()
        print(f"--- {worker.log_path.name}\n{worker.output()[-4000:]}")


def worker_env(bootstrap: str, topic: str, group: str, **extra: str) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPICS": topic,
        "KAFKA_GROUP_ID": group,
        "WORKER_ID": "w1",
        "WORKER_CONSUMERS": "consumer-1,consumer-2",
        "LOG_LEVEL": "INFO",
        **extra,
    }


def value(i: int) -> bytes:
    """Every fifth record is not JSON: a FAILED row, still exactly one."""
    return b"{not json" if i % 5 == 0 else json.dumps({"i": i, "amount": i * 0.5}).encode()


def produce(bootstrap: str, topic: str, start: int, count: int) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    for i in range(start, start + count):
        producer.send(topic, value(i), partition=i % 3)
    producer.flush()
    producer.close()


class Burst(threading.Thread):
    """Produces records in chunks until told to stop (at least ``minimum``), counting them."""

    def __init__(self, bootstrap: str, topic: str, first: int, minimum: int) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.next, self.minimum = bootstrap, topic, first, minimum
        self.produced = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while self.produced < self.minimum or not self.stopping.is_set():
            produce(self.bootstrap, self.topic, self.next, 200)
            self.next += 200
            self.produced += 200


def committed_reach_ends(bootstrap: str, group: str, topic: str) -> bool:
    """The group's committed offsets (read_committed: stable ones) equal the partitions' ends."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    try:
        partitions = [TopicPartition(topic, p) for p in range(3)]
        ends = consumer.end_offsets(partitions)
        return all(consumer.committed(tp) == ends[tp] for tp in partitions)
    finally:
        consumer.close()


def test_every_record_once_even_when_the_worker_is_killed_mid_burst(
    kafka: Any, workers: Callable[[dict[str, str]], Worker], unique_topic: Callable[[str | None], str]
) -> None:
    topic, group = unique_topic("worker-src"), unique_topic("worker-group")
    create_topic(kafka.bootstrap, topic, 3)
    produce(kafka.bootstrap, topic, 0, 2000)
    worker = workers(worker_env(kafka.bootstrap, topic, group))
    reader = EventsReader(kafka.bootstrap, f"_{group}.events")
    try:
        wait_for(lambda: reader.read() and len(reader.log_ids()) >= 2000, 90, "the first 2,000 rows")
        ids = reader.log_ids()
        assert len(ids) == 2000 and set(ids.values()) == {1}
        statuses = Counter(row.status for e in reader.entries if isinstance(e, RowsEntry) for row in e.rows)
        assert statuses == {"PROCESSED": 1600, "FAILED": 400}

        burst = Burst(kafka.bootstrap, topic, 2000, minimum=3000)
        burst.start()
        wait_for(lambda: reader.read() and len(reader.log_ids()) > 2200, 90, "rows of the second burst")
        assert burst.is_alive()  # the kill lands in the middle of the burst
        worker.kill()
        restarted = workers(worker_env(kafka.bootstrap, topic, group))  # same WORKER_ID: fences the dead one
        burst.stopping.set()
        burst.join(120)
        total = 2000 + burst.produced

        wait_for(lambda: reader.read() and len(reader.log_ids()) >= total, 120, f"all {total} rows")
        wait_for(lambda: committed_reach_ends(kafka.bootstrap, group, topic), 60, "the committed offsets")
        reader.read_to_end()
        ids = reader.log_ids()
        assert len(ids) == total
        doubled = [log_id for log_id, n in ids.items() if n > 1]
        assert doubled == []
        assert restarted.process.poll() is None
    finally:
        reader.close()


def test_control_commands_start_and_stop_consumers(
    kafka: Any, workers: Callable[[dict[str, str]], Worker], unique_topic: Callable[[str | None], str]
) -> None:
    topic, group = unique_topic("ctl-src"), unique_topic("ctl-group")
    create_topic(kafka.bootstrap, topic, 3)
    worker = workers(worker_env(kafka.bootstrap, topic, group, WORKER_CONSUMERS=""))
    events_topic = f"_{group}.events"
    reader = EventsReader(kafka.bootstrap, events_topic)
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
    control = f"{events_topic}.control"

    def command(raw: bytes) -> None:
        producer.send(control, raw, partition=0).get(30)

    try:
        wait_for(
            lambda: any(isinstance(e, WorkerReport) for e in reader.read()), 60, "the worker's up report"
        )
        up = next(e for e in reader.entries if isinstance(e, WorkerReport))
        assert (up.worker_id, up.status, up.consumers) == ("w1", "up", [])
        command(b"garbage")
        command(b'{"v": 1, "op": "explode", "consumer_id": "consumer-1"}')
        command(event_log.encode_command(Command("start", "consumer-8", "another-worker", "r0")))
        command(event_log.encode_command(Command("start", "../../etc", "w1", "r1")))
        command(event_log.encode_command(Command("start", "consumer-7", "w1", "r2")))
        wait_for(lambda: reader.read() and reader.reports("consumer-7"), 60, "consumer-7's ACTIVE report")
        first = reader.reports("consumer-7")[0]
        assert (first.status, first.worker_id, first.reporter) == ("ACTIVE", "w1", "w1")
        wait_for(lambda: reader.read() and any(r.polled for r in reader.reports("consumer-7")), 60, "a poll")
        assert reader.reports("consumer-8") == [] and reader.reports("../../etc") == []

        command(event_log.encode_command(Command("stop", "consumer-7", None, "r3")))
        wait_for(
            lambda: reader.read() and reader.reports("consumer-7")[-1].status == "INACTIVE", 60, "INACTIVE"
        )
        assert reader.reports("consumer-7")[-1].reason == "stopped"
        assert worker.process.poll() is None

        assert worker.terminate() == 0
        wait_for(
            lambda: any(isinstance(e, WorkerReport) and e.status == "down" for e in reader.read()), 30, "down"
        )
    finally:
        producer.close()
        reader.close()


def test_a_fourth_consumer_gets_partitions_with_three_partition_topics(
    kafka: Any, workers: Callable[[dict[str, str]], Worker], unique_topic: Callable[[str | None], str]
) -> None:
    prefix = unique_topic("spread")
    topics = [f"{prefix}-a", f"{prefix}-b"]
    for topic in topics:
        create_topic(kafka.bootstrap, topic, 3)
    group = unique_topic("spread-group")
    consumers = [f"consumer-{n}" for n in range(1, 5)]
    workers(worker_env(kafka.bootstrap, ",".join(topics), group, WORKER_CONSUMERS=",".join(consumers)))
    reader = EventsReader(kafka.bootstrap, f"_{group}.events")

    def spread() -> bool:
        reader.read()
        latest = {c: reader.reports(c)[-1].partitions for c in consumers if reader.reports(c)}
        held = [name for partitions in latest.values() for name in partitions]
        return (
            len(latest) == 4 and all(latest.values()) and sorted(held) == sorted(set(held)) and len(held) == 6
        )

    try:
        wait_for(spread, 90, "six partitions spread over four consumers")
    finally:
        reader.close()


def test_a_worker_on_the_embedded_broker_delivers_every_record_at_least_once(
    embedded_broker: Any,
    workers: Callable[[dict[str, str]], Worker],
    unique_topic: Callable[[str | None], str],
) -> None:
    bootstrap = embedded_broker.bootstrap
    topic, group = unique_topic("tansu-src"), unique_topic("tansu-group")
    create_topic(bootstrap, topic, 3)
    produce(bootstrap, topic, 0, 600)
    workers(worker_env(bootstrap, topic, group, EMBEDDED_BROKER="1"))
    reader = EventsReader(bootstrap, f"_{group}.events")
    try:
        wait_for(lambda: reader.read() and len(reader.log_ids()) >= 600, 90, "600 rows")
        statuses = Counter(
            row.status
            for e in reader.entries
            if isinstance(e, RowsEntry)
            for row in e.rows
            if row.offset < 600
        )
        assert sum(statuses.values()) >= 600 and statuses["FAILED"] >= 120
    finally:
        reader.close()


@pytest.mark.parametrize("broker", ["kafka", "embedded_broker"])
def test_event_topics_are_created_once_even_by_racing_processes(
    request: pytest.FixtureRequest, broker: str, unique_topic: Callable[[str | None], str]
) -> None:
    bootstrap = request.getfixturevalue(broker).bootstrap
    settings = Settings(bootstrap_servers=bootstrap, group_id=unique_topic("topics-group"))
    errors: list[BaseException] = []

    def ensure() -> None:
        try:
            ensure_event_topics(bootstrap, settings)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    racers = [threading.Thread(target=ensure) for _ in range(3)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(60)
    ensure()  # and once more when both exist
    assert errors == []
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        for topic in (settings.events_topic, settings.control_topic):
            assert consumer.partitions_for_topic(topic) == {0}
    finally:
        consumer.close()
    if broker == "kafka":  # Apache Kafka keeps the config (an embedded broker may not)
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            resource = ConfigResource(ConfigResourceType.TOPIC, settings.events_topic)
            described = admin.describe_configs([resource])
        finally:
            admin.close()
        assert str(event_log.MAX_EVENT_RECORD_BYTES) in json.dumps(described, default=str)


def test_a_bad_setting_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    for env, expected in (
        ({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"}, "WORKER_ID is required"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", "WORKER_ID": "a/b"}, "WORKER_ID"),
        ({"WORKER_ID": "w1"}, "KAFKA_BOOTSTRAP_SERVERS is required"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", "WORKER_ID": "w1", "WORKER_CONSUMERS": "a,a"}, "twice"),
        (
            {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", "WORKER_ID": "w1", "CONSUMER_COUNT": "x"},
            "CONSUMER_COUNT",
        ),
    ):
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "WORKER"))}
        result = subprocess.run(
            [sys.executable, "-m", "backend.worker"],
            cwd=ROOT,
            env={**clean, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]


def test_sigterm_exits_zero(
    kafka: Any, workers: Callable[[dict[str, str]], Worker], unique_topic: Callable[[str | None], str]
) -> None:
    topic, group = unique_topic("term-src"), unique_topic("term-group")
    create_topic(kafka.bootstrap, topic, 3)
    worker = workers(worker_env(kafka.bootstrap, topic, group))
    reader = EventsReader(kafka.bootstrap, f"_{group}.events")
    try:
        wait_for(lambda: reader.read() and any(r.polled for r in reader.reports("consumer-2")), 60, "a poll")
        worker.process.send_signal(signal.SIGINT)
        assert worker.process.wait(60) == 0
        wait_for(
            lambda: (
                reader.read()
                and {r.reason for r in reader.reports() if r.status == "INACTIVE"} == {"stopped"}
            ),
            30,
            "both consumers INACTIVE (stopped)",
        )
        assert len({r.consumer_id for r in reader.reports() if r.status == "INACTIVE"}) == 2
    finally:
        reader.close()
