"""The consumer pool: N kafka-python consumers in one group, each in its own thread.

A consumer's loop is: poll a batch, decode and process each record (publishing
``message-received`` and ``processing-started`` as it goes), store the batch's
outcomes in one transaction, publish ``processing-completed``/``-failed`` for
the rows that were new, then commit the offsets. Because the store is keyed by
record and offsets are committed only after it, a crash or a rebalance at any
moment leads to redelivery at worst, and redelivered records are skipped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata

from backend import events, processing, wire
from backend.bus import EventBus
from backend.config import Settings
from backend.log_end import LogEndOffsets, partition_name
from backend.store import LogRow, Store

log = logging.getLogger(__name__)

POLL_TIMEOUT_MS = 100
MAX_POLL_RECORDS = 500


def consumer_options(settings: Settings) -> dict[str, Any]:
    """kafka-python consumer settings tuned for latency and fast group changes.

    Tansu (the embedded broker) holds every fetch for the full ``fetch_max_wait_ms``
    (500 by default) even when records arrive, which alone delays a record by
    ~250 ms on average, so it gets 20 ms. Apache Kafka answers a waiting fetch as
    soon as a record arrives; 100 ms there bounds the worst case for brokers that
    behave like Tansu while cutting idle fetches five-fold (measured: three idle
    consumers at 20 ms cost 0.2 cores and held the GIL against the gateway). A short
    ``max_poll_interval_ms`` bounds how long a rebalance can take (it is the
    rebalance timeout), and a short metadata age finds new topics within 5 s.
    """
    return {
        "group_id": settings.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "fetch_max_wait_ms": 20 if settings.embedded else 100,
        "fetch_min_bytes": 1,
        "max_poll_records": MAX_POLL_RECORDS,
        "max_poll_interval_ms": 10_000,
        "session_timeout_ms": 6_000,
        "heartbeat_interval_ms": 1_000,
        "metadata_max_age_ms": 2_000,
        "reconnect_backoff_max_ms": 2_000,
        "request_timeout_ms": 15_000,
        **settings.kafka_client_options(),
    }


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

    def to_api(self) -> dict[str, Any]:
        """The REST API's consumer object (:class:`backend.wire.ConsumerBody`)."""
        lags = {name: state.lag for name, state in self.partitions.items()}
        return wire.consumer_body(
            self.consumer_id, self.status, lags, self.processed, self.failed, self.started_at, self.last_error
        )


