"""Idle cost of one connected client, against the seed's polling, in bytes per minute.

Both clients talk to the gateway through a :class:`CountingRelay` of their own: a TCP relay on
loopback that forwards every byte and counts it, both directions. What is counted is TCP payload:
HTTP, WebSocket frames, Engine.IO/Socket.IO packets; not TCP/IP headers (about 52-66 bytes per packet
on a real network, the same order for both clients per exchange).

* Socket.IO: the real socket.io-client with the seed's options (websocket first), connected and then
  left alone. With no events, what crosses is Engine.IO's heartbeat: the server's ping every
  ``pingInterval`` and the client's pong. The window is a whole number of ping intervals, so it holds
  exactly that many heartbeats whatever the phase; the handshake is reported separately.
* Baseline (the seed's dashboard): GET /api/consumers/statistics and GET /api/consumers/logs every 5 s,
  over one keep-alive HTTP/1.1 connection, with the logs the run left in the store (default limit 50).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any

from bench.common import HOST, BackendProcess, Http, NodeProcess, cpu_seconds, say, tree_cpu_seconds

POLL_INTERVAL_S = 5.0


class CountingRelay:
    """Forwards connections from 127.0.0.1:<port> to ``target_port``, counting the bytes."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.up = 0  # client -> server
        self.down = 0  # server -> client
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((HOST, 0))
        self._listener.listen(16)
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()

    @property
    def total(self) -> int:
        with self._lock:
            return self.up + self.down

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection((HOST, self.target_port))
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
                with self._lock:
                    if upstream:
                        self.up += len(data)
                    else:
                        self.down += len(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()


def poll_seed_style(port: int, start: float, polls: int, errors: list[str]) -> None:
    """The seed dashboard's refresh: statistics + logs every 5 s, ``polls`` times from ``start``."""
    client = Http(port)
    try:
        for k in range(polls):
            delay = start + k * POLL_INTERVAL_S - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            for path in ("/api/consumers/statistics", "/api/consumers/logs"):
                status, _ = client.request("GET", path)
                if status != 200:
                    errors.append(f"{path}: {status}")
    finally:
        client.close()


def run(backend: BackendProcess, intervals: int, broker_pid: int | None = None) -> dict[str, Any]:
    """Measure over ``intervals`` Engine.IO ping intervals; the CPU of the backend, of the workers
    it started and of the broker (``broker_pid``, when this run started it) over the same window."""
    sio_relay = CountingRelay(backend.gateway_port)
    poll_relay = CountingRelay(backend.gateway_port)
    probe = NodeProcess("probe.mjs", {"url": f"http://{HOST}:{sio_relay.port}", "events": []})
    try:
        connected = probe.expect("connect", timeout=20)
        ping_ms = float(connected.get("pingInterval") or 25_000)
        time.sleep(2.0)  # the handshake and connection-success are done
        handshake = sio_relay.total
        window = intervals * ping_ms / 1000.0
        polls = int(window // POLL_INTERVAL_S)
        say(f"idle: one idle Socket.IO client and a 5 s poller, {window:.0f}s ({intervals} ping intervals)")
        start = time.monotonic()
        cpu_before, workers_before = tree_cpu_seconds(backend.pid)
        broker_before = cpu_seconds(broker_pid)
        sio_before = sio_relay.total
        errors: list[str] = []
        poller = threading.Thread(
            target=poll_seed_style, args=(poll_relay.port, start, polls, errors), daemon=True
        )
        poller.start()
        time.sleep(max(start + window - time.monotonic(), 0))
        sio_bytes = sio_relay.total - sio_before
        cpu_after, workers_after = tree_cpu_seconds(backend.pid)
        broker_after = cpu_seconds(broker_pid)
        poller.join(30)
        poll_bytes = poll_relay.total
        disconnected = any(line.get("type") == "disconnect" for line in list(probe.lines.queue))
    finally:
        probe.close()
        sio_relay.close()
        poll_relay.close()
    per_min = 60.0 / window
    return {
        "idle_bytes_per_min_per_client": round(sio_bytes * per_min),
        "idle_window_s": round(window, 1),
        "idle_ping_interval_ms": ping_ms,
        "idle_handshake_bytes": handshake,
        "idle_disconnected": disconnected,
        "seed_polling_bytes_per_min": round(poll_bytes * 60.0 / (polls * POLL_INTERVAL_S)),
        "seed_polling_errors": len(errors),
        # The backend's own CPU use while nothing happens (its consumers keep polling the broker).
        "idle_backend_cpu_cores": round((cpu_after - cpu_before) / window, 3),
        # Its workers' (processes it started) and the broker's: idle fetches and heartbeats.
        "idle_workers_cpu_cores": round((workers_after - workers_before) / window, 3),
        "idle_broker_cpu_cores": None
        if broker_before is None or broker_after is None
        else round((broker_after - broker_before) / window, 3),
    }
