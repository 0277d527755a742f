"""Every reach of the gateway into a library's internals, in one module, pinned to its versions.

The gateway's speed and strictness come from going past the public APIs of four libraries. All of
it is here, so an upgrade has one module to re-read, and :func:`check_library_versions` (run when
the gateway app is built) stops start-up, naming the library, when an installed version is outside
the range below. ``requirements.txt`` pins the same ranges (``tests/test_transport.py`` checks that
they agree).

What is reached, and why:

* **uvicorn** (``websockets_sansio_impl.WebSocketsSansIOProtocol``, its ``conn``, ``transport``,
  ``writable``, ``handshake_complete``, ``close_sent``, ``initial_response``): every event reaches
  every client, so sending a text frame is the gateway's innermost loop (1,000 clients at ~32
  events/s is ~32,000 frames/s on one loop). uvicorn's path for a ``websocket.send`` goes through
  the websockets library's generic frame machinery and its ``data_to_send`` buffers, ~12 % of the
  gateway's CPU in the benchmark's profile, and one ``transport.write`` (a system call, which on
  loopback also runs the receiving side of TCP) per message. :class:`FastSendWebSocketProtocol`
  offers two ASGI scope extensions instead: :data:`SEND_TEXTS` (several texts in one write) and
  :data:`WRITE_FRAMES` (ready-made frames, written at once when the socket has room). Handshake,
  close, binary and every connection in another state take uvicorn's own path. This *is* the ASGI
  extension mechanism (servers without it get one ``websocket.send`` per text, see
  :func:`texts_sender`); only its implementation needs uvicorn's internals, as uvicorn has no hook
  for scope extensions or for writing to an open connection.
* **websockets**: frames are built by its own serializer (:func:`text_frame`); the connection
  state is read from its sans-I/O protocol (``conn.state``).
* **python-engineio** (``AsyncServer._async``, ``AsyncSocket.queue``, ``check_ping_timeout``,
  ``close(wait=False)``, ``server.sockets``): Engine.IO sends a WebSocket client one
  ``websocket.send`` per packet from a writer task, after a queue hand-off. :class:`BatchingWebSocket`
  (installed by replacing the ``websocket`` entry of ``_async``: the library has no setting for it)
  lets the gateway write all the events a client is due in one write, or an event's shared frame
  straight from the fan-out. Engine.IO's own packets (open, ping, Socket.IO CONNECT) still go
  through its queue and writer; the gateway's writes never overtake them (it waits for the queue
  to be taken first, and ``write_now`` declines while a packet of Engine.IO's is queued or being
  sent). The same queue bounds a slow client: waiting for ``queue.join()`` after each batch makes a
  client that stops reading stop its sender, so the gateway's bounded queue fills instead of
  Engine.IO's unbounded one.
* **python-socketio** (``_handle_eio_connect``, ``_handle_eio_message``, ``manager``, the
  ``packet`` module): :class:`StrictSocketIOServer` closes connections that send what the library
  would log and keep (and, at connect, gives the Engine.IO socket the class
  :class:`StrictEngineIOSocket`: engineio creates ``AsyncSocket`` by name and offers no setting).
  Live events skip ``emit``: their packet is encoded once for every client
  (:func:`engineio_message`) and put on each client's Engine.IO queue or socket directly.
  python-socketio's upstream extension point, ``client_manager``, was considered for this and not
  taken: a manager decides *who* gets an ``emit`` (rooms, message queues across servers), but every
  ``emit`` still re-encodes the packet and spawns a task per client and event (measured: 88 us of
  backend CPU per delivery, 18 us this way), and it has no way to bound a slow client's queue.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from typing import Any, NoReturn

import socketio
from engineio import async_socket as engineio_async_socket
from engineio import exceptions as engineio_exceptions
from engineio import packet as engineio_packet
from engineio.async_drivers import asgi as engineio_asgi
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from socketio import packet as socketio_packet
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State

log = logging.getLogger(__name__)

# --- the versions this glue was written for ---------------------------------------------------

#: Distribution -> the range of versions the code below was written and tested against.
SUPPORTED_VERSIONS: dict[str, str] = {
    "uvicorn": "~=0.55.0",
    "websockets": "~=17.4.0",
    "python-socketio": "~=5.18.1",
    "python-engineio": "~=4.15.1",
}


class UnsupportedLibraryError(RuntimeError):
    """An installed library is outside the range the gateway's glue was written for."""


