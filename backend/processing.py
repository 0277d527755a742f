"""Decode, validate and process one Kafka record; never raises.

The outcome of every record is a :class:`Outcome`: the data type and row count
we decided, the decoded payload, the processor's result, or a readable error.
Bad input is an outcome like any other, so a consumer thread never dies on it
and never stalls the partition behind it.

What one record may become is bounded (:class:`Limits`) and checked while decoding, before
anything is stored: a 1 MB CSV whose rows repeat long column names would otherwise become a
gigabyte of JSON that the store refuses for ever. The producer API asks the same question up
front (:func:`check_producible`), so a record it accepts is one the consumers can process.

A null value is a tombstone (a delete in a compacted topic): processed, with no rows, and not
given to the user processor. Binary values (not UTF-8, or with NUL bytes: no JSON or CSV text has
them) and text that is neither JSON nor CSV go to the DESERIALIZER when one is set; what it
returns is processed like a decoded JSON value.
"""

from __future__ import annotations

import base64
import csv
import datetime
import decimal
import importlib
import io
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain, compress
from typing import Any

import orjson

from backend.config import ConfigError, Settings
from backend.events import CSV_BATCH, DECLARED_TYPES, SINGLE_MESSAGE, TOMBSTONE

log = logging.getLogger(__name__)

Processor = Callable[["DecodedRecord"], Any]
#: The record's headers as Kafka gives them: (name, bytes or None), in record order.
RawHeaders = Sequence[tuple[str, bytes | None]]
#: DESERIALIZER: (value, headers) -> a value processed like decoded JSON; raises when it cannot.
Deserializer = Callable[[bytes, RawHeaders], Any]
MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class Limits:
    """What one record may become; over any of these it fails with a readable error.

    - ``max_decoded_chars``: the JSON text a row stores (payload + processor result). 16 MiB by
      default: the widest plausible expansion of a 1 MiB CSV (one-character values under
      ten-character names) is ~10x, while the issue's poison CSV expands ~1,000x, and a 16 MiB
      row still reads back in a fraction of a second.
    - ``max_csv_columns`` (1,000) and ``max_column_name_chars`` (256): far above real tables
      (spreadsheets and databases stop at a few hundred columns; SQL names at 63-128 characters),
      and every row repeats every name, so they bound the expansion before any row is read.
    - ``max_csv_rows`` (100,000): each row becomes a dict of ~200+ bytes in memory; 100,000 rows
      is ~10 bytes a row in a 1 MiB message, so only degenerate tables reach it.
    - ``max_json_depth`` (64): deeper documents are machine-made; 64 keeps every recursive reader
      (user processors, the dashboard, ``json``) far from Python's recursion limit (~1,000).
    """

    max_message_bytes: int = 1_048_576
    max_decoded_chars: int = 16 * 1_048_576
    max_csv_columns: int = 1_000
    max_column_name_chars: int = 256
    max_csv_rows: int = 100_000
    max_json_depth: int = 64

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_message_bytes=settings.max_message_bytes,
            max_decoded_chars=settings.decoded_limit,
            max_csv_columns=settings.max_csv_columns,
            max_column_name_chars=settings.max_column_name_chars,
            max_csv_rows=settings.max_csv_rows,
            max_json_depth=settings.max_json_depth,
        )


def as_limits(limits: Limits | int) -> Limits:
    """A bare number is the message size limit with the other limits at their defaults."""
    return limits if isinstance(limits, Limits) else Limits(max_message_bytes=limits)


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


def decode(
    value: bytes | None,
    headers: dict[str, str],
    limits: Limits | int,
    deserializer: Deserializer | None = None,
    raw_headers: RawHeaders = (),
) -> tuple[str, int, Any, str | None]:
    """Decide (dataType, rowCount, payload, JSON text) from the data-type header, else from the content.

    The JSON text is what the store keeps for the payload: the record's own text for JSON, the
    rows serialised once here for CSV (after the size estimate passed, never before). Values
    that are binary, or text that is neither JSON nor CSV, go to ``deserializer`` when one is
    given and no data-type header declares the record JSON or CSV.
    """
    limits = as_limits(limits)
    if value is None or len(value) == 0:
        raise DecodeError("empty message")
    if len(value) > limits.max_message_bytes:
        raise DecodeError(f"message too large: {len(value)} bytes (limit {limits.max_message_bytes})")
    declared = headers.get("data-type", "").strip().upper()
    if declared and declared not in DECLARED_TYPES:
        raise DecodeError(f"unknown data-type header {declared[:40]!r}")
    deserializer = None if declared else deserializer
    text, binary = _as_text(value, hint=deserializer is None and not declared)
    if text is None:
        if deserializer is None:
            raise DecodeError(binary)
        return deserialize(value, raw_headers, deserializer, limits)
    if text.isspace():  # never empty here: as ``not text.strip()``, without copying the text
        raise DecodeError("empty message (only white space)")
    if declared == CSV_BATCH:
        return _csv_outcome(text, limits)
    if declared == SINGLE_MESSAGE or looks_like_json(text):
        payload = parse_json(text, limits)
        return SINGLE_MESSAGE, len(payload) if isinstance(payload, list) else 1, payload, text
    try:
        return _csv_outcome(text, limits)
    except CsvFormatError as exc:
        if deserializer is not None:
            return deserialize(value, raw_headers, deserializer, limits)
        raise DecodeError(f"neither JSON nor CSV with a header row: {exc}") from None


