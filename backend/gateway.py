"""The event gateway on GATEWAY_PORT: Socket.IO, the plain WebSocket ``/ws`` and the REST API, one ASGI app.

Events reach clients in three hops:

1. **Bus -> loop.** :class:`Fanout` holds the one bus subscription. Its callback runs in the
   publishing (consumer) thread under the bus lock, so it only appends the event to an inbox and,
   when none is pending, wakes the fan-out task with ``loop.call_soon_threadsafe``.
2. **Loop -> clients.** The fan-out task offers each event to every :class:`ClientStream`: a
   bounded queue per client. Offering never waits; a client whose queue is full is cut off (with a
   logged reason) and can come back with ``lastSeq`` to be replayed from the bus's ring buffer.
3. **Client stream -> socket.** One sender task per client drains its queue. On ``/ws`` the sender
   awaits the socket's send, which waits while the peer is not reading. Socket.IO's ``emit`` only
   appends to Engine.IO's own (unbounded) per-client queue, so after each batch the sender waits for
   Engine.IO's transport to take what it was given (``queue.join()``): a client that stops reading
   then stops its sender, and its bounded queue fills instead of Engine.IO's unbounded one.

Replay: a client connecting with ``lastSeq`` first gets the held events after it, in order, then the
live ones, with nothing lost or doubled in between (see :meth:`Fanout.attach`); when those events
are no longer held it gets ``resync-required``. Every event frame carries its ``seq``; the
``connection-success`` (and ``resync-required``) frame carries the position the stream continues
from, so a client that remembers the newest ``seq`` it saw always reconnects with the right value.

The HTTP policy (origin allowlist, bearer token, ``{"error": ...}`` bodies) is shared with the
producer API (:mod:`backend.producer_api`) through :func:`create_api`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from functools import partial
from typing import Annotated, Any, Literal, NoReturn

import socketio
from engineio import async_socket as engineio_async_socket
from engineio import exceptions as engineio_exceptions
from engineio import packet as engineio_packet
from fastapi import APIRouter, FastAPI, HTTPException, Query, Request, Security, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from socketio import packet as socketio_packet
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from backend import engineio_websocket, events
from backend.bus import EventBus
from backend.config import TOPIC_NAME_PATTERN, Settings, is_valid_topic
from backend.events import Event
from backend.limits import LimitReached
from backend.websocket_protocol import WRITE_FRAMES, text_frame, texts_sender

log = logging.getLogger(__name__)

#: Events a client may fall behind before it is cut off. The bus holds 20,000 for replay, so a
#: client cut off at this depth can reconnect with ``lastSeq`` and still be replayed.
CLIENT_QUEUE_MAX = 5_000
#: Events handed to one client's transport before waiting for it to take them.
SEND_BATCH_MAX = 500
#: Events offered to all clients before the fan-out yields to their senders.
FANOUT_CHUNK = 128
#: The longest the fan-out waits for more events before writing (see Fanout._run).
FANOUT_LINGER_MAX_S = 0.010
#: While it lingers, the fan-out writes as soon as no new event came for this long: a record's
#: bursts come within ~1-2 ms of each other, so waiting out the whole linger only adds latency.
FANOUT_QUIET_S = 0.002
#: Largest message a Socket.IO client may send us (clients only send the connect packet).
MAX_INBOUND_BYTES = 64 * 1024
#: How long a slow /ws client gets to accept the close frame before its socket is just dropped.
CLOSE_GRACE_S = 1.0
#: Close codes on /ws.
WS_POLICY_VIOLATION = 1008
WS_TRY_AGAIN_LATER = 1013

LOCAL_ORIGIN = r"http://(localhost|127\.0\.0\.1)(:\d{1,5})?"

# --- HTTP policy shared by both APIs ----------------------------------------------------------


class OriginPolicy:
    """Which browser origins may use the APIs (CORS_ORIGINS).

    Default: any ``http://localhost:<port>`` and ``http://127.0.0.1:<port>``. A comma list replaces
    the default; ``*`` allows every origin, only when set explicitly. A request without an Origin
    header comes from a non-browser client and is allowed: origins protect browsers' users.
    """

    def __init__(self, cors_origins: Sequence[str]) -> None:
        self.any = "*" in cors_origins
        self.listed = frozenset(origin.rstrip("/") for origin in cors_origins if origin != "*")
        self.default = not cors_origins
        self._local = re.compile(LOCAL_ORIGIN)

    def allows(self, origin: str | None) -> bool:
        if origin is None or self.any:
            return True
        if self.default:
            return bool(self._local.fullmatch(origin))
        return origin in self.listed

    def cors_options(self) -> dict[str, Any]:
        """Arguments for Starlette's CORSMiddleware that express the same policy."""
        if self.any:
            return {"allow_origins": ["*"]}
        if self.default:
            return {"allow_origin_regex": LOCAL_ORIGIN, "allow_credentials": True}
        return {"allow_origins": sorted(self.listed), "allow_credentials": True}

    def describe(self) -> str:
        if self.any:
            return "every origin"
        if self.default:
            return "http://localhost:<port> and http://127.0.0.1:<port>"
        return ", ".join(sorted(self.listed))


