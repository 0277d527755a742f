"""The HTTP policy both APIs share: Host and origin allowlists, bearer token, stream tickets, error bodies.

The event gateway's REST app (:mod:`backend.gateway.app`) and the producer API
(:mod:`backend.producer_api`) are both built by :func:`create_api`, so a request is refused, and its
refusal documented, the same way on either port. The Host check (:class:`HostGuard`) wraps the whole
gateway, Socket.IO and /ws included. Nothing here knows about events or sockets: the producer API
imports this module alone, not the gateway.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from backend.config import Settings
from backend.events import iso_from_ms
from backend.store import StoreUnavailable
from backend.wire import ErrorBody

log = logging.getLogger(__name__)

LOCAL_ORIGIN = r"http://(localhost|127\.0\.0\.1)(:\d{1,5})?"


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


class HostPolicy:
    """Which ``Host`` header values the APIs answer (ALLOWED_HOSTS): no DNS rebinding.

    A page on ``attacker.example`` whose name the attacker re-points to 127.0.0.1 reaches a
    loopback service from the victim's browser with the page's own origin, so neither CORS nor the
    origin check stops it; only the Host header (``attacker.example:3001``) gives it away. The port
    is ignored when matching; ``*`` answers every host, only when listed explicitly.
    """

    def __init__(self, allowed: Sequence[str]) -> None:
        self.any = "*" in allowed
        self.allowed = frozenset(host.lower() for host in allowed)

    def allows(self, host_header: str | None) -> bool:
        return self.any or _host_name(host_header) in self.allowed


def _host_name(host_header: str | None) -> str | None:
    """The host of a Host header value, lower case and without its port (None when malformed)."""
    value = (host_header or "").strip().lower()
    if value.startswith("["):  # [IPv6] or [IPv6]:port
        end = value.find("]") + 1
        host, rest = (value[:end], value[end:]) if end else ("", "")
    else:
        host, colon, port = value.partition(":")
        rest = colon + port
    if rest and not (rest.startswith(":") and rest[1:].isdigit()):
        return None
    return host or None


class HostGuard:
    """Refuses HTTP requests and WebSocket handshakes whose Host is not allowed (400), before anything runs.

    Starlette's TrustedHostMiddleware does the same check but answers in plain text (not the APIs'
    ``{"error"}``) and cuts ``[::1]:3001`` at the first colon; this is the few lines it would take
    to adapt it. For a WebSocket handshake the 400 goes out as the handshake's HTTP answer (the ASGI
    ``websocket.http.response`` extension, which uvicorn implements).
    """

    def __init__(self, app: ASGIApp, policy: HostPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = _header(scope, b"host")
            if not self.policy.allows(host):
                log.info("Refused %s %s for host %r (ALLOWED_HOSTS)", scope["type"], scope["path"], host)
                shown = "(none)" if host is None else repr(host[:200])
                response = error_response(400, f"host not allowed: {shown} (ALLOWED_HOSTS)")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


#: The API documents, served by FastAPI for every app made by :func:`create_api`.
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


class DocsGuard:
    """With AUTH_TOKEN set, the API documents need the bearer token like the API (401 otherwise).

    FastAPI serves them from routes of its own, without the app's dependencies; this checks the
    token in front of them. (A browser cannot send the header when it opens /docs: with a token,
    read the documents with a client that can, e.g. ``curl -H 'Authorization: Bearer …'``.)
    """

    def __init__(self, app: ASGIApp, auth_token: str) -> None:
        self.app = app
        self.auth_token = auth_token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in DOCS_PATHS:
            refusal = token_refusal(self.auth_token, bearer_token(_header(scope, b"authorization")))
            if refusal is not None:
                await error_response(401, refusal, _CHALLENGE)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


# --- stream tickets -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamTicket:
    """A ticket and when it stops opening connections."""

    ticket: str
    expires_ms: int

    def to_api(self) -> dict[str, str]:
        return {"ticket": self.ticket, "expiresAt": iso_from_ms(self.expires_ms)}


class StreamTickets:
    """Short-lived, read-only tickets that open a stream (/ws, Socket.IO) instead of AUTH_TOKEN.

    Why: a browser must be able to open the event stream, but must never hold AUTH_TOKEN, which
    also produces records and stops consumers. A ticket opens a stream for ``ttl_s`` seconds after
    it was minted and grants nothing else (REST and the producer API refuse it: 401); a stream it
    opened stays open, and a client reconnecting later needs a new ticket.

    A ticket is ``<expiry in epoch ms>.<HMAC-SHA256 of it>`` under a random key made when this
    object is, so checking one needs no state: nothing to store, expire or share between threads.
    The key lives and dies with the process: a restart invalidates every ticket (harmless for a
    60-second ticket), and with several views each view mints its own, valid on that view only.
    """

    def __init__(self, ttl_s: float = 60.0, key: bytes | None = None) -> None:
        self.ttl_s = ttl_s
        self._key = key or secrets.token_bytes(32)

    def mint(self, now: float | None = None) -> StreamTicket:
        """A new ticket, valid until ``ttl_s`` after ``now`` (default: the current time)."""
        expires_ms = int(((time.time() if now is None else now) + self.ttl_s) * 1000)
        return StreamTicket(f"{expires_ms}.{self._signature(expires_ms)}", expires_ms)

    def valid(self, ticket: object) -> bool:
        """Whether ``ticket`` was minted here and has not expired."""
        if not isinstance(ticket, str) or len(ticket) > 100:
            return False
        expiry, _, signature = ticket.partition(".")
        if not expiry.isdigit() or not hmac.compare_digest(signature, self._signature(int(expiry))):
            return False
        return int(expiry) > time.time() * 1000

    def _signature(self, expires_ms: int) -> str:
        digest = hmac.new(self._key, f"stream:{expires_ms}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


#: This process's tickets: what the gateway checks, and what an in-process dashboard mints from.
STREAM_TICKETS = StreamTickets()


def token_matches(expected: str | None, given: str | None) -> bool:
    """Constant-time token check; always true when no AUTH_TOKEN is configured."""
    if expected is None:
        return True
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def token_refusal(expected: str | None, given: str | None) -> str | None:
    """Why a request with bearer token ``given`` is refused (a 401's message), or None when it is not."""
    if token_matches(expected, given):
        return None
    return "wrong token" if given else "missing token: send 'Authorization: Bearer <AUTH_TOKEN>'"


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """Every error of both APIs: ``{"error": "<why>"}``."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


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
        refusal = token_refusal(settings.auth_token, credentials.credentials if credentials else None)
        if refusal is not None:
            raise HTTPException(401, refusal, _CHALLENGE)

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
    settings: Settings,
    title: str,
    description: str,
    lifespan: Any = None,
    version: str = "1.0.0",
    check_host: bool = True,
) -> FastAPI:
    """A FastAPI app with the shared policy: Host and origin allowlists + CORS, JSON errors, docs at /docs
    (behind the token when AUTH_TOKEN is set).

    ``check_host=False`` for an app that is mounted behind a :class:`HostGuard` already (the gateway
    guards Socket.IO and this app at once).
    """
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
    app.add_middleware(OriginGuard, policy=policy)
    if settings.auth_token is not None:
        app.add_middleware(DocsGuard, auth_token=settings.auth_token)
    if check_host:
        app.add_middleware(HostGuard, policy=HostPolicy(settings.host_allowlist))  # added last: runs first

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

    @app.exception_handler(sqlite3.DatabaseError)
    @app.exception_handler(StoreUnavailable)
    async def store_error(request: Request, exc: Exception) -> JSONResponse:
        # e.g. a page corrupted after start: say so, and where, instead of a plain-text 500.
        log.error("store read failed for %s %s: %s", request.method, request.url.path, exc)
        return error_response(503, f"the store cannot be read: {exc} (DATA_DIR={settings.data_dir})")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette logs the traceback; the client gets the same {"error"} shape as every answer.
        return error_response(500, f"internal error: {type(exc).__name__}")

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
