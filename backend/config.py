"""Settings read from the environment once, validated once.

Every variable of the contract is optional. A bad value stops start-up with a
``ConfigError`` whose message is one line naming the variable, so that
``python -m backend`` can print it instead of a traceback.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TOPIC_PATTERN = r"^(?!_)(?!.*\.DLQ$).+$"
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI")
ISOLATION_LEVELS = ("read_committed", "read_uncommitted")
#: How long a consumer's fetch waits at the broker with nothing to read (Settings.fetch_max_wait_ms).
FETCH_WAIT_KAFKA_MS = 500
FETCH_WAIT_EMBEDDED_MS = 20
#: A stored row's JSON may be this many characters per byte of MAX_MESSAGE_BYTES (16 MiB by default).
DECODED_PER_MESSAGE_BYTE = 16
#: At most 4 bytes a character, this stays under SQLite's 1,000,000,000-byte limit for one value.
MAX_DECODED_CHARS = 200_000_000


class ConfigError(ValueError):
    """A setting has a value we cannot use; the message names the variable."""


_AGE_UNITS_MS = {"d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1_000}
#: More than this many years of age, or logs, is a typo rather than a retention.
_MAX_RETENTION_MS = 100 * 365 * 86_400_000
_MAX_RETENTION_COUNT = 10**12


@dataclass(frozen=True)
class Retention:
    """RETENTION: keep logs received in the last ``max_age_ms``, or the newest ``max_count`` logs.

    Exactly one of the two is set. Counters and trends stay exact either way (backend/retention.py).
    """

    max_age_ms: int | None = None
    max_count: int | None = None

    @classmethod
    def parse(cls, raw: str) -> Retention | None:
        """``7d``, ``12h``, ``30m``, ``90s`` (an age) or ``1000000`` (a count); None when empty."""
        text = raw.strip().lower().replace("_", "").replace(",", "")  # 1_000_000 and 1,000,000 too
        if not text:
            return None
        match = re.fullmatch(r"(\d{1,15})\s*([dhms]?)", text)
        if match is None:
            raise ConfigError(
                f"RETENTION={raw.strip()!r} is neither an age (7d, 12h, 30m, 90s) "
                "nor a count of logs (1000000)"
            )
        number, unit = int(match.group(1)), match.group(2)
        if number < 1:
            raise ConfigError(f"RETENTION={raw.strip()!r} keeps nothing; leave it unset to keep everything")
        if not unit:
            if number > _MAX_RETENTION_COUNT:
                raise ConfigError(f"RETENTION={number} is out of range (1..{_MAX_RETENTION_COUNT} logs)")
            return cls(max_count=number)
        age_ms = number * _AGE_UNITS_MS[unit]
        if age_ms > _MAX_RETENTION_MS:
            raise ConfigError(f"RETENTION={raw.strip()!r} is out of range (at most 100 years)")
        return cls(max_age_ms=age_ms)


@dataclass(frozen=True)
class Settings:
    """Everything the backend and the dashboard read from the environment."""

    bootstrap_servers: str | None = None
    topics: tuple[str, ...] = ()
    topic_pattern: str | None = DEFAULT_TOPIC_PATTERN
    group_id: str = "consumer-dashboard"
    consumer_count: int = 3
    security_protocol: str | None = None
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 3001
    producer_port: int = 3000
    data_dir: Path = Path("data")
    cors_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()  # empty: the default (see host_allowlist)
    auth_token: str | None = None
    backend_url: str | None = None
    max_message_bytes: int = 1_048_576
    topic_partitions: int = 3
    processor: str | None = None
    deserializer: str | None = None
    #: read_committed: records of aborted (and still open) transactions are never delivered.
    isolation_level: str = "read_committed"
    # What one record may become (see backend.processing.Limits for why these defaults).
    max_decoded_chars: int | None = None  # None: DECODED_PER_MESSAGE_BYTE x max_message_bytes
    max_csv_columns: int = 1_000
    max_column_name_chars: int = 256
    max_csv_rows: int = 100_000
    max_json_depth: int = 64
    # Connections and what the APIs may add (see backend.connection_guard, backend.limits).
    http_header_timeout: float = 10.0
    http_body_timeout: float = 30.0
    http_keep_alive_timeout: float = 5.0
    max_connections: int | None = None  # None: the open-file limit minus a reserve (backend.http_server)
    max_created_topics: int = 100
    max_consumers: int = 32
    retention: Retention | None = None  # None: keep every log
    #: all: a view and its workers; worker: consume and process only; view: store, gateway, dashboard.
    role: str = "all"
    workers: int | None = None  # None: the CPU cores, at most consumer_count (see worker_count)
    events_topic_name: str | None = None  # None: derived from group_id (see events_topic)
    #: The cluster's bootstrap is the embedded broker another process started (a worker of ``all``).
    attached_to_embedded: bool = False

    @property
    def decoded_limit(self) -> int:
        """MAX_DECODED_CHARS, by default 16 characters of JSON per byte of the largest message."""
        if self.max_decoded_chars is not None:
            return self.max_decoded_chars
        return min(DECODED_PER_MESSAGE_BYTE * self.max_message_bytes, MAX_DECODED_CHARS)

    @property
    def embedded(self) -> bool:
        """True when the embedded broker is used: started by this process, or by its parent."""
        return not self.bootstrap_servers or self.attached_to_embedded

    @property
    def fetch_max_wait_ms(self) -> int:
        """How long a consumer's fetch may wait at the broker when there is nothing to read.

        Apache Kafka answers a waiting fetch as soon as a record arrives (for ``read_committed``,
        as soon as its transaction commits), so on Apache Kafka the wait costs no latency and only
        sets how often an idle consumer asks: 500 ms (Kafka's own default) instead of 100 ms halved
        an idle backend's CPU (2 workers 0.14-0.18 -> 0.07 cores, the broker 0.18-0.21 -> 0.09;
        bench/README.md, "Idle"). Tansu, the embedded broker, holds every fetch for the full wait
        even when records arrive, so there it is 20 ms (see backend.consumers.consumer_options).
        """
        return FETCH_WAIT_EMBEDDED_MS if self.embedded else FETCH_WAIT_KAFKA_MS

    @property
    def starts_broker(self) -> bool:
        """True when this process starts the embedded broker (no cluster configured)."""
        return not self.bootstrap_servers

    @property
    def events_topic(self) -> str:
        """EVENTS_TOPIC: where workers hand events to views (``_<group>.events`` by default)."""
        return self.events_topic_name or f"_{self.group_id}.events"

    @property
    def control_topic(self) -> str:
        """Where views ask workers to start or stop a consumer."""
        return f"{self.events_topic}.control"

    @property
    def worker_count(self) -> int:
        """WORKERS: worker processes to start; the CPU cores, at most CONSUMER_COUNT, at least 1.

        On the embedded broker always 1: its consumers get their partitions from the worker's own
        assigner (Tansu's group rebalances wait the whole rebalance timeout), which spans one process.
        """
        if self.embedded:
            return 1
        if self.workers is not None:
            return self.workers
        return max(1, min(os.cpu_count() or 1, self.consumer_count))

    @property
    def runs_view(self) -> bool:
        return self.role in ("all", "view")

    @property
    def runs_workers(self) -> bool:
        return self.role in ("all", "worker")

    def kafka_client_options(self) -> dict[str, object]:
        """Security options shared by every kafka-python client we create."""
        options: dict[str, object] = {}
        if self.security_protocol:
            options["security_protocol"] = self.security_protocol
        if self.sasl_mechanism:
            options["sasl_mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            options["sasl_plain_username"] = self.sasl_username
        if self.sasl_password:
            options["sasl_plain_password"] = self.sasl_password
        if self.ssl_cafile:
            options["ssl_cafile"] = self.ssl_cafile
        return options

    def worker_env(self) -> dict[str, str]:
        """What a worker process needs of these settings, as the variables :meth:`from_env` reads.

        The settings of a backend built in code (tests, the dashboard) reach its workers this way,
        not only those that came from the environment. Unset values are given as "" (the default).
        """
        topics = ",".join(self.topics) if self.topics else ""
        if not self.topics and self.topic_pattern != DEFAULT_TOPIC_PATTERN:
            topics = f"re:{self.topic_pattern or '(?!)'}"
        values: dict[str, object | None] = {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "KAFKA_TOPICS": topics,
            "KAFKA_GROUP_ID": self.group_id,
            "CONSUMER_COUNT": self.consumer_count,
            "KAFKA_SECURITY_PROTOCOL": self.security_protocol,
            "KAFKA_SASL_MECHANISM": self.sasl_mechanism,
            "KAFKA_SASL_USERNAME": self.sasl_username,
            "KAFKA_SASL_PASSWORD": self.sasl_password,
            "KAFKA_SSL_CAFILE": self.ssl_cafile,
            "KAFKA_ISOLATION_LEVEL": self.isolation_level,
            "DATA_DIR": str(self.data_dir),
            "MAX_MESSAGE_BYTES": self.max_message_bytes,
            "PROCESSOR": self.processor,
            "DESERIALIZER": self.deserializer,
            "MAX_DECODED_CHARS": self.max_decoded_chars,
            "MAX_CSV_COLUMNS": self.max_csv_columns,
            "MAX_COLUMN_NAME_CHARS": self.max_column_name_chars,
            "MAX_CSV_ROWS": self.max_csv_rows,
            "MAX_JSON_DEPTH": self.max_json_depth,
            "MAX_CONSUMERS": self.max_consumers,
            "EVENTS_TOPIC": self.events_topic_name,
            "BACKEND_ROLE": "worker",
        }
        return {name: "" if value is None else str(value) for name, value in values.items()}

    @property
    def host_allowlist(self) -> tuple[str, ...]:
        """The Host header names the APIs answer: ALLOWED_HOSTS, or the loopback names and GATEWAY_HOST."""
        if self.allowed_hosts:
            return self.allowed_hosts
        gateway = self.gateway_host.lower()
        return ("localhost", "127.0.0.1", "[::1]", f"[{gateway}]" if ":" in gateway else gateway)

    def topic_matches(self, topic: str) -> bool:
        """Whether the consumers should read ``topic`` (per KAFKA_TOPICS)."""
        if topic in (self.events_topic, self.control_topic):
            return False  # never a source, whatever KAFKA_TOPICS says
        if self.topics:
            return topic in self.topics
        return bool(self.topic_pattern and re.match(self.topic_pattern, topic))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the contract's variables; raise ConfigError on a bad one."""
        env = os.environ if env is None else env
        topics, pattern = _topics(env.get("KAFKA_TOPICS", "").strip())
        return cls(
            bootstrap_servers=_bootstrap(env.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()) or None,
            topics=topics,
            topic_pattern=pattern,
            group_id=env.get("KAFKA_GROUP_ID", "").strip() or "consumer-dashboard",
            consumer_count=_int(env, "CONSUMER_COUNT", 3, 0, 64),
            security_protocol=_choice(env, "KAFKA_SECURITY_PROTOCOL", SECURITY_PROTOCOLS),
            sasl_mechanism=_choice(env, "KAFKA_SASL_MECHANISM", SASL_MECHANISMS),
            sasl_username=env.get("KAFKA_SASL_USERNAME") or None,
            sasl_password=env.get("KAFKA_SASL_PASSWORD") or None,
            ssl_cafile=_existing_file(env, "KAFKA_SSL_CAFILE"),
            gateway_host=env.get("GATEWAY_HOST", "").strip() or "127.0.0.1",
            gateway_port=_int(env, "GATEWAY_PORT", 3001, 0, 65535),
            producer_port=_int(env, "PRODUCER_PORT", 3000, 0, 65535),
            data_dir=Path(env.get("DATA_DIR", "").strip() or "data"),
            cors_origins=_csv(env.get("CORS_ORIGINS", "")),
            allowed_hosts=_allowed_hosts(env.get("ALLOWED_HOSTS", "")),
            auth_token=env.get("AUTH_TOKEN") or None,
            backend_url=_url(env, "BACKEND_URL"),
            max_message_bytes=_int(env, "MAX_MESSAGE_BYTES", 1_048_576, 1, 100 * 1_048_576),
            topic_partitions=_int(env, "TOPIC_PARTITIONS", 3, 1, 1000),
            processor=_plugin(env, "PROCESSOR"),
            deserializer=_plugin(env, "DESERIALIZER"),
            isolation_level=_isolation_level(env),
            max_decoded_chars=_optional_int(env, "MAX_DECODED_CHARS", 1_024, MAX_DECODED_CHARS),
            max_csv_columns=_int(env, "MAX_CSV_COLUMNS", 1_000, 1, 100_000),
            max_column_name_chars=_int(env, "MAX_COLUMN_NAME_CHARS", 256, 1, 100_000),
            max_csv_rows=_int(env, "MAX_CSV_ROWS", 100_000, 1, 100_000_000),
            max_json_depth=_int(env, "MAX_JSON_DEPTH", 64, 1, 500),
            http_header_timeout=_seconds(env, "HTTP_HEADER_TIMEOUT", 10.0),
            http_body_timeout=_seconds(env, "HTTP_BODY_TIMEOUT", 30.0),
            http_keep_alive_timeout=_seconds(env, "HTTP_KEEP_ALIVE_TIMEOUT", 5.0),
            max_connections=_int(env, "MAX_CONNECTIONS", 0, 1, 10_000_000) or None,  # unset: None
            max_created_topics=_int(env, "MAX_CREATED_TOPICS", 100, 0, 1_000_000),
            max_consumers=_int(env, "MAX_CONSUMERS", 32, 1, 1024),
            retention=Retention.parse(env.get("RETENTION", "")),
            role=_role(env),
            workers=_optional_int(env, "WORKERS", 1, 64),
            events_topic_name=_events_topic(env),
            attached_to_embedded=env.get("EMBEDDED_BROKER", "").strip() == "1",
        )


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is out of range ({low}..{high})")
    return value


def _optional_int(env: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    """Like :func:`_int`, None when unset (the default is derived from another setting)."""
    return _int(env, name, 0, low, high) if env.get(name, "").strip() else None


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    """A duration in seconds; fractions allowed so that tests can use short ones."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds") from None
    if not 0.1 <= value <= 3600:  # also refuses nan and inf
        raise ConfigError(f"{name}={value} is out of range (0.1..3600 seconds)")
    return value


def _choice(env: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if raw.upper() not in allowed:
        raise ConfigError(f"{name}={raw!r} is not one of {', '.join(allowed)}")
    return raw.upper()


def _existing_file(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name, "").strip()
    if raw and not Path(raw).is_file():
        raise ConfigError(f"{name}={raw!r}: no such file")
    return raw or None


def _bootstrap(raw: str) -> str:
    for server in _csv(raw):
        host, _, port = server.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"KAFKA_BOOTSTRAP_SERVERS: {server!r} is not host:port")
    return ",".join(_csv(raw))


def _topics(raw: str) -> tuple[tuple[str, ...], str | None]:
    if not raw:
        return (), DEFAULT_TOPIC_PATTERN
    if raw.startswith("re:"):
        pattern = raw[3:]
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"KAFKA_TOPICS: bad regular expression {pattern!r} ({exc})") from None
        return (), pattern
    topics = _csv(raw)
    for topic in topics:
        if not is_valid_topic(topic):
            raise ConfigError(f"KAFKA_TOPICS: {topic!r} is not a valid topic name")
    return topics, None


#: One ALLOWED_HOSTS entry: a DNS name or IPv4 address, or an IPv6 address in brackets; no port.
_HOST_NAME = re.compile(r"^(\[[0-9a-f:.]+\]|[a-z0-9]([a-z0-9_.-]*[a-z0-9_])?)$")


def _allowed_hosts(raw: str) -> tuple[str, ...]:
    """ALLOWED_HOSTS as lower-case host names; ``*`` (any host) only when it is listed."""
    hosts = tuple(host.lower() for host in _csv(raw))
    for host in hosts:
        if host != "*" and not _HOST_NAME.match(host):
            raise ConfigError(
                f"ALLOWED_HOSTS: {host!r} is not a host name (no scheme, port or path; IPv6 in brackets)"
            )
    return hosts


def _url(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name, "").strip().rstrip("/")
    if raw and not re.match(r"^https?://[^/\s]+", raw):
        raise ConfigError(f"{name}={raw!r} is not an http(s) URL")
    return raw or None


def _plugin(env: Mapping[str, str], name: str) -> str | None:
    """PROCESSOR, DESERIALIZER: ``package.module:function`` (loaded at start, see backend.processing)."""
    raw = env.get(name, "").strip()
    if raw and not re.match(r"^[\w.]+:\w+$", raw):
        raise ConfigError(f"{name}={raw!r} is not package.module:function")
    return raw or None


def _isolation_level(env: Mapping[str, str]) -> str:
    raw = env.get("KAFKA_ISOLATION_LEVEL", "").strip()
    if not raw:
        return "read_committed"
    if raw.lower() not in ISOLATION_LEVELS:
        raise ConfigError(f"KAFKA_ISOLATION_LEVEL={raw!r} is not one of {', '.join(ISOLATION_LEVELS)}")
    return raw.lower()


ROLES = ("all", "worker", "view")


def _role(env: Mapping[str, str]) -> str:
    raw = env.get("BACKEND_ROLE", "").strip().lower()
    if not raw:
        return "all"
    if raw not in ROLES:
        raise ConfigError(f"BACKEND_ROLE={raw!r} is not one of {', '.join(ROLES)}")
    return raw


def _events_topic(env: Mapping[str, str]) -> str | None:
    raw = env.get("EVENTS_TOPIC", "").strip()
    if raw and not is_valid_topic(raw):
        raise ConfigError(f"EVENTS_TOPIC={raw!r} is not a valid topic name")
    if len(raw) > 240:  # its control topic adds ".control"
        raise ConfigError(f"EVENTS_TOPIC={raw[:40]!r}...: at most 240 characters")
    return raw or None


TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
#: is_valid_topic as one regular expression that JSON Schema (ECMA-262) reads too: for the API documents.
TOPIC_NAME_PATTERN = r"^(?!\.\.?$)[A-Za-z0-9._-]{1,249}$"


def is_valid_topic(name: str) -> bool:
    """Kafka's own rule: 1-249 of [A-Za-z0-9._-], and not '.' or '..'."""
    return bool(TOPIC_NAME.fullmatch(name)) and name not in (".", "..")  # with match(), $ took "name\n"
