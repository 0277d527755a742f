"""The per-record floor of the pipeline: what the contract's work costs before any Kafka or threads.

``python -m bench.floor [--records N] [--raw-us US]``

Times, on synthetic records like the throughput phase's, each piece of work the pipeline must do
per record whatever the design: decode the value, make its ``logId``, build its three event payloads
(``message-received``, ``processing-started``, ``processing-completed``), publish them on the bus,
and store its row (SQLite, 500-row batches, in a temporary folder). Then it sets the sum against
kafka-python's own CPU per record (``--raw-us``, by default ``raw_cpu_us_per_msg`` from the last
``python -m bench`` run): the pipeline cannot be faster than ``raw / (raw + extra)`` of the raw
rate while one GIL runs both, and issue 5's bar (0.8) leaves ``raw / 4`` for everything extra.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from backend import events, processing
from backend.bus import EventBus
from backend.store import LogRow, Store
from bench.common import BENCH_DIR
from bench.throughput import payload

BATCH = 500
HEADERS = [("data-type", events.SINGLE_MESSAGE.encode())]
MAX_BYTES = 1_048_576


def cpu_us_per_record(work: Callable[[], None], records: int) -> float:
    """CPU time of ``work`` (which handles ``records`` records) per record, in microseconds."""
    started = time.process_time()
    work()
    return (time.process_time() - started) / records * 1e6


def measure(records: int) -> dict[str, float]:
    values = [payload(i) for i in range(records)]
    ids = [events.make_log_id("cluster", "topic", i % 3, i) for i in range(records)]
    now = events.now_ms()

    def decode() -> None:
        for value in values:
            processing.decode_record(value, processing.header_map(HEADERS), MAX_BYTES)

    def log_ids() -> None:
        for i in range(records):
            events.make_log_id("cluster", "topic", i % 3, i)

    def payloads() -> None:
        for i, log_id in enumerate(ids):
            events.message_received(log_id, "topic", i % 3, i, events.SINGLE_MESSAGE, 1, now)
            events.processing_started(log_id, "consumer-1", now)
            events.processing_completed(log_id, "consumer-1", now)

    announcements = [(events.PROCESSING_COMPLETED, {"logId": log_id}) for log_id in ids]
    bus = EventBus(capacity=20_000)

    def publish() -> None:
        for start in range(0, records, BATCH):
            chunk = announcements[start : start + BATCH]
            bus.publish_many(chunk * 3)  # three events per record

    rows = [_row(i, log_id, values[i], now) for i, log_id in enumerate(ids)]
    with tempfile.TemporaryDirectory() as folder:
        store = Store(Path(folder))
        try:

            def save() -> None:
                for start in range(0, records, BATCH):
                    store.save(rows[start : start + BATCH])

            store_us = cpu_us_per_record(save, records)
        finally:
            store.close()
    return {
        "decode_us": cpu_us_per_record(decode, records),
        "log_id_us": cpu_us_per_record(log_ids, records),
        "event_payloads_us": cpu_us_per_record(payloads, records),
        "bus_us": cpu_us_per_record(publish, records),
        "store_us": store_us,
    }


def _row(i: int, log_id: str, value: bytes, now: int) -> LogRow:
    return LogRow(
        log_id=log_id, cluster_id="cluster", topic="topic", partition=i % 3, offset=i, record_key=None,
        data_type=events.SINGLE_MESSAGE, row_count=1, status=events.PROCESSED, consumer_id="consumer-1",
        error=None, produced_ms=now, received_ms=now, started_ms=now, completed_ms=now,
        size_bytes=len(value), payload=None, result=None, payload_json=value.decode(),
    )  # fmt: skip


def last_raw_us() -> float | None:
    latest = BENCH_DIR / "results" / "latest.json"
    try:
        return float(json.loads(latest.read_text())["raw_cpu_us_per_msg"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--raw-us", type=float, default=None, help="kafka-python's CPU per record")
    args = parser.parse_args()
    costs = measure(args.records)
    raw = args.raw_us or last_raw_us()
    print(f"CPU per record, {args.records:,} records:")
    for key, value in costs.items():
        print(f"  {key.removesuffix('_us'):<16} {value:7.2f} us")
    contract = costs["decode_us"] + costs["log_id_us"] + costs["event_payloads_us"]
    print(f"  {'decode+id+events':<16} {contract:7.2f} us  (the contract's work for every record)")
    if raw:
        print(f"kafka-python alone: {raw:.2f} us per record; bar 0.8 leaves {raw / 4:.2f} us for the rest")
        print(f"ratio ceiling with a free store, bus and fan-out: {raw / (raw + contract):.2f}")
        everything = raw + sum(costs.values())
        print(f"ratio ceiling with this store and bus, all on one core: {raw / everything:.2f}")
    print(json.dumps({key: round(value, 2) for key, value in costs.items()} | {"raw_us": raw}))


if __name__ == "__main__":
    main()
