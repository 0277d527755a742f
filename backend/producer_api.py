"""The producer API on PRODUCER_PORT: validate a request completely, then produce one record.

Nothing reaches Kafka unless the whole request is valid: the topic name, the content type, the
size (read with a cap, never buffered beyond it), and the body itself (strict JSON, or a CSV
document with a header row and rectangular data rows). The record carries exactly the bytes the
client sent, with the ``data-type`` header the consumers use to decode it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request, Security
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from backend.config import TOPIC_NAME_PATTERN, Settings, is_valid_topic
from backend.events import CSV_BATCH, SINGLE_MESSAGE
from backend.gateway.http_policy import (
    UNAUTHORIZED_DOC,
    bad_request_doc,
    create_api,
    error_doc,
    require_token,
)
from backend.limits import LimitReached
from backend.processing import DecodeError, LimitExceeded, Limits, parse_csv, parse_json
from backend.wire import ProducedBody, ProducedCsvBody, produced_body

log = logging.getLogger(__name__)

JSON_TYPES = ("application/json",)
CSV_TYPES = ("text/csv", "application/csv")
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the file of a multipart upload

# ``topic`` is required (a missing one is a 400, as the contract has it), but the handlers check it
# themselves (checked_topic), so FastAPI takes it as optional and the document says what is checked.
Topic = Annotated[str | None, Query(include_in_schema=False)]
TOPIC_PARAMETER = {
    "name": "topic",
    "in": "query",
    "required": True,
    "description": (
        "Kafka topic, created when missing: 1-249 of letters, digits, '.', '_', '-'; "
        "not '.' or '..', and not starting with '__' (Kafka's own topics)"
    ),
    "schema": {
        "type": "string",
        "pattern": f"^(?!__){TOPIC_NAME_PATTERN.removeprefix('^')}",
        "examples": ["orders"],
    },
}

SINGLE_BODY = {
    "parameters": [TOPIC_PARAMETER],
    "requestBody": {
        "required": True,
        "description": "Any JSON value (also as `application/<anything>+json`); produced as sent.",
        "content": {"application/json": {"schema": {}, "example": {"name": "Test", "value": 100}}},
    },
}
CSV_EXAMPLE = "name,value\nA,1\nB,2\n"
CSV_BODY = {
    "parameters": [TOPIC_PARAMETER],
    "requestBody": {
        "required": True,
        "description": (
            "A CSV document with a header row of distinct names and at least one data row, every row "
            "with as many fields as the header; as the body, or as the field `file` of a form."
        ),
        "content": {
            "text/csv": {"schema": {"type": "string"}, "example": CSV_EXAMPLE},
            "application/csv": {"schema": {"type": "string"}, "example": CSV_EXAMPLE},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
        },
    },
}


def produce_errors(bad_request: str) -> dict[int | str, dict[str, Any]]:
    """The error answers of both operations (401 and 403 are documented for the whole router/app)."""
    return {
        **bad_request_doc(bad_request),
        413: error_doc(
            "The body is over MAX_MESSAGE_BYTES (it was not read to its end), or it would be over one of "
            "the consumers' decoding limits (MAX_DECODED_CHARS, MAX_CSV_COLUMNS, MAX_COLUMN_NAME_CHARS, "
            "MAX_CSV_ROWS): nothing was produced"
        ),
        429: error_doc("The topic does not exist and MAX_CREATED_TOPICS were created; nothing was produced"),
        503: error_doc("The broker did not take the record (unreachable, or timed out)"),
    }


class BadRequest(HTTPException):
    def __init__(self, message: str) -> None:
        super().__init__(400, message)


def checked_topic(topic: str | None) -> str:
    if topic is None or topic == "":
        raise BadRequest("missing query parameter 'topic'")
    if not is_valid_topic(topic):
        raise BadRequest(f"invalid topic name {topic[:60]!r}: use 1-249 of letters, digits, '.', '_', '-'")
    if topic.startswith("__"):
        raise BadRequest(f"topic {topic[:60]!r} is reserved: names starting with '__' are Kafka's own")
    return topic


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) more than ``limit`` bytes without reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise BadRequest("Content-Length is not a number")
        if int(declared) > limit:
            raise HTTPException(413, f"body of {int(declared)} bytes is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def utf8(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"body is not valid UTF-8 (byte {exc.start})") from None


async def csv_upload(request: Request, body: bytes, limit: int) -> bytes:
    """The ``file`` field of a multipart body that was already read (and capped)."""

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=10)
    except Exception as exc:  # python-multipart's and Starlette's parse errors
        raise BadRequest(f"malformed multipart body: {exc}") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise BadRequest("multipart body has no file field named 'file'")
        data = await upload.read(limit + 1)
    finally:
        await form.close()
    if len(data) > limit:
        raise HTTPException(413, f"file is over the limit of {limit} bytes")
    return data


async def decoded_as_the_consumers_would(
    backend: Any, parse: Callable[[str, Limits], Any], body: bytes, prefix: str = ""
) -> Any:
    """Parse the body as the consumers will, with their limits: a 201 means it can be processed.

    In a worker thread: a big CSV or JSON document takes seconds to parse, and this event loop
    also serves the gateway. Malformed: 400; well formed but over a limit once decoded: 413.
    """
    limits = Limits.from_settings(backend.settings)
    try:
        return await run_in_threadpool(parse, utf8(body), limits)
    except LimitExceeded as exc:
        raise HTTPException(413, f"the consumers would refuse this record: {exc}") from None
    except DecodeError as exc:
        raise BadRequest(f"{prefix}{exc}") from None


async def produce(backend: Any, topic: str, value: bytes, data_type: str) -> dict[str, Any]:
    """Produce the record (in a worker thread: kafka-python blocks); 400 or 503 when it is refused."""
    try:
        produced = await run_in_threadpool(backend.produce, topic, value, data_type)
    except LimitReached as exc:
        raise HTTPException(429, exc.reason) from None
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    except Exception as exc:  # the broker is down or timed out
        log.warning("Producing to %s failed: %s", topic, exc)
        raise HTTPException(503, f"could not produce to {topic!r}: {type(exc).__name__}: {exc}") from None
    return produced_body(produced.topic, produced.partition, produced.offset)


def _backend(request: Request) -> Any:
    """The backend this app produces through (see :func:`create_producer_app`)."""
    return request.app.state.backend


router = APIRouter(prefix="/api/producers", tags=["producers"], responses=UNAUTHORIZED_DOC)


@router.post(
    "/send/single",
    status_code=201,
    summary="Produce one JSON message",
    openapi_extra=SINGLE_BODY,
    responses={
        201: {"model": ProducedBody, "description": "Produced"},
        **produce_errors(
            "No topic or an invalid one, a Content-Type other than JSON, a body that is not JSON"
        ),
    },
)
async def send_single(request: Request, topic: Topic = None) -> JSONResponse:
    backend = _backend(request)
    topic = checked_topic(topic)
    if media_type(request) not in JSON_TYPES and not media_type(request).endswith("+json"):
        raise BadRequest(f"Content-Type must be application/json (got {media_type(request)[:60]!r})")
    body = await read_body(request, backend.settings.max_message_bytes)
    if not body.strip():
        raise BadRequest("empty body: send a JSON value")
    await decoded_as_the_consumers_would(backend, parse_json, body, "body is not JSON: ")
    result = await produce(backend, topic, body, SINGLE_MESSAGE)
    return JSONResponse(result, status_code=201)


@router.post(
    "/send/csv",
    status_code=201,
    summary="Produce one CSV document as one CSV_BATCH record",
    openapi_extra=CSV_BODY,
    responses={
        201: {"model": ProducedCsvBody, "description": "Produced, as one CSV_BATCH record"},
        **produce_errors("No topic or an invalid one, another Content-Type, a malformed CSV document"),
    },
)
async def send_csv(request: Request, topic: Topic = None) -> JSONResponse:
    backend = _backend(request)
    limit = backend.settings.max_message_bytes
    topic = checked_topic(topic)
    kind = media_type(request)
    if kind == "multipart/form-data":
        body = await read_body(request, limit + MULTIPART_OVERHEAD)
        document = await csv_upload(request, body, limit)
    elif kind in CSV_TYPES:
        document = await read_body(request, limit)
    else:
        raise BadRequest(f"Content-Type must be text/csv or multipart/form-data (got {kind[:60]!r})")
    if not document.strip():
        raise BadRequest("empty CSV document")
    rows = await decoded_as_the_consumers_would(backend, parse_csv, document)
    result = await produce(backend, topic, document, CSV_BATCH)
    return JSONResponse({**result, "rowCount": len(rows)}, status_code=201)


def create_producer_app(backend: Any) -> FastAPI:
    """POST /api/producers/send/single and /send/csv, documented at /docs."""
    settings: Settings = backend.settings
    app = create_api(
        settings,
        title="Consumer dashboard: producer API",
        description=(
            "Produces records to Kafka with a `data-type` header (`SINGLE_MESSAGE` or `CSV_BATCH`). "
            f"Bodies over {settings.max_message_bytes} bytes (MAX_MESSAGE_BYTES) are refused with 413; "
            "any malformed request gets 400 and produces nothing. "
            "When AUTH_TOKEN is set, send `Authorization: Bearer <token>`."
        ),
    )
    app.state.backend = backend
    app.include_router(router, dependencies=[Security(require_token(settings))])
    return app
