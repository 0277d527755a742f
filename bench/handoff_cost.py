"""``python -m bench.handoff_cost``: what handing one batch to the events topic costs a worker.

Produces ``--batches`` x 500 small JSON records to a fresh 3-partition topic, consumes them in a
group, turns each batch into rows (``Pipeline.rows_for``) and times ``Handoff.send`` per batch:
the transactional handoff (Apache Kafka) against the plain one (write, wait, commit async). Uses
KAFKA_BOOTSTRAP_SERVERS, or starts its own Apache Kafka (scripts/kafka_launcher.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.structs import OffsetAndMetadata

from backend import processing
from backend.config import Settings
from backend.consumers import consumer_options
from backend.event_topics import ensure_event_topics
from backend.handoff import Handoff, PlainHandoff, TransactionalHandoff
from backend.pipeline import Pipeline
from bench.common import broker

BATCH = 500


def measure(bootstrap: str, batches: int, transactional: bool) -> list[float]:
    """Milliseconds per ``Handoff.send`` of one batch of BATCH rows."""
    tag = uuid.uuid4().hex[:8]
    topic = f"handoff-cost-{tag}"
    settings = Settings(bootstrap_servers=bootstrap, topics=(topic,), group_id=f"handoff-cost-{tag}")
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, 3, 1)])
    admin.close()
    ensure_event_topics(bootstrap, settings)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for i in range(batches * BATCH):
        producer.send(topic, json.dumps({"i": i, "name": "x" * 40}).encode())
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, **consumer_options(settings))
    pipeline = Pipeline(
        cluster_id="bench",
        sink=None,  # type: ignore[arg-type]  # rows_for touches no sink
        publish=lambda _items: None,
        processor=None,
        limits=processing.Limits.from_settings(settings),
        counts_changed=lambda: None,
    )
    handoff: Handoff = (
        TransactionalHandoff(bootstrap, settings, f"{settings.events_topic}.bench.s0", "bench", "c1")
        if transactional
        else PlainHandoff(bootstrap, settings, "bench", "c1")
    )
    times: list[float] = []
    seen = 0
    deadline = time.monotonic() + 120
    while seen < batches * BATCH and time.monotonic() < deadline:
        for tp, records in consumer.poll(timeout_ms=500, max_records=BATCH).items():
            rows = pipeline.rows_for("c1", records)
            start = time.perf_counter()
            handoff.send(consumer, rows, {tp: OffsetAndMetadata(records[-1].offset + 1, "", -1)})
            times.append((time.perf_counter() - start) * 1000)
            seen += len(records)
    handoff.close()
    consumer.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=40)
    args = parser.parse_args()
    with broker() as bootstrap:
        for name, transactional in (("transactional", True), ("plain", False)):
            times = measure(bootstrap, args.batches, transactional)[2:]  # the first ones warm up
            print(
                f"{name}: {len(times)} batches (<= {BATCH} rows each), per batch median "
                f"{statistics.median(times):.1f} ms, p90 {statistics.quantiles(times, n=10)[-1]:.1f} ms"
            )


if __name__ == "__main__":
    main()
