"""``python -m backend.worker``: consume the source topics and hand the work to the views via Kafka.

A worker runs a :class:`backend.consumers.ConsumerPool` whose consumers turn each batch into
rows and hand them to ``EVENTS_TOPIC`` with the batch's offsets (:mod:`backend.handoff`:
transactional on Apache Kafka, write-then-commit on the embedded broker). It has no store, no
bus and no HTTP: the views read the events topic. Through one plain producer it also writes
what the views show about it: a ``worker`` report (``up`` at start, ``down`` on a clean stop)
and a ``consumer`` report whenever a consumer's state changes. It reads the control topic from
its end and applies the ``start``/``stop`` commands meant for it.

Environment, besides the settings of :class:`backend.config.Settings`:

- ``WORKER_ID`` (required): names this worker; with a consumer's slot it makes the
  transactional id, so a restarted worker must keep it (it then fences its dead predecessor).
- ``WORKER_CONSUMERS``: the consumer ids to start, comma separated (unset: consumer-1 ..
  consumer-CONSUMER_COUNT; set and empty: none, the worker waits for ``start`` commands).
- ``KAFKA_CLUSTER_ID``: part of every ``logId``; asked of the cluster when unset.
- ``WORKER_PACE_VIEW``: a view's instance id (its ``DATA_DIR/instance-id``); the consumers then
  poll only while that view keeps up (:mod:`backend.view_pace`). ``BACKEND_ROLE=all`` sets it for
  the workers it starts; unset, a worker runs at its own speed. Set, the worker also runs at a
  lower CPU priority (:data:`NICENESS_BESIDE_THE_VIEW`): it shares a machine with that view.

SIGTERM/SIGINT stop it cleanly (each consumer finishes its batch, reports INACTIVE), then it
writes ``down`` and exits 0. A bad setting ends it with one line on stderr and exit code 2.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from backend import event_log, processing
from backend.config import ConfigError, Settings
from backend.consumers import ConsumerPool, ConsumerSnapshot
from backend.entrypoint import run_until_signalled
from backend.event_log import Command, ConsumerReport, WorkerReport
from backend.event_topics import ensure_event_topics
from backend.handoff import Handoff, PlainHandoff, TransactionalHandoff, producer_options
from backend.pipeline import Pipeline
from backend.view_pace import ViewPace

log = logging.getLogger(__name__)

#: A worker id or consumer id: it becomes part of transactional ids and client ids.
NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
CONTROL_POLL_MS = 500
#: How much nicer than its view a worker started beside it runs (:func:`yield_the_cpu`; Linux
#: then weighs the view about ten times a worker when both want a core). A burst is throughput work
#: that can wait in the source topic; the view, its gateway and the browser that shows them are
#: what a person waits for (bench/README.md, "Workers yield the CPU to their view").
NICENESS_BESIDE_THE_VIEW = 10


@dataclass(frozen=True)
class WorkerIdentity:
    """Who this worker is: its id, the consumers it starts with, the cluster's id."""

    worker_id: str
    consumer_ids: tuple[str, ...]
    cluster_id: str | None  # None: ask the cluster
    pace_view: str | None = None  # the view instance to keep pace with (WORKER_PACE_VIEW)

    @classmethod
    def from_env(cls, env: Mapping[str, str], settings: Settings) -> WorkerIdentity:
        """Read and check WORKER_ID, WORKER_CONSUMERS, KAFKA_CLUSTER_ID; ConfigError when bad."""
        worker_id = env.get("WORKER_ID", "").strip()
        if not worker_id:
            raise ConfigError("WORKER_ID is required (a stable name, e.g. host-w1; letters, digits, . _ -)")
        _check_name("WORKER_ID", worker_id)
        if "WORKER_CONSUMERS" in env:
            consumers = tuple(part.strip() for part in env["WORKER_CONSUMERS"].split(",") if part.strip())
        else:
            consumers = tuple(f"consumer-{n}" for n in range(1, settings.consumer_count + 1))
        for consumer_id in consumers:
            _check_name("WORKER_CONSUMERS", consumer_id)
        if len(set(consumers)) != len(consumers):
            raise ConfigError(f"WORKER_CONSUMERS={','.join(consumers)!r} names a consumer twice")
        if len(consumers) > settings.max_consumers:
            raise ConfigError(f"WORKER_CONSUMERS: {len(consumers)} consumers, more than MAX_CONSUMERS")
        cluster_id = env.get("KAFKA_CLUSTER_ID", "").strip() or None
        if not settings.bootstrap_servers:
            raise ConfigError("KAFKA_BOOTSTRAP_SERVERS is required for a worker (it never starts a broker)")
        pace_view = env.get("WORKER_PACE_VIEW", "").strip() or None
        if pace_view is not None:
            _check_name("WORKER_PACE_VIEW", pace_view)
        return cls(worker_id, consumers, cluster_id, pace_view)


def _check_name(variable: str, value: str) -> None:
    if not NAME.fullmatch(value):
        raise ConfigError(f"{variable}: {value[:40]!r} is not a name (1-100 of letters, digits, . _ -)")


