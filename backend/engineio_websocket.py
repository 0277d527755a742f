"""Engine.IO's ASGI WebSocket wrapper, letting the gateway write a batch of packets in one go.

python-engineio sends a WebSocket client its packets from a writer task, one ``websocket.send``
per packet, after they went through the socket's queue. For the gateway's live events that
meant, per event and client, a queue hand-off, a task wake-up and a system call. With this
wrapper (installed by :func:`install`) each Engine.IO socket that runs on a WebSocket knows its
connection's batch sender (:data:`backend.websocket_protocol.SEND_TEXTS`), and
:func:`websocket_of` gives it to the gateway, which then writes all the events a client is due
in one write, or writes an event's ready-made frame to it straight from the fan-out
(:meth:`BatchingWebSocket.write_now`). Engine.IO's own packets (open, ping, Socket.IO CONNECT)
still go through its queue and writer, and through the same sender; the gateway's writes never
overtake them: it waits for the queue to be taken first, and ``write_now`` declines while a packet
of Engine.IO's is queued or being sent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engineio.async_drivers import asgi as engineio_asgi

from backend.websocket_protocol import WRITE_FRAMES, SendTexts, texts_sender

_ATTRIBUTE = "_gateway_websocket"


class BatchingWebSocket(engineio_asgi.WebSocket):
    """The ASGI WebSocket of one Engine.IO socket, sending text through the connection's batch sender."""

    def __init__(self, handler: Any, server: Any) -> None:
        super().__init__(handler, server)
        self.send_texts: SendTexts | None = None
        self.write_frames: Callable[[bytes], bool] | None = None
        self.sending = 0  # Engine.IO's writer is inside send() (waiting for the socket to drain)
        self.engine_socket = getattr(handler, "__self__", None)  # handler: AsyncSocket._websocket_handler
        if self.engine_socket is not None:
            setattr(self.engine_socket, _ATTRIBUTE, self)

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


def install(engine_server: Any) -> None:
    """Make ``engine_server`` (an ``engineio.AsyncServer`` in ASGI mode) use :class:`BatchingWebSocket`."""
    engine_server._async = {**engine_server._async, "websocket": BatchingWebSocket}


def websocket_of(engine_socket: Any) -> BatchingWebSocket | None:
    """The WebSocket an Engine.IO socket now sends on, or None (polling, or upgrading)."""
    websocket = getattr(engine_socket, _ATTRIBUTE, None)
    if websocket is None or websocket.send_texts is None:
        return None
    if not engine_socket.upgraded or engine_socket.upgrading or engine_socket.closed:
        return None
    return websocket
