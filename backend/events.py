"""The event contract: names and payload builders, the one place payloads are shaped.

Payloads follow the seed document field for field. Times are ISO-8601 UTC with
milliseconds and ``Z``; ``offset`` is a string; ``partition`` and ``rowCount``
are integers; statuses are upper case.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

CONNECTION_SUCCESS = "connection-success"
MESSAGE_RECEIVED = "message-received"
PROCESSING_STARTED = "processing-started"
PROCESSING_COMPLETED = "processing-completed"
PROCESSING_FAILED = "processing-failed"
STATS_UPDATED = "stats-updated"
CONSUMER_STATUS_CHANGED = "consumer-status-changed"
RESYNC_REQUIRED = "resync-required"

BROADCAST_EVENTS = (
    MESSAGE_RECEIVED,
    PROCESSING_STARTED,
    PROCESSING_COMPLETED,
    PROCESSING_FAILED,
    STATS_UPDATED,
    CONSUMER_STATUS_CHANGED,
)

SINGLE_MESSAGE = "SINGLE_MESSAGE"
CSV_BATCH = "CSV_BATCH"
DATA_TYPES = (SINGLE_MESSAGE, CSV_BATCH)

RECEIVED = "RECEIVED"
PROCESSING = "PROCESSING"
PROCESSED = "PROCESSED"
FAILED = "FAILED"
STATUSES = (RECEIVED, PROCESSING, PROCESSED, FAILED)

ACTIVE = "ACTIVE"
INACTIVE = "INACTIVE"

_LOG_NAMESPACE = uuid.UUID("6f1c2a8e-5d0b-4c41-9a57-3f0e8b7d2c19")


def iso_from_ms(epoch_ms: int | float) -> str:
    """Epoch milliseconds as ISO-8601 UTC with milliseconds and Z."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds."""
    return int(datetime.now(tz=UTC).timestamp() * 1000)


def now_iso() -> str:
    """The current time as the contract writes times."""
    return iso_from_ms(now_ms())


def make_log_id(cluster_id: str, topic: str, partition: int, offset: int) -> str:
    """A stable id for one Kafka record.

    Derived, not random, so that the same record keeps its id across restarts
    and redeliveries. The cluster id is part of it because an embedded
    (memory-only) broker starts a new cluster on every start, and its offsets
    name different records then.
    """
    return str(uuid.uuid5(_LOG_NAMESPACE, f"{cluster_id}/{topic}/{partition}/{offset}"))


@dataclass(frozen=True)
class Event:
    """One published event: its sequence number, name and payload."""

    seq: int
    name: str
    data: dict[str, Any]

    def as_wire(self) -> dict[str, Any]:
        """The /ws frame: {"event", "data", "seq"}."""
        return {"event": self.name, "data": self.data, "seq": self.seq}


def connection_success() -> dict[str, Any]:
    return {"message": "Connected to Consumer Service WebSocket", "timestamp": now_iso()}


def message_received(
    log_id: str, topic: str, partition: int, offset: int, data_type: str, row_count: int, at_ms: int
) -> dict[str, Any]:
    return {
        "logId": log_id,
        "topic": topic,
        "partition": int(partition),
        "offset": str(offset),
        "dataType": data_type,
        "rowCount": int(row_count),
        "timestamp": iso_from_ms(at_ms),
    }


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


def stats_updated(total: int, processed: int, failed: int, active_consumers: int) -> dict[str, Any]:
    return {
        "totalMessages": int(total),
        "processedMessages": int(processed),
        "failedMessages": int(failed),
        "activeConsumers": int(active_consumers),
        "timestamp": now_iso(),
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