class _NoStore:
    """A worker keeps no outcomes: its pipeline only builds rows (``Pipeline.rows_for``)."""

    def _refuse(self, *_: object) -> object:
        raise RuntimeError("a worker has no store; it hands rows to the events topic")

    known = mark_in_flight = forget_in_flight = save_outcomes = _refuse


class Worker:
    """A pool of consumers handing over to the events topic, its reports and its control reader."""

    def __init__(self, settings: Settings, identity: WorkerIdentity) -> None:
        self.settings = settings
        self.identity = identity
        self.worker_id = identity.worker_id
        self.bootstrap = settings.bootstrap_servers or ""
        self.pool: ConsumerPool | None = None
        self._reports: KafkaProducer | None = None
        self._control: ControlReader | None = None
        self._pace: ViewPace | None = None

    def start(self) -> Worker:
        """Topics, reports producer, control position, ``up``, then the consumers."""
        processor = processing.load_processor(self.settings.processor)
        deserializer = processing.load_deserializer(self.settings.deserializer)
        cluster_id = self.identity.cluster_id or _discover_cluster_id(self.settings)
        ensure_event_topics(self.bootstrap, self.settings)
        self._reports = KafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id=f"{self.worker_id}-reports",
            **producer_options(self.settings),
        )
        pipeline = Pipeline(
            cluster_id=cluster_id,
            sink=_NoStore(),  # type: ignore[arg-type]
            publish=lambda _items: None,
            processor=processor,
            deserializer=deserializer,
            limits=processing.Limits.from_settings(self.settings),
            counts_changed=lambda: None,
        )
        if self.identity.pace_view is not None:
            self._pace = ViewPace(self.bootstrap, self.settings, self.identity.pace_view)
            self._pace.start()
        self.pool = ConsumerPool(
            self.settings,
            self.bootstrap,
            pipeline,
            lambda *_: None,
            lambda: None,
            handoff_factory=self._handoff,
            report=self._report_consumer,
            pace=self._pace,
        )
        self._control = ControlReader(self.bootstrap, self.settings, self._apply)
        self._control.seek_to_end()  # before "up": a command sent after "up" is seen
        self._write_worker("up", self.identity.consumer_ids)
        self.pool.start(0)
        for consumer_id in self.identity.consumer_ids:
            self.pool.spawn(consumer_id)
        self._control.start()
        log.info(
            "Worker %s up: consumers %s, cluster %s",
            self.worker_id,
            list(self.identity.consumer_ids),
            cluster_id,
        )
        return self

    def stop(self) -> None:
        """Consumers finish their batches and report INACTIVE; then ``down``; then the producer."""
        if self._control is not None:
            self._control.stop()
        running: list[str] = []
        if self.pool is not None:
            running = [worker.consumer_id for worker in self.pool.running()]
            self.pool.stop_all()
        if self._pace is not None:
            self._pace.stop()
        if self._reports is not None:
            self._write_worker("down", running)
            self._reports.flush(timeout=10)
            self._reports.close(timeout=5)
            self._reports = None
        log.info("Worker %s down", self.worker_id)

    # --- handoffs and reports -----------------------------------------------------------------

    def _handoff(self, consumer_id: str, slot: int) -> Handoff:
        if self.settings.embedded:
            return PlainHandoff(self.bootstrap, self.settings, self.worker_id, consumer_id)
        transactional_id = f"{self.settings.events_topic}.{self.worker_id}.s{slot}"
        return TransactionalHandoff(
            self.bootstrap, self.settings, transactional_id, self.worker_id, consumer_id
        )

    def _report_consumer(self, snapshot: ConsumerSnapshot) -> None:
        self._send(event_log.CONSUMER, event_log.encode_consumer(consumer_report(snapshot, self.worker_id)))

    def _write_worker(self, status: str, consumers: Iterable[str]) -> None:
        report = WorkerReport(self.worker_id, status, socket.gethostname(), os.getpid(), list(consumers))
        self._send(event_log.WORKER, event_log.encode_worker(report))

    def _send(self, kind: str, value: bytes) -> None:
        producer = self._reports
        if producer is not None:
            producer.send(
                self.settings.events_topic, value=value, headers=event_log.headers_for(kind), partition=0
            )

    # --- control commands ---------------------------------------------------------------------

    def _apply(self, command: Command) -> None:
        """``start`` addressed to this worker, ``stop`` of a consumer it runs; others are not ours."""
        pool = self.pool
        if pool is None:
            return
        running = {worker.consumer_id for worker in pool.running()}
        if command.op == event_log.START and command.worker_id == self.worker_id:
            self._start_consumer(pool, command, running)
        elif command.op == event_log.STOP and command.consumer_id in running:
            log.info("Stopping %s (request %s)", command.consumer_id, command.request_id or "-")
            pool.stop_consumer(command.consumer_id)

    def _start_consumer(self, pool: ConsumerPool, command: Command, running: set[str]) -> None:
        consumer_id = command.consumer_id
        if not NAME.fullmatch(consumer_id):
            log.warning("Ignoring start of %r: not a consumer name", consumer_id[:40])
            return
        if consumer_id in running:  # answer anyway: the asking view waits for a report
            worker = next(w for w in pool.running() if w.consumer_id == consumer_id)
            self._report_consumer(worker.view())
            return
        if len(running) >= self.settings.max_consumers:
            log.warning("Not starting %s: this worker runs MAX_CONSUMERS consumers", consumer_id)
            return
        log.info("Starting %s (request %s)", consumer_id, command.request_id or "-")
        pool.spawn(consumer_id)


