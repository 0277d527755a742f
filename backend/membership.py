"""Consumer status as the broker sees it (Apache Kafka and other clusters with consumer groups).

A worker can believe its consumer runs while the broker has dropped it from the group (missed
heartbeats, a batch slower than the rebalance timeout): the issue this answers saw three
consumers listed ACTIVE for minutes while the group was empty. So a view also watches the group
(:class:`backend.group_status.GroupObserver`) and

- writes ``INACTIVE`` for a consumer the broker has not listed as a member for a session timeout
  (and ``ACTIVE`` again when it is back) to the events topic, so that every view announces the
  same change with the same ``seq`` (a second view's identical report changes nothing);
- shows each member's partitions as the broker assigned them, with lag from the group's
  committed offsets and the log-end offsets;
- tells health which source partitions no member holds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from kafka import KafkaProducer

from backend import event_log, events
from backend.cluster import ConsumerDirectory
from backend.config import Settings
from backend.consumers import ConsumerSnapshot, PartitionState
from backend.group_status import GroupObserver, GroupState, consumer_id_of

log = logging.getLogger(__name__)

#: A consumer missing from the group for this long is out: the session timeout plus a margin.
LEAVE_AFTER_S = 8.0
#: Partitions without a member for this long make health not ok (a rebalance takes a few seconds).
UNASSIGNED_AFTER_S = 10.0
INTERVAL_S = 1.0


class MembershipWatcher(threading.Thread):
    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        directory: ConsumerDirectory,
        producer: Callable[[], KafkaProducer],
        reporter: str = "view",
    ) -> None:
        super().__init__(name="membership", daemon=True)
        self.settings = settings
        self.directory = directory
        self.producer = producer
        self.reporter = reporter
        self.observer = GroupObserver(bootstrap, settings)
        self._missing_since: dict[str, float] = {}
        self._seen: dict[str, str | None] = {}  # consumer -> the life (started_at) seen as a member
        self._unassigned_since: dict[str, float] = {}
        self._stopping = threading.Event()

    def start(self) -> None:
        self.observer.start()
        super().start()

    def stop(self) -> None:
        self._stopping.set()
        self.observer.stop()

    def run(self) -> None:
        while not self._stopping.wait(INTERVAL_S):
            state = self.observer.latest()
            if state is None:
                continue
            try:
                self._compare(state, time.monotonic())
            except Exception:
                log.warning("comparing the group with the consumers failed", exc_info=True)

    def _members(self, state: GroupState) -> set[str | None]:
        return {consumer_id_of(m.client_id, self.settings.group_id) for m in state.members}

    def _compare(self, state: GroupState, now: float) -> None:
        members = self._members(state)
        for entry in self.directory.entries():
            present = entry.consumer_id in members
            if present:
                self._seen[entry.consumer_id] = entry.started_at
            # Out only if it was a member (in this life) or believes it holds partitions: a consumer
            # whose topics do not exist yet is legitimately not a member of the group.
            was_member = self._seen.get(entry.consumer_id, False) == entry.started_at or bool(
                entry.partitions
            )
            if entry.status == events.ACTIVE and entry.polled and not present and was_member:
                since = self._missing_since.setdefault(entry.consumer_id, now)
                if now - since >= LEAVE_AFTER_S:
                    self._report(entry.consumer_id, entry.worker_id, entry.started_at, events.INACTIVE,
                                 "left the group: the broker has not listed it as a member for "
                                 f"{LEAVE_AFTER_S:.0f} s (missed heartbeats or a slow batch)")  # fmt: skip
            else:
                self._missing_since.pop(entry.consumer_id, None)
            if entry.membership is not None and entry.reported == events.ACTIVE and present:
                self._report(entry.consumer_id, entry.worker_id, entry.started_at, events.ACTIVE, None)
        unassigned = set(state.unassigned)
        self._unassigned_since = {name: self._unassigned_since.get(name, now) for name in unassigned}

    def _report(
        self, consumer_id: str, worker_id: str, started_at: str | None, status: str, reason: str | None
    ) -> None:
        report = event_log.ConsumerReport(
            consumer_id, worker_id, status, started_at=started_at, reason=reason, reporter=self.reporter
        )
        log.warning("%s: %s%s", consumer_id, status, f" ({reason})" if reason else "")
        self.producer().send(
            self.settings.events_topic,
            value=event_log.encode_consumer(report),
            headers=event_log.headers_for(event_log.CONSUMER),
            partition=0,
        ).get(timeout=15)
        self._missing_since.pop(consumer_id, None)

    def unassigned_reason(self) -> str | None:
        """Why health is not ok: source partitions that no member has held for a while."""
        now = time.monotonic()
        long = sorted(
            name for name, since in self._unassigned_since.items() if now - since >= UNASSIGNED_AFTER_S
        )
        if not long:
            return None
        shown = ", ".join(long[:5]) + (f" and {len(long) - 5} more" if len(long) > 5 else "")
        return f"no consumer of the group holds {shown}"

    def overlay(self, snapshots: list[ConsumerSnapshot]) -> list[ConsumerSnapshot]:
        """The consumers with the partitions the broker assigned them, lag from committed offsets;
        members no worker reported (another application in the same group) are added."""
        state = self.observer.latest()
        if state is None:
            return snapshots
        by_id = {snapshot.consumer_id: snapshot for snapshot in snapshots}
        for member in state.members:
            consumer_id = consumer_id_of(member.client_id, self.settings.group_id) or member.client_id
            snapshot = by_id.get(consumer_id)
            if snapshot is None:
                snapshot = by_id[consumer_id] = ConsumerSnapshot(consumer_id, events.ACTIVE)
                snapshots.append(snapshot)
            reported = snapshot.partitions
            snapshot.partitions = {
                name: _partition_state(state, name, reported.get(name)) for name in sorted(member.partitions)
            }
        return snapshots


def _partition_state(state: GroupState, name: str, reported: PartitionState | None) -> PartitionState:
    """The group's committed offset against the log end; before any commit, the worker's position."""
    offsets = state.partitions.get(name)
    if offsets is None:
        return reported or PartitionState()
    position = offsets.committed
    if position is None and reported is not None:
        position = reported.position
    end = offsets.end if offsets.end is not None else (reported.highwater if reported else None)
    return PartitionState(position, end)