def _partition_sort_key(name: str) -> tuple[str, int]:
    topic, _, number = name.rpartition("-")
    return topic, int(number) if number.isdigit() else -1


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
    """One consumer of the group, running its poll loop in its own thread."""

    def __init__(self, consumer_id: str, pool: ConsumerPool) -> None:
        super().__init__(name=consumer_id, daemon=True)
        self.consumer_id = consumer_id
        self.pool = pool
        self.snapshot = ConsumerSnapshot(consumer_id, events.ACTIVE, started_at=events.now_iso())
        self.joined = False
        self.polled = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._desired: frozenset[TopicPartition] | None = None
        self._applied = threading.Event()
        self._uncommitted: dict[TopicPartition, OffsetAndMetadata] = {}

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
            )

    def run(self) -> None:
        try:
            consumer = self._open()
        except Exception as exc:
            self._fail(f"could not create the consumer: {exc}")
            return
        try:
            self._loop(consumer)
        finally:
            self._final_commit(consumer)
            try:
                consumer.close(autocommit=False)
            except Exception:
                log.warning("%s: error while closing", self.consumer_id, exc_info=True)
            with self._lock:
                self.snapshot.status = events.INACTIVE
                self.snapshot.partitions = {}
            self._applied.set()

    def _open(self) -> KafkaConsumer:
        settings = self.pool.settings
        consumer = KafkaConsumer(
            bootstrap_servers=self.pool.bootstrap,
            client_id=f"{settings.group_id}-{self.consumer_id}",
            **consumer_options(settings),
        )
        if self.pool.assign_mode:
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
            if self.pool.assign_mode and not self._apply_assignment(consumer):
                self.polled.set()
                self._stopping.wait(POLL_TIMEOUT_MS / 1000)
                continue
            try:
                batch = consumer.poll(timeout_ms=POLL_TIMEOUT_MS, max_records=MAX_POLL_RECORDS)
            except Exception as exc:  # broker trouble: keep trying, the loop is the recovery
                self._fail(f"poll failed: {exc}")
                self._stopping.wait(0.5)
                continue
            self.polled.set()
            if batch:
                self._handle_or_rewind(consumer, batch)
            self._update_positions(consumer)

    def _handle_or_rewind(self, consumer: KafkaConsumer, batch: dict[TopicPartition, list[Any]]) -> None:
        """Handle a batch; if storing fails (disk full, locked database), rewind and try again later."""
        try:
            self._handle(consumer, batch)
        except Exception as exc:
            self._fail(f"batch not stored, will retry: {exc}")
            self.pool.store.forget_in_flight(
                events.make_log_id(self.pool.cluster_id, r.topic, r.partition, r.offset)
                for records in batch.values()
                for r in records
            )
            for tp, records in batch.items():
                if records:
                    consumer.seek(tp, records[0].offset)
            self._stopping.wait(1.0)

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
        rows = self.pool.process_batch(self.consumer_id, records)
        inserted = self.pool.store_batch(self.consumer_id, rows)
        with self._lock:
            for row, new in zip(rows, inserted, strict=True):
                if new and row.status == events.PROCESSED:
                    self.snapshot.processed += 1
                elif new:
                    self.snapshot.failed += 1
        offsets = {tp: OffsetAndMetadata(recs[-1].offset + 1, "", -1) for tp, recs in batch.items() if recs}
        self._uncommitted.update(offsets)
        # Asynchronous: the outcomes are stored already, so a lost commit only means a
        # redelivery, and redelivered records are skipped. A synchronous commit per batch
        # cost a broker round trip per 500 records (measured: a third of the pipeline time).
        consumer.commit_async(offsets, callback=self._committed)

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
        subscription = consumer._subscription  # noqa: SLF001 - position() would block on the network
        with self._lock:
            for tp in consumer.assignment():
                state = self.snapshot.partitions.setdefault(partition_name(tp), PartitionState())
                state.highwater = consumer.highwater(tp)
                tp_state = subscription.assignment.get(tp)
                if tp_state is not None and tp_state.position is not None:
                    state.position = tp_state.position.offset


