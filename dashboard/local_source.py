"""The :class:`~dashboard.source.Source` of a dashboard whose backend runs in this process."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from backend import analytics, export
from backend.analytics import ErrorGroup
from backend.bus import EventBus
from backend.gateway.http_policy import STREAM_TICKETS
from backend.service import Backend, Produced
from backend.store import LogRow, RecordMatch, Store
from dashboard.views import ConsumerView, PartitionView, Rows, SourceStatus, Topics, sorted_partitions


class LocalSource:
    """The backend running in this process: its store read directly, its bus shared."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.settings = backend.settings

    @property
    def mode(self) -> str:
        return "embedded broker" if self.settings.embedded else "Kafka cluster"

    @property
    def bus(self) -> EventBus:
        return self.backend.bus

    @property
    def store(self) -> Store:
        """The backend's store (open from start to stop)."""
        store = self.backend.store
        if store is None:
            raise RuntimeError("the backend's store is not open (starting or stopping)")
        return store

    # --- the system ---------------------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        return self.backend.statistics()

    def status(self) -> SourceStatus:
        health = self.backend.health()
        return SourceStatus(
            mode=self.mode,
            broker=health.broker,
            broker_reachable=health.broker_reachable,
            healthy=health.ok,
            reason=health.reason,
            active_consumers=self.backend.active_consumers(),
            gateway_url=self.gateway_url() if self.gateway_serving() else None,
            gateway_clients=self.gateway_clients(),
        )

    def gateway_url(self) -> str:
        host = self.settings.gateway_host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.settings.gateway_port}"

    def gateway_serving(self) -> bool:
        """Whether this process serves the gateway (and so the browser can subscribe to /ws)."""
        return bool(self.backend.http_serving())

    def gateway_clients(self) -> int | None:
        """Socket.IO and /ws clients of the gateway this process serves (None when unknown)."""
        try:
            return self.backend.gateway_clients()
        except Exception:  # a status line must never break the page
            return None

    def browser_stream(self) -> dict[str, Any] | None:
        """Where a browser can subscribe to the events (/ws), or None when nobody serves them.

        With AUTH_TOKEN set the browser gets a fresh stream ticket (minted here, where the gateway
        checks them), never the token: every snapshot carries a new one, so the panel always has
        one younger than the ticket lifetime when it (re)connects.
        """
        if not self.gateway_serving():
            return None
        url = self.gateway_url().replace("http://", "ws://", 1) + "/ws"
        bound_to_all = self.settings.gateway_host in ("0.0.0.0", "::", "")
        ticket = STREAM_TICKETS.mint().ticket if self.settings.auth_token else None
        return {"url": url, "ticket": ticket, "sameHost": bound_to_all}

    def consumers(self) -> list[ConsumerView]:
        return [
            ConsumerView(
                snap.consumer_id,
                snap.status,
                sorted_partitions(
                    [
                        PartitionView(name, s.position, s.highwater, s.lag)
                        for name, s in snap.partitions.items()
                    ]
                ),
                snap.processed,
                snap.failed,
                snap.started_at,
                snap.last_error,
            )
            for snap in self.backend.consumers()
        ]

    def start_consumer(self) -> str:
        return self.backend.start_consumer()

    def stop_consumer(self, consumer_id: str) -> bool:
        return self.backend.stop_consumer(consumer_id)

    def produce(self, topic: str, value: bytes, data_type: str, key: bytes | None = None) -> Produced:
        return self.backend.produce(topic, value, data_type, key=key)

    def close(self) -> None:
        self.backend.stop()

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
        return self.store.logs(limit, status, topic, since_ms, until_ms, text, offset, match=match)

    def count_logs(
        self,
        status: str | None = None,
        topic: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        text: str | None = None,
        match: RecordMatch | None = None,
    ) -> int:
        return self.store.count_logs(status, topic, since_ms, until_ms, text, match)

    def export_logs(
        self,
        status: str | None = None,
        topic: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        text: str | None = None,
        match: RecordMatch | None = None,
    ) -> Iterator[list[Any]]:
        yield list(export.COLUMNS)
        for row in self.store.iter_logs(status, topic, since_ms, until_ms, text, match):
            yield export.cells(row)

    def log(self, log_id: str) -> LogRow | None:
        return self.store.log(log_id)

    def topics(self) -> list[str]:
        return self.store.topics()

    # --- analytics ----------------------------------------------------------------------------

    def time_bounds(self) -> tuple[int | None, int | None]:
        return analytics.time_bounds(self.store)

    def kept_from(self) -> int | None:
        return analytics.kept_from(self.store)

    def throughput(self, since_ms: int, bucket_ms: int = 1000) -> Rows:
        return analytics.throughput(self.store, since_ms, bucket_ms)

    def volume(
        self, bucket_ms: int, since_ms: int | None = None, until_ms: int | None = None, topics: Topics = None
    ) -> Rows:
        return analytics.volume(self.store, bucket_ms, since_ms, until_ms, topics)

    def failure_rate(
        self, bucket_ms: int, since_ms: int | None = None, until_ms: int | None = None, topics: Topics = None
    ) -> Rows:
        return analytics.failure_rate(self.store, bucket_ms, since_ms, until_ms, topics)

    def latency(
        self,
        bucket_ms: int,
        kind: str = "processing",
        since_ms: int | None = None,
        until_ms: int | None = None,
        topics: Topics = None,
    ) -> Rows:
        return analytics.latency(self.store, bucket_ms, kind, since_ms, until_ms, topics)

    def top_errors(
        self, limit: int = 20, since_ms: int | None = None, until_ms: int | None = None, topics: Topics = None
    ) -> Rows:
        return analytics.top_errors(self.store, limit, since_ms, until_ms, topics)

    def topic_summary(self, since_ms: int | None = None) -> Rows:
        return analytics.topic_summary(self.store, since_ms)

    def numeric_fields(
        self, since_ms: int | None = None, until_ms: int | None = None, topics: Topics = None
    ) -> Rows:
        return analytics.numeric_fields(self.store, since_ms, until_ms, topics)

    def field_series(
        self,
        name: str,
        bucket_ms: int,
        since_ms: int | None = None,
        until_ms: int | None = None,
        topics: Topics = None,
    ) -> Rows:
        return analytics.field_series(self.store, name, bucket_ms, since_ms, until_ms, topics)

    def error_groups(self) -> list[ErrorGroup]:
        return analytics.error_groups(self.store)

    def failed_records(self, group: ErrorGroup, limit: int = 200) -> Rows:
        return analytics.failed_records(self.store, group.errors, limit)
