"""The REST endpoints behind the dashboard's analytics: what a dashboard on another machine reads.

Each route answers one query of :mod:`backend.analytics` (or of the store) with a
body of :mod:`backend.wire`, so the remote dashboard gets exactly what the local
one computes. The router carries no prefix, authentication or 401 documentation
of its own: it is included into the gateway's ``/api`` router, which has them
(``router.include_router(analytics_router(...))``), so every route is guarded
and documented like the other REST routes.

Bad input is answered 400 ``{"error": ...}``: query values outside the bounds
documented here are refused by FastAPI's validation, which the app turns into a
400 (see ``create_api``); what a schema cannot say (a valid topic name in a
list) is checked here. The bounds keep every value an SQLite integer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import StreamingResponse

from backend import analytics, export, wire
from backend.config import TOPIC_NAME_PATTERN, is_valid_topic
from backend.events import STATUSES
from backend.store import RecordMatch, Store

#: Year 9999 in epoch milliseconds: the largest time a query takes.
MAX_MS = 253_402_300_799_999
#: A bucket is at most a year wide.
MAX_BUCKET_MS = 366 * 86_400_000
#: The longest topics filter: a few thousand names at most, well under SQLite's parameter limit.
MAX_TOPICS_LENGTH = 5000
ANALYTICS = ["analytics"]

SinceMs = Annotated[
    int | None, Query(alias="sinceMs", ge=0, le=MAX_MS, description="Received at or after (epoch ms)")
]
UntilMs = Annotated[
    int | None, Query(alias="untilMs", ge=0, le=MAX_MS, description="Received before (epoch ms)")
]
BucketMs = Annotated[
    int, Query(alias="bucketMs", ge=1, le=MAX_BUCKET_MS, description="Bucket width in milliseconds")
]
# Several topics as one comma-separated value (a comma cannot be part of a topic name): a
# plain string parameter, which every client sends the same way.
_ONE_TOPIC = r"(?!\.\.?(?:,|$))[A-Za-z0-9._-]{1,249}"
TOPICS_PATTERN = rf"^{_ONE_TOPIC}(?:,{_ONE_TOPIC})*$"
Topics = Annotated[
    str | None,
    Query(
        alias="topics",
        max_length=MAX_TOPICS_LENGTH,
        description="Only these topics, comma-separated (all topics when absent)",
        examples=["orders,payments"],
        json_schema_extra={"pattern": TOPICS_PATTERN},
    ),
]
LOG_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
Topic = Annotated[str | None, Query(max_length=249, json_schema_extra={"pattern": TOPIC_NAME_PATTERN})]
Status = Annotated[Literal["RECEIVED", "PROCESSING", "PROCESSED", "FAILED"] | None, Query()]
Text = Annotated[
    str | None,
    Query(
        max_length=500,
        description="Text in the payload, the error, the key or a header value (case-insensitive)",
    ),
]
Key = Annotated[
    str | None,
    Query(
        max_length=1000,
        description="The record's key (exactly, or its start with keyMatch=prefix); "
        "base64:<base64> for a key that is not UTF-8",
    ),
]
KeyMatch = Annotated[Literal["exact", "prefix"], Query(alias="keyMatch", description="How key is matched")]
Header = Annotated[str | None, Query(max_length=1000, description="Only records with a header of this name")]
HeaderValue = Annotated[
    str | None,
    Query(
        alias="headerValue",
        max_length=1000,
        description="Only records with a header of exactly this value (the header named by header, "
        "else any header); base64:<base64> for a binary value",
    ),
]

_BAD_REQUEST = {
    "model": wire.ErrorBody,
    "description": "A parameter outside the schema documented here, or an invalid topic name",
}
_NOT_OPEN = {
    "model": wire.ErrorBody,
    "description": "The store is not open (the backend is starting or stopping)",
}
#: Documented for the routes with parameters (FastAPI would document a 422; create_api answers 400).
BAD_REQUEST: dict[int | str, dict[str, Any]] = {400: _BAD_REQUEST}

assert set(STATUSES) == {"RECEIVED", "PROCESSING", "PROCESSED", "FAILED"}  # Status above spells them


def _checked(topics: str | None) -> list[str] | None:
    """The topics of a comma-separated filter, each a valid name (400 otherwise)."""
    if topics is None:
        return None
    names = topics.split(",")
    for name in names:
        if not is_valid_topic(name):
            raise HTTPException(400, f"topic {name[:60]!r} is not a valid topic name")
    return names


def analytics_router(store: Callable[[], Store | None]) -> APIRouter:
    """The analytics routes, reading the store that ``store()`` returns when a request comes."""
    router = APIRouter(responses={503: _NOT_OPEN})

    def opened() -> Store:
        current = store()
        if current is None:
            raise HTTPException(503, "the store is not open")
        return current

    @router.get(
        "/analytics/bounds",
        tags=ANALYTICS,
        summary="When the oldest and the newest stored record were received",
    )
    def bounds() -> wire.TimeBoundsBody:
        current = opened()
        first, last = analytics.time_bounds(current)
        return wire.TimeBoundsBody(first_ms=first, last_ms=last, kept_from_ms=analytics.kept_from(current))

    @router.get(
        "/analytics/throughput",
        tags=ANALYTICS,
        responses=BAD_REQUEST,
        summary="Outcomes per bucket of completion time and status",
    )
    def throughput(
        since_ms: Annotated[int, Query(alias="sinceMs", ge=0, le=MAX_MS)], bucket_ms: BucketMs = 1000
    ) -> list[wire.ThroughputRow]:
        return analytics.throughput(opened(), since_ms, bucket_ms)  # type: ignore[return-value]

    @router.get(
        "/analytics/volume",
        tags=ANALYTICS,
        responses=BAD_REQUEST,
        summary="Records and data rows per bucket, topic and status",
    )
    def volume(
        bucket_ms: BucketMs, since_ms: SinceMs = None, until_ms: UntilMs = None, topics: Topics = None
    ) -> list[wire.VolumeRow]:
        return analytics.volume(opened(), bucket_ms, since_ms, until_ms, _checked(topics))  # type: ignore[return-value]

    @router.get(
        "/analytics/failure-rate",
        tags=ANALYTICS,
        responses=BAD_REQUEST,
        summary="Share of failed records per bucket",
    )
    def failure_rate(
        bucket_ms: BucketMs, since_ms: SinceMs = None, until_ms: UntilMs = None, topics: Topics = None
    ) -> list[wire.FailureRateRow]:
        rows = analytics.failure_rate(opened(), bucket_ms, since_ms, until_ms, _checked(topics))
        return rows  # type: ignore[return-value]

    @router.get(
        "/analytics/latency",
        tags=ANALYTICS,
        responses=BAD_REQUEST,
        summary="Latency percentiles per bucket, in milliseconds",
    )
    def latency(
        bucket_ms: BucketMs,
        kind: Annotated[
            Literal["processing", "end_to_end"],
            Query(description="processing: received → completed; end_to_end: produced → completed"),
        ] = "processing",
        since_ms: SinceMs = None,
        until_ms: UntilMs = None,
        topics: Topics = None,
    ) -> list[wire.LatencyRow]:
        rows = analytics.latency(opened(), bucket_ms, kind, since_ms, until_ms, _checked(topics))
        return rows  # type: ignore[return-value]

    @router.get(
        "/analytics/top-errors",
        tags=ANALYTICS,
        responses=BAD_REQUEST,
        summary="The most frequent exact error texts",
    )
    def top_errors(
        limit: Annotated[int, Query(ge=1, le=1000)] = 20,
        since_ms: SinceMs = None,
        until_ms: UntilMs = None,
        topics: Topics = None,
    ) -> list[wire.TopErrorRow]:
        rows = analytics.top_errors(opened(), limit, since_ms, until_ms, _checked(topics))
        return rows  # type: ignore[return-value]

    @router.get(
        "/analytics/topics",
        tags=ANALYTICS,
        responses=BAD_REQUEST,
        summary="Per topic: records, outcomes, data rows, last received",
    )
    def topic_summary(since_ms: SinceMs = None) -> list[wire.TopicSummaryRow]:
        return analytics.topic_summary(opened(), since_ms)  # type: ignore[return-value]

    @router.get(
        "/analytics/fields",
        tags=ANALYTICS,
        responses=BAD_REQUEST,
        summary="Numeric payload fields (nested too) and how many values of each are stored",
    )
    def numeric_fields(
        since_ms: SinceMs = None,
        until_ms: UntilMs = None,
        topics: Topics = None,
        sample: Annotated[
            int, Query(ge=1, le=1_000_000, description="At most how many newest records to read")
        ] = analytics.MAX_FIELD_RECORDS,
    ) -> list[wire.FieldCountRow]:
        rows = analytics.numeric_fields(opened(), since_ms, until_ms, _checked(topics), sample)
        return rows  # type: ignore[return-value]

    @router.get(
        "/analytics/field-series",
        tags=ANALYTICS,
        responses=BAD_REQUEST,
        summary="One numeric payload field aggregated per bucket",
    )
    def field_series(
        field: Annotated[str, Query(min_length=1, max_length=500, description="The field's name")],
        bucket_ms: BucketMs,
        since_ms: SinceMs = None,
        until_ms: UntilMs = None,
        topics: Topics = None,
    ) -> list[wire.FieldSeriesRow]:
        rows = analytics.field_series(opened(), field, bucket_ms, since_ms, until_ms, _checked(topics))
        return rows  # type: ignore[return-value]

    @router.get(
        "/analytics/failed/groups",
        tags=ANALYTICS,
        summary="Failed records grouped by error pattern, largest first",
    )
    def error_groups() -> list[wire.ErrorGroupBody]:
        return [error_group_body(group) for group in analytics.error_groups(opened())]

    @router.get(
        "/analytics/failed/records",
        tags=ANALYTICS,
        responses=BAD_REQUEST,
        summary="The newest failed records of one error group",
    )
    def failed_records(
        pattern: Annotated[str, Query(max_length=10_000, description="The group's pattern, as listed")],
        limit: Annotated[int, Query(ge=1, le=2000)] = 200,
    ) -> list[wire.FailedRecordRow]:
        current = opened()
        group = next((g for g in analytics.error_groups(current) if g.pattern == pattern), None)
        rows = analytics.failed_records(current, group.errors, limit) if group else []
        return rows  # type: ignore[return-value]

    @router.get(
        "/analytics/logs",
        tags=ANALYTICS,
        responses=BAD_REQUEST,
        summary="Stored records with payloads, newest first, filtered",
    )
    def logs(
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        offset: Annotated[int, Query(ge=0, le=1_000_000, description="rows to skip, for paging")] = 0,
        status: Status = None,
        topic: Topic = None,
        since_ms: SinceMs = None,
        until_ms: UntilMs = None,
        text: Text = None,
        key: Key = None,
        key_match: KeyMatch = "exact",
        header: Header = None,
        header_value: HeaderValue = None,
    ) -> list[wire.LogDetailBody]:
        match = _match(key, key_match, header, header_value)
        found = opened().logs(
            limit, status, _one(topic), since_ms, until_ms, text or None, offset, match=match
        )
        return [row.to_api(with_payload=True) for row in found]  # type: ignore[misc]

    @router.get(
        "/analytics/logs/count",
        tags=ANALYTICS,
        responses=BAD_REQUEST,
        summary="How many stored records match the filters",
    )
    def count_logs(
        status: Status = None,
        topic: Topic = None,
        since_ms: SinceMs = None,
        until_ms: UntilMs = None,
        text: Text = None,
        key: Key = None,
        key_match: KeyMatch = "exact",
        header: Header = None,
        header_value: HeaderValue = None,
    ) -> wire.LogCountBody:
        match = _match(key, key_match, header, header_value)
        count = opened().count_logs(status, _one(topic), since_ms, until_ms, text or None, match)
        return wire.LogCountBody(count=count)

    @router.get(
        "/analytics/logs/export",
        tags=ANALYTICS,
        response_class=StreamingResponse,
        responses={
            **BAD_REQUEST,
            200: {
                "description": "Every matching record, newest first, as CSV (written as it is read)",
                "content": {"text/csv": {"schema": {"type": "string"}}},
            },
        },
        summary="Every stored record matching the filters, as CSV, streamed",
    )
    def export_logs(
        status: Status = None,
        topic: Topic = None,
        since_ms: SinceMs = None,
        until_ms: UntilMs = None,
        text: Text = None,
        key: Key = None,
        key_match: KeyMatch = "exact",
        header: Header = None,
        header_value: HeaderValue = None,
    ) -> StreamingResponse:
        match = _match(key, key_match, header, header_value)
        rows = opened().iter_logs(status, _one(topic), since_ms, until_ms, text or None, match)
        return StreamingResponse(
            export.csv_chunks(rows),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="kafka-logs.csv"'},
        )

    @router.get("/analytics/topic-names", tags=ANALYTICS, summary="Every topic that has stored records")
    def topic_names() -> list[str]:
        return opened().topics()

    @router.get(
        "/consumers/logs/{logId}",
        tags=["consumers"],
        summary="One stored record with its payload",
        responses={
            **BAD_REQUEST,
            404: {"model": wire.ErrorBody, "description": "No stored record has this id"},
        },
    )
    def log_detail(
        log_id: Annotated[str, Path(alias="logId", max_length=36, pattern=LOG_ID_PATTERN)],
    ) -> wire.LogDetailBody:
        row = opened().log(log_id)
        if row is None:
            raise HTTPException(404, f"no stored record {log_id[:100]!r}")
        return row.to_api(with_payload=True)  # type: ignore[return-value]

    return router


def _one(topic: str | None) -> str | None:
    """A single topic filter: absent, or a valid name (an empty one is not)."""
    if topic is not None and not is_valid_topic(topic):
        raise HTTPException(400, f"topic {topic[:60]!r} is not a valid topic name")
    return topic


def _match(
    key: str | None, key_match: str, header: str | None, header_value: str | None
) -> RecordMatch | None:
    """The key and header filters, when any is given."""
    match = RecordMatch(key, key_match == "prefix", header or None, header_value)
    return None if match.empty else match


def error_group_body(group: analytics.ErrorGroup) -> dict[str, Any]:
    """An :class:`~backend.analytics.ErrorGroup` as a :class:`~backend.wire.ErrorGroupBody`."""
    return {
        "pattern": group.pattern,
        "count": group.count,
        "retriable": group.retriable,
        "first_ms": group.first_ms,
        "last_ms": group.last_ms,
        "topics": sorted(group.topics),
        "errors": group.errors,
        "example": group.example,
    }
