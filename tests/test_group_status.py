"""The group as the broker sees it (backend/group_status.py), against real Apache Kafka and Tansu.

Real kafka-python consumers in group mode (threads, and one in a child process for SIGKILL) on a
3-partition topic; the observer must list them with their partitions, committed and log-end
offsets as the broker's own tools report them, drop a member that left, and show the partitions
nobody holds.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from kafka import KafkaConsumer

from backend.config import Settings
from backend.group_status import (
    GroupObserver,
    GroupState,
    Member,
    PartitionOffsets,
    consumer_id_of,
    describe_consumers,
    group_state_name,
    parse_members,
)
from tests.support import create_topic, end_offsets, foreign_producer, unique, wait_for

SESSION_TIMEOUT_MS = 6_000  # as backend/consumers.py
#: A member that stops heartbeating is gone after the session timeout; its partitions move once the
#: survivors rejoin (their next heartbeat learns of the rebalance) and the observer looks again.
MOVE_DEADLINE_S = SESSION_TIMEOUT_MS / 1000 * 3
RECORDS_PER_PARTITION = {0: 5, 1: 7, 2: 11}


class GroupConsumer(threading.Thread):
    """A kafka-python consumer in group mode that polls, counts and commits until stopped."""

    def __init__(self, bootstrap: str, group_id: str, topic: str, consumer_id: str) -> None:
        super().__init__(name=consumer_id, daemon=True)
        self.consumer = KafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=group_id,
            client_id=f"{group_id}-{consumer_id}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=1_000,
            max_poll_interval_ms=10_000,
        )
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                if self.consumer.poll(timeout_ms=100):
                    self.consumer.commit()
        finally:
            self.consumer.close(autocommit=False)

    def close(self) -> None:
        self.stopping.set()
        self.join(30)
        assert not self.is_alive(), f"{self.name} did not close"


@pytest.fixture
def topic(kafka) -> str:
    """A fresh 3-partition topic with 5, 7 and 11 records on partitions 0, 1 and 2."""
    name = unique("group-status")
    create_topic(kafka.bootstrap, name, partitions=3)
    producer = foreign_producer(kafka.bootstrap)
    for partition, count in RECORDS_PER_PARTITION.items():
        for i in range(count):
            producer.send(name, value=b'{"n": %d}' % i, partition=partition)
    producer.flush()
    producer.close()
    return name


@pytest.fixture
def group_id() -> str:
    return unique("observed")


@pytest.fixture
def observer(kafka, topic: str, group_id: str) -> Iterator[GroupObserver]:
    watcher = GroupObserver(kafka.bootstrap, Settings(kafka.bootstrap, topics=(topic,), group_id=group_id))
    watcher.start()
    yield watcher
    watcher.stop()
    watcher.join(15)


def start_consumers(kafka, group_id: str, topic: str, count: int) -> list[GroupConsumer]:
    consumers = [
        GroupConsumer(kafka.bootstrap, group_id, topic, f"consumer-{n}") for n in range(1, count + 1)
    ]
    for consumer in consumers:
        consumer.start()
    return consumers


def settled(observer: GroupObserver, members: int, topic: str) -> GroupState | None:
    """The latest state once it is Stable with ``members`` members holding all three partitions."""
    state = observer.latest()
    if state is None or state.state != "Stable" or len(state.members) != members:
        return None
    return state if state.assigned == {f"{topic}-{p}" for p in range(3)} else None


def fully_committed(state: GroupState | None) -> bool:
    return state is not None and all(o.committed == o.end and o.end for o in state.partitions.values())


def test_members_partitions_and_offsets_as_the_broker_reports_them(kafka, topic, group_id, observer) -> None:
    consumers = start_consumers(kafka, group_id, topic, 3)
    try:
        wait_for(lambda: settled(observer, 3, topic), 60, "three members holding the three partitions")
        state = wait_for(
            lambda: fully_committed(observer.latest()) and observer.latest(), 60, "all committed"
        )

        assert [consumer_id_of(m.client_id, group_id) for m in state.members] == [
            "consumer-1",
            "consumer-2",
            "consumer-3",
        ]
        held = [name for member in state.members for name in member.partitions]
        assert sorted(held) == [f"{topic}-{p}" for p in range(3)], "each partition held exactly once"
        assert all(member.client_host == "127.0.0.1" and member.member_id for member in state.members)
        broker_ends = end_offsets(kafka.bootstrap, topic)  # GetOffsetShell, the broker's own tool
        assert broker_ends == RECORDS_PER_PARTITION
        assert state.partitions == {
            f"{topic}-{p}": PartitionOffsets(committed=n, end=n) for p, n in RECORDS_PER_PARTITION.items()
        }
        assert state.unassigned == ()
        assert all(o.lag == 0 for o in state.partitions.values())
    finally:
        for consumer in consumers:
            consumer.close()


def test_a_closed_member_disappears_and_its_partitions_move(kafka, topic, group_id, observer) -> None:
    consumers = start_consumers(kafka, group_id, topic, 3)
    try:
        before = wait_for(lambda: settled(observer, 3, topic), 60, "three members")
        leaving = next(m for m in before.members if m.client_id.endswith("consumer-2"))

        consumers[1].close()  # leaves the group (LeaveGroup)

        after = wait_for(lambda: settled(observer, 2, topic), MOVE_DEADLINE_S, "two members holding all")
        assert leaving.member_id not in {m.member_id for m in after.members}
        statuses = describe_consumers(after, ["consumer-1", "consumer-2", "consumer-3"])
        assert not statuses["consumer-2"].in_group
        assert "not a member" in (statuses["consumer-2"].reason or "")
        moved = set(leaving.partitions)
        assert moved and moved <= set(statuses["consumer-1"].partitions) | set(
            statuses["consumer-3"].partitions
        )
    finally:
        for consumer in consumers:
            if consumer.is_alive():
                consumer.close()


KILLABLE_CONSUMER = f"""
import sys
from kafka import KafkaConsumer
bootstrap, group_id, topic = sys.argv[1:4]
consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group_id,
    client_id=group_id + "-consumer-9", enable_auto_commit=False,
    session_timeout_ms={SESSION_TIMEOUT_MS}, heartbeat_interval_ms=1000, max_poll_interval_ms=10000)