_BINARY_HINT = "; set DESERIALIZER to decode binary values"


def _as_text(value: bytes, hint: bool) -> tuple[str | None, str]:
    """The value as text, or (None, why it is binary): not UTF-8, or with a NUL byte.

    No JSON or CSV text holds a NUL, while binary formats nearly always do (Confluent's Avro and
    Protobuf framing starts with one); Python's csv module accepts NULs, so without this rule an
    Avro record could be read as a one-column CSV table.
    """
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not valid UTF-8 (byte {exc.start}){_BINARY_HINT if hint else ''}"
    nul = value.find(0)
    if nul >= 0:
        return (
            None,
            f"binary value: byte {nul} is NUL, so it is not JSON or CSV text{_BINARY_HINT if hint else ''}",
        )
    return text, ""


def deserialize(
    value: bytes, raw_headers: RawHeaders, deserializer: Deserializer, limits: Limits
) -> tuple[str, int, Any, str | None]:
    """Run the DESERIALIZER; its value, made JSON, is a SINGLE_MESSAGE (an array: one row per item).

    Avro and Protobuf decoders return bytes, dates, decimals and UUIDs, which JSON lacks: they
    become base64, ISO-8601 and decimal text (:func:`_json_default`). The payload is the JSON
    text read back, so a processor sees exactly what the store keeps.
    """
    try:
        decoded = deserializer(value, list(raw_headers))
    except Exception as exc:  # the plugin point: any error is the record's failure, not ours
        log.debug("deserializer failed", exc_info=True)
        raise DecodeError(f"DESERIALIZER failed: {_error_text(exc)}") from None
    try:
        text = json.dumps(decoded, ensure_ascii=False, allow_nan=False, default=_json_default)
    except (ValueError, TypeError, RecursionError) as exc:
        raise DecodeError(f"DESERIALIZER returned a value that is not JSON: {_error_text(exc)}") from None
    payload = parse_json(text, limits)
    return SINGLE_MESSAGE, len(payload) if isinstance(payload, list) else 1, payload, text


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)  # exact: a float would round it
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)  # UUIDs, enums: their text


def _csv_outcome(text: str, limits: Limits) -> tuple[str, int, Any, str | None]:
    rows = parse_csv(text, limits)
    payload_json = json.dumps(rows, ensure_ascii=False)  # what the store would write, built once
    if len(payload_json) > limits.max_decoded_chars:
        raise LimitExceeded(_too_big("CSV", len(payload_json), limits))
    return CSV_BATCH, len(rows), rows, payload_json


def _too_big(what: str, chars: int, limits: Limits) -> str:
    return (
        f"{what} too large once decoded: {chars:,} characters of JSON, "
        f"the limit is {limits.max_decoded_chars:,} (MAX_DECODED_CHARS)"
    )


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


