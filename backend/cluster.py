"""The consumers of the whole cluster, as a view knows them: a directory built from the events topic.

Workers report their consumers (``consumer`` records) and themselves (``worker`` records) in the
events topic; views add what only they can see: a consumer that the broker no longer lists as a
member of the group, or whose worker process died. Every view reads the same records in the same
order, so every view's directory goes through the same states and announces the same
``consumer-status-changed`` events with the same ``seq``.

A consumer is ``ACTIVE`` while its worker says it runs and no view has seen it leave. A worker's
report with a new ``started_at`` is a new life of that consumer and clears what views said.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import orjson

from backend import events
from backend.consumers import ConsumerSnapshot, PartitionState
from backend.event_log import ConsumerReport, WorkerReport

#: ``membership`` when a view saw the consumer leave the group (or its process die).
OUT = "out"


@dataclass
class ConsumerEntry:
    """What the directory knows of one consumer."""

    consumer_id: str
    worker_id: str
    reported: str = events.ACTIVE  # the status its worker last reported
    membership: str | None = None  # OUT: a view saw it leave
    reason: str | None = None
    partitions: dict[str, list[int | None]] = field(default_factory=dict)
    processed: int = 0
    failed: int = 0
    started_at: str | None = None
    last_error: str | None = None
    polled: bool = False

    @property
    def status(self) -> str:
        return events.ACTIVE if self.reported == events.ACTIVE and self.membership != OUT else events.INACTIVE


@dataclass
class WorkerEntry:
    worker_id: str
    status: str
    host: str = ""
    pid: int = 0
    consumers: list[str] = field(default_factory=list)


class ConsumerDirectory:
    """Consumers and workers by id; ``apply_*`` answer the status changes to announce."""

    def __init__(self) -> None:
        self._consumers: dict[str, ConsumerEntry] = {}
        self._workers: dict[str, WorkerEntry] = {}
        # Reentrant, and notified on every change: wait_until's condition may read the directory.
        self._lock = threading.Condition(threading.RLock())

    # --- applying the events topic ------------------------------------------------------------

    def apply_consumer(self, report: ConsumerReport) -> str | None:
        """Take one report; the consumer's new status when it changed (announce it), else None."""
        with self._lock:
            entry = self._consumers.get(report.consumer_id)
            before = entry.status if entry else None
            if report.reporter and report.reporter != report.worker_id:
                entry = self._viewer_says(entry, report)
            else:
                entry = self._worker_says(entry, report)
            self._consumers[report.consumer_id] = entry
            self._lock.notify_all()
            return entry.status if entry.status != before else None

    def wait_until(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Block until ``condition()`` (checked after each change) holds; False after ``timeout`` s."""
        with self._lock:
            return self._lock.wait_for(condition, timeout)

    @staticmethod
    def _worker_says(entry: ConsumerEntry | None, report: ConsumerReport) -> ConsumerEntry:
        if entry is None or entry.started_at != report.started_at or entry.worker_id != report.worker_id:
            entry = ConsumerEntry(report.consumer_id, report.worker_id)  # a new life
        entry.reported = report.status
        entry.partitions = dict(report.partitions) if report.status == events.ACTIVE else {}
        entry.processed, entry.failed = report.processed, report.failed
        entry.started_at, entry.last_error = report.started_at, report.last_error
        entry.polled = report.polled
        if report.status != events.ACTIVE:
            entry.reason = report.reason or "stopped"
        return entry

    @staticmethod
    def _viewer_says(entry: ConsumerEntry | None, report: ConsumerReport) -> ConsumerEntry:
        if entry is None:
            entry = ConsumerEntry(report.consumer_id, report.worker_id, started_at=report.started_at)
        if report.status == events.ACTIVE:
            entry.membership, entry.reason = None, None
        else:
            entry.membership, entry.reason = OUT, report.reason
            entry.partitions = {}
        return entry

    def apply_worker(self, report: WorkerReport) -> list[tuple[str, str]]:
        """A worker started or stopped; (consumer, new status) for every consumer that changed."""
        with self._lock:
            self._workers[report.worker_id] = WorkerEntry(**asdict(report))
            self._lock.notify_all()
            if report.status == "up":
                return []
            changed = []
            for entry in self._consumers.values():
                if entry.worker_id == report.worker_id and entry.status == events.ACTIVE:
                    entry.reported, entry.reason, entry.partitions = events.INACTIVE, "its worker stopped", {}
                    changed.append((entry.consumer_id, events.INACTIVE))
            return changed

    # --- persistence (a view restarts where it was, in the same state as every other view) ----

    def dump(self) -> str:
        with self._lock:
            return orjson.dumps(
                {
                    "consumers": [asdict(e) for e in self._consumers.values()],
                    "workers": [asdict(w) for w in self._workers.values()],
                }
            ).decode()

    def load(self, text: str | None) -> None:
        if not text:
            return
        data = orjson.loads(text)
        with self._lock:
            self._consumers = {c["consumer_id"]: ConsumerEntry(**c) for c in data.get("consumers", [])}
            self._workers = {w["worker_id"]: WorkerEntry(**w) for w in data.get("workers", [])}

    # --- reading ------------------------------------------------------------------------------

    def entries(self) -> list[ConsumerEntry]:
        with self._lock:
            entries = [ConsumerEntry(**asdict(e)) for e in self._consumers.values()]
        return sorted(entries, key=lambda e: consumer_sort_key(e.consumer_id))

    def entry(self, consumer_id: str) -> ConsumerEntry | None:
        with self._lock:
            entry = self._consumers.get(consumer_id)
            return None if entry is None else ConsumerEntry(**asdict(entry))

    def workers(self) -> list[WorkerEntry]:
        with self._lock:
            return [WorkerEntry(**asdict(w)) for w in self._workers.values()]

    def active(self) -> list[ConsumerEntry]:
        return [e for e in self.entries() if e.status == events.ACTIVE]

    def active_count(self) -> int:
        with self._lock:
            return sum(1 for e in self._consumers.values() if e.status == events.ACTIVE)

    def all_polled(self) -> bool:
        with self._lock:
            return all(e.polled for e in self._consumers.values() if e.status == events.ACTIVE)

    def snapshots(self) -> list[ConsumerSnapshot]:
        """Every consumer as the REST API shows it (lag from the positions its worker reported)."""
        return [to_snapshot(entry) for entry in self.entries()]


def to_snapshot(entry: ConsumerEntry) -> ConsumerSnapshot:
    partitions = {
        name: PartitionState(position, end) for name, (position, end) in sorted(entry.partitions.items())
    }
    error = entry.last_error
    if entry.status != events.ACTIVE and entry.reason:
        error = entry.reason if not error else f"{entry.reason}; last error: {error}"
    return ConsumerSnapshot(
        entry.consumer_id, entry.status, partitions, entry.processed, entry.failed, entry.started_at, error
    )


def consumer_sort_key(consumer_id: str) -> tuple[int, str]:
    """consumer-2 before consumer-10; other names after, by name."""
    head, _, number = consumer_id.removeprefix("consumer-").partition("-")
    return (int(head), number) if head.isdigit() else (1 << 30, consumer_id)


def free_consumer_ids(
    directory: ConsumerDirectory, count: int, reusable_workers: set[str], suffix: str = ""
) -> list[str]:
    """``count`` names ``consumer-N<suffix>`` not taken by an ACTIVE consumer (smallest N first).

    A consumer of ``reusable_workers`` (this instance's own workers, restarting) does not take its name.
    """
    taken = {e.consumer_id for e in directory.active() if e.worker_id not in reusable_workers}
    names: list[str] = []
    number = 1
    while len(names) < count:
        name = f"consumer-{number}{suffix}"
        if name not in taken:
            names.append(name)
        number += 1
    return names
