"""Sending records from the dashboard: one JSON message, CSV batches, retries, demo traffic.

The demo traffic generator runs in a background thread of the process (never
calling Streamlit); the Producer page shows its progress from a fragment.
It is bounded: one generator at a time, at most :data:`MAX_RATE` messages per
second for at most :data:`MAX_DURATION_S` seconds.
"""

from __future__ import annotations

import csv
import io
import json
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from backend import processing
from backend.config import is_valid_topic
from backend.events import CSV_BATCH, SINGLE_MESSAGE
from backend.processing import DecodeError
from backend.service import Produced
from backend.store import LogRow

MAX_RATE = 200
MAX_DURATION_S = 600

Produce = Callable[[str, bytes, str, bytes | None], Produced]


def topic_problem(topic: str) -> str | None:
    """Why a topic name cannot be used, or None."""
    if not topic:
        return "Enter a topic name."
    if not is_valid_topic(topic):
        return "A topic name is 1–249 letters, digits, '.', '_' or '-'."
    return None


def json_problem(text: str) -> tuple[Any, str | None]:
    """(value, None) for valid strict JSON, else (None, the reason with its position)."""
    if not text.strip():
        return None, 'Enter a JSON value, e.g. {"orderId": 1, "amount": 9.5}.'
    try:
        return processing.parse_json(text), None
    except DecodeError as exc:
        return None, str(exc)


def parse_csv(data: bytes) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows) of an uploaded CSV, by the consumers' own rules; raises DecodeError."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"not valid UTF-8 (byte {exc.start})") from None
    rows = processing.parse_csv(text)
    return list(rows[0].keys()), rows


def csv_chunks(header: list[str], rows: list[dict[str, str]], max_bytes: int) -> list[bytes]:
    """The rows as CSV documents (each with the header) that fit in ``max_bytes``; one when they fit."""
    whole = to_csv(header, rows)
    if len(whole) <= max_bytes:
        return [whole]
    chunks: list[bytes] = []
    batch: list[dict[str, str]] = []
    size = len(to_csv(header, []))
    for row in rows:
        row_size = len(to_csv(header, [row])) - len(to_csv(header, []))
        if batch and size + row_size > max_bytes:
            chunks.append(to_csv(header, batch))
            batch, size = [], len(to_csv(header, []))
        batch.append(row)
        size += row_size
    if batch:
        chunks.append(to_csv(header, batch))
    return chunks


def to_csv(header: list[str], rows: list[dict[str, Any]]) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=header, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


class PartialSend(Exception):
    """Sending batches stopped at an error; ``sent`` says where the ones before it landed."""

    def __init__(self, sent: list[Produced], error: Exception) -> None:
        super().__init__(str(error))
        self.sent = sent
        self.error = error


def send_batches(
    produce: Produce, topic: str, chunks: list[bytes], progress: Callable[[int, int], None] | None = None
) -> list[Produced]:
    """Send CSV documents as CSV_BATCH records, in order; ``progress(sent, total)`` after each.

    Stops at the first error and raises :class:`PartialSend` with what was sent before it.
    """
    sent: list[Produced] = []
    for chunk in chunks:
        try:
            sent.append(produce(topic, chunk, CSV_BATCH, None))
        except Exception as exc:
            raise PartialSend(sent, exc) from exc
        if progress is not None:
            progress(len(sent), len(chunks))
    return sent


# --- retry -------------------------------------------------------------------------------------


def retry_payload(row: LogRow) -> tuple[bytes, str] | None:
    """What a retry sends for a stored record: its decoded payload encoded again, or None.

    A JSON message is sent as compact JSON, a CSV batch as CSV with the header
    of its first row. The original bytes are not kept, so a record that could
    not be decoded (no stored payload) cannot be sent again.
    """
    if row.payload is None:
        return None
    if row.data_type == CSV_BATCH and isinstance(row.payload, list) and row.payload:
        header: list[str] = []
        for item in row.payload:
            for name in item if isinstance(item, dict) else ():
                if name not in header:
                    header.append(name)
        return to_csv(header, row.payload), CSV_BATCH
    return json.dumps(row.payload, ensure_ascii=False).encode("utf-8"), SINGLE_MESSAGE


