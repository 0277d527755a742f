"""The gateway's clients: Socket.IO and plain WebSocket (``/ws``) connections, fed by the fan-out.

For each client: check its origin and its token (or a stream ticket, see
:class:`~backend.gateway.http_policy.StreamTickets`), attach a :class:`~backend.gateway.fanout.ClientStream`
(with its ``lastSeq``), and run one sender task that sends ``connection-success`` (and
``resync-required``), the replay, then the live events. Every event frame carries its ``seq``; the
``connection-success`` (and ``resync-required``) frame carries the position the stream continues
from, so a client that remembers the newest ``seq`` it saw always reconnects with the right value.

The senders wait for the socket: on ``/ws`` the sender awaits the socket's send, which waits while
the peer is not reading; on Socket.IO it waits for Engine.IO's transport to take each batch (see
:func:`~backend.gateway.transport.send_engineio`). A client that stops reading therefore fills its
bounded stream queue and is cut off (:meth:`Gateway._cut_off`), the same way on both transports;
a ``mode=live`` client is coalesced instead (:class:`~backend.gateway.fanout.LiveStream`).
Its subscription (``mode``, ``maxRate``, ``topics``) is read with its token and ``lastSeq``; an
invalid one is refused the same way, with the reason.
How the libraries are driven is in :mod:`backend.gateway.transport`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from contextlib import suppress
from functools import partial
from typing import Any

import socketio
from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect

from backend import events
from backend.config import Settings
from backend.events import Event
from backend.gateway import transport
from backend.gateway.fanout import (
    SEND_BATCH_MAX,
    Batch,
    ClientStream,
    Fanout,
    LiveStream,
    Outgoing,
    parse_last_seq,
)
from backend.gateway.http_policy import (
    STREAM_TICKETS,
    OriginPolicy,
    StreamTickets,
    bearer_token,
    token_matches,
)
from backend.gateway.subscriptions import Subscription, parse_subscription

log = logging.getLogger(__name__)

#: How long a slow /ws client gets to accept the close frame before its socket is just dropped.
CLOSE_GRACE_S = 1.0
#: Close codes on /ws.
WS_POLICY_VIOLATION = 1008
WS_TRY_AGAIN_LATER = 1013


class Gateway:
    """Socket.IO and /ws clients of one backend, fed from its bus."""

    def __init__(self, backend: Any, tickets: StreamTickets = STREAM_TICKETS) -> None:
        self.backend = backend
        self.settings: Settings = backend.settings
        self.tickets = tickets
        self.origins = OriginPolicy(self.settings.cors_origins)
        self.fanout = Fanout()
        self.sio = transport.create_socketio_server(self._origin_allowed)
        self.sio.on("connect", self._sio_connect)
        self.sio.on("disconnect", self._sio_disconnect)
        self._sio_clients: dict[str, tuple[ClientStream, asyncio.Task[None]]] = {}
        self._ws_clients: set[ClientStream] = set()
        self._background: set[asyncio.Task[None]] = set()  # strong references to fire-and-forget tasks

    @property
    def client_count(self) -> int:
        return len(self._sio_clients) + len(self._ws_clients)

    async def start(self) -> None:
        self.fanout.start(self.backend.bus, self.backend.replay_history)

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
        await transport.close_every_engine_socket(self.sio)

    def _origin_allowed(self, origin: str | None, environ: dict[str, Any] | None = None) -> bool:
        allowed = self.origins.allows(origin)
        if not allowed:
            log.info("Refused Socket.IO request from origin %s (CORS_ORIGINS)", origin)
        return allowed

    def _refusal(self, token: str | None, ticket: object) -> str | None:
        """Why a client may not open a stream (None: it may): AUTH_TOKEN or a valid stream ticket."""
        if self.settings.auth_token is None or token_matches(self.settings.auth_token, token):
            return None
        if token:
            return "wrong token"
        if ticket is None:
            return "missing token or ticket"
        return None if self.tickets.valid(ticket) else "ticket expired or not valid here"

    def _cut_off(self, stream: ClientStream, sender: asyncio.Task[None]) -> None:
        """A client fell too far behind: say why, and stop its sender. Its connection is closed next."""
        log.warning(
            "Disconnecting slow client %s: it fell %d events behind (limit %d); "
            "it may reconnect with lastSeq to be replayed",
            stream.name, stream.behind, stream.limit,
        )  # fmt: skip
        sender.cancel()

    def _in_background(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- Socket.IO ------------------------------------------------------------------------------

    async def _sio_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        auth = auth if isinstance(auth, dict) else {}
        token = auth.get("token") if isinstance(auth.get("token"), str) else None
        token = token or bearer_token(environ.get("HTTP_AUTHORIZATION"))
        refusal = self._refusal(token, auth.get("ticket"))
        if refusal is not None:
            log.info("Refused Socket.IO client %s: %s", sid, refusal)
            hint = "" if token or "ticket" in auth else " (send auth: {token} or {ticket})"
            raise socketio.exceptions.ConnectionRefusedError(f"unauthorized: {refusal}{hint}")
        try:
            last_seq = parse_last_seq(auth.get("lastSeq"))
            subscription = parse_subscription(auth.get("mode"), auth.get("maxRate"), auth.get("topics"))
        except ValueError as exc:
            log.info("Refused Socket.IO client %s: %s", sid, exc)
            raise socketio.exceptions.ConnectionRefusedError(str(exc)) from None
        stream = _stream(f"Socket.IO client {sid}", subscription, lambda: self._sio_overflow(sid))
        self.fanout.attach(stream, last_seq, await self.fanout.older(stream, last_seq))
        task = asyncio.create_task(self._sio_pump(sid, stream), name=f"sio-{sid}")
        self._sio_clients[sid] = (stream, task)
        log.info("Client connected: %s%s", sid, _described(subscription))
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
        except transport.CLIENT_GONE:
            # It left mid-send: the disconnect handler says so, in one line (issue 15).
            log.debug("Socket.IO client %s left while being sent events", sid)
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
            if transport.is_connected(self.sio, sid):
                return transport.engine_socket(self.sio, sid)
            if sid not in self._sio_clients:
                return None
            await asyncio.sleep(0.01)
        log.warning("Socket.IO client %s never completed its connection", sid)
        return None

    def _sio_overflow(self, sid: str) -> None:
        entry = self._sio_clients.get(sid)
        if entry is None:
            return
        self._cut_off(*entry)
        self._in_background(self._sio_close_slow(sid))

    async def _sio_close_slow(self, sid: str) -> None:
        """Close the client's Engine.IO connection without waiting for it to read anything.

        A Socket.IO DISCONNECT would tell socket.io-client not to reconnect. Closing the Engine.IO
        connection instead runs the disconnect handlers now; a client that reads again sees a
        transport close and reconnects by itself, with its lastSeq.
        """
        await transport.close_socketio_client(self.sio, sid)
        await self._sio_disconnect(sid, "too slow")

    # --- plain WebSocket ------------------------------------------------------------------------

    async def serve_ws(self, websocket: WebSocket) -> None:
        """One /ws client, from its handshake until it leaves or is cut off."""
        admitted = await self._ws_admit(websocket)
        if admitted is None:
            return
        last_seq, subscription = admitted
        overflow = asyncio.Event()
        stream = _stream(f"/ws client {_peer(websocket)}", subscription, overflow.set)
        self.fanout.attach(stream, last_seq, await self.fanout.older(stream, last_seq))
        self._ws_clients.add(stream)
        log.info("Client connected: %s%s", stream.name, _described(subscription))
        sender = asyncio.create_task(self._ws_pump(websocket, stream))
        receiver = asyncio.create_task(_until_disconnected(websocket))
        overflowed = asyncio.create_task(overflow.wait())
        try:
            await asyncio.wait({sender, receiver, overflowed}, return_when=asyncio.FIRST_COMPLETED)
            if overflow.is_set():
                self._cut_off(stream, sender)
                await _ws_close_slow(websocket)
        finally:
            self.fanout.detach(stream)
            self._ws_clients.discard(stream)
            log.info("Client disconnected: %s", stream.name)
            for task in (sender, receiver, overflowed):
                task.cancel()
            await asyncio.gather(sender, receiver, overflowed, return_exceptions=True)

    async def _ws_admit(self, websocket: WebSocket) -> tuple[int | None, Subscription] | None:
        """Origin (before accepting: HTTP 403), then token, lastSeq and subscription (a close with the
        reason); None when refused."""
        origin = websocket.headers.get("origin")
        if not self.origins.allows(origin):
            log.info("Refused /ws handshake from origin %s (CORS_ORIGINS)", origin)
            await websocket.close(code=WS_POLICY_VIOLATION)  # before accept: HTTP 403
            return None
        await websocket.accept()
        params = websocket.query_params
        token = params.get("token") or bearer_token(websocket.headers.get("authorization"))
        refusal = self._refusal(token, params.get("ticket"))
        if refusal is not None:
            log.info("Refused /ws client %s: %s", _peer(websocket), refusal)
            hint = "" if token or "ticket" in params else " (add ?token= or ?ticket=)"
            await websocket.close(code=WS_POLICY_VIOLATION, reason=f"unauthorized: {refusal}{hint}")
            return None
        try:
            last_seq = parse_last_seq(params.get("lastSeq"))
            subscription = parse_subscription(params.get("mode"), params.get("maxRate"), params.get("topics"))
        except ValueError as exc:
            log.info("Refused /ws client %s: %s", _peer(websocket), exc)
            await websocket.close(code=WS_POLICY_VIOLATION, reason=str(exc)[:120])
            return None
        return last_seq, subscription

    async def _ws_pump(self, websocket: WebSocket, stream: ClientStream) -> None:
        hello = Event(stream.start_seq, events.CONNECTION_SUCCESS, events.connection_success())
        await websocket.send_text(Outgoing(hello).text)
        if stream.resync is not None:
            resync = Event(stream.start_seq, events.RESYNC_REQUIRED, stream.resync)
            await websocket.send_text(Outgoing(resync).text)
        send_texts = transport.texts_sender(websocket.scope, websocket.send)
        backlog, stream.backlog = stream.backlog, []
        for start in range(0, len(backlog), SEND_BATCH_MAX):
            await send_texts([item.text for item in backlog[start : start + SEND_BATCH_MAX]])
        write_frames = websocket.scope.get("extensions", {}).get(transport.WRITE_FRAMES)

        async def send(items: list[Outgoing]) -> None:
            await send_texts([item.text for item in items])

        def write_now(items: Batch) -> bool:
            return write_frames(items.ws_frames)

        await stream.pump(send, write_now if write_frames else None)


def _stream(name: str, subscription: Subscription, on_overflow: Any) -> ClientStream:
    """A live client's stream is coalesced, never cut off; the others are cut off when too slow."""
    if subscription.live:
        return LiveStream(name, subscription)
    return ClientStream(name, on_overflow, subscription=subscription)


def _described(subscription: Subscription) -> str:
    return "" if subscription.everything else f" ({subscription.describe()})"


async def _send_engineio(eio_socket: Any, items: list[Outgoing]) -> None:
    await transport.send_engineio(eio_socket, [item.engineio for item in items])


def _write_engineio_now(eio_socket: Any, items: Batch) -> bool:
    return transport.write_engineio_now(eio_socket, items.sio_frames)


async def _ws_close_slow(websocket: WebSocket) -> None:
    """Close a slow /ws client's connection, asking it to reconnect with its lastSeq.

    A client that is not reading cannot take the close frame either; then the server just drops
    it (uvicorn closes the socket when the handler returns).
    """
    with suppress(Exception):
        await asyncio.wait_for(
            websocket.close(code=WS_TRY_AGAIN_LATER, reason="too slow: reconnect with lastSeq"),
            CLOSE_GRACE_S,
        )


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
