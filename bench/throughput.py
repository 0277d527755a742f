"""Raw kafka-python consumption vs the whole pipeline, on the same pre-filled topic.

Both sides run ``consumers`` kafka-python consumers as threads of this process, with the options of
:func:`backend.consumers.consumer_options`, the same poll size and timeout, each in a fresh consumer
group subscribed to the topic. The clock runs from the first record to the last:

* raw: from the first ``poll()`` that returned records to the one that brought the count to N;
  the records are only counted.
* pipeline: :class:`backend.service.Backend` (consume + decode + process + SQLite + events, and the
  gateway's fan-out with no clients): from the first ``message-received`` (its ``timestamp`` is when
  its batch was polled) to the publication of the N-th outcome (``processing-completed``/``-failed``).
  Its consumers are started (``Backend.start_consumer``) once the HTTP servers are up, so that their
  start-up work is not inside the measurement.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from backend import events
from backend.config import Settings
from backend.consumers import MAX_POLL_RECORDS, POLL_TIMEOUT_MS, consumer_options
from backend.events import Event
from backend.service import Backend, keep_startup_objects_out_of_gc
from backend.store import DB_NAME
from bench.common import Http, free_port, iso_to_ms, say
from bench.profiling import PySpy


@dataclass
class Run:
    """One side of the comparison."""

    records: int
    seconds: float
    cpu_seconds: float  # this process's CPU time (all threads) over the same span
    failed: int = 0

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us_per_record(self) -> float:
        return self.cpu_seconds / self.records * 1e6 if self.records else 0.0


def payload(i: int) -> bytes:
    """A small JSON object, like the seed's sample messages."""
    return json.dumps({"id": i, "name": f"sensor-{i % 50}", "value": (i % 1000) / 10, "ok": True}).encode()


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        admin.close()


def prefill(bootstrap: str, topic: str, count: int, partitions: int) -> float:
    """Create ``topic`` and write ``count`` records spread evenly over its partitions; seconds taken."""
    create_topic(bootstrap, topic, partitions)
    started = time.perf_counter()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, batch_size=256 * 1024)
    headers = [("data-type", events.SINGLE_MESSAGE.encode())]
    for i in range(count):
        producer.send(topic, value=payload(i), partition=i % partitions, headers=headers)
    producer.flush(timeout=120)
    producer.close()
    return time.perf_counter() - started


