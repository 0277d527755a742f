"""The stats publisher on its own: fed by plain functions, no store, no bus, no consumers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from backend import events
from backend.stats import StatsPublisher, statistics
from backend.store import Counts


class Published:
    """A publish function that keeps what it was given."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any], float]] = []
        self._changed = threading.Condition()

    def __call__(self, name: str, data: dict[str, Any]) -> None:
        with self._changed:
            self.items.append((name, data, time.monotonic()))
            self._changed.notify_all()

    def wait_for(self, predicate: Any, timeout: float = 2.0) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: predicate(self.items), timeout), self.items


@pytest.fixture
def counts() -> list[Counts]:
    return [Counts(0, 0, 0)]


@pytest.fixture
def published() -> Published:
    return Published()


@pytest.fixture
def publisher(counts: list[Counts], published: Published) -> Iterator[StatsPublisher]:
    stats = StatsPublisher(lambda: counts[0], lambda: 2, published)
    stats.start()
    yield stats
    stats.stop()
    stats.join(2)
    assert not stats.is_alive()


def test_the_payload_is_the_counts_and_the_active_consumers() -> None:
    data = statistics(Counts(5, 3, 1), 2)
    assert {k: v for k, v in data.items() if k != "timestamp"} == {
        "totalMessages": 5,
        "processedMessages": 3,
        "failedMessages": 1,
        "activeConsumers": 2,
    }
    assert statistics(None, 1)["totalMessages"] == 0 and statistics(None, 1)["activeConsumers"] == 1


def test_nothing_is_published_until_something_changed(
    publisher: StatsPublisher, published: Published
) -> None:
    time.sleep(0.1)
    assert published.items == []


def test_a_consumer_start_or_stop_publishes_stats(publisher: StatsPublisher, published: Published) -> None:
    publisher.consumers_changed()
    published.wait_for(lambda items: len(items) == 1)
    name, data, _ = published.items[0]
    assert name == events.STATS_UPDATED and data["activeConsumers"] == 2


def test_a_burst_is_merged_and_the_latest_counts_arrive_within_100_ms(
    publisher: StatsPublisher, counts: list[Counts], published: Published
) -> None:
    for n in range(1, 201):
        counts[0] = Counts(n, n, 0)
        publisher.counts_changed()
    changed_at = time.monotonic()
    published.wait_for(lambda items: items and items[-1][1]["totalMessages"] == 200)
    assert published.items[-1][2] - changed_at < 0.1
    assert len(published.items) < 200  # merged: not one event per change
    assert all(name == events.STATS_UPDATED for name, _, _ in published.items)