class ConsumerPool:
    """Starts, stops and describes the consumers; turns records into stored outcomes and events."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        cluster_id: str,
        store: Store,
        bus: EventBus,
        on_outcomes: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.cluster_id = cluster_id
        self.store = store
        self.bus = bus
        self.on_outcomes = on_outcomes
        self.processor = processing.load_processor(settings.processor)
        self._workers: dict[str, ConsumerWorker] = {}
        self._lock = threading.Lock()
        self.assign_mode = settings.embedded
        self.assigner = PartitionAssigner(self) if self.assign_mode else None
        self.log_ends = LogEndOffsets(bootstrap, settings, self._held_partitions)

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self, count: int) -> None:
        if self.assigner:
            self.assigner.start()
        self.log_ends.start()
        for _ in range(count):
            self.spawn()

    def spawn(self) -> str:
        """Start one more consumer under the smallest free name consumer-N."""
        with self._lock:
            number = 1
            while self._is_running(f"consumer-{number}"):
                number += 1
            consumer_id = f"consumer-{number}"
            worker = ConsumerWorker(consumer_id, self)
            self._workers[consumer_id] = worker
            worker.start()
        if self.assigner:
            self.assigner.poke()
        self.bus.publish(
            events.CONSUMER_STATUS_CHANGED, events.consumer_status_changed(consumer_id, events.ACTIVE)
        )
        self.on_outcomes()
        log.info("Consumer %s started", consumer_id)
        return consumer_id

    def _is_running(self, consumer_id: str) -> bool:
        worker = self._workers.get(consumer_id)
        return worker is not None and worker.is_alive()

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
        self.bus.publish(
            events.CONSUMER_STATUS_CHANGED, events.consumer_status_changed(consumer_id, events.INACTIVE)
        )
        self.on_outcomes()
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
        return sorted(workers, key=lambda w: int(w.consumer_id.rpartition("-")[2]))

    def snapshots(self) -> list[ConsumerSnapshot]:
        """Every consumer, its lag measured against the newest log-end offset known."""
        with self._lock:
            workers = sorted(self._workers.values(), key=lambda w: int(w.consumer_id.rpartition("-")[2]))
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

    # --- the work -----------------------------------------------------------------------------

    def process_batch(self, consumer_id: str, records: list[Any]) -> list[LogRow]:
        """Decode and process the batch's new records; return the rows to store.

        ``message-received`` and ``processing-started`` for the whole batch go
        out under one bus lock before any user processor runs, which keeps the
        per-record order (received, started, then the outcome) at a fraction of
        the cost of publishing record by record.
        """
        ids = [events.make_log_id(self.cluster_id, r.topic, r.partition, r.offset) for r in records]
        already = self.store.known(ids)
        fresh = [
            (record, log_id) for record, log_id in zip(records, ids, strict=True) if log_id not in already
        ]
        if not fresh:
            return []
        received_ms = events.now_ms()
        self.store.mark_in_flight([log_id for _, log_id in fresh])
        decoded = [self._decode(record, log_id) for record, log_id in fresh]
        announcements: list[tuple[str, dict[str, Any]]] = []
        for record, log_id, _, outcome in decoded:
            announcements.append((events.MESSAGE_RECEIVED, events.message_received(
                log_id, record.topic, record.partition, record.offset, outcome.data_type, outcome.row_count,
                received_ms,
            )))  # fmt: skip
            announcements.append(
                (events.PROCESSING_STARTED, events.processing_started(log_id, consumer_id, received_ms))
            )
        self.bus.publish_many(announcements)
        if log.isEnabledFor(logging.DEBUG):
            for _, log_id, _, _ in decoded:
                log.debug("Broadcasted message-received for log %s", log_id)
        return [self._finish(consumer_id, item, received_ms) for item in decoded]

    def _decode(self, record: Any, log_id: str) -> tuple[Any, str, dict[str, str], processing.Outcome]:
        headers = processing.header_map(record.headers)
        return (
            record,
            log_id,
            headers,
            processing.decode_record(record.value, headers, self.settings.max_message_bytes),
        )

    def _finish(
        self, consumer_id: str, item: tuple[Any, str, dict[str, str], processing.Outcome], received_ms: int
    ) -> LogRow:
        record, log_id, headers, decoded = item
        outcome = processing.apply_processor(
            decoded, self.processor, record.topic, record.partition, record.offset, record.key, headers
        )
        return LogRow(
            log_id=log_id,
            cluster_id=self.cluster_id,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            record_key=None if record.key is None else record.key.decode("utf-8", errors="replace"),
            data_type=outcome.data_type,
            row_count=outcome.row_count,
            status=events.PROCESSED if outcome.ok else events.FAILED,
            consumer_id=consumer_id,
            error=outcome.error,
            produced_ms=record.timestamp if record.timestamp and record.timestamp > 0 else None,
            received_ms=received_ms,
            started_ms=received_ms,
            completed_ms=events.now_ms(),
            size_bytes=None if record.value is None else len(record.value),
            payload=outcome.payload,
            result=_jsonable(outcome.result),
            payload_json=outcome.payload_json,
        )

    def store_batch(self, consumer_id: str, rows: list[LogRow]) -> list[bool]:
        """Store the outcomes, then announce the ones that were new (exactly one outcome per logId)."""
        inserted = self.store.save(rows)
        outcomes: list[tuple[str, dict[str, Any]]] = []
        for row, new in zip(rows, inserted, strict=True):
            if not new:
                continue
            completed_ms = row.completed_ms or events.now_ms()
            if row.status == events.PROCESSED:
                data = events.processing_completed(row.log_id, consumer_id, completed_ms)
                outcomes.append((events.PROCESSING_COMPLETED, data))
            else:
                data = events.processing_failed(row.log_id, consumer_id, row.error or "", completed_ms)
                outcomes.append((events.PROCESSING_FAILED, data))
        self.bus.publish_many(outcomes)
        if rows:
            self.on_outcomes()
        return inserted


def _jsonable(value: Any) -> Any:
    """Processor results are stored as JSON; anything else is stored as its text."""
    if value is None or isinstance(value, str | int | float | bool | list | dict):
        return value
    return repr(value)


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

    def __init__(self, pool: ConsumerPool) -> None:
        super().__init__(name="partition-assigner", daemon=True)
        self.pool = pool
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
            bootstrap_servers=self.pool.bootstrap,
            enable_auto_commit=False,
            **self.pool.settings.kafka_client_options(),
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
            if self.pool.settings.topic_matches(topic):
                found.extend(TopicPartition(topic, p) for p in metadata.partitions_for_topic(topic) or ())
        return found

    def _rebalance(self, partitions: list[TopicPartition]) -> None:
        workers = {worker.consumer_id: worker for worker in self.pool.running()}
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
