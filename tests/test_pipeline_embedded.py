"""The zero-setup path: nothing configured, the embedded broker, the same end-to-end flow."""

from __future__ import annotations

import json
from pathlib import Path

from backend import events
from backend.config import Settings
from backend.events import CSV_BATCH, FAILED, PROCESSED, SINGLE_MESSAGE
from backend.service import Backend
from tests.support import EventRecorder, foreign_producer, free_port, unique


def test_embedded_default_processes_produced_and_foreign_records(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {"DATA_DIR": str(tmp_path), "GATEWAY_PORT": str(free_port()), "PRODUCER_PORT": str(free_port())}
    )
    assert settings.embedded
    backend = Backend(settings).start(serve_http=False)
    recorder = EventRecorder()
    recorder.attach(backend.bus)
    topic = unique("embedded")
    try:
        backend.produce(topic, json.dumps({"name": "Test", "value": 100}).encode(), SINGLE_MESSAGE)
        backend.produce(topic, b"name,value\nA,1\nB,2\nC,3\n", CSV_BATCH)
        producer = foreign_producer(backend.bootstrap)
        producer.send(topic, value=b'{"from": "elsewhere"}')
        producer.send(topic, value=b"{not json")
        producer.flush()
        recorder.wait(
            lambda _: len(recorder.outcomes_for(recorder.log_ids_of(topic))) >= 4, 30, "four outcomes"
        )
        logs = {(log.data_type, log.row_count, log.status) for log in backend.store.logs(topic=topic)}
        health = backend.health()
        stats = backend.statistics()
    finally:
        backend.stop()
    assert (
        logs
        == {
            (SINGLE_MESSAGE, 1, PROCESSED),
            (CSV_BATCH, 3, PROCESSED),
            (SINGLE_MESSAGE, 0, FAILED),
        }
        and len(recorder.outcomes_for(recorder.log_ids_of(topic))) == 4
    )
    assert health.ok, health.reason
    assert (stats["totalMessages"], stats["processedMessages"], stats["failedMessages"]) == (4, 3, 1)
    for sequence in recorder.by_log_id().values():
        assert sequence[:2] == [events.MESSAGE_RECEIVED, events.PROCESSING_STARTED] and len(sequence) == 3


def test_embedded_consumers_can_be_added_and_removed(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "DATA_DIR": str(tmp_path),
            "GATEWAY_PORT": str(free_port()),
            "PRODUCER_PORT": str(free_port()),
            "CONSUMER_COUNT": "1",
        }
    )
    backend = Backend(settings).start(serve_http=False)
    recorder = EventRecorder()
    recorder.attach(backend.bus)
    topic = unique("embedded-churn")
    try:
        for i in range(30):
            backend.produce(topic, json.dumps({"i": i}).encode(), SINGLE_MESSAGE)
        added = backend.start_consumer()
        assert added == "consumer-2"
        for i in range(30, 60):
            backend.produce(topic, json.dumps({"i": i}).encode(), SINGLE_MESSAGE)
        assert backend.stop_consumer("consumer-1")
        assert not backend.stop_consumer("consumer-1")
        for i in range(60, 90):
            backend.produce(topic, json.dumps({"i": i}).encode(), SINGLE_MESSAGE)
        recorder.wait(lambda _: len(recorder.outcomes_for(recorder.log_ids_of(topic))) >= 90, 30, "all 90")
        assert backend.store.count_logs(topic=topic) == 90
        assert backend.statistics()["activeConsumers"] == 1
    finally:
        backend.stop()
    assert len({e.data["logId"] for e in recorder.outcomes_for(recorder.log_ids_of(topic))}) == 90
