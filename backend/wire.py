"""Every REST body of both APIs, defined once: how it is built, documented and parsed.

Each shape is a Pydantic model. The models are the OpenAPI response models of
the routes (gateway, producer API, analytics API), and the dashboard attached
to a backend elsewhere parses the answers with them (:func:`parse`), so what
is sent, what is documented and what is read cannot drift apart.

Building stays cheap: the hot path (a log body for every event) does not
instantiate models. The ``*_body`` functions below build the plain dicts the
routes return, with exactly the fields of their model; tests check the two
agree (tests/test_wire.py).

The contract's bodies (log, consumer, statistics, health, produced, error)
keep the contract's camelCase attribute names. The analytics bodies are new:
their attributes are the snake_case keys of the rows ``backend.analytics``
returns, sent as camelCase aliases (``first_ms`` travels as ``firstMs``), so
a parsed row dumps back to exactly the dict the local query gives.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from functools import cache
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic.alias_generators import to_camel

from backend.events import iso_from_ms, now_iso

ISO_MS_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$"
Timestamp = Annotated[str, Field(pattern=ISO_MS_PATTERN, description="ISO-8601 UTC with milliseconds and Z")]
Offset = Annotated[str, Field(pattern=r"^\d+$", description="The Kafka offset, as a string")]
Count = Annotated[int, Field(ge=0)]
EpochMs = Annotated[int, Field(description="Epoch milliseconds (UTC)")]

# --- the contract's bodies -----------------------------------------------------------------------
# A model's docstring and field descriptions are its OpenAPI description: change them knowingly.


class ErrorBody(BaseModel):
    """The body of every error answer of both APIs (see :func:`error_response`)."""

    error: str = Field(description="Why the request was refused, for people to read (not to be parsed).")


def error_body(message: str) -> dict[str, str]:
    return {"error": message}


class HealthBody(BaseModel):
    status: Literal["ok", "unavailable"]
    reason: str | None = Field(description="Why the backend is not ready; null when it is")
    broker: str = Field(description="The bootstrap servers")
    brokerReachable: bool  # noqa: N815 - the API's field names
    timestamp: Timestamp
    gatewayClients: Count  # noqa: N815


def health_body(ok: bool, reason: str | None, broker: str, broker_reachable: bool) -> dict[str, Any]:
    """A :class:`HealthBody` without ``gatewayClients``, which only the gateway knows and adds."""
    return {
        "status": "ok" if ok else "unavailable",
        "reason": reason,
        "broker": broker,
        "brokerReachable": broker_reachable,
        "timestamp": now_iso(),
    }


class StatisticsBody(BaseModel):
    """The fields of the stats-updated event."""

    totalMessages: Count  # noqa: N815
    processedMessages: Count  # noqa: N815
    failedMessages: Count  # noqa: N815
    activeConsumers: Count  # noqa: N815
    timestamp: Timestamp


def statistics_body(total: int, processed: int, failed: int, active_consumers: int) -> dict[str, Any]:
    """A :class:`StatisticsBody`; it is also the ``stats-updated`` event's payload, built only here."""
    return {
        "totalMessages": int(total),
        "processedMessages": int(processed),
        "failedMessages": int(failed),
        "activeConsumers": int(active_consumers),
        "timestamp": now_iso(),
    }


class HeaderBody(BaseModel):
    """One Kafka record header: ``value`` when it is UTF-8 text (or null), else ``valueBase64``."""

    key: str
    value: str | None = Field(default=None, description="The value as text, or null (also when binary)")
    valueBase64: str | None = Field(  # noqa: N815
        default=None, description="The value's bytes in base64, present only when they are not UTF-8"
    )


class LogBody(BaseModel):
    """One Kafka record, its metadata and its outcome."""

    logId: str  # noqa: N815
    topic: str
    partition: Count
    offset: Offset
    dataType: Literal["SINGLE_MESSAGE", "CSV_BATCH", "TOMBSTONE"] = Field(  # noqa: N815
        description="TOMBSTONE: the record's value is null (PROCESSED, rowCount 0)"
    )
    rowCount: Count  # noqa: N815
    status: Literal["RECEIVED", "PROCESSING", "PROCESSED", "FAILED"]
    consumerId: str | None  # noqa: N815
    error: str | None
    receivedAt: Timestamp  # noqa: N815
    startedAt: Timestamp | None  # noqa: N815
    completedAt: Timestamp | None  # noqa: N815
    producedAt: Timestamp | None = Field(description="The record's own timestamp (as kafkaTimestamp)")  # noqa: N815
    key: str | None = Field(description="The record's key as UTF-8 text; null when null or not UTF-8")
    sizeBytes: Count | None = Field(description="The value's size in bytes (null: a null value)")  # noqa: N815
    keyBase64: str | None = Field(description="The key's bytes in base64 when they are not UTF-8")  # noqa: N815
    headers: list[HeaderBody] = Field(description="The record's headers in record order, repeats kept")
    headersTruncated: bool = Field(  # noqa: N815
        description="Some headers were left out: their JSON text would exceed 16 KiB"
    )
    kafkaTimestamp: Timestamp | None = Field(  # noqa: N815
        description="The record's own timestamp (create or log-append time); null when it has none"
    )


