"""The consumer pool: N kafka-python consumers in one group, each in its own thread.

This module is about consumers: their threads, the Kafka client, partition assignment and
positions. A consumer's loop is: poll a batch, hand it to the record pipeline
(:class:`backend.pipeline.Pipeline`, which processes, stores and announces it), then commit the
offsets. Because the store is keyed by record and offsets are committed only after the pipeline
stored the batch, a crash or a rebalance at any moment leads to redelivery at worst, and
redelivered records are skipped.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from kafka.structs import OffsetAndMetadata

from backend import events, kafka_compat, wire  # noqa: F401 - kafka_compat fixes group rejoins on import
from backend.config import Settings
from backend.handoff import Handoff, HandoffFenced
from backend.log_end import LogEndOffsets, local_position, partition_name
from backend.pipeline import Pipeline, tally
from backend.view_pace import ViewPace

try:
    from kafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
except ImportError:  # an older kafka-python: round robin alone still spreads every topic
    StickyPartitionAssignor = None

log = logging.getLogger(__name__)

#: ``handoff_factory(consumer_id, slot)``: the handoff of a worker's consumer (see backend.handoff).
HandoffFactory = Callable[[str, int], Handoff]
#: Called with a consumer's snapshot when what it reports changed (see ConsumerWorker._report).
Report = Callable[["ConsumerSnapshot"], None]
#: While only positions and counters move, a consumer reports at most this often.
REPORT_INTERVAL_S = 1.0

POLL_TIMEOUT_MS = 100
MAX_POLL_RECORDS = 500
#: A worker's batch (one Kafka transaction each) may be bigger: a transaction costs 5-6 broker round
#: trips (~20 ms) whatever its size, so under a backlog a worker that waits on transactions carries
#: more records per second with bigger batches (``python -m bench.workers``: with orjson decoding,
#: measured together, ~1.5x the records/s and less CPU per record; bench/README.md). When records
#: trickle in, a poll returns what is there, so latency is the same.
WORKER_POLL_RECORDS = 2_000
#: A worker that keeps pace with its view while it is watched (backend.view_pace) polls smaller
#: batches: the view, not the transaction, bounds its rate then, and a row reaches the screen after
#: its batch's transaction and its view's apply, both shorter for a smaller batch. 200,000-record
#: burst with the Overview open: event to screen p99 1.1-1.5 s with 2,000, 1.0-1.1 s with 1,000,
#: 0.6-0.8 s with 500, the burst processed no slower (bench/README.md, "Workers keep pace").
PACED_POLL_RECORDS = 500
#: A batch that could not be stored is read again after this wait, doubled per failure up to the
#: maximum: a store that cannot write (disk full) costs no CPU, and 5 s keeps the poll loop well
#: inside ``max_poll_interval_ms`` (10 s), so the consumer keeps its partitions meanwhile.
STORE_RETRY_FIRST_S = 0.5
STORE_RETRY_MAX_S = 5.0


def consumer_options(settings: Settings) -> dict[str, Any]:
    """kafka-python consumer settings tuned for latency and fast group changes.

    Tansu (the embedded broker) holds every fetch for the full ``fetch_max_wait_ms``
    (500 by default) even when records arrive, which alone delays a record by
    ~250 ms on average, so it gets 20 ms. Apache Kafka answers a waiting fetch as
    soon as a record arrives, so there the wait only sets how often an idle consumer
    asks: 500 ms (``Settings.fetch_max_wait_ms``; three idle consumers at 20 ms cost
    0.2 cores and held the GIL against the gateway, at 100 ms two idle workers still
    cost 0.15 cores and the broker 0.21). A short
    ``max_poll_interval_ms`` bounds how long a rebalance can take (it is the
    rebalance timeout), and a short metadata age finds new topics within 5 s.
    ``isolation_level`` (KAFKA_ISOLATION_LEVEL, read_committed by default) keeps the records of
    aborted transactions from ever being processed, stored or counted.
    """
    return {
        "group_id": settings.group_id,
        "isolation_level": settings.isolation_level,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "fetch_max_wait_ms": settings.fetch_max_wait_ms,
        "fetch_min_bytes": 1,
        "max_poll_records": MAX_POLL_RECORDS,
        "max_poll_interval_ms": 10_000,
        "session_timeout_ms": 6_000,
        "heartbeat_interval_ms": 1_000,
        "metadata_max_age_ms": 2_000,
        "reconnect_backoff_max_ms": 2_000,
        "request_timeout_ms": 15_000,
        "partition_assignment_strategy": assignors(),
        **settings.kafka_client_options(),
    }


def assignors() -> tuple[type, ...]:
    """Sticky first (moves as few partitions as possible), round robin when a member lacks it.

    Both spread partitions over all members across topics; the range assignor (kafka-python's
    default) assigns topic by topic, so with topics of 3 partitions a 4th consumer got nothing.
    """
    if StickyPartitionAssignor is None:
        return (RoundRobinPartitionAssignor,)
    return (StickyPartitionAssignor, RoundRobinPartitionAssignor)


@dataclass
class PartitionState:
    """What the dashboard shows per assigned partition."""

    position: int | None = None
    highwater: int | None = None

    @property
    def lag(self) -> int | None:
        if self.position is None or self.highwater is None:
            return None
        return max(self.highwater - self.position, 0)


@dataclass
class ConsumerSnapshot:
    """A consumer as the REST API and the dashboard see it."""

    consumer_id: str
    status: str
    partitions: dict[str, PartitionState] = field(default_factory=dict)
    processed: int = 0
    failed: int = 0
    started_at: str | None = None
    last_error: str | None = None
    polled: bool = False  # it has completed a poll against the broker
    reason: str | None = None  # why it is INACTIVE, when known (stopped, fenced...)

    def to_api(self) -> dict[str, Any]:
        """The REST API's consumer object (:class:`backend.wire.ConsumerBody`)."""
        lags = {name: state.lag for name, state in self.partitions.items()}
        return wire.consumer_body(
            self.consumer_id, self.status, lags, self.processed, self.failed, self.started_at, self.last_error
        )


