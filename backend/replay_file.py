"""The events a view held when it stopped cleanly, kept for replay after its restart.

A client that reconnects with ``lastSeq`` after a restart gets the events after it from the bus's
ring; a clean stop publishes events of its own (its consumers stop) after the gateway closed, so
without this file those would be gone and the client would get ``resync-required``. The file is
used only when its last event is exactly the view's stored ``seq`` (after a SIGKILL it is stale
and ignored), and deleted once read.
"""

from __future__ import annotations

import logging
from pathlib import Path

import orjson

from backend.events import Event

log = logging.getLogger(__name__)

FILE_NAME = "replay.json"


def save(data_dir: Path, held: list[Event]) -> None:
    try:
        (Path(data_dir) / FILE_NAME).write_bytes(orjson.dumps([[e.seq, e.name, e.data] for e in held]))
    except (OSError, TypeError) as exc:  # replay is a convenience: a full disk must not break stopping
        log.warning("events for replay not kept: %s", exc)


def load(data_dir: Path) -> list[Event]:
    path = Path(data_dir) / FILE_NAME
    try:
        raw = path.read_bytes()
    except OSError:
        return []
    path.unlink(missing_ok=True)
    try:
        return [Event(int(seq), str(name), dict(data)) for seq, name, data in orjson.loads(raw)]
    except (ValueError, TypeError) as exc:
        log.warning("%s unreadable, ignored: %s", path, exc)
        return []