while True:
    consumer.poll(timeout_ms=100)
"""


def test_a_killed_member_is_dropped_within_the_session_timeout(kafka, topic, group_id, observer) -> None:
    consumers = start_consumers(kafka, group_id, topic, 1)
    child = subprocess.Popen([sys.executable, "-c", KILLABLE_CONSUMER, kafka.bootstrap, group_id, topic])
    try:
        before = wait_for(lambda: settled(observer, 2, topic), 60, "the child to join")
        killed = next(m for m in before.members if consumer_id_of(m.client_id, group_id) == "consumer-9")
        assert killed.partitions, "the range assignor gives the second member a partition"

        child.send_signal(signal.SIGKILL)  # no LeaveGroup: only the session timeout removes it
        child.wait(10)

        after = wait_for(lambda: settled(observer, 1, topic), MOVE_DEADLINE_S, "the killed member gone")
        assert consumer_id_of(after.members[0].client_id, group_id) == "consumer-1"
        assert after.members[0].partitions == tuple(f"{topic}-{p}" for p in range(3))
        assert after.unassigned == ()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        for consumer in consumers:
            consumer.close()


def test_every_partition_is_unassigned_once_all_members_left(kafka, topic, group_id, observer) -> None:
    consumers = start_consumers(kafka, group_id, topic, 2)
    wait_for(lambda: settled(observer, 2, topic), 60, "two members")
    wait_for(lambda: fully_committed(observer.latest()), 60, "all committed")
    for consumer in consumers:
        consumer.close()

    def empty() -> GroupState | None:
        state = observer.latest()
        return state if state is not None and not state.members else None

    state = wait_for(empty, MOVE_DEADLINE_S, "no members")
    assert state.state == "Empty"
    assert state.unassigned == tuple(f"{topic}-{p}" for p in range(3))
    assert not any(s.in_group for s in describe_consumers(state, ["consumer-1", "consumer-2"]).values())
    # Committed offsets outlive the members: the next consumer starts right after them.
    assert {name: o.committed for name, o in state.partitions.items()} == {
        f"{topic}-{p}": n for p, n in RECORDS_PER_PARTITION.items()
    }


def test_a_group_that_never_existed_is_dead_with_every_partition_unassigned(kafka, topic, observer) -> None:
    state = wait_for(observer.latest, 30, "a first description")
    assert state.state == "Dead"
    assert state.members == ()
    assert state.unassigned == tuple(f"{topic}-{p}" for p in range(3))
    assert all(o.committed is None and o.lag == o.end for o in state.partitions.values())


def test_topics_outside_kafka_topics_and_the_events_topics_are_not_sources(kafka, group_id) -> None:
    source, other = unique("source"), unique("other")
    settings = Settings(kafka.bootstrap, topics=(), topic_pattern=r"^source-", group_id=group_id)
    for name in (source, other, settings.events_topic):
        create_topic(kafka.bootstrap, name, partitions=2)
    state = GroupObserver(kafka.bootstrap, settings).observe()
    names = set(state.partitions)
    assert {f"{source}-0", f"{source}-1"} <= names
    assert not any(n.startswith((other, settings.events_topic)) for n in names)


def test_on_the_embedded_broker_it_degrades_to_none_quietly(embedded_broker, caplog) -> None:
    settings = Settings(embedded_broker.bootstrap, group_id=unique("tansu"), attached_to_embedded=True)
    watcher = GroupObserver(embedded_broker.bootstrap, settings, interval_s=0.1)
    with caplog.at_level(logging.DEBUG, logger="backend.group_status"):
        watcher.start()
        try:
            wait_for(lambda: watcher._last_error, 30, "a first attempt")  # noqa: SLF001
            assert watcher.latest() is None
            assert watcher.is_alive()
        finally:
            watcher.stop()
            watcher.join(15)
    mine = [r for r in caplog.records if r.name == "backend.group_status"]
    assert mine and all(r.levelno <= logging.INFO for r in mine)
    assert len(mine) == len({r.getMessage() for r in mine}), "each failure is logged once"


# --- the pure part ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client_id", "expected"),
    [
        ("orders-consumer-1", "consumer-1"),
        ("orders-consumer-2-ab12cd34", "consumer-2-ab12cd34"),
        ("orders-", None),
        ("orders", None),
        ("other-consumer-1", None),
        ("", None),
        ("ORDERS-consumer-1", None),
    ],
)
def test_consumer_id_of_a_client_id(client_id: str, expected: str | None) -> None:
    assert consumer_id_of(client_id, "orders") == expected


def test_parse_members_takes_hostile_and_undecodable_descriptions() -> None:
    description = {
        "members": [
            {
                "member_id": "m2",
                "client_id": "g-consumer-2",
                "client_host": "/10.0.0.2",
                "member_assignment": {"assigned_partitions": [{"topic": "t", "partitions": [10, 9, 2]}]},
            },
            {
                "member_id": "m1",
                "client_id": "g-consumer-1",
                "client_host": None,
                "member_assignment": b"\x00",
            },
            {"member_id": None, "client_id": None},
            {"member_id": "m3", "client_id": "<script>", "member_assignment": {"assigned_partitions": None}},
        ]
    }
    members = parse_members(description)
    assert members == (
        Member("", "", "", ()),
        Member("m3", "<script>", "", ()),
        Member("m1", "g-consumer-1", "", ()),
        Member("m2", "g-consumer-2", "10.0.0.2", ("t-2", "t-9", "t-10")),
    )
    assert parse_members({}) == ()


def test_group_state_name_raises_on_a_real_error_only() -> None:
    assert group_state_name({"group_state": "Stable", "error": None}) == "Stable"
    assert group_state_name({"group_state": "Dead", "error": "[Error 69] GroupIdNotFoundError: g"}) == "Dead"
    with pytest.raises(RuntimeError, match="GroupAuthorizationFailed"):
        group_state_name({"group_id": "g", "error": "[Error 30] GroupAuthorizationFailedError: g"})


def test_describe_consumers_merges_two_members_of_one_consumer_and_ignores_strangers() -> None:
    state = GroupState(
        "g",
        "Stable",
        (
            Member("a", "g-consumer-1", "h", ("t-0",)),
            Member("b", "g-consumer-1", "h", ("t-2",)),
            Member("c", "someone-else", "h", ("t-1",)),
        ),
        {f"t-{p}": PartitionOffsets(None, 3) for p in range(4)},
    )
    statuses = describe_consumers(state, ["consumer-1", "consumer-2"])
    assert set(statuses) == {"consumer-1", "consumer-2"}
    assert statuses["consumer-1"].partitions == ("t-0", "t-2")
    assert not statuses["consumer-2"].in_group and statuses["consumer-2"].partitions == ()
    assert state.unassigned == ("t-3",)
    assert PartitionOffsets(None, None).lag is None
    assert PartitionOffsets(5, 3).lag == 0
