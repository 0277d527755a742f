"""The stats-updated payload on its own: counts and active consumers, no store, no bus."""

from __future__ import annotations

from backend.stats import statistics
from backend.store import Counts


def test_the_payload_is_the_counts_and_the_active_consumers() -> None:
    data = statistics(Counts(5, 3, 1), 2)
    assert {k: v for k, v in data.items() if k != "timestamp"} == {
        "totalMessages": 5,
        "processedMessages": 3,
        "failedMessages": 1,
        "activeConsumers": 2,
    }
    assert statistics(None, 1)["totalMessages"] == 0 and statistics(None, 1)["activeConsumers"] == 1
