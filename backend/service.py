"""The composition root: wires broker, store, bus, consumers and the HTTP services.

Used by ``python -m backend`` and by the dashboard (in-process mode), so both
run exactly the same system. Nothing else constructs these pieces.
"""

from __future__ import annotations

import gc
import logging
import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from backend import event_log, events, processing, wire
from backend.bus import EventBus
from backend.cluster import ConsumerDirectory, free_consumer_ids
from backend.config import ConfigError, Settings, is_valid_topic
from backend.consumers import ConsumerSnapshot
from backend.event_log import Command, ConsumerReport
from backend.event_topics import ensure_event_topics
from backend.events import Event
from backend.http_server import HTTP_START_WAIT_S, HttpServers
from backend.limits import CommandTimeout, LimitReached
from backend.membership import MembershipWatcher
from backend.progress import PartitionProgress
from backend.replay_journal import ReplayJournal
from backend.stats import statistics
from backend.store import Store
from backend.supervisor import WorkerSupervisor, instance_id, spread
from backend.view import EventsApplier, EventsReader

log = logging.getLogger(__name__)

BROKER_PROBE_INTERVAL_S = 1.0
CONNECT_TIMEOUT_S = 10.0
#: How long start-up waits for the view to read the events topic before naming its consumers.
CATCH_UP_WAIT_S = 30.0
#: How long starting or stopping a consumer waits for the worker's answer.
COMMAND_WAIT_S = 20.0
#: A dashboard session that read the bus this recently still watches (its fragments run every 15 s).
WATCHED_FOR_S = 20.0


@dataclass(frozen=True)
class Health:
    """Whether the backend is serving, and if not, why."""

    ok: bool
    reason: str | None
    broker: str
    broker_reachable: bool

    def to_api(self) -> dict[str, Any]:
        """The REST API's health object (:class:`backend.wire.HealthBody`) but ``gatewayClients``."""
        return wire.health_body(self.ok, self.reason, self.broker, self.broker_reachable)


@dataclass(frozen=True)
class Produced:
    """Where a produced record landed."""

    topic: str
    partition: int
    offset: int