class LogDetailBody(LogBody):
    """One Kafka record, its outcome, the payload the consumer decoded and the processor's result."""

    payload: Any = Field(description="The decoded payload (JSON value; a CSV batch is an array of rows)")
    result: Any = Field(description="What the processor returned, when it returned something")
    valueBase64: str | None = Field(  # noqa: N815
        description="A value that could not be decoded: its first bytes (at most 64 KiB) in base64"
    )
    valueTruncated: bool = Field(description="valueBase64 holds only the first 64 KiB of the value")  # noqa: N815


def log_body(
    log_id: str,
    topic: str,
    partition: int,
    offset: int,
    data_type: str,
    row_count: int,
    status: str,
    consumer_id: str | None,
    error: str | None,
    received_ms: int,
    started_ms: int | None,
    completed_ms: int | None,
    produced_ms: int | None,
    key: str | None,
    size_bytes: int | None,
    key_base64: str | None = None,
    headers: list[dict[str, Any]] | None = None,
    headers_truncated: bool = False,
) -> dict[str, Any]:
    """A :class:`LogBody` as a plain dict: called for every record, so no model is built.

    ``headers`` are already the contract's entries (backend/record_meta.py builds them).
    """
    produced = iso_from_ms(produced_ms) if produced_ms else None
    return {
        "logId": log_id,
        "topic": topic,
        "partition": partition,
        "offset": str(offset),
        "dataType": data_type,
        "rowCount": row_count,
        "status": status,
        "consumerId": consumer_id,
        "error": error,
        "receivedAt": iso_from_ms(received_ms),
        "startedAt": iso_from_ms(started_ms) if started_ms else None,
        "completedAt": iso_from_ms(completed_ms) if completed_ms else None,
        "producedAt": produced,
        "key": key,
        "sizeBytes": size_bytes,
        "keyBase64": key_base64,
        "headers": headers or [],
        "headersTruncated": headers_truncated,
        "kafkaTimestamp": produced,
    }


def add_detail(
    body: dict[str, Any], payload: Any, result: Any, value_bytes: bytes | None, value_truncated: bool
) -> dict[str, Any]:
    """A :class:`LogBody` dict made a :class:`LogDetailBody`: the payload, result and kept value."""
    body["payload"] = payload
    body["result"] = result
    body["valueBase64"] = None if value_bytes is None else base64.b64encode(value_bytes).decode("ascii")
    body["valueTruncated"] = value_truncated
    return body


class ConsumerBody(BaseModel):
    consumerId: str  # noqa: N815
    status: Literal["ACTIVE", "INACTIVE"]
    partitions: list[str] = Field(description='Assigned partitions as "topic-partition"')
    lag: dict[str, Count | None] = Field(description="Records behind, per assigned partition (null: unknown)")
    processedMessages: Count  # noqa: N815
    failedMessages: Count  # noqa: N815
    startedAt: Timestamp | None  # noqa: N815
    lastError: str | None  # noqa: N815


def partition_sort_key(name: str) -> tuple[str, int]:
    """ "orders-10" after "orders-9": by topic, then by partition number."""
    topic, _, number = name.rpartition("-")
    return topic, int(number) if number.isdigit() else -1


def consumer_body(
    consumer_id: str,
    status: str,
    lags: dict[str, int | None],
    processed: int,
    failed: int,
    started_at: str | None,
    last_error: str | None,
) -> dict[str, Any]:
    """A :class:`ConsumerBody` from a consumer's state (``lags``: lag per assigned partition)."""
    return {
        "consumerId": consumer_id,
        "status": status,
        "partitions": sorted(lags, key=partition_sort_key),
        "lag": dict(sorted(lags.items())),
        "processedMessages": processed,
        "failedMessages": failed,
        "startedAt": started_at,
        "lastError": last_error,
    }


class StartedConsumerBody(BaseModel):
    consumerId: str  # noqa: N815


class StoppedConsumerBody(BaseModel):
    consumerId: str  # noqa: N815
    status: Literal["INACTIVE"]


class StreamTicketBody(BaseModel):
    """A read-only ticket for opening one event stream (POST /api/stream-tickets)."""

    ticket: str = Field(description="For `/ws?ticket=` or Socket.IO `auth: {ticket}`; nothing else")
    expiresAt: Timestamp = Field(description="A stream must be opened before then; it then stays open")  # noqa: N815