def _partition_sort_key(name: str) -> tuple[str, int]:
    topic, _, number = name.rpartition("-")
    return topic, int(number) if number.isdigit() else -1


def consumer_sort_key(consumer_id: str) -> tuple[tuple[int, str], ...]:
    """Natural order: consumer-2 before consumer-10, and any name (consumer-3-ab12cd34) sorts."""
    parts = re.split(r"(\d+)", consumer_id)
    return tuple((int(part), "") if part.isdigit() else (-1, part) for part in parts)


class _Listener(ConsumerRebalanceListener):
    """Keeps the worker's view of its partitions current across rebalances."""

    def __init__(self, worker: ConsumerWorker) -> None:
        self.worker = worker

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.worker.joined = False
        log.info("%s: partitions revoked: %s", self.worker.consumer_id, _names(revoked))

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.worker.joined = True
        self.worker.set_partitions(assigned)
        log.info("%s: partitions assigned: %s", self.worker.consumer_id, _names(assigned))


def _names(partitions: set[TopicPartition] | frozenset[TopicPartition]) -> list[str]:
    return sorted((partition_name(tp) for tp in partitions), key=_partition_sort_key)


class ConsumerWorker(threading.Thread):
    """One consumer of the group, running its poll loop in its own thread.

    It knows the pipeline it feeds and how to reach the broker, not the pool that started it.
    ``assign_mode``: the pool hands it partitions (:meth:`assign`) instead of a group subscription.
    ``handoff_factory`` (a worker process): each batch becomes rows (``Pipeline.rows_for``) that a
    :class:`backend.handoff.Handoff` takes to the events topic with the batch's offsets, instead
    of ``Pipeline.handle`` storing them here and ``commit_async``. ``slot``: the lowest index no
    other live consumer of this pool holds (it names the handoff's transactional id).
    ``report``: called with a snapshot when status, partitions or ``polled`` changed, and at most
    once a second while only positions and counters move.
    """

    def __init__(
        self,
        consumer_id: str,
        settings: Settings,
        bootstrap: str,
        pipeline: Pipeline,
        assign_mode: bool,
        *,
        slot: int = 0,
        handoff_factory: HandoffFactory | None = None,
        report: Report | None = None,
        pace: ViewPace | None = None,
    ) -> None:
        super().__init__(name=consumer_id, daemon=True)
        self.consumer_id = consumer_id
        self.settings = settings
        self.bootstrap = bootstrap
        self.pipeline = pipeline
        self.assign_mode = assign_mode
        self.slot = slot
        self.handoff_factory = handoff_factory
        #: Records per poll: a worker hands each batch over in one transaction (WORKER_POLL_RECORDS;
        #: PACED_POLL_RECORDS while it keeps pace with a watched view: see _poll_records).
        self._max_records = WORKER_POLL_RECORDS if handoff_factory is not None else MAX_POLL_RECORDS
        self.report = report
        self.pace = pace  # a worker's: poll only while its view keeps up (backend.view_pace)
        self._handoff: Handoff | None = None
        self._reported: tuple[Any, ...] | None = None  # what the last report said (see _report)
        self._reported_at = 0.0
        self.snapshot = ConsumerSnapshot(consumer_id, events.ACTIVE, started_at=events.now_iso())
        self.joined = False
        self.polled = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._desired: frozenset[TopicPartition] | None = None
        self._applied = threading.Event()
        self._uncommitted: dict[TopicPartition, OffsetAndMetadata] = {}
        self._retry_s = 0.0  # the wait before reading an unstored batch again; 0 while storing works
        self._store_error: str | None = None  # the last store error logged, to log each one once

    def stop(self) -> None:
        """Ask the loop to finish its batch and leave the group."""
        self._stopping.set()

    def assign(self, partitions: frozenset[TopicPartition]) -> threading.Event:
        """Assign mode: hand the worker its partitions; the event is set once it holds them."""
        with self._lock:
            self._desired = partitions
            self._applied.clear()
        return self._applied

    def set_partitions(self, assigned: set[TopicPartition] | frozenset[TopicPartition]) -> None:
        with self._lock:
            self.snapshot.partitions = {partition_name(tp): PartitionState() for tp in assigned}

    def view(self) -> ConsumerSnapshot:
        with self._lock:
            partitions = {
                name: PartitionState(s.position, s.highwater) for name, s in self.snapshot.partitions.items()
            }
            return ConsumerSnapshot(
                self.consumer_id,
                self.snapshot.status,
                partitions,
                self.snapshot.processed,
                self.snapshot.failed,
                self.snapshot.started_at,
                self.snapshot.last_error,
                self.polled.is_set(),
                self.snapshot.reason,
            )

    def run(self) -> None:
        self._report(force=True)
        try:
            consumer = self._open()
        except Exception as exc:
            self._fail(f"could not create the consumer: {exc}")
            self._finish("could not create the consumer")
            return
        try:
            self._open_handoff()
            self._loop(consumer)
        finally:
            self._final_commit(consumer)
            try:
                consumer.close(autocommit=False)
            except Exception:
                log.warning("%s: error while closing", self.consumer_id, exc_info=True)
            self._close_handoff()
            self._finish(self.snapshot.reason or "stopped")

    def _finish(self, reason: str) -> None:
        """INACTIVE, holding nothing; reported (the last report of this consumer)."""
        with self._lock:
            self.snapshot.status = events.INACTIVE
            self.snapshot.partitions = {}
            self.snapshot.reason = reason
        self._applied.set()
        self._report(force=True)

    def _report(self, force: bool = False) -> None:
        """Tell ``report`` what changed: at once for status, partitions, polled; else once a second."""
        if self.report is None:
            return
        view = self.view()
        shape = (view.status, tuple(sorted(view.partitions)), view.polled, view.last_error)
        positions = tuple((s.position, s.highwater) for s in view.partitions.values())
        moving = (positions, view.processed, view.failed)
        now = time.monotonic()
        last = self._reported
        unchanged = last is not None and shape == last[0]
        if unchanged and not force and (moving == last[1] or now - self._reported_at < REPORT_INTERVAL_S):
            return
        self._reported, self._reported_at = (shape, moving), now
        try:
            self.report(view)
        except Exception:
            log.warning("%s: could not report its state", self.consumer_id, exc_info=True)

    def _open_handoff(self) -> None:
        """Create the handoff now: a transactional one fences a dead predecessor before we read."""
        if self.handoff_factory is None or self._handoff is not None:
            return
        try:
            self._handoff = self.handoff_factory(self.consumer_id, self.slot)
        except Exception as exc:  # the broker is away: the first batch tries again
            self._fail(f"could not create the events-topic producer: {exc}")

    def _close_handoff(self) -> None:
        if self._handoff is not None:
            try:
                self._handoff.close()
            except Exception:
                log.warning("%s: error while closing its producer", self.consumer_id, exc_info=True)
            self._handoff = None

    def _open(self) -> KafkaConsumer:
        settings = self.settings
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id=f"{settings.group_id}-{self.consumer_id}",
            **consumer_options(settings),
        )
        if self.assign_mode:
            return consumer
        listener = _Listener(self)
        if settings.topics:
            consumer.subscribe(topics=list(settings.topics), listener=listener)
        else:
            consumer.subscribe(pattern=settings.topic_pattern, listener=listener)
        return consumer

    def _fail(self, message: str) -> None:
        log.error("%s: %s", self.consumer_id, message)
        with self._lock:
            self.snapshot.last_error = message

    def _loop(self, consumer: KafkaConsumer) -> None:
        while not self._stopping.is_set():
            if self.assign_mode and not self._apply_assignment(consumer):
                self.polled.set()
                self._report()  # nothing to read yet, but reachable: health waits for this
                self._stopping.wait(POLL_TIMEOUT_MS / 1000)
                continue
            if self.pace is not None:
                self.pace.wait_turn(self._stopping, self._report)
            try:
                batch = consumer.poll(timeout_ms=POLL_TIMEOUT_MS, max_records=self._poll_records())
            except Exception as exc:  # broker trouble: keep trying, the loop is the recovery
                self._fail(f"poll failed: {exc}")
                self._stopping.wait(0.5)
                continue
            self.polled.set()
            if batch:
                self._handle_or_rewind(consumer, batch)
            self._update_positions(consumer)
            self._report()

    def _poll_records(self) -> int:
        return PACED_POLL_RECORDS if self.pace is not None and self.pace.watched else self._max_records

    def _handle_or_rewind(self, consumer: KafkaConsumer, batch: dict[TopicPartition, list[Any]]) -> None:
        """Handle a batch; if storing fails (disk full, I/O error), rewind, wait and read it again.

        The pipeline does not announce the records again, the partitions stay ours, and the wait
        grows (0.5 s doubling to 5 s) until a batch is stored again.
        """
        try:
            self._handle(consumer, batch)
        except HandoffFenced as exc:
            log.error("%s: stopping: %s", self.consumer_id, exc)
            with self._lock:
                self.snapshot.last_error = str(exc)
                self.snapshot.reason = "fenced: another process runs this consumer's transactional id"
            self._stopping.set()
            return
        except Exception as exc:
            self._store_failed(exc)
            for tp, records in batch.items():  # still ours: only poll() changes the assignment
                if records:
                    consumer.seek(tp, records[0].offset)
            self._stopping.wait(self._retry_s)
            return
        if self._retry_s:
            log.warning("%s: storing works again; batches are being stored", self.consumer_id)
            self._retry_s, self._store_error = 0.0, None

    def _store_failed(self, exc: Exception) -> None:
        """Note a batch that was not stored: logged once per distinct error, not once per retry."""
        what = "handed over" if self.handoff_factory else "stored"
        message = f"batch not {what}, will retry: {type(exc).__name__}: {exc}"
        if message != self._store_error:
            log.error("%s: %s", self.consumer_id, message, exc_info=log.isEnabledFor(logging.DEBUG))
            self._store_error = message
        with self._lock:
            self.snapshot.last_error = message
        self._retry_s = min(max(self._retry_s * 2, STORE_RETRY_FIRST_S), STORE_RETRY_MAX_S)

    def _apply_assignment(self, consumer: KafkaConsumer) -> bool:
        """Take the partitions the pool gave us (between batches); whether we hold any."""
        with self._lock:
            desired, self._desired = self._desired, None
        if desired is not None:
            if desired:
                consumer.assign(sorted(desired))
            else:
                consumer.unsubscribe()
            self.set_partitions(desired)
            self._applied.set()
            log.info("%s: partitions assigned: %s", self.consumer_id, _names(desired))
        return bool(consumer.assignment())

    def _handle(self, consumer: KafkaConsumer, batch: dict[TopicPartition, list[Any]]) -> None:
        records = [record for partition_records in batch.values() for record in partition_records]
        offsets = {tp: OffsetAndMetadata(recs[-1].offset + 1, "", -1) for tp, recs in batch.items() if recs}
        if self.handoff_factory is not None:
            self._hand_off(consumer, records, offsets)
            return
        counts = self.pipeline.handle(self.consumer_id, records)
        with self._lock:
            self.snapshot.processed += counts.processed
            self.snapshot.failed += counts.failed
        self._uncommitted.update(offsets)
        # Asynchronous: the outcomes are stored already, so a lost commit only means a
        # redelivery, and redelivered records are skipped. A synchronous commit per batch
        # cost a broker round trip per 500 records (measured: a third of the pipeline time).
        consumer.commit_async(offsets, callback=self._committed)

    def _hand_off(
        self, consumer: KafkaConsumer, records: list[Any], offsets: dict[TopicPartition, OffsetAndMetadata]
    ) -> None:
        """Worker path: rows to the events topic with the offsets (raises: the batch is read again)."""
        if self._handoff is None:
            self._handoff = self.handoff_factory(self.consumer_id, self.slot)  # type: ignore[misc]
        rows = self.pipeline.rows_for(self.consumer_id, records)
        self._handoff.send(consumer, rows, offsets)
        if self.pace is not None:
            self.pace.handed_off(len(records))
        counts = tally(rows, [True] * len(rows))
        with self._lock:
            self.snapshot.processed += counts.processed
            self.snapshot.failed += counts.failed
        self._uncommitted.update(offsets)

    def _committed(self, offsets: dict[TopicPartition, OffsetAndMetadata], result: Any) -> None:
        if isinstance(result, Exception):
            log.info(
                "%s: commit failed (%s); stored records are skipped on redelivery", self.consumer_id, result
            )

    def _final_commit(self, consumer: KafkaConsumer) -> None:
        """On the way out, commit what was stored, so the next owner starts right after it."""
        if not self._uncommitted:
            return
        try:
            owned = consumer.assignment()
            consumer.commit({tp: om for tp, om in self._uncommitted.items() if tp in owned})
        except Exception as exc:
            log.info("%s: final commit failed (%s)", self.consumer_id, exc)

    def _update_positions(self, consumer: KafkaConsumer) -> None:
        """Record position and highwater per partition for the lag view; local reads only."""
        with self._lock:
            for tp in consumer.assignment():
                state = self.snapshot.partitions.setdefault(partition_name(tp), PartitionState())
                state.highwater = consumer.highwater(tp)
                position = local_position(consumer, tp)
                if position is not None:
                    state.position = position


