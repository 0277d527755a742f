"""The consumer group as the broker sees it: members, their partitions, committed and end offsets.

A consumer thread's own idea of its state can be wrong: a consumer that the coordinator removed
for missed heartbeats still thinks it holds its partitions until its next successful poll, and
the in-process list said ACTIVE, lag 0, while the broker said the group was Empty (issue 12).
So the status comes from the broker: once a second :class:`GroupObserver` asks the coordinator
to describe the group (DescribeGroups), fetches its committed offsets (OffsetFetch) and the
log-end offset of every source partition (ListOffsets, from a consumer without a group), and
keeps the result as an immutable :class:`GroupState`. Callers read :meth:`GroupObserver.latest`,
which never waits on the network.

Kafka calls stay in the observer's thread; everything that interprets a state
(:func:`parse_members`, :func:`consumer_id_of`, :func:`describe_consumers`) is pure.

The embedded broker (Tansu): OffsetFetch, Metadata and ListOffsets work, but kafka-python cannot
read Tansu's DescribeGroups answer (``ValueError: 15 is not a valid ACLOperation``: Tansu sets an
authorized-operations bit kafka-python does not know), and the embedded pool assigns partitions
itself rather than joining a group, so there would be no members to describe anyway. There the
observer has no state: ``latest()`` is None, and the failure is logged once, at debug level.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer
from kafka.structs import TopicPartition

from backend.config import Settings
from backend.log_end import partition_name

log = logging.getLogger(__name__)

INTERVAL_S = 1.0
#: After a failure the next try waits twice as long, up to this: a broker that is away (or cannot
#: describe groups at all) costs a request every 10 s, not one a second.
MAX_BACKOFF_S = 10.0
#: Each Kafka call gives up after this, so a dead broker never stalls the observer for long.
REQUEST_TIMEOUT_MS = 5_000

# What the broker calls a group with no committed offsets and no members (DescribeGroups answers
# GroupIdNotFound for it on Apache Kafka 4.x): an empty group, as far as a dashboard is concerned.
DEAD = "Dead"


@dataclass(frozen=True)
class Member:
    """One member of the group: who it is and which partitions (``topic-p``) it holds."""

    member_id: str
    client_id: str
    client_host: str
    partitions: tuple[str, ...]


@dataclass(frozen=True)
class PartitionOffsets:
    """A source partition's committed offset (None: never committed) and log-end offset."""

    committed: int | None
    end: int | None

    @property
    def lag(self) -> int | None:
        """Records not yet committed by the group; None while either offset is unknown."""
        if self.end is None:
            return None
        return max(self.end - (self.committed or 0), 0)


@dataclass(frozen=True)
class GroupState:
    """The group at one moment (``observed_at``, time.monotonic()), as the broker described it."""

    group_id: str
    state: str  # Stable, PreparingRebalance, CompletingRebalance, Empty, Dead
    members: tuple[Member, ...]
    partitions: Mapping[str, PartitionOffsets] = field(default_factory=dict)  # every source partition
    observed_at: float = 0.0

    @property
    def assigned(self) -> frozenset[str]:
        return frozenset(name for member in self.members for name in member.partitions)

    @property
    def unassigned(self) -> tuple[str, ...]:
        """Source partitions that no member holds: nobody consumes them now."""
        held = self.assigned
        return tuple(name for name in sorted(self.partitions, key=partition_sort_key) if name not in held)


def partition_sort_key(name: str) -> tuple[str, int]:
    """``topic-p`` names in topic order, then by partition number (orders-10 after orders-9)."""
    topic, _, number = name.rpartition("-")
    return topic, int(number) if number.isdigit() else -1


def consumer_id_of(client_id: str, group_id: str) -> str | None:
    """The consumerId a member's ``client_id`` stands for; None for a client that is not ours.

    Workers name their Kafka clients ``<KAFKA_GROUP_ID>-<consumerId>`` (backend/consumers.py), so
    the consumerId is what follows the group id and the dash. Another application in the same
    group (or a client id set by hand) has no consumerId.
    """
    prefix = f"{group_id}-"
    if not client_id.startswith(prefix) or len(client_id) == len(prefix):
        return None
    return client_id[len(prefix) :]


def parse_members(description: Mapping[str, Any]) -> tuple[Member, ...]:
    """The members of one group of ``KafkaAdminClient.describe_groups``, sorted by client id.

    kafka-python leaves an assignment it could not decode as bytes (a member of another protocol
    type, or a damaged one): such a member is listed, holding nothing we can name.
    """
    members = []
    for raw in description.get("members") or ():
        assignment = raw.get("member_assignment")
        names: list[str] = []
        if isinstance(assignment, Mapping):
            for topic in assignment.get("assigned_partitions") or ():
                names.extend(f"{topic['topic']}-{p}" for p in topic.get("partitions") or ())
        members.append(
            Member(
                member_id=str(raw.get("member_id") or ""),
                client_id=str(raw.get("client_id") or ""),
                client_host=str(raw.get("client_host") or "").lstrip("/"),
                partitions=tuple(sorted(names, key=partition_sort_key)),
            )
        )
    return tuple(sorted(members, key=lambda m: (m.client_id, m.member_id)))


def group_state_name(description: Mapping[str, Any]) -> str:
    """The group's state; raises for an error other than "no such group" (an empty group)."""
    error = description.get("error")
    if error and "GroupIdNotFound" not in str(error):
        raise RuntimeError(f"describing group {description.get('group_id')!r} failed: {error}")
    return str(description.get("group_state") or DEAD)


@dataclass(frozen=True)
class ConsumerStatus:
    """What the broker says about one consumerId: in the group or not, holding what, and why not."""

    consumer_id: str
    in_group: bool
    partitions: tuple[str, ...] = ()
    reason: str | None = None