def check_library_versions() -> None:
    """Fail loudly, before serving anything, when a library this module reaches into has moved.

    A minor release of any of them may rename what is used here; the gateway would then break
    silently (events not sent, malformed packets kept). Raises :class:`UnsupportedLibraryError`
    naming the library, the installed version and the supported range.
    """
    for name, supported in SUPPORTED_VERSIONS.items():
        installed = importlib.metadata.version(name)
        if Version(installed) not in SpecifierSet(supported):
            raise UnsupportedLibraryError(
                f"{name} {installed} is installed, but the event gateway's glue "
                f"(backend/gateway/transport.py) supports {name}{supported} only: "
                f"install that range (pip install -r requirements.txt) or re-check the glue and widen it"
            )


#: What sending to a client raises when the client has just left (its TCP connection is gone, or
#: Engine.IO closed its socket): an expected end of its sender, not an error.
CLIENT_GONE: tuple[type[BaseException], ...] = (
    ClientDisconnected,
    engineio_exceptions.SocketIsClosedError,
    ConnectionError,
)

# --- limits -------------------------------------------------------------------------------------

#: Largest message a Socket.IO client may send us (clients only send the connect packet).
MAX_INBOUND_BYTES = 64 * 1024

# --- encoding -----------------------------------------------------------------------------------


def text_frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented WebSocket text frame carrying ``payload``, as websockets builds it.

    A server's frames are never masked and no extension is negotiated (permessage-deflate is off),
    so the same bytes go to every client.
    """
    return Frame(Opcode.TEXT, payload).serialize(mask=False)


def _frame_for(text: str) -> bytes:
    """:func:`text_frame` of ``text``; an event's frame is built once for all the clients it goes to.

    Every event goes to every client as the same text, and websockets' serializer costs ~2 us a
    frame (ten times the hand-built header it replaced): per client and event, the fan-out would
    feel it. Events are a few hundred bytes; longer texts are not kept.
    """
    return _cached_frame(text) if len(text) <= _CACHED_TEXT_MAX else text_frame(text.encode())


_CACHED_TEXT_MAX = 1024


@functools.lru_cache(maxsize=2048)  # the last ~2,000 events: at most a few MB
def _cached_frame(text: str) -> bytes:
    return text_frame(text.encode())


def engineio_message(name: str, data: Any, seq: int) -> engineio_packet.Packet:
    """The Engine.IO MESSAGE carrying the Socket.IO event ``42["name",data,seq]``."""
    encoded = socketio_packet.Packet(socketio_packet.EVENT, namespace="/", data=[name, data, seq]).encode()
    return engineio_packet.Packet(engineio_packet.MESSAGE, data=encoded)


# --- uvicorn: the WebSocket protocol with two scope extensions ---------------------------------

#: Scope extension: ``async (texts: Sequence[str]) -> None`` sends each text as a message, in one write.
SEND_TEXTS = "kafka-dashboard.websocket.send_texts"
#: Scope extension: ``(frames: bytes) -> bool`` writes ready-made frames now if the connection is open
#: and its write buffer below the high-water mark; False (nothing written) otherwise.
WRITE_FRAMES = "kafka-dashboard.websocket.write_frames"

SendTexts = Callable[[Sequence[str]], Awaitable[None]]


def texts_sender(scope: dict[str, Any], send: Callable[[Any], Awaitable[None]]) -> SendTexts:
    """The connection's :data:`SEND_TEXTS`; where the server has none, one ``websocket.send`` per text."""
    extension = scope.get("extensions", {}).get(SEND_TEXTS)
    if extension is not None:
        return extension

    async def one_by_one(texts: Sequence[str]) -> None:
        for text in texts:
            await send({"type": "websocket.send", "text": text})

    return one_by_one


class FastSendWebSocketProtocol(WebSocketsSansIOProtocol):
    """``uvicorn.Config(ws=FastSendWebSocketProtocol)``: text frames of an open connection, written here."""

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        self.scope["extensions"][SEND_TEXTS] = self.send_texts  # type: ignore[index]
        self.scope["extensions"][WRITE_FRAMES] = self.write_frames  # type: ignore[index]

    def write_frames(self, frames: bytes) -> bool:
        """Write frames built with :func:`text_frame`, without waiting: only when nothing needs waiting for.

        For the gateway's fan-out, which writes an event's shared frame to every client that is
        keeping up straight from its loop, with no task switch per client.
        """
        if self.disconnected or not self.writable.is_set() or not self._open_for_data():
            return False
        self.transport.write(frames)
        return True

    async def send_texts(self, texts: Sequence[str]) -> None:
        """Send each of ``texts`` as a text message, all in one write to the socket."""
        if not texts:
            return
        if not self.writable.is_set():
            await self.writable.wait()
        if not self._open_for_data():
            if self.transport.is_closing():
                # The peer is gone and uvicorn has not been told yet: its path would write every
                # text to the dead transport (asyncio logs "socket.send() raised exception." for each).
                raise ClientDisconnected()
            for text in texts:  # uvicorn's path: raises as it would for a closed connection
                await super().send({"type": "websocket.send", "text": text})
            return
        self.transport.write(b"".join([_frame_for(text) for text in texts]))

    async def send(self, message: dict) -> None:  # type: ignore[override]  # ASGISendEvent
        if message["type"] == "websocket.send" and message.get("text") is not None:
            await self.send_texts((message["text"],))
        else:
            await super().send(message)  # type: ignore[arg-type]

    def _open_for_data(self) -> bool:
        if self.disconnected:
            raise ClientDisconnected()
        return (
            self.handshake_complete
            and not self.close_sent
            and self.initial_response is None
            and self.conn.state is State.OPEN
            and not self.transport.is_closing()
        )