class BrokerProbe(threading.Thread):
    """Checks once a second that a bootstrap server accepts TCP connections."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__(name="broker-probe", daemon=True)
        self.bootstrap = bootstrap
        self.reachable = True
        self.reason: str | None = None
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def check(self) -> bool:
        errors = []
        for server in self.bootstrap.split(","):
            host, _, port = server.rpartition(":")
            try:
                with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                    self.reachable, self.reason = True, None
                    return True
            except OSError as exc:
                errors.append(f"{server}: {exc.strerror or exc}")
        self.reachable, self.reason = False, "broker unreachable (" + "; ".join(errors) + ")"
        return False

    def run(self) -> None:
        while not self._stopping.wait(BROKER_PROBE_INTERVAL_S):
            was = self.reachable
            if self.check() != was:
                log.warning("Broker %s", "reachable again" if self.reachable else self.reason)


def keep_startup_objects_out_of_gc() -> None:
    """Move everything alive now out of the cyclic garbage collector's sight (``gc.freeze``).

    A full collection walks every tracked object and holds the GIL while it does: with the ~50,000
    objects of the imported libraries and the started servers it took 30-100 ms, during which no
    consumer, gateway or producer thread ran (measured as 100 ms stalls in the end-to-end latency).
    Those objects live as long as the process; frozen, they are never walked again. Reference
    counting still frees whatever is frozen and later dropped, so nothing leaks that is not a cycle.
    A process-wide choice: the entry points that own the process call it once the backend started
    (``python -m backend``, the dashboard), not ``Backend.start`` (tests start many in one process).
    """
    gc.collect()
    gc.freeze()


class Backend:
    """A view (and, with BACKEND_ROLE=all, its worker processes): start(), stop(), and what the APIs need.

    The view reads the whole events topic into its store and its bus (backend/view.py); the
    consumers run in worker processes (backend/worker.py, started by backend/supervisor.py) that
    hand their work to every view through that topic. Starting or stopping a consumer is a
    command on the control topic, answered by the worker's report in the events topic.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.broker: Any = None
        self.bootstrap = settings.bootstrap_servers or ""
        self.cluster_id = ""
        self.instance = ""
        self.store: Store | None = None
        self.bus = EventBus()
        self.directory = ConsumerDirectory()
        self.reader: EventsReader | None = None
        self.supervisor: Any = None
        self.membership: Any = None
        self.probe: BrokerProbe | None = None
        self.started_at = events.now_iso()
        self._producer: KafkaProducer | None = None
        self._producer_lock = threading.Lock()
        self._known_topics: set[str] = set()
        self._created_topics = 0  # by this process, for MAX_CREATED_TOPICS
        self._topics_lock = threading.Lock()
        self._consumers_lock = threading.Lock()
        self._http: HttpServers | None = None
        self.progress = PartitionProgress()

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self, serve_http: bool = True) -> Backend:
        """Start everything; raises ConfigError (or BrokerError) with one clear line."""
        # The plugins first: one that cannot be imported stops start-up before anything runs
        # (the workers load them again; here it is the check that gives one clear line).
        if self.settings.role == "view" and self.settings.starts_broker:
            raise ConfigError(
                "BACKEND_ROLE=view needs KAFKA_BOOTSTRAP_SERVERS "
                "(the embedded broker runs inside BACKEND_ROLE=all)"
            )
        processing.load_processor(self.settings.processor)
        processing.load_deserializer(self.settings.deserializer)
        if serve_http:
            # Here, not in the server thread: an unsupported library version stops start-up
            # with one line instead of leaving a backend that runs without its HTTP side.
            from backend.gateway.transport import check_library_versions

            check_library_versions()
        http = HttpServers(self) if serve_http else None  # binds both ports now: a clear error if in use
        self.store = Store(self.settings.data_dir, retention=self.settings.retention)
        self.instance = instance_id(self.settings.data_dir)
        self._start_broker()
        self.probe = BrokerProbe(self.bootstrap)
        self.probe.start()
        ensure_event_topics(self.bootstrap, self.settings)
        self.bus = EventBus(start_seq=EventsApplier.start_seq(self.store))
        applier = EventsApplier(self.store, self.bus, self.directory)
        self.reader = EventsReader(self.settings, self.bootstrap, applier, self.instance, self.watched)
        self.reader.start()
        if self.settings.runs_workers:
            self._start_workers()
        if not self.settings.embedded:
            self.membership = MembershipWatcher(self.settings, self.bootstrap, self.directory, self.producer)
            self.membership.start()
        if http:
            self._http = http
            self._http.start()
            self._http.serving.wait(HTTP_START_WAIT_S)  # their imports and apps are long-lived too
        log.info("Backend started (%s): broker %s", self.settings.role, self.bootstrap)
        return self

    def _start_workers(self) -> None:
        """Name the consumers (free names only: other instances may share the group) and start the workers."""
        assert self.reader is not None
        self.reader.caught_up.wait(CATCH_UP_WAIT_S)  # the directory knows which names are taken
        mine = {f"{self.instance}-w{i + 1}" for i in range(self.settings.worker_count)}
        names = free_consumer_ids(self.directory, self.settings.consumer_count, mine)
        self.supervisor = WorkerSupervisor(
            self.settings,
            self.bootstrap,
            self.cluster_id,
            self.instance,
            on_exit=self._worker_exited,
            consumers=spread(names, self.settings.worker_count),
        )
        self.supervisor.start()
        # Start-up returns with the workers running (as it did with consumer threads): wait for
        # their "up" reports and their consumers' ACTIVE ones, so that what follows (a
        # start_consumer, say) finds them and does not take one of their names.
        mine = {state.worker_id for state in self.supervisor.workers()}

        def running() -> bool:
            listed = [self.directory.entry(name) for name in names]
            active = all(entry is not None and entry.status == events.ACTIVE for entry in listed)
            return active and mine <= self._workers_up()

        if not self.directory.wait_until(running, CATCH_UP_WAIT_S):
            log.warning(
                "worker processes not up after %.0f s: %s", CATCH_UP_WAIT_S, self.supervisor.describe()
            )

    def _workers_up(self) -> set[str]:
        return {w.worker_id for w in self.directory.workers() if w.status == "up"}

    def _worker_exited(self, worker_id: str, consumers: list[str], returncode: int | None) -> None:
        """A worker process died: tell every view that its consumers are out (it is restarted)."""
        reason = f"its worker process {worker_id} exited (code {returncode})"
        for consumer_id in consumers:
            entry = self.directory.entry(consumer_id)
            if entry is not None and entry.status == events.ACTIVE and entry.worker_id == worker_id:
                report = ConsumerReport(
                    consumer_id, worker_id, events.INACTIVE, reason=reason, reporter=f"view:{self.instance}"
                )
                self._write_events_record(event_log.CONSUMER, event_log.encode_consumer(report))

    def _start_broker(self) -> None:
        if self.settings.starts_broker:
            from backend.broker import EmbeddedBroker

            self.broker = EmbeddedBroker(self.settings.data_dir)
            self.bootstrap = self.broker.start()
            self.cluster_id = self.broker.cluster_id
        else:
            self.cluster_id = discover_cluster_id(self.settings)

    def stop(self) -> None:
        """Stop in reverse order; safe to call twice."""
        if self._http:
            self._http.stop()
            self._http = None
        if self.membership:
            self.membership.stop()
            self.membership = None
        if self.supervisor:
            self.supervisor.stop()
            self.supervisor = None
        if self.reader:
            self.reader.stop()
            self.reader.join(5)
            self.reader = None
        if self.probe:
            self.probe.stop()
        if self._producer:
            self._producer.close(timeout=5)
            self._producer = None
        if self.store:
            self.store.close()
            self.store = None
        if self.broker:
            self.broker.stop()
            self.broker = None
        log.info("Backend stopped")

    # --- reads --------------------------------------------------------------------------------

    def replay_history(self, after_seq: int, until_seq: int) -> list[Event] | None:
        """Events the bus no longer holds, from the store's replay journal (None when gone)."""
        store = self.store
        return None if store is None else ReplayJournal(store).since(after_seq, until_seq)

    def statistics(self) -> dict[str, Any]:
        """The stats-updated payload, from the store's exact counters."""
        return statistics(self.store.counts() if self.store else None, self.active_consumers())

    def active_consumers(self) -> int:
        return self.directory.active_count()

    def consumers(self) -> list[ConsumerSnapshot]:
        """Every consumer of the cluster; with Apache Kafka, partitions as the broker assigned them."""
        snapshots = self.directory.snapshots()
        if self.membership is not None:
            return self.membership.overlay(snapshots)
        return snapshots

    def health(self) -> Health:
        """200-worthy once the view has caught up and the consumers have reached the broker."""
        reachable = self.probe.reachable if self.probe else False
        reason: str | None = None
        reader = self.reader
        if reader is None or self.probe is None:
            reason = "starting"
        elif not reachable:
            reason = self.probe.reason or "broker unreachable"
        elif reader.problem:
            reason = reader.problem
        elif not reader.caught_up.is_set():
            reason = f"reading the events topic ({reader.behind()} records behind)"
        elif self.settings.runs_workers and not self.directory.active() and self.settings.consumer_count:
            # Also what every consumer stopped from the API looks like: then say what is not consumed.
            unassigned = self.membership.unassigned_reason() if self.membership is not None else None
            reason = unassigned or "consumers are starting"
        elif not self.directory.all_polled():
            reason = "consumers are connecting to the broker"
        elif self.store is not None and self.store.problem:
            reason = f"records cannot be stored: {self.store.problem}"
        elif self.membership is not None and self.membership.unassigned_reason():
            reason = self.membership.unassigned_reason()
        else:
            reason = self.progress.stalled(self.consumers())
        return Health(reason is None, reason, self.bootstrap, reachable)

    def http_serving(self) -> bool:
        """Whether this process serves the gateway and the producer API."""
        return bool(self._http is not None and self._http.is_alive() and self._http.ready.is_set())

    def watched(self) -> bool:
        """Whether anybody watches this view live: a client of its gateway, or a dashboard session
        that read its bus lately. Only then do its workers keep pace with it (backend/view_pace.py)."""
        if time.monotonic() - self.bus.pulled_at < WATCHED_FOR_S:
            return True
        return bool(self.gateway_clients())

    def gateway_clients(self) -> int | None:
        """Socket.IO and /ws clients connected to this process's gateway (None when not serving)."""
        gateway = self._http.gateway if self._http else None
        return None if gateway is None else int(gateway.client_count)

    # --- operations ---------------------------------------------------------------------------

    def start_consumer(self) -> str:
        """One more consumer, on the worker running the fewest; LimitReached at MAX_CONSUMERS.

        The view writes a ``start`` command to the control topic and answers once the worker's
        report shows the consumer ACTIVE in the events topic (CommandTimeout otherwise).
        """
        with self._consumers_lock:  # two requests at once must not both take the last place
            running = self.directory.active_count()
            if running >= self.settings.max_consumers:
                raise LimitReached(
                    f"{running} consumers are running, the most allowed (MAX_CONSUMERS="
                    f"{self.settings.max_consumers}): stop one before starting another"
                )
            worker_id = self._least_busy_worker()
            suffix = "" if self.settings.role == "all" else f"-{self.instance}"
            consumer_id = free_consumer_ids(self.directory, 1, set(), suffix)[0]
            self._command(Command(event_log.START, consumer_id, worker_id, uuid.uuid4().hex))
            self._await_status(consumer_id, events.ACTIVE)
            return consumer_id

    def stop_consumer(self, consumer_id: str) -> bool:
        """Stop a running consumer wherever it runs; False when no ACTIVE consumer has that id."""
        entry = self.directory.entry(consumer_id)
        if entry is None or entry.status != events.ACTIVE:
            return False
        self._command(Command(event_log.STOP, consumer_id, entry.worker_id, uuid.uuid4().hex))
        self._await_status(consumer_id, events.INACTIVE)
        return True

    def _least_busy_worker(self) -> str:
        running = Counter(entry.worker_id for entry in self.directory.active())
        workers = sorted(self._workers_up())
        if not workers:
            raise LimitReached("no worker process is running: start one (BACKEND_ROLE=worker)")
        return min(workers, key=lambda worker_id: (running[worker_id], worker_id))

    def _command(self, command: Command) -> None:
        self.producer().send(
            self.settings.control_topic, value=event_log.encode_command(command), partition=0
        ).get(timeout=15)

    def _await_status(self, consumer_id: str, status: str) -> None:
        def reached() -> bool:
            entry = self.directory.entry(consumer_id)
            return entry is not None and entry.status == status

        if self.directory.wait_until(reached, COMMAND_WAIT_S):
            return
        raise CommandTimeout(
            f"no worker answered within {COMMAND_WAIT_S:.0f} s: {consumer_id} is not {status}"
        )

    def _write_events_record(self, kind: str, value: bytes) -> None:
        self.producer().send(
            self.settings.events_topic, value=value, headers=event_log.headers_for(kind), partition=0
        ).get(timeout=15)

    def produce(self, topic: str, value: bytes, data_type: str, key: bytes | None = None) -> Produced:
        """Send one record with its data-type header, creating the topic when missing."""
        if not is_valid_topic(topic):
            raise ValueError(
                f"invalid topic name {topic[:60]!r}: use 1-249 of letters, digits, '.', '_', '-'"
            )
        self.ensure_topic(topic)
        headers = [("data-type", data_type.encode())]
        metadata = self.producer().send(topic, value=value, key=key, headers=headers).get(timeout=15)
        return Produced(topic, metadata.partition, metadata.offset)

    def producer(self) -> KafkaProducer:
        with self._producer_lock:
            if self._producer is None:
                self._producer = KafkaProducer(
                    bootstrap_servers=self.bootstrap,
                    acks="all",
                    linger_ms=0,
                    max_request_size=max(self.settings.max_message_bytes * 2, 1_048_576),
                    **self.settings.kafka_client_options(),
                )
            return self._producer

    def ensure_topic(self, topic: str) -> None:
        """Create the topic (TOPIC_PARTITIONS partitions) unless we know it exists.

        At most MAX_CREATED_TOPICS are created per process: every topic costs the consumers
        (913 of them took 84 % of a core idle and seconds of event latency). The count is this
        process's own creations, not the broker's topics, so that a shared cluster's existing
        topics leave the cap untouched; a restart is the operator's decision to allow more.
        """
        if topic in self._known_topics:
            return
        with self._topics_lock:  # concurrent producers must not both create the last allowed topic
            if topic in self._known_topics:  # created by the request we waited for
                return
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, **self.settings.kafka_client_options())
            try:
                if topic not in set(admin.list_topics()):
                    self._create_topic(admin, topic)
            finally:
                admin.close()
            self._known_topics.add(topic)

    def _create_topic(self, admin: KafkaAdminClient, topic: str) -> None:
        cap = self.settings.max_created_topics
        if self._created_topics >= cap:
            raise LimitReached(
                f"topic {topic!r} does not exist and this backend has created {self._created_topics} "
                f"topics, the most allowed (MAX_CREATED_TOPICS={cap}): produce to an existing topic"
            )
        try:
            admin.create_topics([NewTopic(topic, self.settings.topic_partitions, 1)])
        except TopicAlreadyExistsError:
            return
        self._created_topics += 1
        log.info("Created topic %s with %d partitions", topic, self.settings.topic_partitions)


def discover_cluster_id(settings: Settings) -> str:
    """Ask the configured cluster for its id; a clear ConfigError when nobody answers."""
    probe = BrokerProbe(settings.bootstrap_servers or "")
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while not probe.check():
        if time.monotonic() > deadline:
            raise ConfigError(f"KAFKA_BOOTSTRAP_SERVERS={settings.bootstrap_servers}: {probe.reason}")
        time.sleep(0.5)
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            enable_auto_commit=False,
            request_timeout_ms=int(CONNECT_TIMEOUT_S * 1000),
            **settings.kafka_client_options(),
        )
    except Exception as exc:
        raise ConfigError(
            f"KAFKA_BOOTSTRAP_SERVERS={settings.bootstrap_servers}: no broker answered ({exc})"
        ) from None
    try:
        consumer.topics()
        cluster_id = consumer._client.cluster.cluster_id  # noqa: SLF001 - kafka-python has no public getter
    except Exception as exc:
        raise ConfigError(f"KAFKA_BOOTSTRAP_SERVERS={settings.bootstrap_servers}: {exc}") from None
    finally:
        consumer.close()
    return cluster_id or settings.bootstrap_servers or "kafka"
