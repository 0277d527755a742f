"""The issue's poison CSVs on the embedded broker: they fail readably and the records behind them flow."""

from __future__ import annotations

import json
from pathlib import Path

from kafka import KafkaProducer

from backend import events
from backend.config import Settings
from backend.service import Backend
from tests.support import EventRecorder, free_port, unique


def poison_csv(columns: int, name_chars: int, rows: int) -> bytes:
    header = ",".join(f"c{i:04d}".ljust(name_chars, "x") for i in range(columns))
    return (header + "\n" + ("," * (columns - 1) + "\n") * rows).encode()


def test_poison_csvs_fail_and_the_partition_goes_on(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "DATA_DIR": str(tmp_path),
            "GATEWAY_PORT": str(free_port()),
            "PRODUCER_PORT": str(free_port()),
            "TOPIC_PARTITIONS": "1",  # the good records queue behind the poison
        }
    )
    backend = Backend(settings).start(serve_http=False)
    recorder = EventRecorder()
    recorder.attach(backend.bus)
    topic = unique("poison")
    try:
        backend.ensure_topic(topic)
        producer = KafkaProducer(bootstrap_servers=backend.bootstrap, acks="all", max_request_size=2_097_152)
        producer.send(topic, value=poison_csv(250, 2_000, 2_191))  # no header: a plain producer
        producer.send(topic, value=poison_csv(1_000, 200, 846))
        for i in range(5):
            producer.send(topic, value=json.dumps({"i": i}).encode())
        producer.flush()
        producer.close()
        recorder.wait(
            lambda _: len(recorder.outcomes_for(recorder.log_ids_of(topic))) >= 7, 60, "seven outcomes"
        )
        logs = sorted(backend.store.logs(topic=topic, limit=10), key=lambda log: log.offset)
        stats = backend.statistics()
    finally:
        backend.stop()
    assert [log.status for log in logs] == [events.FAILED] * 2 + [events.PROCESSED] * 5
    assert logs[0].error == (
        "CSV has 250 columns whose names are up to 2,000 characters: column names are limited to "
        "256 characters (MAX_COLUMN_NAME_CHARS)"
    )
    assert (logs[1].error or "").startswith("CSV too large once decoded: 1,000 columns")
    sequences = {
        log_id: seq for log_id, seq in recorder.by_log_id().items() if log_id in recorder.log_ids_of(topic)
    }
    assert len(sequences) == 7
    for sequence in sequences.values():
        assert sequence[:2] == [events.MESSAGE_RECEIVED, events.PROCESSING_STARTED] and len(sequence) == 3
    assert (stats["totalMessages"], stats["processedMessages"], stats["failedMessages"]) == (7, 5, 2)
