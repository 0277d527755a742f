"""The event bus: sequence numbers, replay window, thread-safe publishing."""

from __future__ import annotations

import threading

from backend.bus import SEQ_BLOCK, EventBus
from backend.events import Event


def test_sequence_numbers_increase_by_one() -> None:
    bus = EventBus()
    seqs = [bus.publish("x", {"i": i}).seq for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]


def test_since_returns_what_follows_or_none_when_gone() -> None:
    bus = EventBus(capacity=3)
    for i in range(5):
        bus.publish("x", {"i": i})
    assert [e.seq for e in bus.since(3)] == [4, 5]
    assert bus.since(5) == []
    assert bus.since(1) is None  # events 2.. are partly gone
    assert bus.since(99) is None  # a cursor from another life of the bus


def test_subscribe_from_has_no_gap_and_no_double() -> None:
    bus = EventBus()
    for i in range(3):
        bus.publish("x", {"i": i})
    seen: list[Event] = []
    backlog, unsubscribe = bus.subscribe_from(1, seen.append)
    bus.publish("x", {"i": 3})
    unsubscribe()
    bus.publish("x", {"i": 4})
    assert [e.seq for e in backlog + seen] == [2, 3, 4]


def test_concurrent_publishers_get_distinct_ordered_numbers() -> None:
    bus = EventBus(capacity=10_000)
    received: list[int] = []
    bus.subscribe(lambda event: received.append(event.seq))

    def publish_many() -> None:
        for _ in range(500):
            bus.publish("x", {})

    threads = [threading.Thread(target=publish_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert received == list(range(1, 2001))


def test_a_failing_subscriber_is_dropped_and_publishing_goes_on() -> None:
    bus = EventBus()

    def broken(event: Event) -> None:
        raise RuntimeError("reader bug")

    bus.subscribe(broken)
    assert bus.publish("x", {}).seq == 1
    assert bus.publish("x", {}).seq == 2


def test_numbers_continue_after_a_restart_without_reuse() -> None:
    reserved: list[int] = []
    first = EventBus(reserve=reserved.append)
    first.publish("x", {})
    assert reserved == [SEQ_BLOCK]
    second = EventBus(start_seq=reserved[-1])  # a crash: restart from the reservation
    assert second.publish("x", {}).seq == SEQ_BLOCK + 1


def test_a_batch_subscriber_gets_each_publish_whole_while_another_thread_drains() -> None:
    """The gateway drains what arrived from its own thread at every live tick: it must never take
    half a publish (a record's events without the stats-updated after them)."""
    bus = EventBus(capacity=1_000)
    lock = threading.Lock()
    inbox: list[Event] = []
    drained: list[list[Event]] = []

    def receive(published: list[Event]) -> None:
        with lock:
            inbox.extend(published)

    bus.subscribe_from(0, receive, batches=True)
    done = threading.Event()

    def drain() -> None:
        while not done.is_set():
            with lock:
                taken, inbox[:] = list(inbox), []
            if taken:
                drained.append(taken)

    reader = threading.Thread(target=drain)
    reader.start()
    for batch in range(200):
        bus.publish_many([("x", {"batch": batch}) for _ in range(499)] + [("stats", {"batch": batch})])
    done.set()
    reader.join()
    drained.append(inbox)
    assert [event.seq for chunk in drained for event in chunk] == list(range(1, 100_001))
    for chunk in drained:
        assert not chunk or (chunk[0].seq % 500 == 1 and chunk[-1].name == "stats"), "half a publish taken"
