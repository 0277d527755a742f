"""The gateway's WebSocket protocol: its frames must be what a client's websockets parses back,
and its two extensions (several texts in one write, ready-made frames without waiting) must
deliver in order and refuse to write when the socket has no room."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Generator
from typing import Any

import pytest
import uvicorn
import websockets
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from backend.gateway.transport import SEND_TEXTS, WRITE_FRAMES, FastSendWebSocketProtocol, text_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65_535, 65_536, 200_000])
def test_text_frame_is_the_frame_websockets_builds(size: int) -> None:
    payload = ("é" * size).encode()[:size]
    expected = Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])
    assert text_frame(payload) == expected
    # And a client's parser reads it back as one whole, unmasked, final text frame.
    assert parse_server_frames(text_frame(payload) + text_frame(b"next")) == [
        Frame(Opcode.TEXT, payload),
        Frame(Opcode.TEXT, b"next"),
    ]


def parse_server_frames(data: bytes) -> list[Frame]:
    """Every frame in ``data``, parsed as a client parses what a server sends; all bytes must be used."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    while not run(reader.at_eof()):
        frames.append(run(Frame.parse(reader.read_exact, mask=False)))
    return frames


def run(generator: Generator[None, None, Any]) -> Any:
    """The result of one of websockets' generator-based parsers, given data that is all there."""
    try:
        next(generator)
    except StopIteration as done:
        return done.value
    raise AssertionError("the parser wants more data than the frames hold")


class Probe:
    """An ASGI app that, for one connection, sends what the test asks through the extensions."""

    def __init__(self) -> None:
        self.extensions: dict[str, Any] = {}
        self.connected = asyncio.Event()
        self.finished = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        self.extensions = scope["extensions"]
        self.connected.set()
        while (await receive())["type"] != "websocket.disconnect":
            pass
        self.finished.set()


async def serve(app: Probe) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, ws=FastSendWebSocketProtocol, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # uvicorn offers no event for this
        assert not task.done(), "the server did not start"
        await asyncio.sleep(0.01)
    return server, task, port


def test_send_texts_and_write_frames_arrive_in_order() -> None:
    async def scenario() -> list[str]:
        app = Probe()
        server, task, port = await serve(app)
        try:
            async with websockets.connect(f"ws://127.0.0.1:{port}/") as client:
                await asyncio.wait_for(app.connected.wait(), 10)
                await app.extensions[SEND_TEXTS](["one", "twö", "x" * 70_000])
                assert app.extensions[WRITE_FRAMES](text_frame(b"four") + text_frame(b"five"))
                return [await asyncio.wait_for(client.recv(), 10) for _ in range(5)]
        finally:
            server.should_exit = True
            await task

    received = asyncio.run(scenario())
    assert received == ["one", "twö", "x" * 70_000, "four", "five"]


def test_write_frames_refuses_when_the_client_does_not_read_and_after_it_left() -> None:
    async def scenario() -> tuple[int, bool]:
        app = Probe()
        server, task, port = await serve(app)
        try:
            # A client with a tiny receive buffer that never reads.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            writer.write(
                b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            await asyncio.wait_for(app.connected.wait(), 10)
            frame = text_frame(b"y" * 16_384)
            written = 0
            while app.extensions[WRITE_FRAMES](frame):
                written += 1
                assert written < 10_000, "write_frames never refused: nothing bounds the buffer"
                await asyncio.sleep(0)
            writer.close()
            await asyncio.wait_for(app.finished.wait(), 10)
            return written, app.extensions[WRITE_FRAMES](frame)
        finally:
            server.should_exit = True
            await task

    written, after_close = asyncio.run(scenario())
    assert written >= 1
    assert after_close is False