class ConsumerPool:
    """Starts, stops and describes the consumers, each feeding the same record pipeline.

    ``publish`` sends ``consumer-status-changed`` (the bus's ``publish``); ``consumers_changed`` is
    called after a consumer started or stopped (the count of active consumers moved).
    ``handoff_factory``, ``report`` and ``pace``: a worker process's (see :class:`ConsumerWorker`); None
    keeps the in-process path (the pipeline stores and announces, offsets committed async).
    """

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        pipeline: Pipeline,
        publish: Callable[[str, dict[str, Any]], object],
        consumers_changed: Callable[[], None],
        *,
        handoff_factory: HandoffFactory | None = None,
        report: Report | None = None,
        pace: ViewPace | None = None,
    ) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.pipeline = pipeline
        self.pace = pace
        self.publish = publish
        self.consumers_changed = consumers_changed
        self.handoff_factory = handoff_factory
        self.report = report
        self._workers: dict[str, ConsumerWorker] = {}
        self._lock = threading.Lock()
        self.assign_mode = settings.embedded
        self.assigner = PartitionAssigner(bootstrap, settings, self.running) if self.assign_mode else None
        self.log_ends = LogEndOffsets(bootstrap, settings, self._held_partitions)

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self, count: int) -> None:
        if self.assigner:
            self.assigner.start()
        self.log_ends.start()
        for _ in range(count):
            self.spawn()

    def spawn(self, consumer_id: str | None = None) -> str:
        """Start one more consumer: ``consumer_id``, or the smallest free name consumer-N.

        Starting a consumer that runs already does nothing and answers its name.
        """
        with self._lock:
            if consumer_id is not None and self._is_running(consumer_id):
                return consumer_id
            if consumer_id is None:
                number = 1
                while self._is_running(f"consumer-{number}"):
                    number += 1
                consumer_id = f"consumer-{number}"
            worker = ConsumerWorker(
                consumer_id,
                self.settings,
                self.bootstrap,
                self.pipeline,
                self.assign_mode,
                slot=self._free_slot(),
                handoff_factory=self.handoff_factory,
                report=self.report,
                pace=self.pace,
            )
            self._workers[consumer_id] = worker
            worker.start()
        if self.assigner:
            self.assigner.poke()
        self.publish(
            events.CONSUMER_STATUS_CHANGED, events.consumer_status_changed(consumer_id, events.ACTIVE)
        )
        self.consumers_changed()
        log.info("Consumer %s started", consumer_id)
        return consumer_id

    def _is_running(self, consumer_id: str) -> bool:
        worker = self._workers.get(consumer_id)
        return worker is not None and worker.is_alive()

    def _free_slot(self) -> int:
        """The lowest slot no live consumer holds (under ``_lock``): stable transactional ids."""
        taken = {worker.slot for worker in self._workers.values() if worker.is_alive()}
        slot = 0
        while slot in taken:
            slot += 1
        return slot

    def stop_consumer(self, consumer_id: str, wait: float = 15.0) -> bool:
        """Stop one consumer; False when there is no running consumer of that name."""
        with self._lock:
            worker = self._workers.get(consumer_id)
            if worker is None or not worker.is_alive():
                return False
            worker.stop()
        worker.join(wait)
        if self.assigner:
            self.assigner.poke()
        self.publish(
            events.CONSUMER_STATUS_CHANGED, events.consumer_status_changed(consumer_id, events.INACTIVE)
        )
        self.consumers_changed()
        log.info("Consumer %s stopped", consumer_id)
        return True

    def stop_all(self, wait: float = 15.0) -> None:
        if self.assigner:
            self.assigner.stop()
        self.log_ends.stop()
        with self._lock:
            workers = [worker for worker in self._workers.values() if worker.is_alive()]
        for worker in workers:
            worker.stop()
        deadline = time.monotonic() + wait
        for worker in workers:
            worker.join(max(deadline - time.monotonic(), 0.1))

    # --- views --------------------------------------------------------------------------------

    @property
    def active_count(self) -> int:
        with self._lock:
            return sum(1 for worker in self._workers.values() if worker.is_alive())

    def running(self) -> list[ConsumerWorker]:
        """The live workers, ordered by their number."""
        with self._lock:
            workers = [worker for worker in self._workers.values() if worker.is_alive()]
        return sorted(workers, key=lambda w: consumer_sort_key(w.consumer_id))

    def snapshots(self) -> list[ConsumerSnapshot]:
        """Every consumer, its lag measured against the newest log-end offset known."""
        with self._lock:
            workers = sorted(self._workers.values(), key=lambda w: consumer_sort_key(w.consumer_id))
        views = [worker.view() for worker in workers]
        for view in views:
            for name, state in view.partitions.items():
                end = self.log_ends.end(name)
                if end is not None and state.position is not None:
                    state.highwater = max(state.highwater or 0, end)
        return views

    def _held_partitions(self) -> list[str]:
        return [name for worker in self.running() for name in worker.view().partitions]

    def all_polled(self) -> bool:
        """Every running consumer has completed a poll against the broker."""
        with self._lock:
            running = [worker for worker in self._workers.values() if worker.is_alive()]
        return all(worker.polled.is_set() for worker in running)