# --- python-engineio: batched writes on an Engine.IO WebSocket ----------------------------------

_WEBSOCKET_ATTRIBUTE = "_gateway_websocket"


class BatchingWebSocket(engineio_asgi.WebSocket):
    """The ASGI WebSocket of one Engine.IO socket, sending text through the connection's batch sender."""

    def __init__(self, handler: Any, server: Any) -> None:
        super().__init__(handler, server)
        self.send_texts: SendTexts | None = None
        self.write_frames: Callable[[bytes], bool] | None = None
        self.sending = 0  # Engine.IO's writer is inside send() (waiting for the socket to drain)
        self.engine_socket = getattr(handler, "__self__", None)  # handler: AsyncSocket._websocket_handler
        if self.engine_socket is not None:
            setattr(self.engine_socket, _WEBSOCKET_ATTRIBUTE, self)

    async def __call__(self, environ: dict[str, Any]) -> str:
        scope = environ.get("asgi.scope", {})
        self.send_texts = texts_sender(scope, environ["asgi.send"])
        self.write_frames = scope.get("extensions", {}).get(WRITE_FRAMES)
        return await super().__call__(environ)

    async def send(self, message: str | bytes) -> None:
        self.sending += 1
        try:
            if isinstance(message, str) and self.send_texts is not None:
                await self.send_texts((message,))
            else:
                await super().send(message)
        finally:
            self.sending -= 1

    def write_now(self, frames: bytes) -> bool:
        """Write ready-made frames now, unless a packet of Engine.IO's own is waiting; else False."""
        if self.write_frames is None or self.sending or not self.engine_socket.queue.empty():
            return False
        return self.write_frames(frames)


def _websocket_of(engine_socket: Any) -> BatchingWebSocket | None:
    """The WebSocket an Engine.IO socket now sends on, or None (polling, or upgrading)."""
    websocket = getattr(engine_socket, _WEBSOCKET_ATTRIBUTE, None)
    if websocket is None or websocket.send_texts is None:
        return None
    if not engine_socket.upgraded or engine_socket.upgrading or engine_socket.closed:
        return None
    return websocket


async def send_engineio(engine_socket: Any, packets: Sequence[engineio_packet.Packet]) -> None:
    """Send ``packets`` to a Socket.IO client: on a WebSocket in one write, else through Engine.IO's queue.

    What ``AsyncSocket.send`` does per packet (closed and ping-timeout checks), once per batch.
    Either way this waits until the transport took them: a client that does not read stalls
    here, so its bounded stream queue fills up instead of Engine.IO's unbounded one.
    """
    if not await engine_socket.check_ping_timeout():
        return
    websocket = _websocket_of(engine_socket)
    if websocket is not None and websocket.send_texts is not None:
        await engine_socket.queue.join()  # Engine.IO's own packets first (at once when there are none)
        await websocket.send_texts([packet.encode() for packet in packets])
        return
    for packet in packets:
        engine_socket.queue.put_nowait(packet)
    await engine_socket.queue.join()


def write_engineio_now(engine_socket: Any, frames: bytes) -> bool:
    """Write ready-made frames to a Socket.IO client on a WebSocket now, if nothing needs waiting for."""
    websocket = _websocket_of(engine_socket)
    return websocket is not None and websocket.write_now(frames)


