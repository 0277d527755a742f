"""The backend core against Apache Kafka: every record exactly once, events in order."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from backend import events
from backend.events import CSV_BATCH, FAILED, PROCESSED, SINGLE_MESSAGE
from tests.support import (
    EventRecorder,
    backend_settings,
    create_topic,
    foreign_producer,
    start_backend,
    unique,
    wait_for,
)

TERMINAL = (events.PROCESSING_COMPLETED, events.PROCESSING_FAILED)

# (value, expected status, expected dataType, expected rowCount)
MIXED_RECORDS: list[tuple[bytes, str, str, int]] = [
    (b'{"name": "Test", "value": 100}', PROCESSED, SINGLE_MESSAGE, 1),
    (b'[{"a": 1}, {"a": 2}, {"a": 3}]', PROCESSED, SINGLE_MESSAGE, 3),
    (b"name,value\nA,1\nB,2\n", PROCESSED, CSV_BATCH, 2),
    (b'{"broken": ', FAILED, SINGLE_MESSAGE, 0),
    (b"\xff\xfe not utf-8", FAILED, SINGLE_MESSAGE, 0),
    (b"", FAILED, SINGLE_MESSAGE, 0),
    (b"a,b\n1,2,3\n", FAILED, SINGLE_MESSAGE, 0),
    (b'{"big": "' + b"x" * 3000 + b'"}', FAILED, SINGLE_MESSAGE, 0),
    (b'{"html": "<script>alert(1)</script>"}', PROCESSED, SINGLE_MESSAGE, 1),
]


def produce_all(
    producer: KafkaProducer, topic: str, values: list[bytes], partitions: int = 3
) -> list[tuple[int, int]]:
    futures = [producer.send(topic, value=value, partition=i % partitions) for i, value in enumerate(values)]
    producer.flush()
    return [(f.get().partition, f.get().offset) for f in futures]


def test_foreign_records_good_and_bad_each_logged_once_in_order(kafka, tmp_path: Path) -> None:
    topic = unique("mixed")
    create_topic(kafka.bootstrap, topic, partitions=3)
    values = [value for value, *_ in MIXED_RECORDS] * 3
    places = produce_all(foreign_producer(kafka.bootstrap), topic, values)
    expected = {place: MIXED_RECORDS[i % len(MIXED_RECORDS)] for i, place in enumerate(places)}

    backend = start_backend(
        backend_settings(tmp_path, kafka.bootstrap, topics=(topic,), max_message_bytes=2000)
    )
    recorder = EventRecorder()
    recorder.attach(backend.bus)
    try:
        recorder.wait(
            lambda _: len(recorder.outcomes_for(recorder.log_ids_of(topic))) >= len(values),
            60,
            "every outcome",
        )
        logs = backend.store.logs(limit=1000, topic=topic)
    finally:
        backend.stop()

    assert len(logs) == len(values)
    assert {(log.partition, log.offset) for log in logs} == set(expected)
    for log in logs:
        _, status, data_type, row_count = expected[(log.partition, log.offset)]
        assert (log.status, log.data_type, log.row_count) == (status, data_type, row_count), log
        assert (log.error is None) == (status == PROCESSED)
    sequences = recorder.by_log_id()
    for log in logs:
        terminal = events.PROCESSING_COMPLETED if log.status == PROCESSED else events.PROCESSING_FAILED
        assert sequences[log.log_id] == [events.MESSAGE_RECEIVED, events.PROCESSING_STARTED, terminal]


def test_events_carry_the_seed_fields(kafka, tmp_path: Path) -> None:
    topic = unique("seed")
    backend = start_backend(backend_settings(tmp_path, kafka.bootstrap, topics=(topic,)))
    recorder = EventRecorder()
    recorder.attach(backend.bus)
    try:
        produced = backend.produce(topic, json.dumps({"name": "Test", "value": 100}).encode(), SINGLE_MESSAGE)
        recorder.wait(
            lambda evs: any(e.name == events.STATS_UPDATED and e.data["processedMessages"] == 1 for e in evs),
            30,
            "stats after the record",
        )
    finally:
        backend.stop()
    first = {}
    for event in recorder.events:
        first.setdefault(event.name, event.data)
    received = first[events.MESSAGE_RECEIVED]
    assert received["topic"] == topic and received["partition"] == produced.partition
    assert received["offset"] == str(produced.offset)
    assert (received["dataType"], received["rowCount"]) == (SINGLE_MESSAGE, 1)
    assert first[events.PROCESSING_STARTED]["status"] == "PROCESSING"
    completed = first[events.PROCESSING_COMPLETED]
    assert completed["status"] == "PROCESSED" and completed["consumerId"].startswith("consumer-")
    # The first stats-updated with the record (stopping the backend adds more: its consumers stop)
    stats = next(
        e.data for e in recorder.events if e.name == events.STATS_UPDATED and e.data["processedMessages"]
    )
    assert set(stats) >= {
        "totalMessages",
        "processedMessages",
        "failedMessages",
        "activeConsumers",
        "timestamp",
    }
    assert (stats["totalMessages"], stats["failedMessages"], stats["activeConsumers"]) == (1, 0, 3)
    for data in first.values():
        assert data["timestamp"].endswith("Z") and len(data["timestamp"]) == 24
    seqs = [e.seq for e in recorder.events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_consumers_started_and_stopped_mid_stream_lose_and_double_nothing(kafka, tmp_path: Path) -> None:
    topic = unique("churn")
    create_topic(kafka.bootstrap, topic, partitions=6)
    backend = start_backend(backend_settings(tmp_path, kafka.bootstrap, topics=(topic,), consumer_count=2))
    recorder = EventRecorder()
    recorder.attach(backend.bus)
    total = 1500
    producer = foreign_producer(kafka.bootstrap)

    def stream() -> None:
        for i in range(total):
            producer.send(topic, value=json.dumps({"i": i}).encode() if i % 10 else b"not json")
            if i % 50 == 0:
                producer.flush()
                time.sleep(0.02)  # pacing the stream, not synchronisation
        producer.flush()

    sender = threading.Thread(target=stream)
    sender.start()
    try:
        recorder.wait(lambda _: len(recorder.log_ids_of(topic)) >= 100, 60, "the stream to start")
        added = [backend.start_consumer(), backend.start_consumer()]
        recorder.wait(lambda _: len(recorder.log_ids_of(topic)) >= 500, 60, "more of the stream")
        assert backend.stop_consumer("consumer-1")
        assert backend.stop_consumer(added[0])
        sender.join()
        # Wait for the outcome events, not the stored rows: a batch's outcomes are published just
        # after its commit, so the rows can all be there while the last outcomes are on their way.
        recorder.wait(
            lambda _: len(recorder.outcomes_for(recorder.log_ids_of(topic))) >= total, 90, "every outcome"
        )
        outcomes = recorder.outcomes_for(recorder.log_ids_of(topic))
        logs = backend.store.logs(limit=total + 10, topic=topic)
    finally:
        sender.join()
        backend.stop()
    assert len(logs) == total
    assert len({(log.partition, log.offset) for log in logs}) == total
    assert sum(1 for log in logs if log.status == FAILED) == total // 10
    assert len(outcomes) == total and len({e.data["logId"] for e in outcomes}) == total
    changes = [
        (e.data["consumerId"], e.data["status"])
        for e in recorder.events
        if e.name == events.CONSUMER_STATUS_CHANGED
    ]
    stopped = [("consumer-1", events.INACTIVE), (added[0], events.INACTIVE)]
    assert [change for change in changes if change in stopped][:2] == stopped, changes


def test_a_topic_created_after_start_is_consumed_within_5_s(kafka, tmp_path: Path) -> None:
    prefix = unique("late")
    backend = start_backend(backend_settings(tmp_path, kafka.bootstrap, topic_pattern=f"^{prefix}.*"))
    recorder = EventRecorder()
    recorder.attach(backend.bus)
    try:
        topic = f"{prefix}-orders"
        create_topic(kafka.bootstrap, topic, partitions=3)
        producer = foreign_producer(kafka.bootstrap)
        producer.send(topic, value=b'{"late": true}').get(timeout=10)
        recorder.wait(
            lambda _: recorder.outcomes_for(recorder.log_ids_of(topic)), 5, "the new topic's record"
        )
    finally:
        backend.stop()


HOLD_FILE = "KAFKA_DASHBOARD_TEST_HOLD_FILE"


def holding_processor(record: Any) -> None:
    """PROCESSOR of the lag test: a record marked "hold" waits while the test's hold file exists.

    A file, not a threading.Event: the processor runs in the backend's worker process.
    """
    if isinstance(record.payload, dict) and record.payload.get("hold"):
        path = Path(os.environ[HOLD_FILE])
        deadline = time.monotonic() + 60
        while path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)


def test_lag_counts_the_records_behind_a_busy_consumer(
    kafka, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The consumer is held inside its first record while 200 more arrive behind it: the lag is all
    201 (the held one too), as the broker sees the group (committed offset against the log end),
    and 0 once everything is read."""
    topic = unique("lag")
    create_topic(kafka.bootstrap, topic, partitions=1)
    hold = tmp_path / "hold"
    hold.touch()
    monkeypatch.setenv(HOLD_FILE, str(hold))
    settings = backend_settings(
        tmp_path,
        kafka.bootstrap,
        topics=(topic,),
        consumer_count=1,
        processor="tests.test_pipeline_kafka:holding_processor",
    )
    backend = start_backend(settings)

    def lag() -> int | None:
        active = [s.to_api() for s in backend.consumers() if s.status == events.ACTIVE]
        return active[0]["lag"].get(f"{topic}-0") if len(active) == 1 else None

    try:
        wait_for(lambda: lag() == 0, 60, "the consumer to hold the partition and know its position")
        producer = foreign_producer(kafka.bootstrap)
        producer.send(topic, b'{"hold": true}').get(15)
        for number in range(200):
            producer.send(topic, json.dumps({"n": number}).encode())
        producer.flush()
        wait_for(lambda: lag() == 201, 30, "a lag of 201 while the consumer is held")
        assert backend.store.counts().processed == 0
        hold.unlink()
        wait_for(lambda: backend.store.counts().processed == 201, 60, "every record processed")
        wait_for(lambda: lag() == 0, 30, "no lag once everything is read")
    finally:
        hold.unlink(missing_ok=True)
        backend.stop()
