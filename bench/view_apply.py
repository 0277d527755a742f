"""A view's apply rate alone: events-topic records into the store and the bus, no Kafka, no clients.

``python -m bench.view_apply [--warm N] [--records N] [--rows-per-record N]``

A view applies every row every worker wrote, in one thread: it is the pipeline's ceiling once the
workers (several processes) outpace it, and in a burst its backlog is what the screen shows late.
This feeds :class:`backend.view.EventsApplier` the records a worker writes (``encode_rows`` of
realistic rows), into a store that already holds ``--warm`` rows (before logIds were positional
the log_id index took random inserts, and the cost per row grew with the store), twice: one record
per call, as a view that is caught up gets them, and ``--poll`` records per call, as one poll of a
view that catches up hands them over (one SQLite transaction for up to ``GROUP_MAX_ROWS`` rows).
Prints rows/s and the process's CPU per row (the store's checkpoint thread included).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from backend import event_log, events
from backend.bus import EventBus
from backend.cluster import ConsumerDirectory
from backend.store import LogRow, Store
from backend.view import EventsApplier

Record = tuple[int, list[tuple[str, bytes]], bytes]


def row(number: int) -> LogRow:
    """A processed JSON record of ~100 bytes, as a worker stores it."""
    payload = {"orderId": number, "customer": f"c{number % 97}", "amount": number * 1.5, "qty": 2}
    return LogRow(
        log_id=events.make_log_id("bench", "orders", number % 3, number), cluster_id="bench", topic="orders",
        partition=number % 3, offset=number, record_key=f"k{number}", data_type=events.SINGLE_MESSAGE,
        row_count=1, status=events.PROCESSED, consumer_id="consumer-1", error=None, produced_ms=1,
        received_ms=1_796_000_000_000 + number, started_ms=1_796_000_000_000 + number,
        completed_ms=1_796_000_000_001 + number, size_bytes=100, payload=payload,
    )  # fmt: skip


def records(first_row: int, rows: int, rows_per_record: int, first_offset: int) -> list[Record]:
    headers = event_log.headers_for(event_log.ROWS)
    values = []
    for start in range(first_row, first_row + rows, rows_per_record):
        batch = [row(n) for n in range(start, start + rows_per_record)]
        values.extend(event_log.encode_rows("bench-w1", "consumer-1", batch))
    return [(first_offset + i, headers, value) for i, value in enumerate(values)]


def measure(warm: int, rows: int, rows_per_record: int, poll: int) -> dict[str, float]:
    """Apply ``rows`` after ``warm`` in calls of ``poll`` records; rows/s and CPU µs per row."""
    with tempfile.TemporaryDirectory() as folder:
        store = Store(Path(folder))
        try:
            applier = EventsApplier(store, EventBus(), ConsumerDirectory())
            warm_records = records(0, warm, 1_000, 0)
            for start in range(0, len(warm_records), 20):
                applier.apply_many(warm_records[start : start + 20])
            timed = records(warm, rows, rows_per_record, len(warm_records))
            started, cpu = time.perf_counter(), time.process_time()
            for start in range(0, len(timed), poll):
                applier.apply_many(timed[start : start + poll])
            seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
            assert store.counts().total == warm + rows
        finally:
            store.close()
    return {"rows_per_s": round(rows / seconds), "cpu_us_per_row": round(cpu_seconds / rows * 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm", type=int, default=200_000, help="rows in the store before the clock starts")
    parser.add_argument("--records", type=int, default=50_000, help="rows applied while measured")
    parser.add_argument("--rows-per-record", type=int, default=250, help="rows per events-topic record")
    parser.add_argument("--poll", type=int, default=20, help="records per call when catching up")
    args = parser.parse_args()
    one = measure(args.warm, args.records, args.rows_per_record, 1)
    grouped = measure(args.warm, args.records, args.rows_per_record, args.poll)
    result = {
        "view_apply_warm_rows": args.warm,
        "view_apply_rows_per_record": args.rows_per_record,
        "view_apply_one_record_rows_per_s": one["rows_per_s"],
        "view_apply_one_record_cpu_us_per_row": one["cpu_us_per_row"],
        "view_apply_grouped_rows_per_s": grouped["rows_per_s"],
        "view_apply_grouped_cpu_us_per_row": grouped["cpu_us_per_row"],
    }
    print(f"one record per transaction: {one['rows_per_s']:,} rows/s, {one['cpu_us_per_row']} µs CPU per row")
    print(
        f"{args.poll} records per call:       {grouped['rows_per_s']:,} rows/s, "
        f"{grouped['cpu_us_per_row']} µs CPU per row"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
