"""``stats-updated``: the exact counts and the number of active consumers.

The contract: ``stats-updated`` follows every processed/failed message; under load several may be
merged into one, but the latest counts reach clients within 100 ms. A view publishes one after each
events-topic record that added rows (backend/view.py), so a worker's batch costs one event.
"""

from __future__ import annotations

from typing import Any

from backend import wire
from backend.store import Counts


def statistics(counts: Counts | None, active_consumers: int) -> dict[str, Any]:
    """The stats-updated payload (also ``GET /api/consumers/statistics``); no counts yet: zeros."""
    if counts is None:
        return wire.statistics_body(0, 0, 0, active_consumers)
    return wire.statistics_body(counts.total, counts.processed, counts.failed, active_consumers)
