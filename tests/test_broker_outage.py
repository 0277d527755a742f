"""The broker goes away for 30 s mid-stream: the backend says so, recovers by itself, loses nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path

from backend.events import FAILED
from tests.support import backend_settings, create_topic, foreign_producer, start_backend, unique, wait_for

OUTAGE_S = 30


def test_broker_outage_is_reported_and_survived(kafka, tmp_path: Path) -> None:
    topic = unique("outage")
    create_topic(kafka.bootstrap, topic, partitions=3)
    backend = start_backend(backend_settings(tmp_path, kafka.bootstrap, topics=(topic,)))
    before, after = 400, 400
    try:
        producer = foreign_producer(kafka.bootstrap)
        for i in range(before):
            producer.send(topic, value=json.dumps({"i": i}).encode() if i % 9 else b"<not json>")
        producer.flush()
        producer.close()
        wait_for(lambda: backend.store.count_logs(topic=topic) >= before // 2, 60, "half of the first part")

        kafka.stop()
        try:
            wait_for(lambda: not backend.health().ok, 15, "health to turn bad")
            assert "broker unreachable" in (backend.health().reason or "")
            assert backend.health().to_api()["status"] != "ok"
            time.sleep(OUTAGE_S)  # the outage itself: a duration under test, not synchronisation
        finally:
            kafka.start()

        wait_for(lambda: backend.health().ok, 60, "health to recover")
        producer = foreign_producer(kafka.bootstrap)
        for i in range(before, before + after):
            producer.send(topic, value=json.dumps({"i": i}).encode() if i % 9 else b"<not json>")
        producer.flush()
        producer.close()
        wait_for(
            lambda: backend.store.count_logs(topic=topic) >= before + after,
            120,
            "every record after recovery",
        )
        logs = backend.store.logs(limit=2000, topic=topic)
    finally:
        backend.stop()
    total = before + after
    assert len(logs) == total
    assert len({(log.partition, log.offset) for log in logs}) == total
    assert sum(1 for log in logs if log.status == FAILED) == len(range(0, total, 9))
