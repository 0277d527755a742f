"""Helpers shared by the integration tests: a running backend, an event recorder, waiting."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from backend import events
from backend.config import Settings
from backend.events import Event
from backend.service import Backend


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll a cheap condition until it holds; fail with ``what`` when the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def create_topic(bootstrap: str, topic: str, partitions: int = 3) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        admin.close()


def foreign_producer(bootstrap: str) -> KafkaProducer:
    """A plain kafka-python producer, as any other application would use: no headers."""
    return KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)


def backend_settings(tmp_path: Path, bootstrap: str | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "data_dir": tmp_path / "data",
        "group_id": unique("group"),
        "gateway_port": free_port(),
        "producer_port": free_port(),
        "consumer_count": 3,
    }
    values.update(overrides)
    return Settings(**values)


def start_backend(settings: Settings, serve_http: bool = False) -> Backend:
    return Backend(settings).start(serve_http=serve_http)


class EventRecorder:
    """Subscribes to a bus and keeps every event, with waits on what arrived."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = threading.Condition()

    def __call__(self, event: Event) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def wait(self, predicate: Callable[[list[Event]], bool], timeout: float, what: str) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self.events), timeout):
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    def log_ids_of(self, topic: str) -> set[str]:
        return {
            e.data["logId"]
            for e in list(self.events)
            if e.name == events.MESSAGE_RECEIVED and e.data["topic"] == topic
        }

    def outcomes_for(self, log_ids: set[str]) -> list[Event]:
        terminal = (events.PROCESSING_COMPLETED, events.PROCESSING_FAILED)
        return [e for e in list(self.events) if e.name in terminal and e.data["logId"] in log_ids]

    def by_log_id(self) -> dict[str, list[str]]:
        sequence: dict[str, list[str]] = defaultdict(list)
        for event in list(self.events):
            if "logId" in event.data:
                sequence[event.data["logId"]].append(event.name)
        return sequence
