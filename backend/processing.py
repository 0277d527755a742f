"""Decode, validate and process one Kafka record; never raises.

The outcome of every record is a :class:`Outcome`: the data type and row count
we decided, the decoded payload, the processor's result, or a readable error.
Bad input is an outcome like any other, so a consumer thread never dies on it
and never stalls the partition behind it.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from backend.events import CSV_BATCH, DATA_TYPES, SINGLE_MESSAGE

log = logging.getLogger(__name__)

Processor = Callable[["DecodedRecord"], Any]
MAX_ERROR_CHARS = 500


class DecodeError(ValueError):
    """The record's bytes are not a message we understand; the text is shown to users."""


@dataclass(frozen=True)
class DecodedRecord:
    """What a user processor receives: the record's place, its type and its decoded value."""

    topic: str
    partition: int
    offset: int
    key: str | None
    data_type: str
    row_count: int
    payload: Any
    headers: dict[str, str]


@dataclass(slots=True)
class Outcome:
    """How processing one record ended; ``payload_json`` is the payload as JSON text, when known."""

    data_type: str
    row_count: int
    payload: Any = None
    result: Any = None
    error: str | None = None
    payload_json: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def header_map(headers: Iterable[tuple[str, bytes | None]] | None) -> dict[str, str]:
    """Kafka headers as text, the last value winning; undecodable values are replaced."""
    result: dict[str, str] = {}
    for name, value in headers or ():
        result[str(name).lower()] = (value or b"").decode("utf-8", errors="replace")
    return result


def decode(value: bytes | None, headers: dict[str, str], max_bytes: int) -> tuple[str, int, Any, str | None]:
    """Decide (dataType, rowCount, payload, JSON text) from the data-type header, else from the content."""
    if value is None or len(value) == 0:
        raise DecodeError("empty message")
    if len(value) > max_bytes:
        raise DecodeError(f"message too large: {len(value)} bytes (limit {max_bytes})")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"not valid UTF-8 (byte {exc.start})") from None
    if not text.strip():
        raise DecodeError("empty message (only white space)")
    declared = headers.get("data-type", "").strip().upper()
    if declared and declared not in DATA_TYPES:
        raise DecodeError(f"unknown data-type header {declared[:40]!r}")
    if declared == CSV_BATCH:
        rows = parse_csv(text)
        return CSV_BATCH, len(rows), rows, None
    if declared == SINGLE_MESSAGE or looks_like_json(text):
        payload = parse_json(text)
        return SINGLE_MESSAGE, len(payload) if isinstance(payload, list) else 1, payload, text
    try:
        rows = parse_csv(text)
    except DecodeError as exc:
        raise DecodeError(f"neither JSON nor CSV with a header row: {exc}") from None
    return CSV_BATCH, len(rows), rows, None


def looks_like_json(text: str) -> bool:
    """JSON documents start with one of these; CSV text practically never does."""
    return (
        text.lstrip()[:1] in ("{", "[", '"') or text.strip() in ("true", "false", "null") or _is_number(text)
    )


def _is_number(text: str) -> bool:
    try:
        float(text.strip())
    except ValueError:
        return False
    return True


def parse_json(text: str) -> Any:
    """Strict JSON (no NaN/Infinity), with the position of the first error."""
    try:
        return _STRICT_JSON.decode(text)
    except json.JSONDecodeError as exc:
        raise DecodeError(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise DecodeError("invalid JSON: nested too deeply") from None
    except DecodeError:
        raise
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits (sys.int_info)
        raise DecodeError(f"invalid JSON: {str(exc)[:120]}") from None


def _reject_constant(name: str) -> Any:
    raise DecodeError(f"invalid JSON: {name} is not allowed")


_STRICT_JSON = json.JSONDecoder(parse_constant=_reject_constant)


def parse_csv(text: str) -> list[dict[str, str]]:
    """A CSV document with a header row as a list of row dicts; ragged or empty is an error."""
    try:
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        lines = [row for row in reader if row]
    except csv.Error as exc:
        raise DecodeError(f"malformed CSV: {exc}") from None
    if not lines:
        raise DecodeError("CSV has no header row")
    header = [name.strip() for name in lines[0]]
    if any(not name for name in header):
        raise DecodeError("CSV header has an empty column name")
    if len(set(header)) != len(header):
        raise DecodeError("CSV header repeats a column name")
    rows = lines[1:]
    if not rows:
        raise DecodeError("CSV has a header row but no data rows")
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise DecodeError(f"CSV row {number} has {len(row)} fields, the header has {len(header)}")
    return [dict(zip(header, row, strict=True)) for row in rows]


def load_processor(spec: str | None) -> Processor | None:
    """Import ``package.module:function`` (the PROCESSOR setting)."""
    if not spec:
        return None
    module_name, _, attr = spec.partition(":")
    function = getattr(importlib.import_module(module_name), attr)
    if not callable(function):
        raise TypeError(f"{spec} is not callable")
    return function


def decode_record(value: bytes | None, headers: dict[str, str], max_bytes: int) -> Outcome:
    """Decode one record's value; a decoding problem becomes an error outcome."""
    declared = headers.get("data-type", "").strip().upper()
    try:
        data_type, row_count, payload, payload_json = decode(value, headers, max_bytes)
    except DecodeError as exc:
        fallback = declared if declared in DATA_TYPES else SINGLE_MESSAGE
        return Outcome(fallback, 0, error=str(exc))
    return Outcome(data_type, row_count, payload, payload_json=payload_json)


def apply_processor(
    decoded: Outcome,
    processor: Processor | None,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    headers: dict[str, str],
) -> Outcome:
    """Run the user processor on a decoded record; its exceptions become the record's error."""
    if processor is None or not decoded.ok:
        return decoded
    record = DecodedRecord(
        topic, partition, offset, _text(key), decoded.data_type, decoded.row_count, decoded.payload, headers
    )
    try:
        result = processor(record)
    except Exception as exc:  # the plugin point: any error is the record's failure, not ours
        log.debug("processor failed for %s-%s@%s", topic, partition, offset, exc_info=True)
        decoded.error = _error_text(exc)
        return decoded
    decoded.result = result
    return decoded


def _text(key: bytes | None) -> str | None:
    return None if key is None else key.decode("utf-8", errors="replace")


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:MAX_ERROR_CHARS]