def describe_consumers(state: GroupState, known: Iterable[str]) -> dict[str, ConsumerStatus]:
    """Each consumerId in ``known`` (the ones we started) plus every member of ours in the group.

    A known consumer without a member is out of the group: stopped, crashed, or removed by the
    coordinator (missed heartbeats, or a poll loop slower than ``max_poll_interval_ms``). A
    consumerId with two members (a restarted worker whose old member has not expired yet) holds
    the partitions of both.
    """
    held: dict[str, list[str]] = {}
    for member in state.members:
        consumer_id = consumer_id_of(member.client_id, state.group_id)
        if consumer_id is not None:
            held.setdefault(consumer_id, []).extend(member.partitions)
    result = {
        consumer_id: ConsumerStatus(
            consumer_id,
            in_group=False,
            reason=f"not a member of group {state.group_id} (broker: {state.state}, "
            f"{len(state.members)} members)",
        )
        for consumer_id in known
    }
    for consumer_id, names in held.items():
        result[consumer_id] = ConsumerStatus(
            consumer_id, in_group=True, partitions=tuple(sorted(names, key=partition_sort_key))
        )
    return result


class GroupObserver(threading.Thread):
    """Describes the group once a second in its own thread; :meth:`latest` reads the last result.

    One KafkaAdminClient (DescribeGroups, OffsetFetch) and one KafkaConsumer without a group
    (Metadata, ListOffsets). On any failure both are closed, ``latest()`` becomes None (an old
    state would claim members that may be gone), and they are made again on the next try, after a
    back-off that doubles up to MAX_BACKOFF_S. A failure is logged once per distinct message.
    ``on_state`` (optional) is called in this thread with each new state.
    """

    def __init__(
        self,
        bootstrap: str,
        settings: Settings,
        interval_s: float = INTERVAL_S,
        on_state: Callable[[GroupState], None] | None = None,
    ) -> None:
        super().__init__(name="group-observer", daemon=True)
        self.bootstrap = bootstrap
        self.settings = settings
        self.interval_s = interval_s
        self.on_state = on_state
        self._latest: GroupState | None = None
        self._stopping = threading.Event()
        self._admin: KafkaAdminClient | None = None
        self._consumer: KafkaConsumer | None = None
        self._last_error: str | None = None

    def latest(self) -> GroupState | None:
        """The group as last described; None before the first description and after a failure."""
        return self._latest

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        wait = 0.0
        try:
            while not self._stopping.wait(wait):
                wait = self._observe_once(wait)
        finally:
            self._close()

    def _observe_once(self, last_wait: float) -> float:
        """One description; the wait before the next one."""
        try:
            state = self.observe()
        except Exception as exc:
            self._latest = None
            self._close()
            self._note_failure(exc)
            return min(max(last_wait * 2, self.interval_s), MAX_BACKOFF_S)
        if self._last_error is not None:
            log.info("group %s: described again", self.settings.group_id)
            self._last_error = None
        self._latest = state
        if self.on_state is not None:
            self.on_state(state)
        return self.interval_s

    def _note_failure(self, exc: Exception) -> None:
        message = f"{type(exc).__name__}: {exc}"
        if message != self._last_error:
            # The embedded broker always fails here (see the module docstring): not worth a warning.
            level = logging.DEBUG if self.settings.embedded else logging.WARNING
            log.log(level, "group %s: cannot describe it (%s); retrying", self.settings.group_id, message)
            self._last_error = message

    def observe(self) -> GroupState:
        """Ask the broker now (in the calling thread; raises on any failure)."""
        group_id = self.settings.group_id
        admin, consumer = self._clients()
        description = admin.describe_groups([group_id])[group_id]
        state_name = group_state_name(description)
        members = parse_members(description)
        sources = self._source_partitions(consumer)
        committed = admin.list_group_offsets({group_id: sources}).get(group_id, {}) if sources else {}
        ends = consumer.end_offsets(sources, timeout_ms=REQUEST_TIMEOUT_MS) if sources else {}
        partitions = {
            partition_name(tp): PartitionOffsets(_committed_offset(committed.get(tp)), ends.get(tp))
            for tp in sources
        }
        return GroupState(group_id, state_name, members, partitions, time.monotonic())

    def _source_partitions(self, consumer: KafkaConsumer) -> list[TopicPartition]:
        """Every partition of every topic the workers consume (per KAFKA_TOPICS), fresh metadata."""
        found: list[TopicPartition] = []
        for topic in sorted(consumer.topics()):
            if self.settings.topic_matches(topic):
                found.extend(
                    TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
                )
        return found

    def _clients(self) -> tuple[KafkaAdminClient, KafkaConsumer]:
        options = {
            "bootstrap_servers": self.bootstrap,
            "client_id": "dashboard-group-observer",  # not "<group>-...": never taken for a consumer
            "request_timeout_ms": REQUEST_TIMEOUT_MS,
            "reconnect_backoff_max_ms": 2_000,
            **self.settings.kafka_client_options(),
        }
        if self._admin is None:
            self._admin = KafkaAdminClient(**options)
        if self._consumer is None:
            self._consumer = KafkaConsumer(enable_auto_commit=False, **options)
        return self._admin, self._consumer

    def _close(self) -> None:
        for client in (self._admin, self._consumer):
            if client is None:
                continue
            try:
                client.close()
            except Exception:  # closing a client of a dead broker: nothing left to save
                log.debug("group observer: error while closing a client", exc_info=True)
        self._admin = self._consumer = None


def _committed_offset(value: Any) -> int | None:
    """OffsetFetch says -1 for a partition the group never committed."""
    offset = getattr(value, "offset", None)
    return offset if isinstance(offset, int) and offset >= 0 else None
