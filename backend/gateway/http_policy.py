"""The HTTP policy both APIs share: origin allowlist, bearer token, ``{"error": ...}`` bodies and their docs.

The event gateway's REST app (:mod:`backend.gateway.app`) and the producer API
(:mod:`backend.producer_api`) are both built by :func:`create_api`, so a request is refused, and its
refusal documented, the same way on either port. Nothing here knows about events or sockets: the
producer API imports this module alone, not the gateway.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from backend.config import Settings
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
