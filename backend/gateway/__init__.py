"""The event gateway on GATEWAY_PORT: Socket.IO, the plain WebSocket ``/ws`` and the REST API, one ASGI app.

Where things are:

- :mod:`~backend.gateway.fanout`: from the bus to one bounded queue per client, I/O-free
  (``Outgoing``, ``Batch``, ``ClientStream``, ``Fanout``, ``parse_last_seq``).
- :mod:`~backend.gateway.subscriptions`: what a client receives (``mode=all|live``, ``maxRate``,
  ``topics``): parsing, topic filters, the live sampler; I/O-free.
- :mod:`~backend.gateway.clients`: Socket.IO and /ws connections: admission, replay, senders,
  the slow-client cut-off (``Gateway``).
- :mod:`~backend.gateway.transport`: every use of uvicorn's, websockets', python-engineio's and
  python-socketio's internals, and the check of their versions.
- :mod:`~backend.gateway.http_policy`: Host and origin checks, token (API documents included),
  stream tickets, error bodies; shared with the producer API.
- :mod:`~backend.gateway.app`: the REST routes and their schemas, and ``create_gateway_app``.

Importing this package imports none of them: the producer API imports ``http_policy`` alone.
``create_gateway_app`` and ``MAX_INBOUND_BYTES`` are still importable from here, loaded on use.
"""

from __future__ import annotations

import importlib
from typing import Any

_REEXPORTED = {"create_gateway_app": "app", "MAX_INBOUND_BYTES": "transport"}


def __getattr__(name: str) -> Any:
    """``from backend.gateway import create_gateway_app`` without loading the gateway for every import."""
    if name in _REEXPORTED:
        return getattr(importlib.import_module(f"{__name__}.{_REEXPORTED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
