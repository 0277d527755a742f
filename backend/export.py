"""CSV exports of stored records: one row per record, written as it is read (bounded memory).

One module for both ways out: the REST route ``GET /api/analytics/logs/export`` streams
:func:`csv_chunks` over HTTP, and the dashboard writes :func:`cells` into a file (local) or
passes on the rows it reads from that route (attached), so both give the same file.

The columns are the contract's log fields (``backend.wire.LogBody``) and the payload:
``headers`` is the contract's list as JSON text (record order, repeated names kept),
``payload`` the decoded payload as JSON text. Every text cell that a spreadsheet would run as a
formula (``=``, ``+``, ``-``, ``@``, tab, carriage return first) is written with a leading ``'``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from typing import Any

from backend import wire
from backend.store import LogRow

#: The export's columns, in order: the contract's log fields, then the payload.
COLUMNS: list[str] = [*wire.LogBody.model_fields, "payload"]
#: Records per chunk of a streamed export (a chunk is one write to the HTTP answer).
CHUNK_ROWS = 500

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def defuse(value: Any) -> Any:
    """Text a spreadsheet would run as a formula, quoted with ``'`` (CSV formula injection)."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def cells(row: LogRow) -> list[Any]:
    """One record's CSV cells, in :data:`COLUMNS` order."""
    body = row.to_api()
    body["headers"] = json.dumps(body["headers"], ensure_ascii=False)
    body["payload"] = None if row.payload is None else json.dumps(row.payload, ensure_ascii=False)
    return [defuse(body[name]) for name in COLUMNS]


def csv_chunks(rows: Iterable[LogRow], chunk_rows: int = CHUNK_ROWS) -> Iterator[str]:
    """The CSV text of these records, header first, a chunk of ``chunk_rows`` records at a time."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    pending = 0
    for row in rows:
        writer.writerow(cells(row))
        pending += 1
        if pending >= chunk_rows:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            pending = 0
    yield buffer.getvalue()