# --- python-engineio and python-socketio: strict servers ----------------------------------------


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
    accepts no client events: EVENT and ACK packets are dropped unread, and binary packets are
    refused: they announce attachments that the library would keep until the connection ends
    (found by tests/test_protocol_abuse.py).
    Malformed Engine.IO packets are refused by :class:`StrictEngineIOSocket`.
    """

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> Any:
        # Engine.IO reports a connection right after creating its socket, before the socket
        # reads anything: the one point where the socket's class can be chosen.
        eio_socket = self.eio.sockets.get(eio_sid)
        if type(eio_socket) is engineio_async_socket.AsyncSocket:
            eio_socket.__class__ = StrictEngineIOSocket
        return await super()._handle_eio_connect(eio_sid, environ)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._talkers: set[str] = set()  # Engine.IO sessions whose client events were ignored (logged once)

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        try:
            if not isinstance(data, str) or data[:1] in ("5", "6"):
                raise ValueError("binary packets are not accepted")
            if data[:1] in _CLIENT_EVENT_TYPES:
                self._ignore_client_event(eio_sid, data)
            else:
                await super()._handle_eio_message(eio_sid, data)
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            log.info("Closing Socket.IO connection %s: bad packet (%s)", eio_sid, str(exc)[:120])
            await close_engine_socket(self, eio_sid)

    def _ignore_client_event(self, eio_sid: str, data: str) -> None:
        """Drop an EVENT or ACK a client sent, instead of python-socketio dispatching it.

        Clients only listen. The library would decode the packet and start a task for it
        (``async_handlers``) just to find no handler: 200,000 client events cost 20.5 s of the
        loop's CPU (issue 15). Here it costs one ``json.loads``, kept so that a malformed packet
        still closes the connection (ValueError, RecursionError) as it did.
        """
        _event_arguments(data)
        if eio_sid not in self._talkers:
            self._talkers.add(eio_sid)
            log.info("Ignoring events sent by Socket.IO connection %s: clients only listen", eio_sid)

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any) -> None:
        self._talkers.discard(eio_sid)
        await super()._handle_eio_disconnect(eio_sid, reason)


#: Socket.IO packet types a listening client has no reason to send: EVENT ("2") and ACK ("3").
_CLIENT_EVENT_TYPES = ("2", "3")


def _event_arguments(data: str) -> list[Any]:
    """The arguments of a Socket.IO EVENT or ACK packet ``<type>[/namespace,][id][...]``.

    Raises ValueError (or RecursionError) where python-socketio would fail on the packet.
    """
    rest = data[1:]
    if rest.startswith("/"):
        _, comma, rest = rest.partition(",")
        if not comma:
            raise ValueError("a namespace without arguments")
    arguments = json.loads(rest.lstrip("0123456789"))
    if not isinstance(arguments, list) or not arguments:
        raise ValueError("an event's arguments must be a non-empty JSON array")
    return arguments


def create_socketio_server(origin_allowed: Callable[..., bool]) -> StrictSocketIOServer:
    """The gateway's Socket.IO server (ASGI), strict on input and with batched WebSocket writes."""
    sio = StrictSocketIOServer(
        async_mode="asgi",
        cors_allowed_origins=origin_allowed,
        max_http_buffer_size=MAX_INBOUND_BYTES,
        logger=False,
        engineio_logger=False,
    )
    sio.eio._async = {**sio.eio._async, "websocket": BatchingWebSocket}
    return sio


# --- python-socketio and python-engineio: the gateway's look at its connections ----------------


def is_connected(sio: socketio.AsyncServer, sid: str) -> bool:
    """Whether the Socket.IO connection is complete (python-socketio sent the CONNECT packet).

    The connect handler runs before that, so a client's events must wait until this is true.
    """
    return bool(sio.manager.is_connected(sid, "/"))


def engine_socket(sio: socketio.AsyncServer, sid: str) -> Any | None:
    """The Engine.IO socket under a connected Socket.IO client (None once it is gone)."""
    return sio.eio.sockets.get(sio.manager.eio_sid_from_sid(sid, "/"))


async def close_engine_socket(sio: socketio.AsyncServer, eio_sid: str) -> None:
    """Close one Engine.IO connection now, whether or not its client is reading.

    The socket queues a CLOSE packet (a polling client acts on it; its pending poll returns at
    once) and the ``None`` after it ends the websocket writer, which then closes the websocket.
    ``AsyncServer.disconnect`` would wait for the client to take its queued packets, which a
    stalled client never does. The socket is forgotten right away, as ``eio.disconnect`` does:
    later requests with its session id get a clean 400 instead of an error inside Engine.IO.
    """
    eio_socket = sio.eio.sockets.pop(eio_sid, None)
    if eio_socket is not None:
        with suppress(Exception):
            await eio_socket.close(wait=False, abort=False, reason=sio.eio.reason.SERVER_DISCONNECT)
            eio_socket.queue.put_nowait(None)


async def close_socketio_client(sio: socketio.AsyncServer, sid: str) -> None:
    """:func:`close_engine_socket` for the Engine.IO connection under a Socket.IO client."""
    eio_sid = sio.manager.eio_sid_from_sid(sid, "/")
    if eio_sid is not None:
        await close_engine_socket(sio, eio_sid)


async def close_every_engine_socket(sio: socketio.AsyncServer) -> None:
    """:func:`close_engine_socket` for every connection of ``sio``."""
    for eio_sid in list(sio.eio.sockets):
        await close_engine_socket(sio, eio_sid)
