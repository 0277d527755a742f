"""The HTTP plumbing: both listening sockets and the uvicorn servers of the gateway and producer API.

Kept apart from ``backend.service`` (the composition root) so that the server details (sockets,
protocol classes, uvicorn settings) live in one place and the root only says what is started.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import threading
from typing import TYPE_CHECKING, Any

from backend.config import ConfigError, Settings
from backend.connection_guard import (
    MAX_REQUEST_HEAD_BYTES,
    BoundedH11Protocol,
    ConnectionGuard,
    Listener,
    connection_limit,
)

if TYPE_CHECKING:
    from backend.service import Backend

HTTP_START_WAIT_S = 30.0  # start() waits this long at most for the HTTP servers to listen


def bind_sockets(settings: Settings, guard: ConnectionGuard | None = None) -> dict[str, socket.socket]:
    """Bind both ports before anything else starts, so 'port in use' is a clear start-up error."""
    bound: dict[str, socket.socket] = {}
    for name, port in (("GATEWAY_PORT", settings.gateway_port), ("PRODUCER_PORT", settings.producer_port)):
        family = socket.AF_INET6 if ":" in settings.gateway_host else socket.AF_INET
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only then; without it every HTTP
        # answer waited for the client's delayed ACK (measured: 52 ms per POST, 3.5 ms with).
        sock = Listener(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.guard = guard
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((settings.gateway_host, port))
        except OSError as exc:
            sock.close()
            for other in bound.values():
                other.close()
            raise ConfigError(
                f"{name}={port}: cannot listen on {settings.gateway_host}:{port} ({exc.strerror})"
            ) from None
        sock.listen(2048)
        sock.setblocking(False)
        bound[name] = sock
    return bound


class HttpServers(threading.Thread):
    """The gateway and the producer API, served by uvicorn on one asyncio loop in its own thread."""

    def __init__(self, backend: Backend) -> None:
        """Check the connection cap and bind both ports: a bad setting fails before anything starts."""
        super().__init__(name="http-servers", daemon=True)
        self.backend = backend
        settings = backend.settings
        self.guard = ConnectionGuard(
            connection_limit(settings.max_connections),
            header_timeout=settings.http_header_timeout,
            body_timeout=settings.http_body_timeout,
        )
        self.sockets = bind_sockets(settings, self.guard)
        self.servers: list[Any] = []
        self.gateway: Any = None  # the event gateway of the app on GATEWAY_PORT, once it is built
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ready = threading.Event()
        self.serving = threading.Event()  # both servers have started (or one gave up)

    def run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        import uvicorn

        from backend.gateway.app import create_gateway_app
        from backend.gateway.transport import MAX_INBOUND_BYTES, FastSendWebSocketProtocol
        from backend.producer_api import create_producer_app

        self.loop = asyncio.get_running_loop()
        self.loop.set_exception_handler(self.guard.on_loop_error)
        gateway_app = create_gateway_app(self.backend)
        self.gateway = gateway_app.gateway
        apps = (
            (gateway_app, self.sockets["GATEWAY_PORT"]),
            (create_producer_app(self.backend), self.sockets["PRODUCER_PORT"]),
        )
        tasks = []
        for app, sock in apps:
            # Long-polling requests (Engine.IO) would hold a graceful shutdown for up to 25 s.
            config = uvicorn.Config(
                app,
                http=functools.partial(BoundedH11Protocol, guard=self.guard),  # type: ignore[arg-type]
                h11_max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES,
                timeout_keep_alive=self.backend.settings.http_keep_alive_timeout,  # type: ignore[arg-type]
                ws=FastSendWebSocketProtocol,  # uvicorn's websockets-sansio, data frames built directly
                ws_per_message_deflate=False,  # ~200-byte frames: deflate cost CPU and ~45 MiB per 1k clients
                ws_max_size=MAX_INBOUND_BYTES,  # uvicorn's 16 MiB default let big frames be buffered
                log_level="warning",
                lifespan="on",
                timeout_graceful_shutdown=2,
            )
            server = uvicorn.Server(config)
            self.guard.watch(server.server_state.connections)
            self.servers.append(server)
            tasks.append(asyncio.create_task(server.serve(sockets=[sock])))
        self.ready.set()
        while not all(server.started for server in self.servers) and not any(t.done() for t in tasks):
            await asyncio.sleep(0.01)
        self.serving.set()
        await asyncio.gather(*tasks)

    def stop(self, wait: float = 10.0) -> None:
        """Close clients first (long-polling requests would hold the shutdown), then the servers."""
        self.ready.wait(wait)  # a stop right after start must not miss servers still being created
        if self.gateway is not None and self.loop is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.gateway.close_clients(), self.loop).result(2)
        for server in self.servers:
            server.should_exit = True
        self.join(wait)
        for sock in self.sockets.values():
            sock.close()