class OriginGuard:
    """Refuses HTTP requests whose Origin header is not allowed (403), before anything runs.

    CORS headers only stop a browser from *reading* a cross-origin response; a form-style POST
    would still run. Refusing disallowed origins outright keeps foreign pages from starting
    consumers or producing records through a user's browser.
    """

    def __init__(self, app: ASGIApp, policy: OriginPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            origin = _header(scope, b"origin")
            if not self.policy.allows(origin):
                log.info("Refused %s %s from origin %s", scope["method"], scope["path"], origin)
                response = error_response(403, f"origin {origin[:200]!r} is not allowed (CORS_ORIGINS)")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def token_matches(expected: str | None, given: str | None) -> bool:
    """Constant-time token check; always true when no AUTH_TOKEN is configured."""
    if expected is None:
        return True
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """Every error of both APIs: ``{"error": "<why>"}``."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class ErrorBody(BaseModel):
    """The body of every error answer of both APIs (see :func:`error_response`)."""

    error: str = Field(description="Why the request was refused, for people to read (not to be parsed).")


def error_doc(description: str, **extra: Any) -> dict[str, Any]:
    """A ``responses=`` entry for an answer with :class:`ErrorBody`: documents, changes nothing."""
    return {"model": ErrorBody, "description": description, **extra}


def bad_request_doc(what: str) -> dict[int | str, dict[str, Any]]:
    """The 400 of an operation with parameters: ``what`` its own code checks, plus the 400 of
    :func:`create_api`'s RequestValidationError handler (which FastAPI would document as a 422)."""
    return {400: error_doc(f"{what}; or a parameter outside the schema documented here. Nothing is done.")}


#: 401 from :func:`require_token`, for the routers it guards.
UNAUTHORIZED_DOC: dict[int | str, dict[str, Any]] = {
    401: error_doc(
        "AUTH_TOKEN is set and the request has no `Authorization: Bearer <token>` header, or a wrong token.",
        headers={"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
    )
}
#: 403 from :class:`OriginGuard`, for every operation of an app made by :func:`create_api`.
FORBIDDEN_ORIGIN_DOC: dict[int | str, dict[str, Any]] = {
    403: error_doc("The request's `Origin` header names an origin that is not allowed (CORS_ORIGINS).")
}


def require_token(settings: Settings) -> Callable[..., Awaitable[None]]:
    """A FastAPI dependency enforcing AUTH_TOKEN as a bearer token (401 otherwise)."""
    scheme = HTTPBearer(auto_error=False, description="The AUTH_TOKEN the backend was started with.")

    async def check(credentials: HTTPAuthorizationCredentials | None = Security(scheme)) -> None:  # noqa: B008
        if settings.auth_token is None:
            return
        if credentials is None:
            raise HTTPException(401, "missing token: send 'Authorization: Bearer <AUTH_TOKEN>'", _CHALLENGE)
        if not token_matches(settings.auth_token, credentials.credentials):
            raise HTTPException(401, "wrong token", _CHALLENGE)

    return check


_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for problem in exc.errors():
        where = ".".join(str(part) for part in problem.get("loc", ())[1:]) or "request"
        text = f"{where}: {problem.get('msg', 'invalid')}"
        if "input" in problem and problem["input"] is not None:
            text += f" (got {str(problem['input'])[:60]!r})"
        parts.append(text)
    return "; ".join(parts) or "invalid request"


def create_api(
    settings: Settings, title: str, description: str, lifespan: Any = None, version: str = "1.0.0"
) -> FastAPI:
    """A FastAPI app with the shared policy: origin allowlist + CORS, JSON errors, docs at /docs."""
    app = FastAPI(
        title=title,
        description=description,
        version=version,
        lifespan=lifespan,
        responses=FORBIDDEN_ORIGIN_DOC,
    )
    policy = OriginPolicy(settings.cors_origins)
    app.add_middleware(
        CORSMiddleware,
        allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type"],
        max_age=600,
        **policy.cors_options(),
    )
    app.add_middleware(OriginGuard, policy=policy)  # added last: runs first

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"not found: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        return error_response(exc.status_code, message, dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, _validation_message(exc))

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _without_validation_422(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's way to adjust the document
    return app


def _without_validation_422(document: dict[str, Any]) -> None:
    """Drop the 422 "Validation Error" FastAPI adds to every operation with parameters or a body.

    These apps never answer 422: ``invalid_request`` answers 400 with :class:`ErrorBody`, which the
    operations document themselves (:func:`bad_request_doc`). FastAPI offers no switch for this
    (fastapi/fastapi#3650) short of documenting a ``4XX`` or ``default`` catch-all, which would hide
    every undocumented client error from schemathesis' status_code_conformance.
    """
    generated = {"$ref": "#/components/schemas/HTTPValidationError"}
    for item in document.get("paths", {}).values():
        for operation in item.values():
            responses = operation.get("responses", {})
            schema = responses.get("422", {}).get("content", {}).get("application/json", {}).get("schema")
            if schema == generated:
                del responses["422"]
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)


# --- fan-out ------------------------------------------------------------------------------------


class Outgoing:
    """One event on its way to clients: its messages and frames are encoded once, for all of them."""

    __slots__ = ("event", "_text", "_engineio", "_ws_frame", "_sio_frame")

    def __init__(self, event: Event) -> None:
        self.event = event
        self._text: str | None = None
        self._engineio: engineio_packet.Packet | None = None
        self._ws_frame: bytes | None = None
        self._sio_frame: bytes | None = None

    @property
    def seq(self) -> int:
        return self.event.seq

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = json.dumps(self.event.as_wire(), ensure_ascii=False, separators=(",", ":"))
        return self._text

    @property
    def engineio(self) -> engineio_packet.Packet:
        """The Engine.IO MESSAGE carrying ``42["name",{...},seq]``, encoded once for all Socket.IO clients.

        ``sio.emit(..., to=sid)`` re-encoded the packet and spawned a task per client and event
        (measured by the benchmark: 88 us of backend CPU per delivery, 18 us this way).
        """
        if self._engineio is None:
            data = [self.event.name, self.event.data, self.event.seq]
            encoded = socketio_packet.Packet(socketio_packet.EVENT, namespace="/", data=data).encode()
            self._engineio = engineio_packet.Packet(engineio_packet.MESSAGE, data=encoded)
        return self._engineio

    @property
    def ws_frame(self) -> bytes:
        """:attr:`text` as a WebSocket frame (a server's frames are the same for every client)."""
        if self._ws_frame is None:
            self._ws_frame = text_frame(self.text.encode())
        return self._ws_frame

    @property
    def sio_frame(self) -> bytes:
        """:attr:`engineio` as a WebSocket frame."""
        if self._sio_frame is None:
            self._sio_frame = text_frame(self.engineio.encode().encode())
        return self._sio_frame


class Batch(list[Outgoing]):
    """Events written to clients together; their frames are joined once, for every client that
    takes the whole batch (all but those catching up). Not changed once handed out."""

    __slots__ = ("_ws_frames", "_sio_frames")

    def __init__(self, items: Iterable[Outgoing] = ()) -> None:
        super().__init__(items)
        self._ws_frames: bytes | None = None
        self._sio_frames: bytes | None = None

    @property
    def ws_frames(self) -> bytes:
        if self._ws_frames is None:
            self._ws_frames = b"".join([item.ws_frame for item in self])
        return self._ws_frames

    @property
    def sio_frames(self) -> bytes:
        if self._sio_frames is None:
            self._sio_frames = b"".join([item.sio_frame for item in self])
        return self._sio_frames


class ClientStream:
    """One client's view of the bus: where it is, its replay backlog, and a bounded queue.

    Only touched on the event loop. ``offer`` never waits: when the queue is full the client is
    too slow, ``on_overflow`` is called once and nothing more is queued for it.
    """

    def __init__(self, name: str, on_overflow: Callable[[], None], limit: int | None = None) -> None:
        self.name = name
        self.limit = limit or CLIENT_QUEUE_MAX
        self.on_overflow = on_overflow
        self.overflowed = False
        self.position = 0  # newest seq handed to this client (queued or in the backlog)
        self.start_seq = 0  # the position its stream continues from; sent with connection-success
        self.backlog: list[Outgoing] = []
        self.resync: dict[str, Any] | None = None
        # A deque and one waiter instead of an asyncio.Queue: ``offer`` runs once per event and
        # client (~32,000 times a second with 1,000 clients), and the queue's per-item bookkeeping
        # (getter futures, unfinished-task counts) was a tenth of the gateway's CPU.
        self._queued: deque[Outgoing] = deque()
        self._waiter: asyncio.Future[None] | None = None
        # Set by the client's sender while it waits with nothing queued: writes events straight
        # to the socket without waiting (False: it would have to wait, so they are queued).
        self.write_now: Callable[[Batch], bool] | None = None

    def offer(self, items: Batch) -> None:
        """Events in seq order: written at once when the client keeps up, else queued for its sender."""
        if self.overflowed or not items:
            return
        if items[0].seq <= self.position:
            items = Batch(item for item in items if item.seq > self.position)
            if not items:
                return
        self.position = items[-1].seq
        if not self._queued and self.write_now is not None and self.write_now(items):
            return
        if len(self._queued) + len(items) > self.limit:
            self.overflowed = True
            self.on_overflow()
            return
        self._queued.extend(items)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def take(self, most: int = SEND_BATCH_MAX) -> list[Outgoing]:
        """Wait for at least one event; return everything queued, up to ``most``."""
        while not self._queued:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        queued = self._queued
        if len(queued) <= most:
            items = list(queued)
            queued.clear()
            return items
        return [queued.popleft() for _ in range(most)]

    @property
    def behind(self) -> int:
        return len(self._queued)

    async def pump(
        self,
        send: Callable[[list[Outgoing]], Awaitable[None]],
        write_now: Callable[[Batch], bool] | None,
    ) -> None:
        """Live, forever: the fan-out writes events itself while ``write_now`` can; the rest is sent here."""
        try:
            while True:
                self.write_now = write_now
                items = await self.take()
                self.write_now = None  # until these are sent, later events queue up behind them
                await send(items)
        finally:
            self.write_now = None


class Fanout:
    """The gateway's single bus subscription, handing events to every client stream on the loop.

    The bus callback only appends to an inbox and wakes the fan-out task (one wake-up per burst,
    not per event). The task offers the inbox to the streams in chunks, yielding to the loop
    between chunks so that client senders move events out of their queues as they arrive: a
    burst larger than a client's queue does not cut off a client that keeps up.

    Before taking the inbox it lingers as long as the previous round of offers took (at most
    FANOUT_LINGER_MAX_S), or until no event came for FANOUT_QUIET_S. Each round costs a write per
    client, and a record's events come in three or four bursts a few milliseconds apart
    (received+started, the outcome, the merged stats): with one client a round takes microseconds
    and nothing waits; with 1,000 it takes tens of milliseconds, and gathering the bursts into one
    write per client cut the writes, and with them most of the fan-out's CPU, by about three
    (bench: fan-out phase).
    """

    def __init__(self) -> None:
        self.streams: set[ClientStream] = set()
        self.bus: EventBus | None = None
        self.dispatched = 0  # newest seq offered to the streams
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: deque[Event] = deque()
        self._lock = threading.Lock()
        self._scheduled = False
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._linger = 0.0  # seconds: how long the last round of offers took

    def start(self, bus: EventBus) -> None:
        """Subscribe to ``bus``; call on the event loop that serves the clients."""
        self.bus, self._loop = bus, asyncio.get_running_loop()
        start = bus.last_seq
        backlog, self._unsubscribe = bus.subscribe_from(start, self._receive)
        self.dispatched = backlog[-1].seq if backlog else start
        self._task = self._loop.create_task(self._run(), name="gateway-fanout")

    def stop(self) -> None:
        if self._unsubscribe:
            self._unsubscribe()
            self._unsubscribe = None
        if self._task:
            self._task.cancel()

    def _receive(self, event: Event) -> None:
        """Bus callback, in the publishing thread under the bus lock: hand over, never wait."""
        with self._lock:
            self._inbox.append(event)
            if self._scheduled:
                return
            self._scheduled = True
        with suppress(RuntimeError):  # the loop is closed: the server is stopping
            self._loop.call_soon_threadsafe(self._wakeup.set)  # type: ignore[union-attr]

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._linger > 0.001:
                await self._gather(self._linger)
            while chunk := self._take_chunk():
                started = time.perf_counter()
                self._offer(chunk)
                self._linger = min(FANOUT_LINGER_MAX_S, time.perf_counter() - started)
                await asyncio.sleep(0)  # let the senders run

    async def _gather(self, most: float) -> None:
        """Wait up to ``most`` seconds for the rest of a burst: until no event came for FANOUT_QUIET_S."""
        deadline = time.perf_counter() + most
        waiting = len(self._inbox)  # a hint, read without the lock
        while (left := deadline - time.perf_counter()) > 0:
            await asyncio.sleep(min(FANOUT_QUIET_S, left))
            if len(self._inbox) == waiting:
                return
            waiting = len(self._inbox)

    def _take_chunk(self) -> list[Event]:
        with self._lock:
            if not self._inbox:
                self._scheduled = False  # the next event wakes us again
                return []
            return [self._inbox.popleft() for _ in range(min(FANOUT_CHUNK, len(self._inbox)))]

    def _offer(self, chunk: list[Event]) -> None:
        streams = tuple(self.streams)
        debug = log.isEnabledFor(logging.DEBUG)
        items = Batch()
        for event in chunk:
            if event.seq <= self.dispatched:
                continue
            self.dispatched = event.seq
            items.append(Outgoing(event))
            if debug:
                log.debug("%s to %d client(s)", _describe(event), len(streams))
        for stream in streams:
            stream.offer(items)

    def attach(self, stream: ClientStream, last_seq: int | None) -> None:
        """Register a client; with ``last_seq``, give it the held events after it first.

        Runs on the loop, where ``dispatched`` says exactly which events the live stream will still
        bring: the backlog is what the bus holds up to ``dispatched``, the queue gets the rest.
        """
        assert self.bus is not None, "the gateway is not started"
        stream.position = stream.start_seq = self.dispatched
        if last_seq is not None:
            held = self.bus.since(last_seq)
            if held is None:
                stream.resync = events.resync_required(last_seq, self.bus.oldest_seq)
            else:
                stream.backlog = [Outgoing(event) for event in held if event.seq <= self.dispatched]
                stream.position = max(last_seq, self.dispatched)
                stream.start_seq = last_seq
        self.streams.add(stream)

    def detach(self, stream: ClientStream) -> None:
        self.streams.discard(stream)


def _describe(event: Event) -> str:
    if event.name == events.STATS_UPDATED:
        return "Broadcasted stats update"
    if "logId" in event.data:
        return f"Broadcasted {event.name} for log {event.data['logId']}"
    if "consumerId" in event.data:
        return f"Broadcasted {event.name} for {event.data['consumerId']}"
    return f"Broadcasted {event.name}"


def parse_last_seq(value: Any) -> int | None:
    """``lastSeq`` from a client: absent, or a non-negative integer (number or digits)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError("lastSeq must be a non-negative integer")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().isdigit() and len(value.strip()) < 20:
        number = int(value.strip())
    else:
        raise ValueError("lastSeq must be a non-negative integer")
    if number < 0:
        raise ValueError("lastSeq must be a non-negative integer")
    return number


# --- the gateway ------------------------------------------------------------------------------


class StrictEngineIOSocket(engineio_async_socket.AsyncSocket):
    """python-engineio's connection, closed when the client sends what Engine.IO cannot read.

    The library ignores a websocket frame of unknown packet type (7, 9, ...: it logs a traceback
    and reads on), and answers 200 to a polling POST it cannot decode (invalid UTF-8, a packet
    that is not ``<type><data>``) and keeps the session. The reference server closes the
    connection ("parse error"); so does this one: a websocket gets a CLOSE packet and is closed, a
    polling POST is answered 400 and its session is gone (found by tests/test_protocol_abuse.py).
    Packets of known types are handled (or, on a websocket, ignored) by the library as before.

    python-engineio has no setting for its socket class: StrictSocketIOServer gives each new
    socket this class before the socket handles any packet (it adds methods, no state).
    """

    async def receive(self, pkt: engineio_packet.Packet) -> None:
        if not 0 <= pkt.packet_type < len(engineio_packet.packet_names):
            await self._refuse(f"unknown packet type {pkt.packet_type}")
        await super().receive(pkt)

    async def handle_post_request(self, environ: dict[str, Any]) -> None:
        try:
            await super().handle_post_request(environ)
        except (ValueError, KeyError) as exc:  # what UTF-8 and Engine.IO payload decoding raise
            await self._refuse(f"undecodable polling payload ({type(exc).__name__}: {exc})")
        except engineio_exceptions.UnknownPacketError:
            # OPEN, PING or NOOP, which clients do not post. engineio closes the session too, but
            # waits for the client to poll the CLOSE packet, a poll it then refuses: the POST
            # would never be answered.
            await self._refuse("a packet type clients do not send in a polling POST")

    async def _refuse(self, why: str) -> NoReturn:
        """Close now, without waiting for the client to take the CLOSE packet, and stop reading.

        The websocket reader stops at SocketIsClosedError; for a polling POST, Engine.IO answers
        any EngineIOError with 400 and forgets the (already closed) session.
        """
        log.info("Closing Engine.IO connection %s: %s", self.sid, why[:160])
        await self.close(wait=False, abort=False, reason=self.server.reason.SERVER_DISCONNECT)
        raise engineio_exceptions.SocketIsClosedError(why)


class StrictSocketIOServer(socketio.AsyncServer):
    """python-socketio's server, closing a connection that sends a packet it cannot parse.

    The library logs a traceback for such a packet and keeps the connection (the reference
    Socket.IO server closes it). Our clients send only CONNECT and DISCONNECT, as the gateway
    accepts no client events, so binary packets are refused too: they announce attachments that
    the library would keep until the connection ends (found by tests/test_protocol_abuse.py).
    Malformed Engine.IO packets are refused by :class:`StrictEngineIOSocket`.
    """

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> Any:
        # Engine.IO reports a connection right after creating its socket, before the socket
        # reads anything: the one point where the socket's class can be chosen.
        eio_socket = self.eio.sockets.get(eio_sid)
        if type(eio_socket) is engineio_async_socket.AsyncSocket:
            eio_socket.__class__ = StrictEngineIOSocket
        return await super()._handle_eio_connect(eio_sid, environ)

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        try:
            if not isinstance(data, str) or data[:1] in ("5", "6"):
                raise ValueError("binary packets are not accepted")
            await super()._handle_eio_message(eio_sid, data)
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            log.info("Closing Socket.IO connection %s: bad packet (%s)", eio_sid, str(exc)[:120])
            eio_socket = self.eio.sockets.pop(eio_sid, None)
            if eio_socket is not None:  # as Gateway._close_engine_socket: now, without waiting
                with suppress(Exception):
                    await eio_socket.close(wait=False, abort=False, reason=self.eio.reason.SERVER_DISCONNECT)
                    eio_socket.queue.put_nowait(None)


async def _send_engineio(eio_socket: Any, items: list[Outgoing]) -> None:
    """Send ``items`` to a Socket.IO client: on a WebSocket in one write, else through Engine.IO's queue.

    What ``AsyncSocket.send`` does per packet (closed and ping-timeout checks), once per batch.
    Either way this waits until the transport took them: a client that does not read stalls
    here, so its bounded stream queue fills up instead of Engine.IO's unbounded one.
    """
    if not await eio_socket.check_ping_timeout():
        return
    websocket = engineio_websocket.websocket_of(eio_socket)
    if websocket is not None and websocket.send_texts is not None:
        await eio_socket.queue.join()  # Engine.IO's own packets first (at once when there are none)
        await websocket.send_texts([item.engineio.encode() for item in items])
        return
    for item in items:
        eio_socket.queue.put_nowait(item.engineio)
    await eio_socket.queue.join()


def _write_engineio_now(eio_socket: Any, items: Batch) -> bool:
    """Write ``items`` to a Socket.IO client on a WebSocket now, if nothing needs waiting for."""
    websocket = engineio_websocket.websocket_of(eio_socket)
    return websocket is not None and websocket.write_now(items.sio_frames)


class Gateway:
    """Socket.IO and /ws clients of one backend, fed from its bus."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.settings: Settings = backend.settings
        self.origins = OriginPolicy(self.settings.cors_origins)
        self.fanout = Fanout()
        self.sio = StrictSocketIOServer(
            async_mode="asgi",
            cors_allowed_origins=self._origin_allowed,
            max_http_buffer_size=MAX_INBOUND_BYTES,
            logger=False,
            engineio_logger=False,
        )
        engineio_websocket.install(self.sio.eio)
        self.sio.on("connect", self._sio_connect)
        self.sio.on("disconnect", self._sio_disconnect)
        self._sio_clients: dict[str, tuple[ClientStream, asyncio.Task[None]]] = {}
        self._ws_clients: set[ClientStream] = set()
        self._background: set[asyncio.Task[None]] = set()  # strong references to fire-and-forget tasks

    @property
    def client_count(self) -> int:
        return len(self._sio_clients) + len(self._ws_clients)

    async def start(self) -> None:
        self.fanout.start(self.backend.bus)

    async def stop(self) -> None:
        self.fanout.stop()
        for _, task in list(self._sio_clients.values()):
            task.cancel()
        with suppress(Exception):
            await self.sio.shutdown()

    async def close_clients(self) -> None:
        """Tell every Socket.IO client the server is going away, before the HTTP server stops.

        Long-polling requests otherwise stay open until the server's graceful-shutdown timeout
        cancels them. Each client gets a CLOSE packet (its pending poll returns at once) and
        reconnects by itself when the server is back.
        """
        for eio_sid in list(self.sio.eio.sockets):
            await self._close_engine_socket(eio_sid)

    async def _close_engine_socket(self, eio_sid: str) -> None:
        """Close one Engine.IO connection now, whether or not its client is reading.

        The socket queues a CLOSE packet (a polling client acts on it; its pending poll returns at
        once) and the ``None`` after it ends the websocket writer, which then closes the websocket.
        The socket is forgotten right away, as ``eio.disconnect`` does: later requests with its
        session id get a clean 400 instead of an error inside Engine.IO.
        """
        eio_socket = self.sio.eio.sockets.pop(eio_sid, None)
        if eio_socket is not None:
            with suppress(Exception):
                await eio_socket.close(wait=False, abort=False, reason=self.sio.eio.reason.SERVER_DISCONNECT)
                eio_socket.queue.put_nowait(None)

    def _origin_allowed(self, origin: str | None, environ: dict[str, Any] | None = None) -> bool:
        allowed = self.origins.allows(origin)
        if not allowed:
            log.info("Refused Socket.IO request from origin %s (CORS_ORIGINS)", origin)
        return allowed

    # --- Socket.IO ------------------------------------------------------------------------------

    async def _sio_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        auth = auth if isinstance(auth, dict) else {}
        token = auth.get("token") if isinstance(auth.get("token"), str) else None
        token = token or bearer_token(environ.get("HTTP_AUTHORIZATION"))
        if not token_matches(self.settings.auth_token, token):
            log.info("Refused Socket.IO client %s: %s token", sid, "wrong" if token else "missing")
            raise socketio.exceptions.ConnectionRefusedError(
                "unauthorized: wrong token" if token else "unauthorized: send auth: {token}"
            )
        try:
            last_seq = parse_last_seq(auth.get("lastSeq"))
        except ValueError as exc:
            raise socketio.exceptions.ConnectionRefusedError(str(exc)) from None
        stream = ClientStream(f"Socket.IO client {sid}", lambda: self._sio_overflow(sid))
        self.fanout.attach(stream, last_seq)
        task = asyncio.create_task(self._sio_pump(sid, stream), name=f"sio-{sid}")
        self._sio_clients[sid] = (stream, task)
        log.info("Client connected: %s", sid)
        if last_seq is not None:
            log.debug(
                "%s resumes after seq %d: %s", sid, last_seq,
                "resync required" if stream.resync else f"{len(stream.backlog)} event(s) to replay",
            )  # fmt: skip

    async def _sio_disconnect(self, sid: str, reason: Any = None) -> None:
        entry = self._sio_clients.pop(sid, None)
        if entry is None:
            return
        stream, task = entry
        self.fanout.detach(stream)
        task.cancel()
        log.info("Client disconnected: %s (%s)", sid, reason or "gone")

    async def _sio_pump(self, sid: str, stream: ClientStream) -> None:
        """The client's sender: connection-success, the replay (or resync-required), then live."""
        try:
            eio_socket = await self._engine_socket(sid)
            if eio_socket is None:
                return
            await self._emit(sid, events.CONNECTION_SUCCESS, events.connection_success(), stream.start_seq)
            if stream.resync is not None:
                await self._emit(sid, events.RESYNC_REQUIRED, stream.resync, stream.start_seq)
            backlog, stream.backlog = stream.backlog, []
            for start in range(0, len(backlog), SEND_BATCH_MAX):
                await _send_engineio(eio_socket, backlog[start : start + SEND_BATCH_MAX])
            await stream.pump(partial(_send_engineio, eio_socket), partial(_write_engineio_now, eio_socket))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("Socket.IO sender for %s failed", sid)

    async def _emit(self, sid: str, name: str, data: dict[str, Any], seq: int) -> None:
        # The seq travels as an extra last argument: 42["name", {...}, seq].
        await self.sio.emit(name, (data, seq), to=sid)

    async def _engine_socket(self, sid: str) -> Any:
        """The client's Engine.IO socket, once the Socket.IO connection is accepted.

        The connect handler runs before python-socketio sends the CONNECT packet; events must go
        out after it, so the sender starts by waiting (briefly) for the connection to complete.
        """
        for _ in range(500):
            if self.sio.manager.is_connected(sid, "/"):
                eio_sid = self.sio.manager.eio_sid_from_sid(sid, "/")
                return self.sio.eio.sockets.get(eio_sid)
            if sid not in self._sio_clients:
                return None
            await asyncio.sleep(0.01)
        log.warning("Socket.IO client %s never completed its connection", sid)
        return None

    def _sio_overflow(self, sid: str) -> None:
        entry = self._sio_clients.get(sid)
        if entry is None:
            return
        stream, task = entry
        log.warning(
            "Disconnecting slow client %s: it fell %d events behind (limit %d); "
            "it may reconnect with lastSeq to be replayed",
            stream.name, stream.behind, stream.limit,
        )  # fmt: skip
        task.cancel()
        cut_off = asyncio.get_running_loop().create_task(self._sio_cut_off(sid))
        self._background.add(cut_off)
        cut_off.add_done_callback(self._background.discard)

    async def _sio_cut_off(self, sid: str) -> None:
        """Close the client's Engine.IO connection without waiting for it to read anything.

        ``AsyncServer.disconnect`` would wait for the client to take its queued packets, which a
        stalled client never does, and a Socket.IO DISCONNECT would tell socket.io-client not to
        reconnect. Closing the Engine.IO connection instead runs the disconnect handlers now; a
        client that reads again sees a transport close and reconnects by itself, with its lastSeq.
        """
        eio_sid = self.sio.manager.eio_sid_from_sid(sid, "/")
        if eio_sid is not None:
            await self._close_engine_socket(eio_sid)
        await self._sio_disconnect(sid, "too slow")

    # --- plain WebSocket ------------------------------------------------------------------------

    async def serve_ws(self, websocket: WebSocket) -> None:
        origin = websocket.headers.get("origin")
        if not self.origins.allows(origin):
            log.info("Refused /ws handshake from origin %s (CORS_ORIGINS)", origin)
            await websocket.close(code=WS_POLICY_VIOLATION)  # before accept: HTTP 403
            return
        await websocket.accept()
        params = websocket.query_params
        token = params.get("token") or bearer_token(websocket.headers.get("authorization"))
        if not token_matches(self.settings.auth_token, token):
            log.info("Refused /ws client %s: %s token", _peer(websocket), "wrong" if token else "missing")
            reason = "unauthorized: wrong token" if token else "unauthorized: add ?token="
            await websocket.close(code=WS_POLICY_VIOLATION, reason=reason)
            return
        try:
            last_seq = parse_last_seq(params.get("lastSeq"))
        except ValueError as exc:
            await websocket.close(code=WS_POLICY_VIOLATION, reason=str(exc))
            return

        overflow = asyncio.Event()
        stream = ClientStream(f"/ws client {_peer(websocket)}", overflow.set)
        self.fanout.attach(stream, last_seq)
        self._ws_clients.add(stream)
        log.info("Client connected: %s", stream.name)
        sender = asyncio.create_task(self._ws_pump(websocket, stream))
        receiver = asyncio.create_task(_until_disconnected(websocket))
        overflowed = asyncio.create_task(overflow.wait())
        try:
            await asyncio.wait({sender, receiver, overflowed}, return_when=asyncio.FIRST_COMPLETED)
            if overflow.is_set():
                log.warning(
                    "Disconnecting slow client %s: it fell %d events behind (limit %d); "
                    "it may reconnect with lastSeq to be replayed",
                    stream.name, stream.behind, stream.limit,
                )  # fmt: skip
                sender.cancel()
                with suppress(Exception):
                    # A client that is not reading cannot take the close frame either; then the
                    # server just drops it (uvicorn closes the socket when this handler returns).
                    await asyncio.wait_for(
                        websocket.close(code=WS_TRY_AGAIN_LATER, reason="too slow: reconnect with lastSeq"),
                        CLOSE_GRACE_S,
                    )
        finally:
            self.fanout.detach(stream)
            self._ws_clients.discard(stream)
            log.info("Client disconnected: %s", stream.name)
            for task in (sender, receiver, overflowed):
                task.cancel()
            await asyncio.gather(sender, receiver, overflowed, return_exceptions=True)

    async def _ws_pump(self, websocket: WebSocket, stream: ClientStream) -> None:
        hello = Event(stream.start_seq, events.CONNECTION_SUCCESS, events.connection_success())
        await websocket.send_text(Outgoing(hello).text)
        if stream.resync is not None:
            resync = Event(stream.start_seq, events.RESYNC_REQUIRED, stream.resync)
            await websocket.send_text(Outgoing(resync).text)
        send_texts = texts_sender(websocket.scope, websocket.send)
        backlog, stream.backlog = stream.backlog, []
        for start in range(0, len(backlog), SEND_BATCH_MAX):
            await send_texts([item.text for item in backlog[start : start + SEND_BATCH_MAX]])
        write_frames = websocket.scope.get("extensions", {}).get(WRITE_FRAMES)

        async def send(items: list[Outgoing]) -> None:
            await send_texts([item.text for item in items])

        def write_now(items: Batch) -> bool:
            return write_frames(items.ws_frames)

        await stream.pump(send, write_now if write_frames else None)


async def _until_disconnected(websocket: WebSocket) -> None:
    """Read (and ignore) what the client sends until it goes away."""
    with suppress(WebSocketDisconnect, RuntimeError):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return


def _peer(websocket: WebSocket) -> str:
    client = websocket.client
    return f"{client.host}:{client.port}" if client else "?"


# --- the app ------------------------------------------------------------------------------------

# The REST answers as documented: the routes return plain dicts (``response_model=None``), these
# models only describe them in the OpenAPI document (``responses=``) and change no answer.

ISO_MS_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$"
Timestamp = Annotated[str, Field(pattern=ISO_MS_PATTERN, description="ISO-8601 UTC with milliseconds and Z")]
Offset = Annotated[str, Field(pattern=r"^\d+$", description="The Kafka offset, as a string")]
Count = Annotated[int, Field(ge=0)]


class HealthBody(BaseModel):
    status: Literal["ok", "unavailable"]
    reason: str | None = Field(description="Why the backend is not ready; null when it is")
    broker: str = Field(description="The bootstrap servers")
    brokerReachable: bool  # noqa: N815 - the API's field names
    timestamp: Timestamp
    gatewayClients: Count  # noqa: N815


class StatisticsBody(BaseModel):
    """The fields of the stats-updated event."""

    totalMessages: Count  # noqa: N815
    processedMessages: Count  # noqa: N815
    failedMessages: Count  # noqa: N815
    activeConsumers: Count  # noqa: N815
    timestamp: Timestamp


class LogBody(BaseModel):
    """One Kafka record and its outcome."""

    logId: str  # noqa: N815
    topic: str
    partition: Count
    offset: Offset
    dataType: Literal["SINGLE_MESSAGE", "CSV_BATCH"]  # noqa: N815
    rowCount: Count  # noqa: N815
    status: Literal["RECEIVED", "PROCESSING", "PROCESSED", "FAILED"]
    consumerId: str | None  # noqa: N815
    error: str | None
    receivedAt: Timestamp  # noqa: N815
    startedAt: Timestamp | None  # noqa: N815
    completedAt: Timestamp | None  # noqa: N815
    producedAt: Timestamp | None  # noqa: N815
    key: str | None
    sizeBytes: Count | None  # noqa: N815


class ConsumerBody(BaseModel):
    consumerId: str  # noqa: N815
    status: Literal["ACTIVE", "INACTIVE"]
    partitions: list[str] = Field(description='Assigned partitions as "topic-partition"')
    lag: dict[str, Count | None] = Field(description="Records behind, per assigned partition (null: unknown)")
    processedMessages: Count  # noqa: N815
    failedMessages: Count  # noqa: N815
    startedAt: Timestamp | None  # noqa: N815
    lastError: str | None  # noqa: N815


class StartedConsumerBody(BaseModel):
    consumerId: str  # noqa: N815


class StoppedConsumerBody(BaseModel):
    consumerId: str  # noqa: N815
    status: Literal["INACTIVE"]


LogStatus = Annotated[
    str | None,
    Query(
        description="RECEIVED, PROCESSING, PROCESSED or FAILED (in any case)",
        examples=["FAILED"],
        json_schema_extra={"enum": list(events.STATUSES)},
    ),
]
LogTopic = Annotated[str | None, Query(max_length=249, json_schema_extra={"pattern": TOPIC_NAME_PATTERN})]


def create_gateway_app(backend: Any) -> ASGIApp:
    """Socket.IO at /socket.io/, the plain WebSocket at /ws and the REST API, as one ASGI app."""
    gateway = Gateway(backend)
    settings: Settings = backend.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    api = create_api(
        settings,
        title="Consumer dashboard: event gateway and REST API",
        description=(
            "Socket.IO (protocol v5) at `/socket.io/` and a plain WebSocket at `/ws` stream the "
            "consumers' events; every event carries a sequence number `seq` and clients reconnecting "
            "with `lastSeq` are replayed what they missed. The REST endpoints below read the store. "
            "When AUTH_TOKEN is set, send `Authorization: Bearer <token>`."
        ),
        lifespan=lifespan,
    )
    api.state.gateway = gateway
    router = APIRouter(
        prefix="/api", dependencies=[Security(require_token(settings))], responses=UNAUTHORIZED_DOC
    )

    @router.get(
        "/health",
        tags=["health"],
        summary="200 once the consumers reach the broker, else 503",
        responses={
            200: {"model": HealthBody, "description": "Ready: the consumers reach the broker"},
            503: {"model": HealthBody, "description": "Not ready (starting, or the broker is unreachable)"},
        },
    )
    def health() -> JSONResponse:
        state = backend.health()
        body = {**state.to_api(), "gatewayClients": gateway.client_count}
        return JSONResponse(body, status_code=200 if state.ok else 503)

    @router.get(
        "/consumers/statistics",
        tags=["consumers"],
        summary="The counters of stats-updated",
        response_model=None,
        responses={200: {"model": StatisticsBody, "description": "The counters"}},
    )
    def statistics() -> dict[str, Any]:
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
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        status: LogStatus = None,
        topic: LogTopic = None,
        offset: Annotated[int, Query(ge=0, le=1_000_000, description="rows to skip, for paging")] = 0,
    ) -> list[dict[str, Any]]:
        if status is not None and status.upper() not in events.STATUSES:
            raise HTTPException(
                400, f"status must be one of {', '.join(events.STATUSES)} (got {status[:40]!r})"
            )
        if topic is not None and not is_valid_topic(topic):
            raise HTTPException(400, f"topic {topic[:60]!r} is not a valid topic name")
        store = backend.store
        if store is None:
            raise HTTPException(503, "the store is not open")
        rows = store.logs(limit=limit, status=status.upper() if status else None, topic=topic, offset=offset)
        return [row.to_api() for row in rows]

    @router.get(
        "/consumers",
        tags=["consumers"],
        summary="The consumers and their partitions",
        response_model=None,
        responses={200: {"model": list[ConsumerBody], "description": "The consumers"}},
    )
    def consumers() -> list[dict[str, Any]]:
        return [snapshot.to_api() for snapshot in backend.pool.snapshots()] if backend.pool else []

    @router.post(
        "/consumers",
        status_code=201,
        tags=["consumers"],
        summary="Start one more consumer",
        response_model=None,
        responses={
            201: {"model": StartedConsumerBody, "description": "Started"},
            429: error_doc("MAX_CONSUMERS consumers are running; nothing was started"),
        },
    )
    def start_consumer() -> dict[str, str]:
        try:
            return {"consumerId": backend.start_consumer()}
        except LimitReached as exc:
            raise HTTPException(429, exc.reason) from None

    @router.delete(
        "/consumers/{consumerId}",
        tags=["consumers"],
        summary="Stop a consumer",
        response_model=None,
        responses={
            200: {"model": StoppedConsumerBody, "description": "Stopped"},
            404: error_doc("No running consumer has this id"),
        },
    )
    def stop_consumer(consumerId: str) -> dict[str, str]:  # noqa: N803 - the contract's name
        if len(consumerId) > 100 or not backend.stop_consumer(consumerId):
            raise HTTPException(404, f"no running consumer {consumerId[:100]!r}")
        return {"consumerId": consumerId, "status": events.INACTIVE}

    api.include_router(router)

    @api.websocket("/ws")
    async def plain_websocket(websocket: WebSocket) -> None:
        await gateway.serve_ws(websocket)

    sio_app = socketio.ASGIApp(gateway.sio, other_asgi_app=api)
    app = OversizedPollingGuard(sio_app)
    app.gateway = gateway  # for tests and embedding
    return app


class OversizedPollingGuard:
    """Answer 413 at once to a polling POST that announces more than the inbound limit.

    engineio would read it, disconnect the session and then wait for a poll that it refuses
    to serve once the session is closed: the POST never got an answer (found by
    tests/test_protocol_abuse.py).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.gateway: Gateway | None = None

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
