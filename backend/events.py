"""The event contract: names and payload builders, the one place payloads are shaped.

One exception: the ``stats-updated`` payload is also the REST body of
``GET /api/consumers/statistics``, so it is built with the other REST bodies,
by :func:`backend.wire.statistics_body`.

Payloads follow the seed document field for field. Times are ISO-8601 UTC with
milliseconds and ``Z``; ``offset`` is a string; ``partition`` and ``rowCount``
are integers; statuses are upper case.
"""

from __future__ import annotations

import functools
import hashlib
import time
from datetime import UTC, datetime
from typing import Any, NamedTuple

CONNECTION_SUCCESS = "connection-success"
MESSAGE_RECEIVED = "message-received"
PROCESSING_STARTED = "processing-started"
PROCESSING_COMPLETED = "processing-completed"
PROCESSING_FAILED = "processing-failed"
STATS_UPDATED = "stats-updated"
CONSUMER_STATUS_CHANGED = "consumer-status-changed"
RESYNC_REQUIRED = "resync-required"
#: To ``mode=live`` clients only: how many records their sample left out (see backend.gateway.subscriptions).
RECORDS_SKIPPED = "records-skipped"

BROADCAST_EVENTS = (
    MESSAGE_RECEIVED,
    PROCESSING_STARTED,
    PROCESSING_COMPLETED,
    PROCESSING_FAILED,
    STATS_UPDATED,
    CONSUMER_STATUS_CHANGED,
)

#: The events of one record (one logId), in this order: received, started, then one outcome.
RECORD_EVENTS = frozenset({MESSAGE_RECEIVED, PROCESSING_STARTED, PROCESSING_COMPLETED, PROCESSING_FAILED})
OUTCOME_EVENTS = frozenset({PROCESSING_COMPLETED, PROCESSING_FAILED})

SINGLE_MESSAGE = "SINGLE_MESSAGE"
CSV_BATCH = "CSV_BATCH"
#: A record with a null value: Kafka's "delete" in a compacted topic. Processed, with no rows.
TOMBSTONE = "TOMBSTONE"
#: Every data type a log can have (what the charts group by).
DATA_TYPES = (SINGLE_MESSAGE, CSV_BATCH, TOMBSTONE)
#: The data types a producer may declare in the ``data-type`` header (a tombstone is a null value).
DECLARED_TYPES = (SINGLE_MESSAGE, CSV_BATCH)

RECEIVED = "RECEIVED"
PROCESSING = "PROCESSING"
PROCESSED = "PROCESSED"
FAILED = "FAILED"
STATUSES = (RECEIVED, PROCESSING, PROCESSED, FAILED)

ACTIVE = "ACTIVE"
INACTIVE = "INACTIVE"

_second_cache: tuple[int, str] = (-1, "")
_millis_cache: tuple[int, str] = (-1, "")


