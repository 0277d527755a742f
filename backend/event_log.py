"""The events topic: how workers hand their work to views, and how views reach workers.

Workers (``BACKEND_ROLE=worker``) consume the source topics and write what they did to
``EVENTS_TOPIC``; views (``BACKEND_ROLE=view``) read all of it. Three kinds of record, named by
the ``kind`` header:

- ``rows``: the stored rows (:class:`backend.store.LogRow`) of one source batch of one consumer.
  A row holds everything the three per-record events say (received, started, outcome), so the
  view builds the events from the row it stored, and only when it stored it: a row that comes
  twice (a worker killed after writing and before committing) is stored and announced once.
- ``consumer``: a consumer's state as its worker sees it (status, partitions with position and
  log end, counters), written when it changes; views also write ``INACTIVE`` for a consumer whose
  worker they saw go (the broker dropped it from the group, or its process died).
- ``worker``: a worker process started or stopped, with the consumers it runs.

The topic has one partition: ``seq`` is an event's place in one total order that every view reads
the same way, so the same event gets the same ``seq`` on every view. One partition carries tens of
MB/s, far more than the decode and store cost of its rows lets a view apply.

Control commands (start or stop a consumer) go the other way on ``<EVENTS_TOPIC>.control``: a view
writes, every worker reads from the end and acts on the commands addressed to it.

Values are JSON (orjson: encoding a batch of rows is on every record's path); a row is a positional
list (:data:`ROW_FIELDS`), which halves the bytes and the decode time of a dict per row.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field
from typing import Any

import orjson

from backend.store import LogRow

log = logging.getLogger(__name__)

VERSION = 1
KIND_HEADER = "kind"
ROWS, CONSUMER, WORKER = "rows", "consumer", "worker"
KINDS = (ROWS, CONSUMER, WORKER)
START, STOP = "start", "stop"

#: The events topic's own record size limit (its ``max.message.bytes``), and the producer's. A
#: decoded record may be 16 MiB of JSON (MAX_DECODED_CHARS); its row must still fit one record.
MAX_EVENT_RECORD_BYTES = 64 * 1_048_576
#: Rows are written in records of about this size (a batch of 500 small rows is one record).
TARGET_EVENT_RECORD_BYTES = 512 * 1024

#: The order of a row's values on the wire.
ROW_FIELDS = (
    "log_id", "cluster_id", "topic", "partition", "offset", "record_key", "data_type", "row_count",
    "status", "consumer_id", "error", "produced_ms", "received_ms", "started_ms", "completed_ms",
    "size_bytes", "payload_json", "result", "key_base64", "headers", "headers_truncated", "value_bytes",
)  # fmt: skip


class EventLogError(ValueError):
    """A record of the events or control topic that this version cannot read."""


@dataclass(frozen=True)
class RowsEntry:
    """The rows of one source batch, written by ``worker`` for consumer ``consumer_id``."""

    worker_id: str
    consumer_id: str
    rows: list[LogRow]


@dataclass(frozen=True)
class ConsumerReport:
    """A consumer's state. ``partitions``: name -> [position, log end] (either may be None).

    ``polled``: it has completed a poll against the broker (health waits for that).
    ``reason``: why it is INACTIVE, when known (stopped, left the group, its worker exited).
    ``reporter``: who wrote it (the worker, or the view that saw the worker go).
    """

    consumer_id: str
    worker_id: str
    status: str
    partitions: dict[str, list[int | None]] = field(default_factory=dict)
    processed: int = 0
    failed: int = 0
    started_at: str | None = None
    last_error: str | None = None
    reason: str | None = None
    polled: bool = False
    reporter: str = ""


@dataclass(frozen=True)
class WorkerReport:
    """A worker process started (``up``) or stopped (``down``), with the consumers it runs."""

    worker_id: str
    status: str
    host: str = ""
    pid: int = 0
    consumers: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Command:
    """A view asks the workers to start or stop a consumer.

    ``start``: worker ``worker_id`` starts consumer ``consumer_id``. ``stop``: whichever worker
    runs ``consumer_id`` stops it (``worker_id`` may be None). ``request_id`` lets the asking view
    recognise the answer (a ``consumer`` report) and is logged by the worker.
    """

    op: str
    consumer_id: str
    worker_id: str | None = None
    request_id: str = ""


Entry = RowsEntry | ConsumerReport | WorkerReport


# --- rows ------------------------------------------------------------------------------------


def row_to_wire(row: LogRow) -> list[Any]:
    """A row as a positional list; the payload travels as its JSON text (encoded once)."""
    payload_json = row.payload_json
    if payload_json is None and row.payload is not None:
        payload_json = orjson.dumps(row.payload).decode()
    value = None if row.value_bytes is None else base64.b64encode(row.value_bytes).decode("ascii")
    return [
        row.log_id, row.cluster_id, row.topic, row.partition, row.offset, row.record_key,
        row.data_type, row.row_count, row.status, row.consumer_id, row.error, row.produced_ms,
        row.received_ms, row.started_ms, row.completed_ms, row.size_bytes, payload_json, row.result,
        row.key_base64, row.headers or None, row.headers_truncated, value,
    ]  # fmt: skip


#: The row fields a view indexes or shows as they are: a wrongly typed one is refused, not stored.
_ROW_TYPES: dict[str, type | tuple[type, ...]] = {
    "log_id": str, "cluster_id": str, "topic": str, "partition": int, "offset": int,
    "record_key": (str, type(None)), "data_type": str, "row_count": int, "status": str,
    "consumer_id": (str, type(None)), "error": (str, type(None)), "produced_ms": (int, type(None)),
    "received_ms": int, "started_ms": (int, type(None)), "completed_ms": (int, type(None)),
    "size_bytes": (int, type(None)), "payload_json": (str, type(None)), "key_base64": (str, type(None)),
    "headers": (list, type(None)), "value_bytes": (str, type(None)),
}  # fmt: skip


def _exact_types(kind: type | tuple[type, ...]) -> frozenset[type]:
    return frozenset(kind if isinstance(kind, tuple) else (kind,))


#: Per wire position, the exact types its value may have (None: any). Exact, not isinstance: JSON
#: gives exact types, a bool is refused where an int is wanted, and one set lookup per field costs
#: a fraction of two isinstance calls (a view decodes every row of the cluster: issue 14).
_WIRE_TYPES = tuple(_exact_types(_ROW_TYPES[name]) if name in _ROW_TYPES else None for name in ROW_FIELDS)


def row_from_wire(values: list[Any]) -> LogRow:
    if not isinstance(values, list) or len(values) != len(ROW_FIELDS):
        raise EventLogError(f"a row must be a list of {len(ROW_FIELDS)} values")
    for name, allowed, value in zip(ROW_FIELDS, _WIRE_TYPES, values, strict=True):
        if allowed is not None and type(value) not in allowed:
            raise EventLogError(f"a row's {name} has the wrong type ({type(value).__name__})")
    (
        log_id, cluster_id, topic, partition, offset, record_key, data_type, row_count, status,
        consumer_id, error, produced_ms, received_ms, started_ms, completed_ms, size_bytes,
        payload_json, result, key_base64, headers, headers_truncated, value,
    ) = values  # fmt: skip
    # Positional, in LogRow's field order (backend/pipeline.py LOG_ROW_FIELDS, checked by a test).
    return LogRow(
        log_id, cluster_id, topic, partition, offset, record_key, data_type, row_count, status,
        consumer_id, error, produced_ms, received_ms, started_ms, completed_ms, size_bytes,
        None, result, payload_json, False, None, key_base64, headers or [], bool(headers_truncated),
        None if value is None else base64.b64decode(value, validate=True),
    )  # fmt: skip


def encode_rows(worker_id: str, consumer_id: str, rows: list[LogRow]) -> list[bytes]:
    """The values of the records carrying ``rows``: one, or several of about TARGET_EVENT_RECORD_BYTES.

    All of them go in the same transaction as the batch's offsets, so a view sees all or none.
    """
    values: list[bytes] = []
    chunk: list[bytes] = []
    size = 0
    for row in rows:
        encoded = orjson.dumps(row_to_wire(row))
        if chunk and size + len(encoded) > TARGET_EVENT_RECORD_BYTES:
            values.append(_rows_value(worker_id, consumer_id, chunk))
            chunk, size = [], 0
        chunk.append(encoded)
        size += len(encoded)
    if chunk:
        values.append(_rows_value(worker_id, consumer_id, chunk))
    return values


def _rows_value(worker_id: str, consumer_id: str, encoded_rows: list[bytes]) -> bytes:
    head = orjson.dumps({"v": VERSION, "worker": worker_id, "consumer": consumer_id})
    return head[:-1] + b',"rows":[' + b",".join(encoded_rows) + b"]}"


# --- reports and commands --------------------------------------------------------------------


def encode_consumer(report: ConsumerReport) -> bytes:
    return orjson.dumps({"v": VERSION, **report.__dict__})


def encode_worker(report: WorkerReport) -> bytes:
    return orjson.dumps({"v": VERSION, **report.__dict__})


def encode_command(command: Command) -> bytes:
    return orjson.dumps({"v": VERSION, **command.__dict__})


def headers_for(kind: str) -> list[tuple[str, bytes]]:
    """The record headers naming an events-topic record's kind."""
    return [(KIND_HEADER, kind.encode())]