def raw_consume(bootstrap: str, topic: str, count: int, consumers: int, timeout: float) -> Run:
    """``consumers`` bare kafka-python consumers (pipeline options, fresh group) read ``count`` records."""
    settings = Settings(bootstrap_servers=bootstrap, group_id=f"bench-raw-{uuid.uuid4().hex[:8]}")
    options = consumer_options(settings)
    lock = threading.Lock()
    seen = 0
    first: float | None = None
    last: float | None = None
    cpu = [0.0, 0.0]
    done = threading.Event()

    def consume(index: int) -> None:
        nonlocal seen, first, last
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id=f"bench-raw-{index}", **options)
        consumer.subscribe(topics=[topic])
        deadline = time.monotonic() + timeout
        try:
            while not done.is_set() and time.monotonic() < deadline:
                batch = consumer.poll(timeout_ms=POLL_TIMEOUT_MS, max_records=MAX_POLL_RECORDS)
                got = sum(len(records) for records in batch.values())
                if not got:
                    continue
                now = time.time()
                with lock:
                    if first is None:
                        first, cpu[0] = now, time.process_time()
                    seen += got
                    if seen >= count:
                        last, cpu[1] = now, time.process_time()
                        done.set()
        finally:
            consumer.close(autocommit=False)

    threads = [threading.Thread(target=consume, args=(i,), name=f"raw-{i}") for i in range(consumers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout + 30)
    if first is None or last is None:
        raise RuntimeError(f"raw consumers read {seen} of {count} records within {timeout:.0f}s")
    return Run(seen, last - first, cpu[1] - cpu[0])


class OutcomeCounter:
    """A bus subscriber: first message-received, and when the N-th outcome was published."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.first_iso: str | None = None
        self.outcomes = 0
        self.failed = 0
        self.last_ms: float | None = None
        self.cpu_first: float | None = None  # process CPU time at the first event we saw
        self.cpu_last = 0.0
        self.done = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        # Runs in a consumer thread under the bus lock: count and return.
        with self._lock:
            if event.name == events.MESSAGE_RECEIVED:
                if self.cpu_first is None:
                    self.cpu_first = time.process_time()
                at = event.data["timestamp"]  # same ISO format throughout: compares as text
                if self.first_iso is None or at < self.first_iso:
                    self.first_iso = at
            elif event.name in (events.PROCESSING_COMPLETED, events.PROCESSING_FAILED):
                self.outcomes += 1
                if event.name == events.PROCESSING_FAILED:
                    self.failed += 1
                if self.outcomes == self.count:
                    self.last_ms = time.time() * 1000.0
                    self.cpu_last = time.process_time()
                    self.done.set()


def wait_http(port: int, timeout: float) -> None:
    """Until the server on ``port`` answers (uvicorn answers once the app's lifespan has started)."""
    deadline = time.monotonic() + timeout
    client = Http(port, timeout=2.0)
    try:
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, http.client.HTTPException):
                client.request("GET", "/api/health")
                return
            time.sleep(0.05)
    finally:
        client.close()
    raise RuntimeError(f"nothing answers on port {port} after {timeout:.0f}s")


def pipeline(
    bootstrap: str, topic: str, count: int, consumers: int, data_dir: Path, timeout: float
) -> tuple[Run, dict[str, Any]]:
    """The whole backend (in this process, fresh group and store) on the pre-filled topic."""
    settings = Settings(
        bootstrap_servers=bootstrap,
        topics=(topic,),
        topic_pattern=None,
        group_id=f"bench-pipeline-{uuid.uuid4().hex[:8]}",
        consumer_count=consumers,
        data_dir=data_dir,
        gateway_port=free_port(),
        producer_port=free_port(),
    )
    counter = OutcomeCounter(count)
    # Start with no consumer, and add them once the HTTP servers are up: building the FastAPI apps
    # (pydantic schemas, under the GIL) is start-up work, not part of the steady pipeline.
    backend = Backend(replace(settings, consumer_count=0)).start(serve_http=True)
    try:
        # Take what was published before we subscribed too (the bus holds it), so nothing is missed.
        backlog, _ = backend.bus.subscribe_from(0, counter)
        for event in backlog or ():
            counter(event)
        wait_http(settings.gateway_port, timeout=30)
        keep_startup_objects_out_of_gc()  # as python -m backend does once it serves
        for _ in range(consumers):
            backend.start_consumer()
        if not counter.done.wait(timeout):
            raise RuntimeError(f"pipeline stored {counter.outcomes} of {count} records within {timeout:.0f}s")
        stored = backend.store.counts() if backend.store else None
        live_db, live_wal = disk_use(data_dir)
    finally:
        backend.stop()
    assert counter.first_iso is not None and counter.last_ms is not None
    closed_db, closed_wal = disk_use(data_dir)
    records = stored.total if stored else 0
    extra = {
        "stored": stored.total if stored else None,
        # Bytes on disk per stored record (database with its payloads + WAL): at the last outcome,
        # and after the backend stopped (its final checkpoint folds the WAL into the database).
        "store_db_bytes": live_db,
        "store_wal_bytes": live_wal,
        "store_bytes_per_record": round((live_db + live_wal) / records) if records else None,
        "store_closed_db_bytes": closed_db,
        "store_closed_wal_bytes": closed_wal,
        "store_closed_bytes_per_record": round((closed_db + closed_wal) / records) if records else None,
    }
    seconds = (counter.last_ms - iso_to_ms(counter.first_iso)) / 1000.0
    cpu = counter.cpu_last - (counter.cpu_first or 0.0)
    return Run(counter.outcomes, seconds, cpu, counter.failed), extra


def disk_use(data_dir: Path) -> tuple[int, int]:
    """(database file, WAL) sizes in bytes; payloads stored apart live in the database file."""
    sizes = []
    for name in (DB_NAME, DB_NAME + "-wal"):
        path = data_dir / name
        sizes.append(path.stat().st_size if path.exists() else 0)
    return sizes[0], sizes[1]


def run(
    bootstrap: str,
    work: Path,
    count: int,
    consumers: int = 3,
    timeout: float = 120.0,
    profile_to: Path | None = None,
) -> dict[str, Any]:
    """Both sides on one pre-filled topic; ``profile_to``: py-spy this process during the pipeline."""
    topic = f"bench-throughput-{uuid.uuid4().hex[:8]}"
    say(f"throughput: pre-filling {topic} with {count} records")
    fill_s = prefill(bootstrap, topic, count, partitions=consumers)
    say(f"throughput: pre-filled in {fill_s:.1f}s; raw kafka-python, {consumers} consumers")
    keep_startup_objects_out_of_gc()  # both sides with what is alive now frozen, as in the backend
    raw = raw_consume(bootstrap, topic, count, consumers, timeout)
    say(f"throughput: raw {raw.rate:,.0f} msgs/s; now the pipeline")
    for module in ("backend.gateway.app", "backend.producer_api", "uvicorn"):
        importlib.import_module(module)  # not inside the profile: FastAPI, pydantic, socketio
    with PySpy(os.getpid(), profile_to) if profile_to else contextlib.nullcontext():
        cpu_before, wall_before = time.process_time(), time.monotonic()
        piped, extra = pipeline(bootstrap, topic, count, consumers, work / "pipeline", timeout)
        cpu = (time.process_time() - cpu_before) / (time.monotonic() - wall_before)
    say(f"throughput: pipeline {piped.rate:,.0f} msgs/s")
    return {
        "throughput_records": count,
        "throughput_consumers": consumers,
        "prefill_s": round(fill_s, 2),
        "raw_consume_s": round(raw.seconds, 3),
        "raw_consume_msgs_per_s": round(raw.rate),
        "pipeline_s": round(piped.seconds, 3),
        "pipeline_msgs_per_s": round(piped.rate),
        "pipeline_failed": piped.failed,
        "pipeline_stored": extra.pop("stored"),
        **extra,
        "pipeline_ratio": round(piped.rate / raw.rate, 3) if raw.rate else None,
        # CPU per record (all threads of this process): less sensitive to a busy machine than rates.
        "raw_cpu_us_per_msg": round(raw.cpu_us_per_record, 1),
        "pipeline_cpu_us_per_msg": round(piped.cpu_us_per_record, 1),
        "pipeline_phase_cpu_cores": round(cpu, 2),  # start to stop of the in-process backend
    }
