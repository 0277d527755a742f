"""The :class:`~dashboard.source.Source` of a dashboard attached to a backend elsewhere (BACKEND_URL).

Every read is a REST call to the backend's gateway, its answer parsed with the
models of :mod:`backend.wire` (the same models that document the routes), and
turned into what the local source returns: :class:`~backend.store.LogRow`,
analytics rows with the keys of :mod:`backend.analytics`, views. Records are
produced through the backend's producer API. Live events come from a
background client of the gateway's ``/ws``, mirrored into a local
:class:`~backend.bus.EventBus` that keeps the gateway's sequence numbers.

Nothing here opens the backend's SQLite file: the backend may run on another
machine.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

from backend import events, wire
from backend.analytics import ErrorGroup
from backend.bus import EventBus
from backend.config import ConfigError, Settings
from backend.service import Produced
from backend.store import LogRow, RecordMatch
from dashboard.views import ConsumerView, PartitionView, Rows, SourceStatus, Topics, sorted_partitions

log = logging.getLogger(__name__)

HTTP_TIMEOUT_S = 10.0
CONSUMERS_REFRESH_S = 3.0
# A stream ticket opens /ws for 60 s after it is minted; one fetched less than this long ago is handed
# out again, so browsers get one at most this old (plus the time to their next snapshot, <= 15 s).
TICKET_REUSE_S = 10.0


class RestError(RuntimeError):
    """An error answer of the backend: its status and its ``{"error"}`` text."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class RestClient:
    """JSON over HTTP with the backend's bearer token; an error answer raises :class:`RestError`."""

    def __init__(self, base: str, token: str | None) -> None:
        self.base = base
        self.token = token

    def request(self, method: str, url: str, body: bytes | None = None, content_type: str = "") -> Any:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
                text = response.read().decode("utf-8")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", errors="replace")
            with contextlib.suppress(ValueError, AttributeError):
                detail = json.loads(detail).get("error", detail)
            raise RestError(f"{method} {url}: {exc.code} {detail}", exc.code) from None
        return json.loads(text) if text else None

    def get(self, path: str, query: dict[str, Any] | None = None) -> Any:
        """GET a path of the base URL with a query (None values are left out)."""
        return self.request("GET", self.url(path, query))

    def url(self, path: str, query: dict[str, Any] | None = None) -> str:
        params = {k: v for k, v in (query or {}).items() if v is not None}
        encoded = urllib.parse.urlencode(params)
        return self.base + path + ("?" + encoded if encoded else "")

    def csv_rows(self, path: str, query: dict[str, Any] | None = None) -> Iterator[list[str]]:
        """GET a CSV answer and yield its rows as they arrive (never the whole body in memory)."""
        url = self.url(path, query)
        headers = {"Accept": "text/csv"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(url, method="GET", headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", errors="replace")
            with contextlib.suppress(ValueError, AttributeError):
                detail = json.loads(detail).get("error", detail)
            raise RestError(f"GET {url}: {exc.code} {detail}", exc.code) from None
        with response:
            yield from csv.reader(io.TextIOWrapper(response, encoding="utf-8", newline=""))


def _scope(since_ms: int | None, until_ms: int | None, topics: Topics) -> dict[str, Any]:
    return {"sinceMs": since_ms, "untilMs": until_ms, "topics": ",".join(topics) if topics else None}


def _log_filters(
    status: str | None,
    topic: str | None,
    since_ms: int | None,
    until_ms: int | None,
    text: str | None,
    match: RecordMatch | None,
) -> dict[str, Any]:
    """The query of /api/analytics/logs, /logs/count and /logs/export."""
    query = {"status": status, "topic": topic, "text": text, **_scope(since_ms, until_ms, None)}
    if match is not None:
        query.update(
            key=match.key,
            keyMatch="prefix" if match.key_prefix else None,
            header=match.header,
            headerValue=match.header_value,
        )
    return query


def log_row(body: wire.LogBody) -> LogRow:
    """A REST log body as the store's row (its payload and result when the body has them)."""
    return LogRow(
        log_id=body.logId,
        cluster_id="",
        topic=body.topic,
        partition=body.partition,
        offset=int(body.offset),
        record_key=body.key,
        data_type=body.dataType,
        row_count=body.rowCount,
        status=body.status,
        consumer_id=body.consumerId,
        error=body.error,
        produced_ms=events.ms_from_iso(body.producedAt),
        received_ms=events.ms_from_iso(body.receivedAt) or 0,
        started_ms=events.ms_from_iso(body.startedAt),
        completed_ms=events.ms_from_iso(body.completedAt),
        size_bytes=body.sizeBytes,
        payload=getattr(body, "payload", None),
        result=getattr(body, "result", None),
        key_base64=body.keyBase64,
        headers=[header.model_dump(exclude_unset=True) for header in body.headers],
        headers_truncated=body.headersTruncated,
        value_bytes=_bytes(getattr(body, "valueBase64", None)),
    )


def _bytes(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


def consumer_view(body: wire.ConsumerBody) -> ConsumerView:
    partitions = [PartitionView(name, lag=body.lag.get(name)) for name in body.partitions]
    return ConsumerView(
        body.consumerId,
        body.status,
        sorted_partitions(partitions),
        body.processedMessages,
        body.failedMessages,
        body.startedAt,
        body.lastError,
    )


def error_group(body: wire.ErrorGroupBody) -> ErrorGroup:
    return ErrorGroup(
        body.pattern,
        body.count,
        body.retriable,
        body.first_ms,
        body.last_ms,
        set(body.topics),
        list(body.errors),
        body.example,
    )


class RemoteSource:
    """A backend running elsewhere, reached through its gateway (BACKEND_URL) and producer API."""

    mode = "attached"

    def __init__(self, settings: Settings) -> None:
        assert settings.backend_url
        self.settings = settings
        self.base = settings.backend_url
        parts = urllib.parse.urlsplit(self.base)
        self.host = parts.hostname or "127.0.0.1"
        self.ws_url = urllib.parse.urlunsplit(
            ("wss" if parts.scheme == "https" else "ws", parts.netloc, "/ws", "", "")
        )
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.producer_base = f"{parts.scheme}://{host}:{settings.producer_port}"
        self.rest = RestClient(self.base, settings.auth_token)
        self.bus = EventBus()
        self.connected = False
        self._stats: dict[str, Any] = wire.statistics_body(0, 0, 0, 0)
        self._health: dict[str, Any] = {}
        self._consumers: list[ConsumerView] = []
        self._consumers_at = 0.0
        self._consumers_seq = -1
        self._ticket: tuple[float, str] | None = None  # (monotonic time fetched, ticket)
        self._ticket_failing = False
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gateway-mirror", daemon=True)

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> RemoteSource:
        try:
            self._stats = self._fetch_statistics()
        except OSError as exc:
            raise ConfigError(f"BACKEND_URL={self.base}: no backend answered ({_reason(exc)})") from None
        self._refresh_health()
        self._thread.start()
        return self

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(5)

    # --- the system ---------------------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        return dict(self._stats)

    def _fetch_statistics(self) -> dict[str, Any]:
        return wire.parse(wire.StatisticsBody, self.rest.get("/api/consumers/statistics")).model_dump()

    def _refresh_health(self) -> None:
        try:
            self._health = wire.parse(wire.HealthBody, self.rest.get("/api/health")).model_dump()
        except (RuntimeError, ValueError) as exc:  # 503 carries the reason; ValueError: not a health body
            self._health = {"status": "unavailable", "reason": str(exc)}
        except OSError as exc:
            self._health = {"status": "unavailable", "reason": _reason(exc)}

    def status(self) -> SourceStatus:
        health = self._health
        return SourceStatus(
            mode=self.mode,
            broker=str(health.get("broker") or "?"),
            broker_reachable=health.get("brokerReachable"),
            healthy=health.get("status") == "ok",
            reason=health.get("reason"),
            active_consumers=int(self._stats.get("activeConsumers", 0)),
            gateway_url=self.base,
            gateway_clients=clients if isinstance(clients := health.get("gatewayClients"), int) else None,
            stream_connected=self.connected,
        )

    def browser_stream(self) -> dict[str, Any] | None:
        """The backend's /ws for the browser; with AUTH_TOKEN set, with a stream ticket, never the token.

        None when no ticket can be had (the backend refuses or is away): the panel then shows the
        snapshots, which keep working through this server.
        """
        if not self.settings.auth_token:
            return {"url": self.ws_url, "ticket": None, "sameHost": False}
        ticket = self._stream_ticket()
        return None if ticket is None else {"url": self.ws_url, "ticket": ticket, "sameHost": False}

    def _stream_ticket(self) -> str | None:
        """A recent ticket from ``POST /api/stream-tickets`` (asked for with the bearer token)."""
        cached = self._ticket
        if cached is not None and time.monotonic() - cached[0] < TICKET_REUSE_S:
            return cached[1]
        try:
            answer = self.rest.request("POST", self.base + "/api/stream-tickets")
            body = wire.parse(wire.StreamTicketBody, answer)
        except (OSError, RuntimeError, ValueError) as exc:  # RestError is a RuntimeError
            if not self._ticket_failing:
                log.warning("No stream ticket from %s (browsers use snapshots): %s", self.base, _reason(exc))
            self._ticket_failing = True
            return None
        self._ticket_failing = False
        self._ticket = (time.monotonic(), body.ticket)
        return body.ticket

    def consumers(self) -> list[ConsumerView]:
        """The consumer list over REST, fetched again only after something changed."""
        changed = self.bus.last_seq != self._consumers_seq
        if changed and time.monotonic() - self._consumers_at > CONSUMERS_REFRESH_S:
            self.refresh_consumers()
        return list(self._consumers)

    def refresh_consumers(self) -> None:
        bodies = wire.parse_list(wire.ConsumerBody, self.rest.get("/api/consumers") or [])
        self._consumers = [consumer_view(body) for body in bodies]
        self._consumers_at = time.monotonic()
        self._consumers_seq = self.bus.last_seq

    def start_consumer(self) -> str:
        answer = wire.parse(wire.StartedConsumerBody, self.rest.request("POST", self.base + "/api/consumers"))
        self._consumers_at = 0.0
        return answer.consumerId

    def stop_consumer(self, consumer_id: str) -> bool:
        self.rest.request("DELETE", self.base + "/api/consumers/" + urllib.parse.quote(consumer_id))
        self._consumers_at = 0.0
        return True

    def produce(self, topic: str, value: bytes, data_type: str, key: bytes | None = None) -> Produced:
        kind = "csv" if data_type == events.CSV_BATCH else "single"
        content_type = "text/csv" if kind == "csv" else "application/json"
        url = f"{self.producer_base}/api/producers/send/{kind}?" + urllib.parse.urlencode({"topic": topic})
        answer = wire.parse(wire.ProducedBody, self.rest.request("POST", url, value, content_type))
        return Produced(answer.topic, answer.partition, int(answer.offset))

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
        query = {
            "limit": limit,
            "offset": offset,
            **_log_filters(status, topic, since_ms, until_ms, text, match),
        }
        bodies = wire.parse_list(wire.LogDetailBody, self.rest.get("/api/analytics/logs", query))
        return [log_row(body) for body in bodies]

    def count_logs(
        self,
        status: str | None = None,
        topic: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        text: str | None = None,
        match: RecordMatch | None = None,
    ) -> int:
        query = _log_filters(status, topic, since_ms, until_ms, text, match)
        return wire.parse(wire.LogCountBody, self.rest.get("/api/analytics/logs/count", query)).count

    def export_logs(
        self,
        status: str | None = None,
        topic: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        text: str | None = None,
        match: RecordMatch | None = None,
    ) -> Iterator[list[Any]]:
        """The backend's streamed CSV export (``GET /api/analytics/logs/export``), row by row."""
        query = _log_filters(status, topic, since_ms, until_ms, text, match)
        yield from self.rest.csv_rows("/api/analytics/logs/export", query)

    def log(self, log_id: str) -> LogRow | None:
        try:
            answer = self.rest.get("/api/consumers/logs/" + urllib.parse.quote(log_id, safe=""))
        except RestError as exc:
            if exc.status == 404:
                return None
            raise
        return log_row(wire.parse(wire.LogDetailBody, answer))

    def topics(self) -> list[str]:
        return wire.parse_names(self.rest.get("/api/analytics/topic-names"))

    # --- analytics ----------------------------------------------------------------------------

    def time_bounds(self) -> tuple[int | None, int | None]:
        bounds = wire.parse(wire.TimeBoundsBody, self.rest.get("/api/analytics/bounds"))
        return bounds.first_ms, bounds.last_ms

    def kept_from(self) -> int | None:
        return wire.parse(wire.TimeBoundsBody, self.rest.get("/api/analytics/bounds")).kept_from_ms

    def throughput(self, since_ms: int, bucket_ms: int = 1000) -> Rows:
        query = {"sinceMs": since_ms, "bucketMs": bucket_ms}
        return wire.rows(wire.ThroughputRow, self.rest.get("/api/analytics/throughput", query))

    def volume(
        self, bucket_ms: int, since_ms: int | None = None, until_ms: int | None = None, topics: Topics = None
    ) -> Rows:
        query = {"bucketMs": bucket_ms, **_scope(since_ms, until_ms, topics)}
        return wire.rows(wire.VolumeRow, self.rest.get("/api/analytics/volume", query))

    def failure_rate(
        self, bucket_ms: int, since_ms: int | None = None, until_ms: int | None = None, topics: Topics = None
    ) -> Rows:
        query = {"bucketMs": bucket_ms, **_scope(since_ms, until_ms, topics)}
        return wire.rows(wire.FailureRateRow, self.rest.get("/api/analytics/failure-rate", query))

    def latency(
        self,
        bucket_ms: int,
        kind: str = "processing",
        since_ms: int | None = None,
        until_ms: int | None = None,
        topics: Topics = None,
    ) -> Rows:
        query = {"bucketMs": bucket_ms, "kind": kind, **_scope(since_ms, until_ms, topics)}
        return wire.rows(wire.LatencyRow, self.rest.get("/api/analytics/latency", query))

    def top_errors(
        self, limit: int = 20, since_ms: int | None = None, until_ms: int | None = None, topics: Topics = None
    ) -> Rows:
        query = {"limit": limit, **_scope(since_ms, until_ms, topics)}
        return wire.rows(wire.TopErrorRow, self.rest.get("/api/analytics/top-errors", query))

    def topic_summary(self, since_ms: int | None = None) -> Rows:
        query = {"sinceMs": since_ms}
        return wire.rows(wire.TopicSummaryRow, self.rest.get("/api/analytics/topics", query))

    def numeric_fields(
        self, since_ms: int | None = None, until_ms: int | None = None, topics: Topics = None
    ) -> Rows:
        query = _scope(since_ms, until_ms, topics)
        return wire.rows(wire.FieldCountRow, self.rest.get("/api/analytics/fields", query))

    def field_series(
        self,
        name: str,
        bucket_ms: int,
        since_ms: int | None = None,
        until_ms: int | None = None,
        topics: Topics = None,
    ) -> Rows:
        query = {"field": name, "bucketMs": bucket_ms, **_scope(since_ms, until_ms, topics)}
        return wire.rows(wire.FieldSeriesRow, self.rest.get("/api/analytics/field-series", query))

    def error_groups(self) -> list[ErrorGroup]:
        bodies = wire.parse_list(wire.ErrorGroupBody, self.rest.get("/api/analytics/failed/groups"))
        return [error_group(body) for body in bodies]

    def failed_records(self, group: ErrorGroup, limit: int = 200) -> Rows:
        query = {"pattern": group.pattern, "limit": limit}
        return wire.rows(wire.FailedRecordRow, self.rest.get("/api/analytics/failed/records", query))

    # --- the /ws mirror -----------------------------------------------------------------------

    def _run(self) -> None:
        from websockets.sync.client import connect

        delay = 0.5
        resume: int | None = None
        while not self._stopping.is_set():
            query = {"lastSeq": resume, "token": self.settings.auth_token}
            params = urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
            try:
                with connect(self.ws_url + ("?" + params if params else ""), open_timeout=5) as ws:
                    self.connected, delay = True, 0.5
                    self._stats = self._fetch_statistics()
                    self._refresh_health()
                    self._consumers_at = 0.0
                    while not self._stopping.is_set():
                        try:
                            message = ws.recv(timeout=1.0)
                        except TimeoutError:
                            continue
                        resume = self._handle(message, resume)
            except Exception as exc:  # the gateway went away: keep trying, as the seed's client does
                if self.connected:
                    log.warning("Lost the gateway stream at %s: %s", self.ws_url, exc)
                self.connected = False
                self._refresh_health()
            self._stopping.wait(delay)
            delay = min(delay * 2, 5.0)

    def _handle(self, message: str | bytes, resume: int | None) -> int | None:
        frame = json.loads(message)
        name, data, seq = frame.get("event"), frame.get("data") or {}, frame.get("seq")
        if not isinstance(seq, int) or name not in events.BROADCAST_EVENTS:
            return resume  # connection-success, resync-required: nothing to mirror
        if seq != self.bus.last_seq + 1:
            # A gap (first connection, or the gateway no longer held what we missed): start a new
            # bus numbered like the gateway; sessions see a new bus and reload their views.
            self.bus = EventBus(start_seq=seq - 1)
        self.bus.publish(name, data)
        if name == events.STATS_UPDATED:
            self._stats = data
        return seq


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or exc)
