"""Formatting shared by the pages: times, durations, counts, status colours, tables."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import streamlit as st

from backend.events import ACTIVE, FAILED, INACTIVE, PROCESSED, PROCESSING, RECEIVED
from backend.store import LogRow

# Mid-tone colours that read on light and on dark backgrounds.
STATUS_COLORS = {
    PROCESSED: "#21a366",
    FAILED: "#e0454f",
    PROCESSING: "#e0882b",
    RECEIVED: "#3b82f6",
}
STATUS_ORDER = [PROCESSED, FAILED, PROCESSING, RECEIVED]
_TEXT_COLORS = {**STATUS_COLORS, ACTIVE: STATUS_COLORS[PROCESSED], INACTIVE: "#8b8b93"}


def _viewer_zone() -> ZoneInfo | None:
    """The browser's time zone (st.context), so tables show the viewer's wall clock like the charts."""
    if not st.runtime.exists():
        return None
    try:
        name = st.context.timezone
        return ZoneInfo(name) if name else None
    except Exception:  # no session (tests, scripts) or an unknown zone: the server's local time
        return None


def local_time(ms: int | None) -> datetime | None:
    """Epoch milliseconds as a naive datetime in the viewer's time zone."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, _viewer_zone()).replace(tzinfo=None)


def when(ms: int | None) -> str:
    """A compact local timestamp for text."""
    moment = local_time(ms)
    return "—" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def ago(ms: int | None, now_ms: int) -> str:
    """'3 s ago', '5 min ago', …"""
    if ms is None:
        return "never"
    seconds = max(0, (now_ms - ms) // 1000)
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:g} s"
    if seconds < 3600:
        return f"{seconds / 60:g} min"
    if seconds < 86400:
        return f"{seconds / 3600:g} h"
    return f"{seconds / 86400:g} d"


# Table columns (st.column_config's printf) written like count() and percent(), whatever the
# browser's locale: a metric reading "200,101" beside a cell reading "200000" looked like two numbers.
COUNT_FORMAT = "%,d"
PERCENT_FORMAT = "%.1f%%"  # of a share scaled to 0-100


def count(value: int | float | None) -> str:
    """1,234,567: every count has thousands separators."""
    return "—" if value is None else f"{value:,}"


def percent(value: float | None) -> str:
    """A share (0-1) with one decimal everywhere: 30.3%, 25.0%, 29.2% (the charts' ".1%")."""
    return "—" if value is None else f"{value * 100:.1f}%"


def status_style(value: Any) -> str:
    color = _TEXT_COLORS.get(str(value))
    return f"color: {color}; font-weight: 600" if color else ""


def styled_status(frame: pd.DataFrame, column: str = "status") -> Any:
    """A Styler that colours the status column (st.dataframe renders Stylers)."""
    if frame.empty or column not in frame:
        return frame
    return frame.style.map(status_style, subset=[column])


def payload_preview(payload: Any, limit: int = 120) -> str:
    """One line of a payload for a table cell (plain text; tables never render markup)."""
    if payload is None:
        return ""
    text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


LOG_COLUMNS = [
    "received",
    "topic",
    "partition",
    "offset",
    "key",
    "status",
    "error",
    "payload",
    "type",
    "rows",
    "consumer",
    "latency_ms",
    "log_id",
]


def logs_frame(rows: Iterable[LogRow], with_payload: bool = True) -> pd.DataFrame:
    """Stored logs as a table: one row per Kafka record, newest first as given."""
    records = []
    for row in rows:
        latency = row.completed_ms - row.received_ms if row.completed_ms and row.received_ms else None
        records.append(
            {
                "received": local_time(row.received_ms),
                "topic": row.topic,
                "partition": row.partition,
                "offset": str(row.offset),
                "key": key_cell(row.record_key, row.key_base64),
                "status": row.status,
                "type": row.data_type,
                "rows": row.row_count,
                "consumer": row.consumer_id,
                "latency_ms": latency,
                "error": row.error,
                "payload": _payload_cell(row) if with_payload else "",
                "log_id": row.log_id,
            }
        )
    return pd.DataFrame.from_records(records, columns=LOG_COLUMNS)


def _payload_cell(row: LogRow) -> str:
    """A big payload is stored apart and not read for lists: its stored preview stands in for it."""
    if row.stored_apart and row.payload is None:
        return payload_preview(row.payload_preview or "")
    return payload_preview(row.payload)


def key_cell(key: str | None, key_base64: str | None, limit: int = 24) -> str:
    """A record key for a table cell: its text, or ``base64:…`` (shortened) for a binary key."""
    if key is not None:
        return key
    if key_base64 is None:
        return ""
    shown = key_base64 if len(key_base64) <= limit else key_base64[: limit - 1] + "…"
    return "base64:" + shown


def headers_frame(headers: list[dict[str, Any]]) -> pd.DataFrame:
    """A record's headers as a table in record order (repeated names kept); binary values as base64."""
    rows = []
    for number, header in enumerate(headers, start=1):
        value = header.get("value")
        if "valueBase64" in header and header["valueBase64"] is not None:
            value = "base64:" + header["valueBase64"]
        rows.append({"#": number, "name": header.get("key", ""), "value": value})
    return pd.DataFrame.from_records(rows, columns=["#", "name", "value"])


#: The record detail shows at most this many of a kept value's bytes as a hex dump.
HEX_SHOWN_BYTES = 4096


def hex_dump(data: bytes, limit: int = HEX_SHOWN_BYTES) -> str:
    """``xxd``-like lines: offset, 16 bytes in hex, and the printable ASCII (others as ``.``).

    Plain text for st.code: the data never reaches markup, whatever bytes it holds.
    """
    lines = []
    for start in range(0, min(len(data), limit), 16):
        chunk = data[start : start + 16]
        hexed = " ".join(f"{b:02x}" for b in chunk)
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        lines.append(f"{start:08x}  {hexed:<47}  {text}")
    return "\n".join(lines)


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _defuse(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """CSV for download; text cells that a spreadsheet would run as a formula are quoted with '."""
    safe = frame.copy()
    for column in safe.columns:
        if safe[column].dtype == object or pd.api.types.is_string_dtype(safe[column]):
            safe[column] = safe[column].map(_defuse)
    return safe.to_csv(index=False).encode("utf-8")


def plural(number: int, noun: str, nouns: str | None = None) -> str:
    """'1 record', '2 records', '1,204 records'."""
    return f"{number:,} {noun if number == 1 else (nouns or noun + 's')}"


_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")


def plain(text: object) -> str:
    """Text (an exception's message, say) escaped for elements that render markdown."""
    return _MARKDOWN.sub(r"\\\1", " ".join(str(text).split()))