def consumer_report(snapshot: ConsumerSnapshot, worker_id: str) -> ConsumerReport:
    """A consumer's snapshot as the events topic carries it."""
    partitions = {name: [state.position, state.highwater] for name, state in snapshot.partitions.items()}
    return ConsumerReport(
        consumer_id=snapshot.consumer_id,
        worker_id=worker_id,
        status=snapshot.status,
        partitions=partitions,
        processed=snapshot.processed,
        failed=snapshot.failed,
        started_at=snapshot.started_at,
        last_error=snapshot.last_error,
        reason=snapshot.reason,
        polled=snapshot.polled,
        reporter=worker_id,
    )


class ControlReader(threading.Thread):
    """Reads the control topic from its end (no group: every worker reads every command)."""

    def __init__(self, bootstrap: str, settings: Settings, apply: Callable[[Command], None]) -> None:
        super().__init__(name="control-reader", daemon=True)
        self.apply = apply
        self.partition = TopicPartition(settings.control_topic, 0)
        self._stopping = threading.Event()
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            # Commands are rare: on the embedded broker, which holds a fetch for its full wait, a
            # command may wait 100 ms rather than the reader asking 50 times a second.
            fetch_max_wait_ms=max(settings.fetch_max_wait_ms, 100),
            max_partition_fetch_bytes=1_048_576,
            **settings.kafka_client_options(),
        )

    def seek_to_end(self) -> None:
        """Assign the partition and resolve its end now, so no later command is missed."""
        self._consumer.assign([self.partition])
        self._consumer.seek_to_end(self.partition)
        self._consumer.position(self.partition)

    def stop(self) -> None:
        self._stopping.set()
        if self.is_alive():
            self.join(5)
        else:
            self._consumer.close()

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    batch = self._consumer.poll(timeout_ms=CONTROL_POLL_MS)
                except Exception as exc:  # the broker is away: keep trying
                    log.warning("Control topic: poll failed (%s)", exc)
                    self._stopping.wait(1.0)
                    continue
                for records in batch.values():
                    for record in records:
                        self._handle(record)
        finally:
            self._consumer.close()

    def _handle(self, record: object) -> None:
        offset = getattr(record, "offset", None)
        try:
            command = event_log.decode_command(getattr(record, "value", None))
        except event_log.EventLogError as exc:
            log.warning("Control topic offset %s: skipped (%s)", offset, exc)
            return
        try:
            self.apply(command)
        except Exception:
            log.exception("Control topic offset %s: applying %s failed", offset, command.op)


def _discover_cluster_id(settings: Settings) -> str:
    from backend.service import discover_cluster_id  # the service's imports cost 0.5 s: only when needed

    return discover_cluster_id(settings)


def main() -> int:
    return run_until_signalled(start_worker)


def yield_the_cpu(niceness: int) -> None:
    """Run ``niceness`` nicer: this thread and those it starts, and the session's autogroup if this
    process leads its session.

    Why the autogroup: with ``CONFIG_SCHED_AUTOGROUP`` (most distributions' kernels, this machine's
    too) Linux shares the CPU between sessions first and weighs nice values only within one. A
    worker the supervisor starts has a session of its own (:func:`backend.broker.spawn`), so
    ``os.nice`` alone changed nothing against its view: two burners on one core, each in a session
    of its own, one at nice 10, each got 2.05 CPU-s of 4 s; with that one's autogroup at 10, 0.45
    against 3.67.
    """
    os.nice(niceness)
    if os.getsid(0) != os.getpid():
        return  # a session we did not start (a shell's): its group is not ours to change
    for _ in range(5):
        try:
            Path("/proc/self/autogroup").write_text(str(niceness))
            return
        except BlockingIOError:  # EAGAIN: unprivileged, one change per 0.1 s in the whole system
            time.sleep(0.1)
        except OSError:  # a kernel without autogroups
            return


def start_worker(settings: Settings) -> tuple[Worker, str]:
    identity = WorkerIdentity.from_env(os.environ, settings)
    if identity.pace_view is not None:
        # Before any consumer thread starts: a thread takes its niceness from the one that starts it.
        yield_the_cpu(NICENESS_BESIDE_THE_VIEW)
    worker = Worker(settings, identity).start()
    # As the view does (backend.service.keep_startup_objects_out_of_gc): a batch of 2,000 records
    # allocates enough containers for many collections, and every full one would walk the ~56,000
    # objects of the imported libraries again; frozen, they are never walked.
    gc.collect()
    gc.freeze()
    return worker, f"Worker {worker.worker_id} ready: broker {worker.bootstrap}"


if __name__ == "__main__":
    sys.exit(main())
