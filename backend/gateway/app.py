"""The gateway's ASGI app: Socket.IO at /socket.io/, the plain WebSocket at /ws and the REST API.

The REST endpoints read the backend (store, consumer pool, health); each is one function on
:data:`router`, which reaches the backend through :data:`BackendDep`. :func:`create_gateway_app`
puts the parts together. The HTTP policy (origins, token, error bodies) is shared with the
producer API (:mod:`backend.gateway.http_policy`); the clients are served by
:mod:`backend.gateway.clients`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import socketio
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from backend import events
from backend.analytics_api import analytics_router
from backend.config import TOPIC_NAME_PATTERN, is_valid_topic
from backend.gateway import transport
from backend.gateway.clients import Gateway
from backend.gateway.http_policy import (
    UNAUTHORIZED_DOC,
    HostGuard,
    HostPolicy,
    bad_request_doc,
    create_api,
    error_doc,
    require_token,
)
from backend.gateway.transport import MAX_INBOUND_BYTES
from backend.limits import CommandTimeout, LimitReached
from backend.wire import (
    ConsumerBody,
    HealthBody,
    LogBody,
    StartedConsumerBody,
    StatisticsBody,
    StoppedConsumerBody,
    StreamTicketBody,
)

# --- REST query parameters -------------------------------------------------------------------

# The REST answers as documented: the routes return plain dicts (``response_model=None``); the
# models of backend/wire.py only describe them in the OpenAPI document and change no answer.


LogStatus = Annotated[
    str | None,
    Query(
        description="RECEIVED, PROCESSING, PROCESSED or FAILED (in any case)",
        examples=["FAILED"],
        json_schema_extra={"enum": list(events.STATUSES)},
    ),
]
LogTopic = Annotated[str | None, Query(max_length=249, json_schema_extra={"pattern": TOPIC_NAME_PATTERN})]


# --- REST routes -------------------------------------------------------------------------------


async def _backend(request: Request) -> Any:
    """The backend this app serves (see :func:`create_gateway_app`); async: no thread hop."""
    return request.app.state.backend


#: A route's parameter for the backend; it adds nothing to the OpenAPI document.
BackendDep = Annotated[Any, Depends(_backend)]

router = APIRouter(prefix="/api", responses=UNAUTHORIZED_DOC)


@router.get(
    "/health",
    tags=["health"],
    summary="200 once the consumers reach the broker, else 503",
    responses={
        200: {"model": HealthBody, "description": "Ready: the consumers reach the broker"},
        503: {"model": HealthBody, "description": "Not ready (starting, or the broker is unreachable)"},
    },
)
def health(request: Request, backend: BackendDep) -> JSONResponse:
    state = backend.health()
    body = {**state.to_api(), "gatewayClients": request.app.state.gateway.client_count}
    return JSONResponse(body, status_code=200 if state.ok else 503)


@router.get(
    "/consumers/statistics",
    tags=["consumers"],
    summary="The counters of stats-updated",
    response_model=None,
    responses={200: {"model": StatisticsBody, "description": "The counters"}},
)
async def statistics(backend: BackendDep) -> dict[str, Any]:
    """Async: in-memory counters, answered on the loop without a worker-thread hop (under load
    that hop had made the answer 0.3-1.5 s late: issue 14's counter lag measures against it)."""
    return backend.statistics()


@router.get(
    "/consumers/logs",
    tags=["consumers"],
    summary="Processed records, newest first",
    response_model=None,
    responses={
        200: {"model": list[LogBody], "description": "The logs, newest first"},
        **bad_request_doc("Unknown status, invalid topic name, limit or offset out of range"),
        503: error_doc("The store is not open (the backend is starting or stopping)"),
    },
)
def logs(
    backend: BackendDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    status: LogStatus = None,
    topic: LogTopic = None,
    offset: Annotated[int, Query(ge=0, le=1_000_000, description="rows to skip, for paging")] = 0,
) -> list[dict[str, Any]]:
    if status is not None and status.upper() not in events.STATUSES:
        raise HTTPException(400, f"status must be one of {', '.join(events.STATUSES)} (got {status[:40]!r})")
    if topic is not None and not is_valid_topic(topic):
        raise HTTPException(400, f"topic {topic[:60]!r} is not a valid topic name")
    store = backend.store
    if store is None:
        raise HTTPException(503, "the store is not open")
    rows = store.logs(
        limit=limit, status=status.upper() if status else None, topic=topic, offset=offset, payloads=False
    )
    return [row.to_api() for row in rows]


@router.get(
    "/consumers",
    tags=["consumers"],
    summary="The consumers and their partitions",
    response_model=None,
    responses={200: {"model": list[ConsumerBody], "description": "The consumers"}},
)
def consumers(backend: BackendDep) -> list[dict[str, Any]]:
    return [snapshot.to_api() for snapshot in backend.consumers()]


@router.post(
    "/consumers",
    status_code=201,
    tags=["consumers"],
    summary="Start one more consumer",
    response_model=None,
    responses={
        201: {"model": StartedConsumerBody, "description": "Started"},
        429: error_doc("MAX_CONSUMERS consumers are running, or no worker runs; nothing was started"),
        504: error_doc("No worker answered in time (the command stays; the consumer may still start)"),
    },
)
def start_consumer(backend: BackendDep) -> dict[str, str]:
    try:
        return {"consumerId": backend.start_consumer()}
    except LimitReached as exc:
        raise HTTPException(429, exc.reason) from None
    except CommandTimeout as exc:
        raise HTTPException(504, str(exc)) from None


@router.delete(
    "/consumers/{consumerId}",
    tags=["consumers"],
    summary="Stop a consumer",
    response_model=None,
    responses={
        200: {"model": StoppedConsumerBody, "description": "Stopped"},
        404: error_doc("No running consumer has this id"),
        504: error_doc("Its worker did not answer in time"),
    },
)
def stop_consumer(consumerId: str, backend: BackendDep) -> dict[str, str]:  # noqa: N803 - the contract's name
    try:
        stopped = len(consumerId) <= 100 and backend.stop_consumer(consumerId)
    except CommandTimeout as exc:
        raise HTTPException(504, str(exc)) from None
    if not stopped:
        raise HTTPException(404, f"no running consumer {consumerId[:100]!r}")
    return {"consumerId": consumerId, "status": events.INACTIVE}


@router.post(
    "/stream-tickets",
    status_code=201,
    tags=["streams"],
    summary="A short-lived ticket that opens /ws or Socket.IO, for a browser (instead of the token)",
    response_model=None,
    responses={201: {"model": StreamTicketBody, "description": "Minted; opens streams for about 60 s"}},
)
def mint_stream_ticket(request: Request) -> dict[str, str]:
    """A browser gets a ticket from its server (which holds AUTH_TOKEN), never the token itself."""
    return request.app.state.gateway.tickets.mint().to_api()


# --- the app -----------------------------------------------------------------------------------

TITLE = "Consumer dashboard: event gateway and REST API"
DESCRIPTION = (
    "Socket.IO (protocol v5) at `/socket.io/` and a plain WebSocket at `/ws` stream the "
    "consumers' events; every event carries a sequence number `seq` and clients reconnecting "
    "with `lastSeq` are replayed what they missed. A client chooses what it receives when it "
    "connects: `mode=all` (every event, the default) or `mode=live` (counts at most 10 times a "
    "second, the events of at most `maxRate` records a second, chosen whole, `records-skipped` for "
    "the rest), and `topics=a,b`. The REST endpoints below read the store. "
    "When AUTH_TOKEN is set, send `Authorization: Bearer <token>` (to these documents too); "
    "a browser opens a stream with a ticket from `POST /api/stream-tickets` instead."
)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The fan-out runs while the server serves: started on the server's loop, stopped with it."""
    gateway: Gateway = app.state.gateway
    await gateway.start()
    try:
        yield
    finally:
        await gateway.stop()


def create_gateway_app(backend: Any) -> ASGIApp:
    """Socket.IO at /socket.io/, the plain WebSocket at /ws and the REST API, as one ASGI app.

    Fails with :class:`~backend.gateway.transport.UnsupportedLibraryError` when a library the
    gateway's glue reaches into is outside the versions it was written for.
    """
    transport.check_library_versions()
    gateway = Gateway(backend)
    settings = backend.settings
    api = create_api(settings, title=TITLE, description=DESCRIPTION, lifespan=_lifespan, check_host=False)
    api.state.backend = backend
    api.state.gateway = gateway
    api.include_router(router, dependencies=[Security(require_token(settings))])
    api.include_router(
        analytics_router(lambda: backend.store),
        prefix="/api",
        dependencies=[Security(require_token(settings))],
        responses=UNAUTHORIZED_DOC,
    )
    api.add_api_websocket_route("/ws", gateway.serve_ws, name="plain_websocket")
    sio_app = OversizedPollingGuard(socketio.ASGIApp(gateway.sio, other_asgi_app=api))
    app = HostGuard(sio_app, HostPolicy(settings.host_allowlist))  # REST, /ws and Socket.IO alike
    app.gateway = gateway  # for tests and embedding
    app.api = api  # the FastAPI app (REST, /ws), e.g. for its OpenAPI document
    return app


class OversizedPollingGuard:
    """Answer 413 at once to a polling POST that announces more than the inbound limit.

    engineio would read it, disconnect the session and then wait for a poll that it refuses
    to serve once the session is closed: the POST never got an answer (found by
    tests/test_protocol_abuse.py).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].startswith("/socket.io"):
            length = dict(scope.get("headers") or ()).get(b"content-length", b"0")
            if not length.isdigit() or int(length) > MAX_INBOUND_BYTES:
                body = json.dumps({"error": f"a polling request may carry at most {MAX_INBOUND_BYTES} bytes"})
                await send({"type": "http.response.start", "status": 413,
                            "headers": [(b"content-type", b"application/json")]})  # fmt: skip
                await send({"type": "http.response.body", "body": body.encode()})
                return
        await self.app(scope, receive, send)