# --- reading ---------------------------------------------------------------------------------


def kind_of(headers: list[tuple[str, bytes | None]] | None) -> str | None:
    for key, value in headers or ():
        if key == KIND_HEADER and value is not None:
            return value.decode("utf-8", "replace")
    return None


def decode_entry(headers: list[tuple[str, bytes | None]] | None, value: bytes | None) -> Entry:
    """One events-topic record; EventLogError when it is not one this version writes."""
    kind = kind_of(headers)
    data = _object(value)
    try:
        if kind == ROWS:
            rows = [row_from_wire(values) for values in data["rows"]]
            return RowsEntry(str(data["worker"]), str(data["consumer"]), rows)
        if kind == CONSUMER:
            return _checked_consumer(ConsumerReport(**_fields(data, ConsumerReport)))
        if kind == WORKER:
            return _checked_worker(WorkerReport(**_fields(data, WorkerReport)))
    except (KeyError, TypeError, ValueError) as exc:
        raise EventLogError(f"unreadable {kind} record: {exc}") from None
    raise EventLogError(f"unknown record kind {kind!r}")


def decode_command(value: bytes | None) -> Command:
    data = _object(value)
    try:
        command = Command(**_fields(data, Command))
    except TypeError as exc:
        raise EventLogError(f"unreadable command: {exc}") from None
    if command.op not in (START, STOP) or not command.consumer_id:
        raise EventLogError(f"unknown command {str(command.op)[:40]!r}")
    if not isinstance(command.consumer_id, str) or not isinstance(command.request_id, str):
        raise EventLogError("a command's consumer_id and request_id must be strings")
    if command.worker_id is not None and not isinstance(command.worker_id, str):
        raise EventLogError("a command's worker_id must be a string")
    return command


