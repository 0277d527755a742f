"""A Kafka record's own metadata as the contract shows it: key, headers, kept value bytes.

Keys, header values and values are bytes; the contract shows bytes that are UTF-8 as text and
any others as base64 (``key`` / ``keyBase64``, ``value`` / ``valueBase64``), so nothing a
producer sent is lost or mangled by a replacement character. Headers keep their record order
and repeated names (tracing and routing headers often repeat).

What is kept is bounded: every list of logs reads the headers, so a hostile producer's megabytes
of headers are cut at ``MAX_HEADERS_CHARS`` (``headersTruncated``), and an undecodable value
keeps at most ``MAX_KEPT_VALUE_BYTES`` (``valueTruncated``), enough to recognise a format by
its first bytes (magic bytes, schema ids) without storing whole binary blobs.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

#: The stored headers' JSON text is cut (whole headers, in order) at this many characters.
MAX_HEADERS_CHARS = 16_384
#: An undecodable value keeps this many of its first bytes.
MAX_KEPT_VALUE_BYTES = 65_536

RawHeaders = Iterable[tuple[str, bytes | None]]


def utf8_or_none(data: bytes) -> str | None:
    """The bytes as text when they are valid UTF-8, else None."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def key_fields(key: bytes | None) -> tuple[str | None, str | None]:
    """(``key``, ``keyBase64``): the key as text, or (None, base64) when it is not UTF-8.

    Runs for every record: ASCII (nearly every key) is checked in C before any UTF-8 decoding.
    """
    if key is None:
        return None, None
    if key.isascii():
        return key.decode("ascii"), None
    text = utf8_or_none(key)
    return (text, None) if text is not None else (None, b64(key))


def header_entry(name: str, value: bytes | None) -> dict[str, Any]:
    """``{"key", "value"}``, or ``{"key", "valueBase64"}`` when the value is not UTF-8."""
    if value is None:
        return {"key": name, "value": None}
    if value.isascii():
        return {"key": name, "value": value.decode("ascii")}
    text = utf8_or_none(value)
    return {"key": name, "value": text} if text is not None else {"key": name, "valueBase64": b64(value)}


def header_entries(headers: RawHeaders | None) -> tuple[list[dict[str, Any]], bool]:
    """The headers in record order as the contract's entries, and whether some were left out.

    Headers are kept whole, in order, while their JSON text stays within about MAX_HEADERS_CHARS
    (counted without JSON escapes: this runs for every record, and the bound is about hostile
    producers, not about the exact character).
    """
    entries: list[dict[str, Any]] = []
    if not headers:
        return entries, False
    chars = 2  # the brackets
    for name, value in headers or ():
        entry = header_entry(str(name), value)
        chars += len(entry["key"]) + len(entry.get("value") or entry.get("valueBase64") or "") + _ENTRY_CHARS
        if chars > MAX_HEADERS_CHARS:
            return entries, True
        entries.append(entry)
    return entries, False


#: What one entry adds to the names and the value: '{"key": "", "valueBase64": ""}, '.
_ENTRY_CHARS = 32


def kept_value(value: bytes | None) -> bytes | None:
    """The first MAX_KEPT_VALUE_BYTES of a value (None for a null or empty one)."""
    return value[:MAX_KEPT_VALUE_BYTES] if value else None
