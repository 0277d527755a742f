"""What the pages show about consumers and the system, whichever source they read."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from backend.wire import partition_sort_key

Rows = list[dict[str, Any]]
"""Analytics rows: the dicts ``backend.analytics`` returns, the same keys from both sources."""
Topics = Sequence[str] | None
"""Topics to keep (None: all)."""


@dataclass(frozen=True)
class PartitionView:
    """One partition assigned to a consumer, with how far behind the consumer is."""

    name: str
    position: int | None = None
    highwater: int | None = None
    lag: int | None = None

    @property
    def topic(self) -> str:
        return self.name.rpartition("-")[0]

    @property
    def partition(self) -> int:
        number = self.name.rpartition("-")[2]
        return int(number) if number.isdigit() else -1


@dataclass(frozen=True)
class ConsumerView:
    """A consumer as the Consumers page shows it."""

    consumer_id: str
    status: str
    partitions: tuple[PartitionView, ...] = ()
    processed: int | None = None
    failed: int | None = None
    started_at: str | None = None
    last_error: str | None = None

    @property
    def total_lag(self) -> int | None:
        lags = [p.lag for p in self.partitions if p.lag is not None]
        return sum(lags) if lags else None


@dataclass(frozen=True)
class SourceStatus:
    """What the sidebar shows about the system."""

    mode: str
    broker: str
    broker_reachable: bool | None
    healthy: bool
    reason: str | None
    active_consumers: int
    gateway_url: str | None
    gateway_clients: int | None = None
    stream_connected: bool | None = None


def sorted_partitions(partitions: list[PartitionView]) -> tuple[PartitionView, ...]:
    """By topic, then partition number ("orders-10" after "orders-9")."""
    return tuple(sorted(partitions, key=lambda p: partition_sort_key(p.name)))