# --- demo traffic ------------------------------------------------------------------------------

_REGIONS = ("eu-west", "us-east", "ap-south", "sa-east")
_PRODUCTS = ("keyboard", "monitor", "headset", "webcam", "dock", "cable")


def demo_record(rng: random.Random, number: int, bad: bool) -> tuple[bytes, str]:
    """One realistic order (numeric fields to chart), or one of the malformed kinds consumers reject."""
    if bad:
        kind = rng.randrange(4)
        if kind == 0:
            return b'{"orderId": ' + str(number).encode() + b', "amount": ', SINGLE_MESSAGE  # cut off
        if kind == 1:
            return b"\xff\xfe not text", SINGLE_MESSAGE
        if kind == 2:
            return b"orderId,amount\n1,2,3\n", CSV_BATCH  # ragged row
        return b'{"orderId": NaN}', SINGLE_MESSAGE  # NaN is not JSON
    quantity = rng.randint(1, 5)
    price = round(rng.uniform(5, 250), 2)
    order = {
        "orderId": number,
        "customer": f"c-{rng.randint(1000, 9999)}",
        "product": rng.choice(_PRODUCTS),
        "region": rng.choice(_REGIONS),
        "quantity": quantity,
        "price": price,
        "amount": round(price * quantity, 2),
    }
    return json.dumps(order).encode(), SINGLE_MESSAGE


@dataclass
class TrafficRun:
    """One run of the demo generator; read by the page, written by its thread."""

    topic: str
    rate: int
    duration_s: int
    bad_share: float
    started: float = field(default_factory=time.monotonic)
    sent: int = 0
    bad: int = 0
    errors: int = 0
    last_error: str | None = None
    finished: float | None = None
    stopped: bool = False

    @property
    def planned(self) -> int:
        return self.rate * self.duration_s

    @property
    def running(self) -> bool:
        return self.finished is None


class TrafficGenerator:
    """At most one demo run per process, in a daemon thread, paced to the chosen rate."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._run: TrafficRun | None = None
        self._stop = threading.Event()
        self.history: deque[TrafficRun] = deque(maxlen=10)

    @property
    def current(self) -> TrafficRun | None:
        return self._run

    def start(self, produce: Produce, topic: str, rate: int, duration_s: int, bad_share: float) -> TrafficRun:
        rate = max(1, min(int(rate), MAX_RATE))
        duration_s = max(1, min(int(duration_s), MAX_DURATION_S))
        bad_share = max(0.0, min(float(bad_share), 1.0))
        with self._lock:
            if self._run is not None and self._run.running:
                raise RuntimeError("demo traffic is already running; stop it first")
            run = TrafficRun(topic, rate, duration_s, bad_share)
            self._run = run
            self._stop = threading.Event()
            thread = threading.Thread(
                target=self._loop, args=(run, produce, self._stop), name="demo-traffic", daemon=True
            )
            thread.start()
        return run

    def stop(self) -> None:
        run = self._run
        if run is not None and run.running:
            run.stopped = True
            self._stop.set()

    def _loop(self, run: TrafficRun, produce: Produce, stop: threading.Event) -> None:
        rng = random.Random()
        interval = 1.0 / run.rate
        try:
            for number in range(run.planned):
                due = run.started + number * interval
                delay = due - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    break
                if stop.is_set():
                    break
                bad = rng.random() < run.bad_share
                value, data_type = demo_record(rng, number + 1, bad)
                try:
                    produce(run.topic, value, data_type, None)
                except Exception as exc:  # count and go on; the page shows the last error
                    run.errors += 1
                    run.last_error = f"{type(exc).__name__}: {exc}"[:300]
                    if run.errors >= 20 and run.sent == 0:
                        break
                    continue
                run.sent += 1
                run.bad += bad
        finally:
            run.finished = time.monotonic()
            self.history.append(run)


traffic = TrafficGenerator()
