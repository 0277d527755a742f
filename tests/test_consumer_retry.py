"""A consumer whose batches cannot be stored backs off, keeps its place and logs each error once."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from backend.config import Settings
from backend.consumers import STORE_RETRY_MAX_S, ConsumerWorker
from backend.pipeline import Tally

TP = TopicPartition("orders", 0)


class FailingPipeline:
    """handle() raises the given errors in turn, then succeeds."""

    def __init__(self, errors: list[Exception]) -> None:
        self.errors = errors
        self.calls = 0

    def handle(self, consumer_id: str, records: list[Any]) -> Tally:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return Tally(processed=len(records))


class FakeConsumer:
    def __init__(self) -> None:
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.commits = 0

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    def commit_async(self, offsets: Any, callback: Any) -> None:
        self.commits += 1


class RecordedWaits:
    """Stands for the worker's stop event: records each wait instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def wait(self, timeout: float) -> bool:
        self.waits.append(timeout)
        return False

    def is_set(self) -> bool:
        return False


def test_store_failures_back_off_rewind_and_log_each_error_once(caplog: pytest.LogCaptureFixture) -> None:
    disk_full = [OSError("database or disk is full") for _ in range(6)]
    pipeline = FailingPipeline([*disk_full, OSError("disk I/O error")])
    worker = ConsumerWorker("consumer-1", Settings(), "127.0.0.1:9", pipeline, assign_mode=True)  # type: ignore[arg-type]
    worker._stopping = RecordedWaits()  # type: ignore[assignment]
    consumer = FakeConsumer()
    batch = {TP: [ConsumerRecord("orders", 0, -1, 7, 0, 0, None, b"1", [], None, -1, 1, 0)]}
    with caplog.at_level(logging.INFO, logger="backend.consumers"):
        for _ in range(8):
            worker._handle_or_rewind(consumer, batch)  # type: ignore[arg-type]
    assert worker._stopping.waits == [
        0.5,
        1.0,
        2.0,
        4.0,
        STORE_RETRY_MAX_S,
        STORE_RETRY_MAX_S,
        STORE_RETRY_MAX_S,
    ]
    assert consumer.seeks == [(TP, 7)] * 7 and consumer.commits == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        "consumer-1: batch not stored, will retry: OSError: database or disk is full",
        "consumer-1: batch not stored, will retry: OSError: disk I/O error",
    ]
    assert any("storing works again" in r.getMessage() for r in caplog.records)
    assert worker.view().processed == 1 and worker._retry_s == 0.0
    pipeline.errors.append(OSError("database or disk is full"))
    worker._handle_or_rewind(consumer, batch)  # type: ignore[arg-type]
    assert worker._stopping.waits[-1] == 0.5  # a new outage starts the back-off afresh
