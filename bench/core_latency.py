"""Produce → processing-completed on the in-process bus, one message at a time.

``python -m bench.core_latency [kafka|embedded] [count]`` measures the backend core alone (no
HTTP, no Socket.IO): ``Backend.produce()`` (acks=all) until the record's processing-completed
event is published. The gateway path is measured by ``python -m bench`` (e2e_*).
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from pathlib import Path

from backend.config import Settings
from backend.events import PROCESSING_COMPLETED, SINGLE_MESSAGE, Event
from backend.service import Backend
from scripts.kafka_launcher import ApacheKafka


def measure(backend: Backend, count: int) -> list[float]:
    """Milliseconds from produce() to processing-completed, per message."""
    completed: list[float] = []
    changed = threading.Condition()

    def on_event(event: Event) -> None:
        if event.name == PROCESSING_COMPLETED:
            with changed:
                completed.append(time.perf_counter())
                changed.notify_all()

    backend.bus.subscribe(on_event)
    latencies = []
    for number in range(count + 1):  # the first one warms up the topic and is not counted
        seen = len(completed)
        started = time.perf_counter()
        backend.produce("core-latency", json.dumps({"n": number}).encode(), SINGLE_MESSAGE)
        with changed:
            if not changed.wait_for(lambda seen=seen: len(completed) > seen, 30):
                raise RuntimeError("no processing-completed within 30 s")
        if number:
            latencies.append((completed[-1] - started) * 1000)
    return sorted(latencies)


def main() -> None:
    broker_kind = sys.argv[1] if len(sys.argv) > 1 else "kafka"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    kafka = ApacheKafka(Path(tempfile.mkdtemp())) if broker_kind == "kafka" else None
    bootstrap = kafka.start() if kafka else None
    data_dir = Path(tempfile.mkdtemp())
    settings = Settings(bootstrap_servers=bootstrap, data_dir=data_dir, topics=("core-latency",))
    backend = Backend(settings).start(serve_http=False)
    try:
        lat = measure(backend, count)
    finally:
        backend.stop()
        if kafka:
            kafka.stop()

    def pick(q: float) -> float:
        return lat[min(int(q * len(lat)), len(lat) - 1)]

    summary = f"p50 {pick(0.5):.1f} ms, p90 {pick(0.9):.1f} ms, p99 {pick(0.99):.1f} ms, max {lat[-1]:.1f} ms"
    print(f"{broker_kind}: produce -> processing-completed over {count} messages: {summary}")


if __name__ == "__main__":
    main()
