"""uvicorn's sans-I/O WebSocket protocol with a short path for outgoing data frames.

Every event reaches every connected client, so sending one text frame is the gateway's innermost
loop: 1,000 clients at ~32 events/s is ~32,000 frames/s on one event loop. uvicorn's path for a
``websocket.send`` goes through the websockets library's generic frame machinery (state checks,
``Frame.serialize`` with masking and extension hooks, ``data_to_send`` buffers), which the
benchmark's profile showed at ~12 % of the gateway's CPU. A server's data frame is never masked and
we negotiate no extension (permessage-deflate is off), so the frame is just a 2-10 byte header and
the UTF-8 payload: :func:`text_frame` builds it (once per event for all clients, when the
gateway uses :data:`WRITE_FRAMES`), and :class:`FastSendWebSocketProtocol` writes it
straight to the transport when the connection is open. Anything else (handshake, close, binary,
a connection in any other state) takes uvicorn's own path, unchanged.

Each ``transport.write`` is a system call, which on loopback also runs the receiving side of TCP:
a third of the gateway's CPU went to the kernel. So the protocol also offers the application a
way to send several text messages in one write, as an ASGI extension in the connection's scope:
``await scope["extensions"][SEND_TEXTS](texts)`` (servers without it get one ``websocket.send``
per text; see :func:`texts_sender`).
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

#: Scope extension: ``async (texts: Sequence[str]) -> None`` sends each text as a message, in one write.
SEND_TEXTS = "kafka-dashboard.websocket.send_texts"
#: Scope extension: ``(frames: bytes) -> bool`` writes ready-made frames now if the connection is open
#: and its write buffer below the high-water mark; False (nothing written) otherwise.
WRITE_FRAMES = "kafka-dashboard.websocket.write_frames"

_FIN_TEXT = 0x81  # FIN bit + opcode 1 (text)
_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def text_frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented WebSocket text frame carrying ``payload`` (RFC 6455 §5.2)."""
    size = len(payload)
    if size < 126:
        header = _SHORT.pack(_FIN_TEXT, size)
    elif size < 1 << 16:
        header = _MEDIUM.pack(_FIN_TEXT, 126, size)
    else:
        header = _LONG.pack(_FIN_TEXT, 127, size)
    return header + payload


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
    """``uvicorn.Config(ws=FastSendWebSocketProtocol)``: text frames of an open connection, built here."""

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
            for text in texts:  # uvicorn's path: raises as it would for a closed connection
                await super().send({"type": "websocket.send", "text": text})
            return
        self.transport.write(b"".join([text_frame(text.encode()) for text in texts]))

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
