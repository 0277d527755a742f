"""Topics compressed by Apache Kafka's own Java producer are consumed, every record, every codec.

kafka-python decompresses snappy, lz4 and zstd only when optional packages are installed
(``python-snappy``, ``lz4``, ``zstandard``); without them a real cluster's compressed topic
fails to consume while gzip (standard library) keeps working, so a lost package would go
unnoticed by any test that produces with kafka-python's defaults.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kafka import codec

from backend.events import PROCESSED
from scripts.kafka_launcher import CONSOLE_PRODUCER
from tests.support import (
    backend_settings,
    create_topic,
    end_offsets,
    run_tool,
    start_backend,
    unique,
    wait_for,
)

CODECS = ("gzip", "snappy", "lz4", "zstd")
RECORDS_PER_TOPIC = 120


@pytest.mark.parametrize("name", CODECS)
def test_kafka_python_can_decompress(name: str) -> None:
    assert getattr(codec, f"has_{name}")(), f"{name}: install its package (requirements.txt)"


def test_compressed_topics_from_the_console_producer_are_consumed_exactly(kafka, tmp_path: Path) -> None:
    topics = {name: unique(f"codec-{name}") for name in CODECS}
    for name, topic in topics.items():
        create_topic(kafka.bootstrap, topic)
        lines = "".join(json.dumps({"codec": name, "n": n}) + "\n" for n in range(RECORDS_PER_TOPIC))
        run_tool(
            CONSOLE_PRODUCER,
            stdin=lines,
            bootstrap_server=kafka.bootstrap,
            topic=topic,
            compression_codec=name,
        )
    expected = {topic: sum(end_offsets(kafka.bootstrap, topic).values()) for topic in topics.values()}
    assert set(expected.values()) == {RECORDS_PER_TOPIC}

    backend = start_backend(backend_settings(tmp_path, kafka.bootstrap, topics=tuple(topics.values())))
    try:
        stored = wait_for(
            lambda: (
                counts
                if (counts := {t: backend.store.count_logs(topic=t) for t in topics.values()}) == expected
                else None
            ),
            60,
            "every compressed record stored",
        )
        listed = [log for topic in topics.values() for log in backend.store.logs(limit=1000, topic=topic)]
        logs = [backend.store.log(log.log_id) for log in listed]  # with their payloads
    finally:
        backend.stop()
    assert stored == expected
    assert {log.status for log in logs if log} == {PROCESSED}
    assert {(log.topic, log.payload["n"]) for log in logs if log} == {
        (topic, n) for topic in topics.values() for n in range(RECORDS_PER_TOPIC)
    }