def iso_from_ms(epoch_ms: int | float) -> str:
    """Epoch milliseconds as ISO-8601 UTC with milliseconds and Z.

    Called three times per record on the hot path, mostly with the same or a close value:
    strftime is the costly part, so the formatted second is cached, and so is the last whole
    text (each tuple swap is atomic).
    """
    global _second_cache, _millis_cache
    millis = int(epoch_ms)
    cached_millis, text = _millis_cache
    if cached_millis == millis:
        return text
    second, fraction = divmod(millis, 1000)
    cached_second, prefix = _second_cache
    if cached_second != second:
        prefix = datetime.fromtimestamp(second, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _second_cache = (second, prefix)
    text = f"{prefix}{fraction:03d}Z"
    _millis_cache = (millis, text)
    return text


def ms_from_iso(text: str | None) -> int | None:
    """The contract's ISO-8601 UTC timestamps as epoch milliseconds."""
    if not text:
        return None
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds."""
    return time.time_ns() // 1_000_000


def now_iso() -> str:
    """The current time as the contract writes times."""
    return iso_from_ms(now_ms())


def make_log_id(cluster_id: str, topic: str, partition: int, offset: int) -> str:
    """A stable id for one Kafka record, shaped like a UUID: ``tttttttt-tttt-pppp-oooo-oooooooooooo``.

    Derived, not random, so that the same record keeps its id across restarts and redeliveries
    (and every worker of a cluster gives it the same). ``t`` is a hash of the cluster id and the
    topic (an embedded, memory-only broker starts a new cluster on every start, and its offsets
    name different records then), ``p`` the partition and ``o`` the offset, in hex. Positional on
    purpose: a topic-partition's ids sort in offset order, so a store's index on them takes
    appends instead of random inserts (at a million rows a random 36-character key made SQLite
    4x slower per row: bench/README.md). A partition past 65,535 gets a hash of the whole position.
    """
    if 0 <= partition <= 0xFFFF and 0 <= offset <= 0xFFFF_FFFF_FFFF_FFFF:
        prefix = _topic_prefix(cluster_id, topic)
        position = f"{partition:04x}{offset:016x}"
        return f"{prefix}-{position[:4]}-{position[4:8]}-{position[8:]}"
    digest = _blake2b(f"{cluster_id}/{topic}/{partition}/{offset}".encode(), digest_size=16).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:]}"


@functools.lru_cache(maxsize=4096)
def _topic_prefix(cluster_id: str, topic: str) -> str:
    """The first 48 bits of a logId, ``tttttttt-tttt``: one topic of one cluster."""
    digest = _blake2b(f"{cluster_id}/{topic}".encode(), digest_size=6).hexdigest()
    return f"{digest[:8]}-{digest[8:]}"


_blake2b = hashlib.blake2b  # bound once: this runs for every record


class Event(NamedTuple):
    """One published event: its sequence number, name and payload (a tuple: cheap to make)."""

    seq: int
    name: str
    data: dict[str, Any]

    def as_wire(self) -> dict[str, Any]:
        """The /ws frame: {"event", "data", "seq"}."""
        return {"event": self.name, "data": self.data, "seq": self.seq}


def connection_success() -> dict[str, Any]:
    return {"message": "Connected to Consumer Service WebSocket", "timestamp": now_iso()}


def message_received(
    log_id: str,
    topic: str,
    partition: int,
    offset: int,
    data_type: str,
    row_count: int,
    at_ms: int,
    key: str | None = None,
    key_base64: str | None = None,
) -> dict[str, Any]:
    """The seed's fields, plus the record's ``key`` (for the live tail; ``keyBase64`` when binary)."""
    data = {
        "logId": log_id,
        "topic": topic,
        "partition": int(partition),
        "offset": str(offset),
        "dataType": data_type,
        "rowCount": int(row_count),
        "timestamp": iso_from_ms(at_ms),
        "key": key,
    }
    if key_base64 is not None:
        data["keyBase64"] = key_base64
    return data


def processing_started(log_id: str, consumer_id: str, at_ms: int) -> dict[str, Any]:
    return {"logId": log_id, "status": PROCESSING, "consumerId": consumer_id, "timestamp": iso_from_ms(at_ms)}


def processing_completed(log_id: str, consumer_id: str, at_ms: int) -> dict[str, Any]:
    return {"logId": log_id, "consumerId": consumer_id, "status": PROCESSED, "timestamp": iso_from_ms(at_ms)}


def processing_failed(log_id: str, consumer_id: str, error: str, at_ms: int) -> dict[str, Any]:
    return {
        "logId": log_id,
        "status": FAILED,
        "error": error,
        "consumerId": consumer_id,
        "timestamp": iso_from_ms(at_ms),
    }


def consumer_status_changed(consumer_id: str, status: str) -> dict[str, Any]:
    return {"consumerId": consumer_id, "status": status, "timestamp": now_iso()}


def resync_required(last_seq: int, oldest_seq: int) -> dict[str, Any]:
    return {
        "reason": "the events after lastSeq are no longer held; reload over REST",
        "lastSeq": int(last_seq),
        "oldestSeq": int(oldest_seq),
        "timestamp": now_iso(),
    }


def records_skipped(count: int) -> dict[str, Any]:
    """``records-skipped``: a live client's sample left ``count`` records out since the previous one."""
    return {"count": int(count), "timestamp": now_iso()}
