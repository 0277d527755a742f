"""Health's view of partitions: one with records waiting that does not move is reported, once it is old."""

from __future__ import annotations

from backend.consumers import ConsumerSnapshot, PartitionState
from backend.progress import PartitionProgress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def consumer(**partitions: tuple[int, int]) -> ConsumerSnapshot:
    """A consumer holding ``name=(position, highwater)`` partitions."""
    states = {name.replace("_", "-"): PartitionState(*place) for name, place in partitions.items()}
    return ConsumerSnapshot("consumer-1", "ACTIVE", states)


def test_a_partition_that_does_not_move_with_records_waiting_is_reported_after_the_delay() -> None:
    clock = Clock()
    progress = PartitionProgress(stall_after_s=30, clock=clock)
    assert progress.stalled([consumer(orders_0=(5, 10))]) is None
    clock.now += 29
    assert progress.stalled([consumer(orders_0=(5, 10))]) is None
    clock.now += 2
    assert progress.stalled([consumer(orders_0=(5, 10))]) == (
        "orders-0 has not advanced for 31 s with 5 records waiting"
    )
    assert progress.stalled([consumer(orders_0=(6, 10))]) is None  # it moved: ok again at once


def test_a_caught_up_or_moving_partition_is_never_reported() -> None:
    clock = Clock()
    progress = PartitionProgress(stall_after_s=30, clock=clock)
    for step in range(10):
        clock.now += 10
        assert progress.stalled([consumer(idle_0=(7, 7), busy_1=(step * 100, 10_000))]) is None


def test_a_partition_handed_to_another_consumer_starts_afresh() -> None:
    clock = Clock()
    progress = PartitionProgress(stall_after_s=30, clock=clock)
    progress.stalled([consumer(orders_0=(5, 10))])
    clock.now += 20
    progress.stalled([consumer()])  # revoked
    clock.now += 20
    assert progress.stalled([consumer(orders_0=(5, 10))]) is None