def parse_json(text: str, limits: Limits | None = None) -> Any:
    """Strict JSON (no NaN/Infinity), with the position of the first error, within the limits."""
    limits = limits or Limits()
    if len(text) > limits.max_decoded_chars:
        raise LimitExceeded(_too_big("JSON", len(text), limits))
    try:
        payload = _loads(text)
    except json.JSONDecodeError as exc:
        raise DecodeError(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise DecodeError("invalid JSON: nested too deeply") from None
    except DecodeError:
        raise
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits (sys.int_info)
        raise DecodeError(f"invalid JSON: {str(exc)[:120]}") from None
    _check_depth(text, payload, limits.max_json_depth)
    return payload


def _loads(text: str) -> Any:
    """The stdlib's strict decoding, through orjson wherever orjson gives exactly the same value.

    Decoding is on every record's path in the workers; orjson takes ~1 us for a small object where
    the stdlib takes ~5. The two disagree in a few places, and there the stdlib decides: orjson
    turns integers beyond 64 bits into floats (so text with a run of 19 digits goes to the stdlib
    at once), and refuses what the stdlib accepts (``1e400``, lone surrogates ``"\\ud800"``,
    nesting past 1,024). So anything orjson refuses is decoded again by the stdlib, which accepts
    it or fails with its own message, as before.
    """
    if _LONG_DIGITS.search(text) is None:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return _STRICT_JSON.decode(text)


#: A number orjson might not read exactly: past 64 bits an integer has at least 19 digits.
_LONG_DIGITS = re.compile(r"[0-9]{19}")


def _check_depth(text: str, payload: Any, limit: int) -> None:
    """Refuse documents nested deeper than ``limit``.

    Counting brackets is a C-speed scan; only a document with more opening brackets than the
    limit can be too deep, and only those (arrays of many objects, mostly) are walked.
    """
    if text.count("[") + text.count("{") <= limit:
        return
    if json_depth(payload, limit) > limit:
        raise DecodeError(f"invalid JSON: nested too deeply (more than {limit} levels, MAX_JSON_DEPTH)")


def json_depth(value: Any, stop_after: int) -> int:
    """Nesting depth of decoded JSON (a scalar is 0), counted no further than ``stop_after`` + 1.

    Level by level with C-level iterators only (``map``/``compress``/``chain``): a Python loop
    over every container cost ~1 us each, 4x the decoding of an array of small objects.
    """
    depth = 0
    level: list[Any] = [value]
    while depth <= stop_after:
        types = list(map(type, level))
        dicts = compress(level, map(_IS_DICT, types))
        lists = compress(level, map(_IS_LIST, types))
        level = list(chain(chain.from_iterable(map(dict.values, dicts)), chain.from_iterable(lists)))
        if not any(map(_IS_CONTAINER, types)):
            return depth
        depth += 1
    return depth


_IS_DICT = frozenset({dict}).__contains__
_IS_LIST = frozenset({list}).__contains__
_IS_CONTAINER = frozenset({dict, list}).__contains__


def _reject_constant(name: str) -> Any:
    raise DecodeError(f"invalid JSON: {name} is not allowed")


_STRICT_JSON = json.JSONDecoder(parse_constant=_reject_constant)


class LimitExceeded(DecodeError):
    """The record is well formed but would become more than a limit allows (the producer API: 413)."""


class CsvFormatError(DecodeError):
    """The text is not a CSV table (as opposed to a table over a limit)."""


def parse_csv(text: str, limits: Limits | None = None) -> list[dict[str, str]]:
    """A CSV document with a header row as a list of row dicts; ragged, empty or over a limit is an error.

    The limits are checked as the rows are read, so a table that would decode to gigabytes
    fails after its header or after the first rows that cross the limit, not after building it.
    """
    limits = limits or Limits()
    try:
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        header = _csv_header(next((row for row in reader if row), None), limits)
        return _csv_rows(reader, header, limits)
    except csv.Error as exc:
        raise CsvFormatError(f"malformed CSV: {exc}") from None


def _csv_header(first: list[str] | None, limits: Limits) -> list[str]:
    if first is None:
        raise CsvFormatError("CSV has no header row")
    if len(first) > limits.max_csv_columns:
        raise LimitExceeded(
            f"CSV has {len(first):,} columns: at most {limits.max_csv_columns:,} are allowed "
            "(MAX_CSV_COLUMNS)"
        )
    header = [name.strip() for name in first]
    longest = max(map(len, header))
    if longest > limits.max_column_name_chars:
        raise LimitExceeded(
            f"CSV has {len(header):,} columns whose names are up to {longest:,} characters: column names "
            f"are limited to {limits.max_column_name_chars:,} characters (MAX_COLUMN_NAME_CHARS)"
        )
    if any(not name for name in header):
        raise CsvFormatError("CSV header has an empty column name")
    if len(set(header)) != len(header):
        raise CsvFormatError("CSV header repeats a column name")
    return header


def _csv_rows(reader: Iterator[list[str]], header: list[str], limits: Limits) -> list[dict[str, str]]:
    """The data rows as dicts, stopping at the first row over a limit.

    Every row's JSON repeats every column name: ``{"name": "value", ...}`` costs at least the
    names plus 8 characters a column (quotes, colon, separators) before any value, so
    ``rows * per_row`` is a lower bound of the payload's JSON that costs one addition a row.
    """
    width = len(header)
    per_row = sum(map(len, header)) + 8 * width
    max_rows = min(limits.max_csv_rows, max(limits.max_decoded_chars // per_row, 1))
    rows: list[dict[str, str]] = []
    for row in reader:
        if not row:
            continue
        if len(row) != width:
            raise CsvFormatError(f"CSV row {len(rows) + 2} has {len(row)} fields, the header has {width}")
        if len(rows) == max_rows:
            raise LimitExceeded(_too_many_rows(len(rows), header, per_row, limits))
        rows.append(dict(zip(header, row, strict=True)))
    if not rows:
        raise CsvFormatError("CSV has a header row but no data rows")
    return rows


def _too_many_rows(count: int, header: list[str], per_row: int, limits: Limits) -> str:
    if count >= limits.max_csv_rows:
        return f"CSV has more than {limits.max_csv_rows:,} rows (MAX_CSV_ROWS)"
    longest = max(map(len, header))
    return (
        f"CSV too large once decoded: {len(header):,} columns whose names are up to {longest:,} characters "
        f"make each row at least {per_row:,} characters of JSON, so {count + 1:,} rows are over the limit "
        f"of {limits.max_decoded_chars:,} (MAX_DECODED_CHARS)"
    )


def load_plugin(spec: str | None, variable: str) -> Callable[..., Any] | None:
    """Import ``package.module:function`` named by ``variable``; ConfigError naming it if that fails."""
    if not spec:
        return None
    module_name, _, attr = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:  # ImportError, AttributeError, or the module's own error on import
        raise ConfigError(f"{variable}={spec!r} cannot be loaded: {_error_text(exc)}") from None
    if not callable(function):
        raise ConfigError(f"{variable}={spec!r} is not callable")
    return function


def load_processor(spec: str | None) -> Processor | None:
    """Import the PROCESSOR setting."""
    return load_plugin(spec, "PROCESSOR")


def load_deserializer(spec: str | None) -> Deserializer | None:
    """Import the DESERIALIZER setting."""
    return load_plugin(spec, "DESERIALIZER")


def decode_record(
    value: bytes | None,
    headers: dict[str, str],
    limits: Limits | int,
    deserializer: Deserializer | None = None,
    raw_headers: RawHeaders = (),
) -> Outcome:
    """Decode one record's value; a decoding problem becomes an error outcome.

    A null value (not an empty one) is a tombstone: PROCESSED, no rows.
    """
    if value is None:
        return Outcome(TOMBSTONE, 0)
    try:
        data_type, row_count, payload, payload_json = decode(
            value, headers, limits, deserializer, raw_headers
        )
    except DecodeError as exc:
        declared = headers.get("data-type", "").strip().upper()
        fallback = declared if declared in DECLARED_TYPES else SINGLE_MESSAGE
        return Outcome(fallback, 0, error=str(exc))
    return Outcome(data_type, row_count, payload, payload_json=payload_json)


def check_producible(value: bytes, data_type: str | None, limits: Limits | int) -> str | None:
    """Why the consumers would fail this record on decoding, or None: for the producer API.

    The same decoding the consumers do, so a record accepted up front is one they can process
    (a processor's own errors and result size can only be known when it runs).
    """
    headers = {"data-type": data_type} if data_type else {}
    return decode_record(value, headers, limits).error


def apply_processor(
    decoded: Outcome,
    processor: Processor | None,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    headers: dict[str, str],
) -> Outcome:
    """Run the user processor on a decoded record; its exceptions become the record's error.

    Tombstones are not given to it: they have no value, and the contract has them PROCESSED.
    """
    if processor is None or not decoded.ok or decoded.data_type == TOMBSTONE:
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


def limit_result(outcome: Outcome, limits: Limits) -> Outcome:
    """Fail a record whose processor result cannot be stored: not JSON, or payload + result too large.

    Left to the store, such a result would fail the whole batch on every retry. Measuring it
    serialises the result once more; results are small in practice, and none is the default.
    """
    if outcome.result is None:
        return outcome
    try:
        result_chars = len(json.dumps(outcome.result, ensure_ascii=False, default=str))
    except (ValueError, TypeError, RecursionError) as exc:  # a circular or too deep result
        outcome.error, outcome.result = f"processor result is not JSON: {_error_text(exc)}", None
        return outcome
    chars = result_chars + len(outcome.payload_json or "")
    if chars > limits.max_decoded_chars:
        outcome.result = None
        outcome.error = (
            f"processor result too large: payload and result would be {chars:,} characters of JSON, "
            f"the limit is {limits.max_decoded_chars:,} (MAX_DECODED_CHARS)"
        )
    return outcome


def _text(key: bytes | None) -> str | None:
    return None if key is None else key.decode("utf-8", errors="replace")


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:MAX_ERROR_CHARS]
