"""Bounded connections for both HTTP ports: request deadlines, a connection cap, quiet accept errors.

Why (issue 15): uvicorn's h11 protocol has no deadline for a request's headers or body (only an
idle keep-alive timer, armed after a response), and ``limit_concurrency`` answers 503 to requests
but never bounds sockets. 1,100 sockets that sent nothing took every file descriptor at
``ulimit -n 1024``: the Kafka clients and the store could not open theirs, and asyncio logged
one traceback per failed ``accept()`` (225,253 of them, 100 MB in 46 s). Here:

* :class:`BoundedH11Protocol` closes a connection whose request headers (counted from the
  connection or from the previous response) or body do not arrive in time. WebSockets (after
  the upgrade) and requests whose body has arrived, such as Engine.IO long-polls waiting for
  data, have no deadline: they are legitimate long-lived clients.
* :class:`ConnectionGuard` keeps the open connections of both ports under a cap below the
  open-file limit; beyond it, the connection that has waited longest without sending a request
  is closed (the newest one if none is waiting), so idle sockets cannot lock out real clients.
  A connection that has never sent a request goes before a kept-alive one that has: closing a
  keep-alive connection races the client's next request on it, which a client cannot safely
  resend when it is a POST (the producer API's records).
* :class:`Listener` and :meth:`ConnectionGuard.on_loop_error` turn a storm of failed accepts into
  one failed accept per second and one log line per interval.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import resource
import socket
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from backend.config import ConfigError

log = logging.getLogger(__name__)

#: Descriptors kept free for what is not a client connection: Kafka clients, SQLite, logs, pipes.
FD_RESERVE = 200
#: accept() errors that mean "no descriptor or memory left" (asyncio pauses accepting for 1 s).
OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
#: Accepting pauses while this many connections closed by the guard await release (one loop turn).
CLOSING_AT_ONCE = 64
ACCEPT_BURST_S = 0.1  # one accept loop of asyncio takes far less: it sees one resource error
LOG_INTERVAL_S = 60.0
ACCEPT_FAILED = "socket.accept() out of system resource"  # asyncio's message for these errors

HEADERS, BODY = "headers", "body"
#: The longest request line and headers read (h11's buffer; 16 KiB by default). The REST API takes
#: query values of up to 10,000 characters (a search pattern), up to ~120 KB once percent-encoded;
#: a longer head is answered 414 or 431.
MAX_REQUEST_HEAD_BYTES = 128 * 1024
#: After refusing a request it could not read (too long, malformed), the server still reads and
#: drops what the client sends, for up to this long or this many bytes, before it closes: a socket
#: closed with unread data makes the kernel send a reset, and the client then sees "connection
#: reset" instead of the answer (a lingering close, as Apache and nginx do).
LINGER_S = 2.0
LINGER_MAX_BYTES = 4 * 1_048_576


def connection_limit(requested: int | None) -> int:
    """MAX_CONNECTIONS, or the soft open-file limit less a reserve for everything else.

    A requested cap that leaves less than the reserve is refused at start: the cap exists so
    that clients can never take the descriptors the broker clients and the store need.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return requested or 1_000_000
    available = max(soft - FD_RESERVE, soft // 2)
    if requested is None:
        return available
    if requested > available:
        raise ConfigError(
            f"MAX_CONNECTIONS={requested} leaves too few of the {soft} open files (ulimit -n) "
            f"for the broker clients and the store: use at most {available}, or raise ulimit -n"
        )
    return requested


class RateLimitedLog:
    """Logs a recurring warning at most once per interval, with how often it happened meanwhile."""

    def __init__(self, message: str, interval: float = LOG_INTERVAL_S) -> None:
        self.message = message
        self.interval = interval
        self._next = 0.0
        self._unreported = 0

    def __call__(self, *args: Any) -> None:
        self._unreported += 1
        now = time.monotonic()
        if now < self._next:
            return
        log.warning(self.message + " (%d time(s) since the last report)", *args, self._unreported)
        self._unreported = 0
        self._next = now + self.interval


class Listener(socket.socket):
    """A listening socket that enforces its guard's cap and keeps accept errors from storming.

    asyncio (3.11) accepts up to ``backlog`` (2,048) sockets in one go, before any of them reaches
    a protocol: the cap has to be applied here, at ``accept()``. And after an EMFILE it keeps
    calling ``accept()``, logging and scheduling a retry for each failure: thousands of tracebacks
    a second. After the first such error of a burst this says "nothing to accept" instead, which
    ends the burst; asyncio has already paused the listener for its retry delay (1 s).
    """

    guard: ConnectionGuard | None = None
    _quiet_until = 0.0

    def accept(self) -> tuple[socket.socket, Any]:
        while True:
            if self.guard is not None and self.guard.must_pause():
                raise BlockingIOError(errno.EAGAIN, "accept paused: closed connections not yet released")
            conn, address = self._accept_once()
            if self.guard is None or self.guard.accepted():
                return conn, address
            conn.close()  # over the cap and nobody idle to make room: the newest goes at once

    def _accept_once(self) -> tuple[socket.socket, Any]:
        try:
            return super().accept()
        except OSError as exc:
            if exc.errno not in OUT_OF_RESOURCES:
                raise
            now = time.monotonic()
            if now < self._quiet_until:
                raise BlockingIOError(errno.EAGAIN, "accept paused: out of descriptors") from None
            self._quiet_until = now + ACCEPT_BURST_S
            raise


class ConnectionGuard:
    """The cap and the deadlines shared by the connections of both ports."""

    def __init__(self, limit: int, header_timeout: float, body_timeout: float) -> None:
        self.limit = limit
        self.timeouts = {HEADERS: header_timeout, BODY: body_timeout}
        self._servers: list[set[Any]] = []  # uvicorn's open connections (HTTP and WebSocket) per port
        # Waiting for request headers, oldest first: connections that never sent a request, and
        # kept-alive ones that did (closed only when no silent one is left).
        self._waiting: dict[BoundedH11Protocol, None] = {}
        self._waiting_kept_alive: dict[BoundedH11Protocol, None] = {}
        self._closing = 0  # closed by us, not yet gone from the sets above
        self._pending = 0  # accepted, not yet in the sets above
        self._log_cap = RateLimitedLog(f"Connection cap reached (MAX_CONNECTIONS={limit}): closed %s")
        self._log_accept = RateLimitedLog("Cannot accept connections: %s")
        self._log_timeout = RateLimitedLog("Closed a connection that did not send its request %s in time")

    def watch(self, connections: set[Any]) -> None:
        """Count these connections (a uvicorn ``server_state.connections``) toward the cap."""
        self._servers.append(connections)

    def accepted(self) -> bool:
        """A listener accepted a socket: make room for it under the cap, or say to close it.

        Room is made by closing the connection that has waited longest for a first request,
        else the kept-alive one idle longest. The new socket is refused instead when none is
        waiting (all are busy or WebSockets), and when only kept-alive ones are while sockets
        accepted in the same burst are still on their way to waiting: those go first next time.
        """
        open_count = sum(len(connections) for connections in self._servers) - self._closing
        if open_count + self._pending >= self.limit:
            victim = next(iter(self._waiting), None)
            if victim is None and not self._pending:
                victim = next(iter(self._waiting_kept_alive), None)
            if victim is None:
                self._log_cap("a new connection: none was idle")
                return False
            victim.close(None)
            self._log_cap("the connection that waited longest for a request")
        self._pending += 1
        return True

    def must_pause(self) -> bool:
        """Whether to stop accepting until the loop has released the sockets closed meanwhile."""
        return self._closing >= CLOSING_AT_ONCE

    def made(self) -> None:
        """An accepted socket reached its protocol (it is in a ``connections`` set now)."""
        self._pending = max(self._pending - 1, 0)

    def waiting(self, protocol: BoundedH11Protocol, is_waiting: bool, kept_alive: bool = False) -> None:
        """Note whether ``protocol`` waits for request headers (``kept_alive``: after a response)."""
        self._waiting.pop(protocol, None)
        self._waiting_kept_alive.pop(protocol, None)
        if is_waiting:
            (self._waiting_kept_alive if kept_alive else self._waiting)[protocol] = None

    def closing(self, delta: int) -> None:
        self._closing += delta

    def timed_out(self, phase: str) -> None:
        self._log_timeout(f"{phase} (within {self.timeouts[phase]} s)")

    def on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The loop's exception handler: failed accepts as one line per interval, others as usual."""
        if context.get("message") == ACCEPT_FAILED:
            self._log_accept(context.get("exception"))
            return
        loop.default_exception_handler(context)


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with deadlines for request headers and bodies and the guard's cap.

    Which deadline applies follows h11's view of the client: ``IDLE`` (no request yet on this
    cycle) is the header deadline, ``SEND_BODY`` the body deadline, anything else none. A
    deadline runs from the moment its phase begins; bytes trickling in do not extend it.
    """

    def __init__(self, *args: Any, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard
        self._phase: str | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._closed_by_us = False
        self._responses = 0  # completed on this connection: a kept-alive client once it is > 0
        self._lingering: int | None = None  # bytes dropped since the refusal (None: not refused)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.guard.made()
        self._follow_request()

    def data_received(self, data: bytes) -> None:
        if self._lingering is not None:
            self._lingering += len(data)
            if self._lingering > LINGER_MAX_BYTES:
                self.transport.abort()
            return
        super().data_received(data)
        self._follow_request()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request h11 could not read, with the status that says why (414, 431
        or 400) and a lingering close, so that the client reads the answer instead of a reset."""
        status, message = self._unreadable_request()
        body = json.dumps({"error": message}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        response = h11.Response(status_code=status, headers=headers)
        for event in (response, h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self._enter(None)
        self._lingering = 0
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)

    def _unreadable_request(self) -> tuple[int, str]:
        """Why h11 gave up: the request line or the headers outgrew its buffer, or they are malformed."""
        buffered, _ = self.conn.trailing_data
        limit = MAX_REQUEST_HEAD_BYTES
        if len(buffered) <= limit:
            return 400, "Invalid HTTP request received."
        if b"\r\n" not in buffered:
            return 414, f"The request line is longer than {limit} bytes."
        return 431, f"The request line and headers are longer than {limit} bytes."

    def on_response_complete(self) -> None:
        self._responses += 1
        super().on_response_complete()
        self._follow_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._enter(None)
        if self._closed_by_us:
            self._closed_by_us = False
            self.guard.closing(-1)
        super().connection_lost(exc)

    def close(self, phase: str | None) -> None:
        """Close the connection (``phase``: the deadline that passed; None: evicted by the cap)."""
        self._enter(None)
        if self.transport.is_closing():
            return
        if phase is not None:
            self.guard.timed_out(phase)
        self._closed_by_us = True
        self.guard.closing(+1)
        self.transport.abort()  # released on the next loop turn, whatever is left unsent

    def _follow_request(self) -> None:
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            self._enter(None)  # closed, or upgraded: the WebSocket protocol owns it (and pings it)
        elif self.conn.their_state is h11.IDLE:
            self._enter(HEADERS)
        elif self.conn.their_state is h11.SEND_BODY:
            self._enter(BODY)
        else:
            self._enter(None)  # the request has arrived: the app may take its time (long-polling)

    def _enter(self, phase: str | None) -> None:
        if phase == self._phase:
            return
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = phase
        self.guard.waiting(self, phase == HEADERS, kept_alive=self._responses > 0)
        if phase is not None:
            self._deadline = self.loop.call_later(self.guard.timeouts[phase], self.close, phase)