def plan_assignment(
    partitions: list[TopicPartition], consumer_ids: list[str]
) -> dict[str, frozenset[TopicPartition]]:
    """Round-robin over the sorted partitions, so each topic spreads over the consumers."""
    plan: dict[str, set[TopicPartition]] = {consumer_id: set() for consumer_id in consumer_ids}
    if consumer_ids:
        for index, tp in enumerate(sorted(partitions)):
            plan[consumer_ids[index % len(consumer_ids)]].add(tp)
    return {consumer_id: frozenset(tps) for consumer_id, tps in plan.items()}


class PartitionAssigner(threading.Thread):
    """Assign mode (embedded broker): the pool spreads partitions over its consumers itself.

    One process owns the embedded broker, so group coordination buys nothing,
    and on Tansu every group rebalance waits for the full rebalance timeout
    (measured: a new topic took ~6 s to be consumed). Here a new topic or a
    consumer joining or leaving is handled within a second. A move is done in
    two phases, revoke then grant, so no two consumers ever hold a partition.
    """

    DISCOVERY_INTERVAL_S = 1.0
    APPLY_TIMEOUT_S = 10.0

    def __init__(
        self, bootstrap: str, settings: Settings, running: Callable[[], list[ConsumerWorker]]
    ) -> None:
        super().__init__(name="partition-assigner", daemon=True)
        self.bootstrap = bootstrap
        self.settings = settings
        self.running = running  # the live workers, ordered by their number
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._current: dict[str, frozenset[TopicPartition]] = {}

    def poke(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def run(self) -> None:
        metadata = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            **self.settings.kafka_client_options(),
        )
        try:
            while not self._stopping.is_set():
                try:
                    self._rebalance(self._discover(metadata))
                except Exception:
                    log.warning("partition assignment failed; retrying", exc_info=True)
                self._wake.wait(self.DISCOVERY_INTERVAL_S)
                self._wake.clear()
        finally:
            metadata.close()

    def _discover(self, metadata: KafkaConsumer) -> list[TopicPartition]:
        found: list[TopicPartition] = []
        for topic in metadata.topics():
            if self.settings.topic_matches(topic):
                found.extend(TopicPartition(topic, p) for p in metadata.partitions_for_topic(topic) or ())
        return found

    def _rebalance(self, partitions: list[TopicPartition]) -> None:
        workers = {worker.consumer_id: worker for worker in self.running()}
        target = plan_assignment(partitions, list(workers))
        current = {cid: tps for cid, tps in self._current.items() if cid in workers}
        if target == current:
            return
        revoke = {cid: current.get(cid, frozenset()) & tps for cid, tps in target.items()}
        self._apply(workers, current, revoke)
        self._apply(workers, revoke, target)
        self._current = target

    def _apply(
        self,
        workers: dict[str, ConsumerWorker],
        before: dict[str, frozenset[TopicPartition]],
        after: dict[str, frozenset[TopicPartition]],
    ) -> None:
        pending = [
            workers[cid].assign(tps)
            for cid, tps in after.items()
            if before.get(cid) != tps or cid not in before
        ]
        deadline = time.monotonic() + self.APPLY_TIMEOUT_S
        for applied in pending:
            applied.wait(max(deadline - time.monotonic(), 0.0))