class ProducedBody(BaseModel):
    """Where the record landed."""

    topic: str
    partition: int = Field(ge=0)
    offset: str = Field(pattern=r"^\d+$", description="The Kafka offset, as a string")


class ProducedCsvBody(ProducedBody):
    rowCount: int = Field(ge=1, description="Data rows (the header excluded)")  # noqa: N815 - the API's name


def produced_body(topic: str, partition: int, offset: int) -> dict[str, Any]:
    return {"topic": topic, "partition": partition, "offset": str(offset)}


# --- the analytics bodies (backend/analytics_api.py) ---------------------------------------------


class Row(BaseModel):
    """An analytics row: snake_case attributes (the query's keys), camelCase on the wire."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True)


class TimeBoundsBody(Row):
    """The received time of the oldest and of the newest stored record (null: nothing stored)."""

    first_ms: EpochMs | None
    last_ms: EpochMs | None
    kept_from_ms: EpochMs | None = Field(
        None,
        description="Logs received before this were pruned (RETENTION): counts and volumes still "
        "include them, latency percentiles, errors and payload fields do not; null: none were",
    )


class ThroughputRow(Row):
    """Outcomes completed in one bucket with one status."""

    bucket: EpochMs = Field(description="Start of the bucket")
    status: str
    count: Count


class VolumeRow(Row):
    """Records received in one bucket, on one topic, with one status and data type."""

    bucket: EpochMs
    topic: str
    status: str
    data_type: str = Field(description="SINGLE_MESSAGE, CSV_BATCH or TOMBSTONE")
    messages: Count
    rows: Count | None = Field(description="Data rows (a CSV batch counts its rows)")


class FailureRateRow(Row):
    bucket: EpochMs
    total: Count
    failed: Count | None
    rate: float | None = Field(description="failed / total, 0..1")


class LatencyRow(Row):
    """Latency percentiles (nearest rank) of the records received in one bucket, in ms."""

    bucket: EpochMs
    count: Count
    p50: float | None
    p90: float | None
    p99: float | None
    max: float | None


class TopErrorRow(Row):
    """One exact error text and how often it occurred."""

    error: str | None
    count: Count
    topics: str | None = Field(description="The topics it occurred on, comma-separated")
    first_ms: EpochMs | None
    last_ms: EpochMs | None


class TopicSummaryRow(Row):
    topic: str
    total: Count
    processed: Count | None
    failed: Count | None
    rows: Count | None
    last_ms: EpochMs | None


class FieldCountRow(Row):
    """A numeric payload field (nested: ``a.b.c``) and how many values of it were found."""

    field: str
    count: Count = Field(description="Exact number of values in the records read")
    records: Count = Field(0, description="How many records were read (processed, kept, in range)")
    sampled: bool = Field(False, description="True: the range held more records; these are its newest")


class FieldSeriesRow(Row):
    """One numeric payload field aggregated over the records received in one bucket."""

    bucket: EpochMs
    count: Count
    sum: float | None
    mean: float | None
    min: float | None
    max: float | None


class ErrorGroupBody(Row):
    """Failed records whose errors differ only in particulars (numbers, quoted values)."""

    pattern: str = Field(description="The error with numbers as # and quoted values as '…'")
    count: Count
    retriable: Count = Field(description="Records whose decoded payload is stored (a retry can send them)")
    first_ms: EpochMs | None
    last_ms: EpochMs | None
    topics: list[str]
    errors: list[str | None] = Field(description="The exact error texts of the group")
    example: str


class FailedRecordRow(Row):
    """A failed record, without its payload (see GET /api/consumers/logs/{logId})."""

    log_id: str
    topic: str
    partition: Count
    offset: Count
    data_type: str
    row_count: Count
    consumer_id: str | None
    error: str | None
    received_ms: EpochMs
    retriable: bool


class LogCountBody(Row):
    count: Count


# --- parsing -------------------------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)


@cache
def _adapter(shape: Any) -> TypeAdapter[Any]:
    return TypeAdapter(shape)


def parse(model: type[M], data: Any) -> M:
    """A REST answer (decoded JSON) as its model; raises pydantic.ValidationError when it is not one."""
    return _adapter(model).validate_python(data)


def parse_list(model: type[M], data: Any) -> list[M]:
    return _adapter(list[model]).validate_python(data)  # type: ignore[valid-type]


def parse_names(data: Any) -> list[str]:
    """A list of names (topics) from a REST answer."""
    return _adapter(list[str]).validate_python(data)


def rows(model: type[Row], data: Any) -> list[dict[str, Any]]:
    """Analytics rows from a REST answer, as the dicts the local query returns."""
    return [item.model_dump(by_alias=False) for item in parse_list(model, data)]


def dump_rows(model: type[Row], items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Analytics rows (snake_case dicts) as their wire form (camelCase), validated."""
    return [model.model_validate(item).model_dump(mode="json") for item in items]
