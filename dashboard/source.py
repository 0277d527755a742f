"""Where every page gets its data: one :class:`Source` protocol, two implementations.

* :class:`~dashboard.local_source.LocalSource` wraps the backend started in
  this process (``streamlit run dashboard_app.py``): reads are function calls
  on its store (through ``backend.analytics``), live events come from the
  in-process event bus.
* :class:`~dashboard.remote_source.RemoteSource` attaches to a backend running
  elsewhere (``BACKEND_URL``), on this machine or another: every read is a REST
  call to its gateway (answers parsed with the models of ``backend/wire.py``),
  live events come from its ``/ws`` stream mirrored into a local bus. It never
  opens the backend's SQLite file.

Pages only render: they call the methods below and never import the store,
the analytics queries or the backend service. The rows the analytics methods
return are the dicts of ``backend.analytics`` (the same keys from both sources),
so a page draws and exports them the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from backend.analytics import ErrorGroup
from backend.bus import EventBus
from backend.config import Settings
from backend.service import Produced
from backend.store import LogRow, RecordMatch
from dashboard.local_source import LocalSource
from dashboard.remote_source import RemoteSource
from dashboard.views import ConsumerView, PartitionView, Rows, SourceStatus, Topics

__all__ = [
    "ConsumerView",
    "ErrorGroup",
    "LocalSource",
    "LogRow",
    "PartitionView",
    "Produced",
    "RecordMatch",
    "RemoteSource",
    "Rows",
    "Source",
    "SourceStatus",
]


class Source(Protocol):
    """Everything a page reads or does; see the module docstring for the two implementations."""

    settings: Settings

    @property
    def mode(self) -> str: ...

    @property
    def bus(self) -> EventBus: ...

    # --- the system ---------------------------------------------------------------------------

    def statistics(self) -> dict[str, Any]: ...

    def status(self) -> SourceStatus: ...

    def browser_stream(self) -> dict[str, Any] | None:
        """Where a browser can subscribe to the events itself (/ws), or None."""
        ...

    def consumers(self) -> list[ConsumerView]: ...

    def start_consumer(self) -> str: ...

    def stop_consumer(self, consumer_id: str) -> bool: ...

    def produce(self, topic: str, value: bytes, data_type: str, key: bytes | None = None) -> Produced: ...

    def close(self) -> None: ...

    # --- stored records -----------------------------------------------------------------------

    def logs(
        self,
        limit: int = 50,
        status: str | None = None,
        topic: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        text: str | None = None,
        offset: int = 0,
        match: RecordMatch | None = None,
    ) -> list[LogRow]:
        """Stored records with payloads, newest first (``text`` searches payload, error, key and
        header values; ``match`` narrows by key and header)."""
        ...

    def count_logs(
        self,
        status: str | None = None,
        topic: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        text: str | None = None,
        match: RecordMatch | None = None,
    ) -> int: ...

    def export_logs(
        self,
        status: str | None = None,
        topic: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        text: str | None = None,
        match: RecordMatch | None = None,
    ) -> Iterator[list[Any]]:
        """Every matching record as CSV cells (``backend.export``), the column names first.

        Streamed: the whole filtered set, read a page at a time, never held in memory at once.
        """
        ...

    def log(self, log_id: str) -> LogRow | None: ...

    def topics(self) -> list[str]:
        """Every topic with stored records."""
        ...

    # --- analytics (rows as backend.analytics returns them) -------------------------------------

    def time_bounds(self) -> tuple[int | None, int | None]: ...

    def kept_from(self) -> int | None:
        """Logs received before this were pruned (RETENTION); None when none were."""
        ...

    def throughput(self, since_ms: int, bucket_ms: int = 1000) -> Rows: ...

    def volume(
        self, bucket_ms: int, since_ms: int | None = None, until_ms: int | None = None, topics: Topics = None
    ) -> Rows: ...

    def failure_rate(
        self, bucket_ms: int, since_ms: int | None = None, until_ms: int | None = None, topics: Topics = None
    ) -> Rows: ...

    def latency(
        self,
        bucket_ms: int,
        kind: str = "processing",
        since_ms: int | None = None,
        until_ms: int | None = None,
        topics: Topics = None,
    ) -> Rows: ...

    def top_errors(
        self, limit: int = 20, since_ms: int | None = None, until_ms: int | None = None, topics: Topics = None
    ) -> Rows: ...

    def topic_summary(self, since_ms: int | None = None) -> Rows: ...

    def numeric_fields(
        self, since_ms: int | None = None, until_ms: int | None = None, topics: Topics = None
    ) -> Rows: ...

    def field_series(
        self,
        name: str,
        bucket_ms: int,
        since_ms: int | None = None,
        until_ms: int | None = None,
        topics: Topics = None,
    ) -> Rows: ...

    def error_groups(self) -> list[ErrorGroup]: ...

    def failed_records(self, group: ErrorGroup, limit: int = 200) -> Rows:
        """The newest failed records of this group, without payloads (see :meth:`log`)."""
        ...
