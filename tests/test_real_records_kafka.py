"""Real records from real producers on Apache Kafka, each counted exactly and shown as the contract says.

- Apache Kafka's own Java ConsoleProducer writes keys and headers (repeated names, a value holding
  the key separator, a null value) and tombstones (``null.marker``). Kafka 4.4 deprecates
  ``--property`` for ``--reader-property``; the reader's properties are ``parse.key``,
  ``key.separator``, ``parse.headers``, ``headers.delimiter``, ``headers.separator``,
  ``headers.key.separator`` and ``null.marker``.
- kafka-python's transactional producer writes an aborted and a committed transaction; their
  markers take an offset each, which is how the broker's end offsets are reconciled exactly.
- kafka-python writes a binary value (Confluent Avro framing) under a binary key and header.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
from kafka import KafkaProducer

from backend.events import FAILED, PROCESSED, SINGLE_MESSAGE, TOMBSTONE
from scripts.kafka_launcher import CONSOLE_PRODUCER
from tests.support import (
    ServedBackend,
    backend_settings,
    create_topic,
    end_offsets,
    run_tool,
    serve_backend,
    start_backend,
    unique,
    wait_for,
)

NULL = "<NULL>"
#: headers | key | value, as the ConsoleProducer reads them with the properties below.
CONSOLE_LINES = [
    'trace:a,data-type:SINGLE_MESSAGE,trace:b|order-1|{"id": 1}',
    f"source:console|order-2|{NULL}",  # a tombstone
    f'url:http://shop/x?a=1,empty:{NULL}|{NULL}|{{"id": 3}}',  # no key; a null header value
]
READER_PROPERTIES = (
    "parse.key=true",
    "key.separator=|",
    "parse.headers=true",
    "headers.delimiter=|",
    f"null.marker={NULL}",
)
ABORTED, COMMITTED = 5, 3
BINARY_VALUE = b"\x00\x00\x00\x00\x07\x54" + bytes(range(200, 256))
BINARY_KEY = b"\xff\x01"


def produce_everything(bootstrap: str, topic: str) -> None:
    run_tool(
        CONSOLE_PRODUCER,
        *(f"--reader-property={prop}" for prop in READER_PROPERTIES),
        stdin="".join(line + "\n" for line in CONSOLE_LINES),
        bootstrap_server=bootstrap,
        topic=topic,
    )
    transactional = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=unique("tx"))
    try:
        transactional.init_transactions()
        transactional.begin_transaction()
        for n in range(ABORTED):
            transactional.send(topic, value=b'{"aborted": %d}' % n, partition=0)
        transactional.flush()
        transactional.abort_transaction()
        transactional.begin_transaction()
        for n in range(COMMITTED):
            transactional.send(topic, value=b'{"committed": %d}' % n, partition=0)
        transactional.commit_transaction()
    finally:
        transactional.close()
    plain = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        plain.send(topic, value=BINARY_VALUE, key=BINARY_KEY, headers=[("schema", b"\x00\xff")]).get(10)
    finally:
        plain.close()


def logs(served: ServedBackend, topic: str) -> list[dict[str, Any]]:
    answer = httpx.get(
        f"{served.gateway}/api/consumers/logs", params={"topic": topic, "limit": 100}, timeout=10
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_keys_headers_tombstones_transactions_and_binary_values_exactly(kafka, tmp_path: Path) -> None:
    topic = unique("real")
    create_topic(kafka.bootstrap, topic, partitions=3)
    produce_everything(kafka.bootstrap, topic)
    ends = end_offsets(kafka.bootstrap, topic)
    visible = len(CONSOLE_LINES) + COMMITTED + 1
    markers = 2  # one abort and one commit marker, both on partition 0
    assert sum(ends.values()) == visible + ABORTED + markers

    served = serve_backend(backend_settings(tmp_path, kafka.bootstrap, topics=(topic,)))
    try:
        wait_for(lambda: served.backend.store.count_logs(topic=topic) >= visible, 60, "every visible record")
        # Every partition read to its end (past the commit marker), so nothing more is coming.
        wait_for(lambda: caught_up(served, topic, ends), 30, "the consumers at the end offsets")
        listed = logs(served, topic)
        details = {
            body["logId"]: httpx.get(
                f"{served.gateway}/api/consumers/logs/{body['logId']}", timeout=10
            ).json()
            for body in listed
        }
        stats = served.backend.statistics()
    finally:
        served.backend.stop()

    assert len(listed) == visible == stats["totalMessages"]
    assert stats["failedMessages"] == 1 and stats["processedMessages"] == visible - 1
    by_key = {body["key"]: body for body in listed}

    first = by_key["order-1"]
    assert first["headers"] == [
        {"key": "trace", "value": "a"},
        {"key": "data-type", "value": "SINGLE_MESSAGE"},
        {"key": "trace", "value": "b"},
    ]
    assert (first["status"], first["dataType"], first["keyBase64"]) == (PROCESSED, SINGLE_MESSAGE, None)
    assert first["kafkaTimestamp"].endswith("Z") and first["kafkaTimestamp"] == first["producedAt"]
    assert details[first["logId"]]["payload"] == {"id": 1}

    tombstone = by_key["order-2"]
    assert (tombstone["dataType"], tombstone["status"], tombstone["rowCount"]) == (TOMBSTONE, PROCESSED, 0)
    assert tombstone["headers"] == [{"key": "source", "value": "console"}] and tombstone["error"] is None

    keyless = next(body for body in listed if details[body["logId"]]["payload"] == {"id": 3})
    assert (keyless["key"], keyless["keyBase64"]) == (None, None)
    assert keyless["headers"] == [
        {"key": "url", "value": "http://shop/x?a=1"},
        {"key": "empty", "value": None},
    ]

    committed = [
        details[b["logId"]]["payload"] for b in listed if "committed" in str(details[b["logId"]]["payload"])
    ]
    assert sorted(p["committed"] for p in committed) == list(range(COMMITTED))
    assert not any("aborted" in str(d["payload"]) for d in details.values())

    binary = next(body for body in listed if body["keyBase64"] is not None)
    assert base64.b64decode(binary["keyBase64"]) == BINARY_KEY and binary["key"] is None
    assert binary["headers"] == [{"key": "schema", "valueBase64": base64.b64encode(b"\x00\xff").decode()}]
    assert binary["status"] == FAILED and "binary value" in binary["error"]
    shown = details[binary["logId"]]
    assert base64.b64decode(shown["valueBase64"]) == BINARY_VALUE and shown["valueTruncated"] is False


def test_read_uncommitted_takes_the_aborted_records_too(kafka, tmp_path: Path) -> None:
    """The setting reaches the consumers: the same transactions, read uncommitted, count 5 more."""
    topic = unique("uncommitted")
    create_topic(kafka.bootstrap, topic, partitions=3)
    produce_everything(kafka.bootstrap, topic)
    expected = len(CONSOLE_LINES) + COMMITTED + 1 + ABORTED
    backend = start_backend(
        backend_settings(tmp_path, kafka.bootstrap, topics=(topic,), isolation_level="read_uncommitted")
    )
    try:
        wait_for(lambda: backend.store.count_logs(topic=topic) == expected, 60, "every record, aborted too")
        wait_for(
            lambda: caught_up(backend, topic, end_offsets(kafka.bootstrap, topic)), 30, "the end offsets"
        )
        assert backend.store.count_logs(topic=topic) == expected
        aborted = [row for row in backend.store.logs(limit=100, topic=topic) if "aborted" in str(row.payload)]
    finally:
        backend.stop()
    assert len(aborted) == ABORTED


def caught_up(served: Any, topic: str, ends: dict[int, int]) -> bool:
    """Every partition's position is its end offset (markers included)."""
    backend = served.backend if isinstance(served, ServedBackend) else served
    positions = {
        name: state.position
        for snapshot in backend.consumers()
        for name, state in snapshot.partitions.items()
        if name.startswith(topic)
    }
    return positions == {f"{topic}-{partition}": end for partition, end in ends.items()}
