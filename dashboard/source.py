"""Where the dashboard's data comes from: the backend in this process, or one it attaches to.

Pages see one interface whatever the mode:

* :class:`LocalSource` wraps the :class:`~backend.service.Backend` started in
  this process (``streamlit run dashboard_app.py``): every read is a function
  call, live events come from the in-process :class:`~backend.bus.EventBus`.
* :class:`RemoteSource` attaches to a backend running elsewhere
  (``BACKEND_URL``): a background client of the gateway's ``/ws`` feeds a
  local EventBus that keeps the gateway's sequence numbers, and the REST API
  answers the rest. Trends and payloads need the store itself; they are
  available when ``DATA_DIR`` points at the backend's data directory (same
  machine), which is the common case.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from backend import events
from backend.bus import EventBus
from backend.config import ConfigError, Settings
from backend.service import Backend, Produced
from backend.store import LogRow, Store

log = logging.getLogger(__name__)

HTTP_TIMEOUT_S = 10.0
CONSUMERS_REFRESH_S = 3.0
REST_LOG_LIMIT = 1000


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


def _sort_key(name: str) -> tuple[str, int]:
    topic, _, number = name.rpartition("-")
    return topic, int(number) if number.isdigit() else -1


# --------------------------------------------------------------------------------------------
# In-process backend
# --------------------------------------------------------------------------------------------


class LocalSource:
    """The backend running in this process."""

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
    def store(self) -> Store | None:
        return self.backend.store

    @property
    def reader(self) -> Store | None:
        return self.backend.store

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
            active_consumers=self.backend.pool.active_count if self.backend.pool else 0,
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
        """Where a browser can subscribe to the events (/ws), or None when nobody serves them."""
        if not self.gateway_serving():
            return None
        url = self.gateway_url().replace("http://", "ws://", 1) + "/ws"
        bound_to_all = self.settings.gateway_host in ("0.0.0.0", "::", "")
        return {"url": url, "token": self.settings.auth_token, "sameHost": bound_to_all}

    def consumers(self) -> list[ConsumerView]:
        if self.backend.pool is None:
            return []
        views = []
        for snap in self.backend.pool.snapshots():
            partitions = tuple(
                PartitionView(name, state.position, state.highwater, state.lag)
                for name, state in sorted(snap.partitions.items(), key=lambda item: _sort_key(item[0]))
            )
            views.append(
                ConsumerView(
                    snap.consumer_id,
                    snap.status,
                    partitions,
                    snap.processed,
                    snap.failed,
                    snap.started_at,
                    snap.last_error,
                )
            )
        return views

    def start_consumer(self) -> str:
        return self.backend.start_consumer()

    def stop_consumer(self, consumer_id: str) -> bool:
        return self.backend.stop_consumer(consumer_id)

    def produce(self, topic: str, value: bytes, data_type: str, key: bytes | None = None) -> Produced:
        return self.backend.produce(topic, value, data_type, key=key)

    def close(self) -> None:
        self.backend.stop()


# --------------------------------------------------------------------------------------------
# Attached to a backend elsewhere
# --------------------------------------------------------------------------------------------


class RestLogs:
    """The newest logs over REST, for an attached dashboard that cannot open the store.

    The REST API filters by topic and status only and carries no payloads, so
    time and text filters apply to the newest :data:`REST_LOG_LIMIT` logs.
    """

    def __init__(self, remote: RemoteSource) -> None:
        self.remote = remote

    def _fetch(self, status: str | None, topic: str | None) -> list[LogRow]:
        query = {"limit": REST_LOG_LIMIT, "status": status, "topic": topic}
        items = self.remote.get_json("/api/consumers/logs", query)
        items = items.get("logs", []) if isinstance(items, dict) else items
        rows = []
        for item in items or []:
            received = events.ms_from_iso(item.get("receivedAt")) or 0
            rows.append(
                LogRow(
                    log_id=item.get("logId", ""),
                    cluster_id="",
                    topic=item.get("topic", ""),
                    partition=int(item.get("partition", 0)),
                    offset=int(item.get("offset", 0)),
                    record_key=item.get("key"),
                    data_type=item.get("dataType", ""),
                    row_count=int(item.get("rowCount", 0)),
                    status=item.get("status", ""),
                    consumer_id=item.get("consumerId"),
                    error=item.get("error"),
                    produced_ms=events.ms_from_iso(item.get("producedAt")),
                    received_ms=received,
                    started_ms=events.ms_from_iso(item.get("startedAt")),
                    completed_ms=events.ms_from_iso(item.get("completedAt")),
                    size_bytes=item.get("sizeBytes"),
                )
            )
        return rows

    def logs(
        self,
        limit: int = 50,
        status: str | None = None,
        topic: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        text: str | None = None,
        offset: int = 0,
    ) -> list[LogRow]:
        rows = [
            row
            for row in self._fetch(status, topic)
            if (since_ms is None or row.received_ms >= since_ms)
            and (until_ms is None or row.received_ms < until_ms)
            and (not text or text.lower() in (row.error or "").lower())
        ]
        return rows[offset : offset + limit]

    def count_logs(
        self,
        status: str | None = None,
        topic: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        text: str | None = None,
    ) -> int:
        return len(self.logs(REST_LOG_LIMIT, status, topic, since_ms, until_ms, text))

    def log(self, log_id: str) -> LogRow | None:
        return next((row for row in self._fetch(None, None) if row.log_id == log_id), None)

    def topics(self) -> list[str]:
        return sorted({row.topic for row in self._fetch(None, None)})


class RemoteSource:
    """A backend running elsewhere, reached through its gateway (BACKEND_URL) and producer API."""

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
        self.bus = EventBus()
        self.connected = False
        self._stats: dict[str, Any] = events.stats_updated(0, 0, 0, 0)
        self._health: dict[str, Any] = {}
        self._consumers: list[ConsumerView] = []
        self._consumers_at = 0.0
        self._consumers_seq = -1
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gateway-mirror", daemon=True)
        self.store: Store | None = None
        self.reader: Store | RestLogs = RestLogs(self)

    mode = "attached"

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> RemoteSource:
        try:
            self._stats = self.get_json("/api/consumers/statistics")
        except OSError as exc:
            raise ConfigError(f"BACKEND_URL={self.base}: no backend answered ({_reason(exc)})") from None
        self._refresh_health()
        database = self.settings.data_dir / "dashboard.sqlite3"
        if database.is_file():
            self.store = Store(self.settings.data_dir)
            self.reader = self.store
        self._thread.start()
        return self

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(5)

    # --- HTTP ---------------------------------------------------------------------------------

    def _request(self, method: str, url: str, body: bytes | None = None, content_type: str = "") -> Any:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        if self.settings.auth_token:
            headers["Authorization"] = f"Bearer {self.settings.auth_token}"
        request = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
                text = response.read().decode("utf-8")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", errors="replace")
            with contextlib.suppress(ValueError, AttributeError):
                detail = json.loads(detail).get("error", detail)
            raise RuntimeError(f"{method} {url}: {exc.code} {detail}") from None
        return json.loads(text) if text else None

    def get_json(self, path: str, query: dict[str, Any] | None = None) -> Any:
        params = {k: v for k, v in (query or {}).items() if v is not None}
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        return self._request("GET", url)

    # --- reads --------------------------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        return dict(self._stats)

    def _refresh_health(self) -> None:
        try:
            self._health = self.get_json("/api/health")
        except RuntimeError as exc:  # 503 carries the reason
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
        return {"url": self.ws_url, "token": self.settings.auth_token, "sameHost": False}

    def consumers(self) -> list[ConsumerView]:
        """The consumer list over REST, fetched again only after something changed."""
        changed = self.bus.last_seq != self._consumers_seq
        if changed and time.monotonic() - self._consumers_at > CONSUMERS_REFRESH_S:
            self.refresh_consumers()
        return list(self._consumers)

    def refresh_consumers(self) -> None:
        items = self.get_json("/api/consumers") or []
        views = []
        for item in items:
            lag = item.get("lag") or {}
            partitions = tuple(
                PartitionView(name, lag=lag.get(name))
                for name in sorted(item.get("partitions", []), key=_sort_key)
            )
            views.append(
                ConsumerView(
                    item.get("consumerId", "?"),
                    item.get("status", "?"),
                    partitions,
                    item.get("processedMessages"),
                    item.get("failedMessages"),
                    item.get("startedAt"),
                    item.get("lastError"),
                )
            )
        self._consumers = views
        self._consumers_at = time.monotonic()
        self._consumers_seq = self.bus.last_seq

    # --- operations ---------------------------------------------------------------------------

    def start_consumer(self) -> str:
        answer = self._request("POST", self.base + "/api/consumers")
        self._consumers_at = 0.0
        return str(answer.get("consumerId"))

    def stop_consumer(self, consumer_id: str) -> bool:
        self._request("DELETE", self.base + "/api/consumers/" + urllib.parse.quote(consumer_id))
        self._consumers_at = 0.0
        return True

    def produce(self, topic: str, value: bytes, data_type: str, key: bytes | None = None) -> Produced:
        kind = "csv" if data_type == events.CSV_BATCH else "single"
        content_type = "text/csv" if kind == "csv" else "application/json"
        url = f"{self.producer_base}/api/producers/send/{kind}?" + urllib.parse.urlencode({"topic": topic})
        answer = self._request("POST", url, value, content_type)
        return Produced(answer["topic"], int(answer["partition"]), int(answer["offset"]))

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
                    self._stats = self.get_json("/api/consumers/statistics")
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