def _checked_consumer(report: ConsumerReport) -> ConsumerReport:
    """Refuse a report whose fields a view would trip on (hostile or buggy writers)."""
    if not all(isinstance(v, str) for v in (report.consumer_id, report.worker_id, report.status)):
        raise EventLogError("a consumer report's consumer_id, worker_id and status must be strings")
    if not isinstance(report.partitions, dict) or not all(
        isinstance(name, str)
        and isinstance(pair, list)
        and len(pair) == 2
        and all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in pair)
        for name, pair in report.partitions.items()
    ):
        raise EventLogError("a consumer report's partitions must map names to [position, log end]")
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in (report.processed, report.failed)):
        raise EventLogError("a consumer report's counters must be whole numbers")
    return report


def _checked_worker(report: WorkerReport) -> WorkerReport:
    if not isinstance(report.worker_id, str) or not isinstance(report.status, str):
        raise EventLogError("a worker report's worker_id and status must be strings")
    if not isinstance(report.consumers, list) or not all(isinstance(c, str) for c in report.consumers):
        raise EventLogError("a worker report's consumers must be a list of names")
    return report


def _object(value: bytes | None) -> dict[str, Any]:
    if not value:
        raise EventLogError("empty record")
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise EventLogError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise EventLogError("not a JSON object")
    if type(data.get("v")) is not int or data.get("v") != VERSION:  # true == 1 in Python
        raise EventLogError(f"written by another version ({data.get('v')!r}; this one reads {VERSION})")
    return data


def _fields(data: dict[str, Any], cls: type) -> dict[str, Any]:
    """The keys of ``data`` that ``cls`` has (a newer writer may add fields)."""
    names = cls.__dataclass_fields__  # type: ignore[attr-defined]
    return {key: value for key, value in data.items() if key in names}
