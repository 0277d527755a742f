"""The analytical queries behind the dashboard: trends, failure groups, latency, payload fields.

Together with ``store.py`` this is the only module that holds SQL. Every query
reads through :meth:`Store.read` (a read-only connection) and returns plain
rows (dicts) that the dashboard turns into tables and charts; pages never see
SQL. Times are epoch milliseconds; a bucket is a width in milliseconds, and a
row's bucket is the start of the bucket its ``received_ms`` falls in.

Payload fields are read with SQLite's JSON functions: ``json_each`` over a
JSON object (a single message) or over the rows of a CSV batch (an array of
objects whose values are text), so a numeric column of a CSV file can be
charted like a number in a JSON message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from backend.events import FAILED, PROCESSED
from backend.store import Store

# Fixed expressions for the latency kinds; never built from user input.
LATENCY_KINDS = {
    "processing": ("completed_ms - received_ms", "received_ms"),
    "end_to_end": ("completed_ms - produced_ms", "produced_ms"),
}

# A JSON value that is a number, or CSV text that spells one (CSV values are text).
_NUMERIC = (
    "(j.type IN ('integer', 'real') OR (j.type = 'text' AND length(trim(j.value)) BETWEEN 1 AND 40 "
    "AND trim(j.value) NOT GLOB '*[^0-9.eE+-]*' AND trim(j.value) GLOB '*[0-9]*'))"
)
_SQL_PARAM_CHUNK = 500


def _range(
    since_ms: int | None, until_ms: int | None, topics: Sequence[str] | None, column: str = "received_ms"
) -> tuple[str, list[Any]]:
    """WHERE clauses (joined with AND, starting with AND) for a time range and a topic list."""
    clauses: list[str] = []
    params: list[Any] = []
    if since_ms is not None:
        clauses.append(f"{column} >= ?")
        params.append(int(since_ms))
    if until_ms is not None:
        clauses.append(f"{column} < ?")
        params.append(int(until_ms))
    if topics:
        clauses.append(f"topic IN ({','.join('?' * len(topics))})")
        params.extend(topics)
    return "".join(f" AND {clause}" for clause in clauses), params


def _dicts(cursor: Any) -> list[dict[str, Any]]:
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def time_bounds(store: Store) -> tuple[int | None, int | None]:
    """The received time of the oldest and of the newest stored record."""
    with store.read() as db:
        first, last = db.execute("SELECT MIN(received_ms), MAX(received_ms) FROM logs").fetchone()
    return first, last


def throughput(store: Store, since_ms: int, bucket_ms: int = 1000) -> list[dict[str, Any]]:
    """Outcomes per bucket of completion time and status: {bucket, status, count}."""
    sql = (
        "SELECT (completed_ms / ?) * ? AS bucket, status, COUNT(*) AS count FROM logs "
        "WHERE received_ms >= ? AND completed_ms >= ? GROUP BY bucket, status ORDER BY bucket"
    )
    # received_ms bounds the scan through its index; completion comes after receipt.
    params = [bucket_ms, bucket_ms, int(since_ms) - 60_000, int(since_ms)]
    with store.read() as db:
        return _dicts(db.execute(sql, params))


def volume(
    store: Store,
    bucket_ms: int,
    since_ms: int | None = None,
    until_ms: int | None = None,
    topics: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Records and data rows per bucket, topic and status: {bucket, topic, status, messages, rows}."""
    where, params = _range(since_ms, until_ms, topics)
    sql = (
        "SELECT (received_ms / ?) * ? AS bucket, topic, status, COUNT(*) AS messages, "
        f"SUM(row_count) AS rows FROM logs WHERE 1 = 1 {where} "
        "GROUP BY bucket, topic, status ORDER BY bucket, topic, status"
    )
    with store.read() as db:
        return _dicts(db.execute(sql, [bucket_ms, bucket_ms, *params]))


def failure_rate(
    store: Store,
    bucket_ms: int,
    since_ms: int | None = None,
    until_ms: int | None = None,
    topics: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Per bucket: {bucket, total, failed, rate} where rate is failed / total (0..1)."""
    where, params = _range(since_ms, until_ms, topics)
    sql = (
        "SELECT (received_ms / ?) * ? AS bucket, COUNT(*) AS total, "
        f"SUM(status = '{FAILED}') AS failed, AVG(status = '{FAILED}') AS rate "
        f"FROM logs WHERE 1 = 1 {where} GROUP BY bucket ORDER BY bucket"
    )
    with store.read() as db:
        return _dicts(db.execute(sql, [bucket_ms, bucket_ms, *params]))


def latency(
    store: Store,
    bucket_ms: int,
    kind: str = "processing",
    since_ms: int | None = None,
    until_ms: int | None = None,
    topics: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Latency percentiles (nearest rank) per bucket: {bucket, count, p50, p90, p99, max} in ms.

    ``processing`` is received → completed in the consumer; ``end_to_end`` is
    the record's Kafka timestamp (set by its producer) → completed.
    """
    expression, required = LATENCY_KINDS[kind]
    where, params = _range(since_ms, until_ms, topics)
    sql = f"""
        WITH d AS (
            SELECT (received_ms / ?) * ? AS bucket, MAX({expression}, 0) AS ms FROM logs
            WHERE completed_ms IS NOT NULL AND {required} IS NOT NULL {where}
        ), r AS (
            SELECT bucket, ms, ROW_NUMBER() OVER (PARTITION BY bucket ORDER BY ms) AS rn,
                   COUNT(*) OVER (PARTITION BY bucket) AS n
            FROM d
        )
        SELECT bucket, MAX(n) AS count,
               MIN(CASE WHEN rn >= (n * 50 + 99) / 100 THEN ms END) AS p50,
               MIN(CASE WHEN rn >= (n * 90 + 99) / 100 THEN ms END) AS p90,
               MIN(CASE WHEN rn >= (n * 99 + 99) / 100 THEN ms END) AS p99,
               MAX(ms) AS max
        FROM r GROUP BY bucket ORDER BY bucket
    """
    with store.read() as db:
        return _dicts(db.execute(sql, [bucket_ms, bucket_ms, *params]))


def top_errors(
    store: Store,
    limit: int = 20,
    since_ms: int | None = None,
    until_ms: int | None = None,
    topics: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """The most frequent exact error texts: {error, count, topics, first_ms, last_ms}."""
    where, params = _range(since_ms, until_ms, topics)
    sql = (
        "SELECT error, COUNT(*) AS count, GROUP_CONCAT(DISTINCT topic) AS topics, "
        "MIN(received_ms) AS first_ms, MAX(received_ms) AS last_ms "
        f"FROM logs WHERE status = '{FAILED}' {where} "
        "GROUP BY error ORDER BY count DESC, last_ms DESC LIMIT ?"
    )
    with store.read() as db:
        return _dicts(db.execute(sql, [*params, int(limit)]))


def topic_summary(store: Store, since_ms: int | None = None) -> list[dict[str, Any]]:
    """Per topic: {topic, total, processed, failed, rows, last_ms}, busiest first."""
    where, params = _range(since_ms, None, None)
    sql = (
        f"SELECT topic, COUNT(*) AS total, SUM(status = '{PROCESSED}') AS processed, "
        f"SUM(status = '{FAILED}') AS failed, SUM(row_count) AS rows, MAX(received_ms) AS last_ms "
        f"FROM logs WHERE 1 = 1 {where} GROUP BY topic ORDER BY total DESC, topic"
    )
    with store.read() as db:
        return _dicts(db.execute(sql, params))


# --- failure groups ----------------------------------------------------------------------------

_NUMBER = re.compile(r"(?<![\w.-])\d+(?:\.\d+)?")  # standalone numbers: UTF-8 stays UTF-8
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def error_pattern(error: str | None) -> str:
    """An error text with its particulars (numbers, quoted values) blanked, to group alike errors."""
    text = (error or "(no error text)").strip()
    return _NUMBER.sub("#", _QUOTED.sub("'…'", text))


@dataclass
class ErrorGroup:
    """Failed records whose errors differ only in particulars (positions, values)."""

    pattern: str
    count: int = 0
    retriable: int = 0
    first_ms: int | None = None
    last_ms: int | None = None
    topics: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    example: str = ""


def error_groups(store: Store, max_errors: int = 5000) -> list[ErrorGroup]:
    """Failed records grouped by error pattern, largest group first.

    ``retriable`` counts the records whose decoded payload is stored, which is
    what a retry can send again.
    """
    sql = (
        "SELECT error, topic, COUNT(*) AS count, SUM(payload IS NOT NULL) AS retriable, "
        "MIN(received_ms) AS first_ms, MAX(received_ms) AS last_ms "
        f"FROM logs WHERE status = '{FAILED}' GROUP BY error, topic ORDER BY count DESC LIMIT ?"
    )
    with store.read() as db:
        rows = _dicts(db.execute(sql, [int(max_errors)]))
    groups: dict[str, ErrorGroup] = {}
    for row in rows:
        pattern = error_pattern(row["error"])
        group = groups.setdefault(pattern, ErrorGroup(pattern, example=row["error"] or ""))
        group.count += row["count"]
        group.retriable += row["retriable"] or 0
        group.topics.add(row["topic"])
        if row["error"] not in group.errors:
            group.errors.append(row["error"])
        group.first_ms = min(filter(None, (group.first_ms, row["first_ms"])), default=None)
        group.last_ms = max(filter(None, (group.last_ms, row["last_ms"])), default=None)
    return sorted(groups.values(), key=lambda g: (-g.count, -(g.last_ms or 0)))


def failed_records(store: Store, errors: Iterable[str | None], limit: int = 200) -> list[dict[str, Any]]:
    """The newest failed records with one of these exact errors (no payloads; see Store.log)."""
    wanted = list(errors)
    texts = [error for error in wanted if error is not None]
    with_null = any(error is None for error in wanted)
    found: list[dict[str, Any]] = []
    columns = (
        'log_id, topic, partition, "offset", data_type, row_count, consumer_id, error, received_ms, '
        "payload IS NOT NULL AS retriable"
    )
    with store.read() as db:
        for start in range(0, max(len(texts), 1), _SQL_PARAM_CHUNK):
            chunk = texts[start : start + _SQL_PARAM_CHUNK]
            clauses = []
            if chunk:
                clauses.append(f"error IN ({','.join('?' * len(chunk))})")
            if with_null and start == 0:
                clauses.append("error IS NULL")
            if not clauses:
                break
            sql = (
                f"SELECT {columns} FROM logs WHERE status = '{FAILED}' AND ({' OR '.join(clauses)}) "
                "ORDER BY received_ms DESC LIMIT ?"
            )
            found.extend(_dicts(db.execute(sql, [*chunk, int(limit)])))
    found.sort(key=lambda row: row["received_ms"], reverse=True)
    return found[:limit]


# --- numeric payload fields --------------------------------------------------------------------


def _payload_values(where: str) -> str:
    """(received_ms, key, value) for every top-level field of a JSON object payload and of every
    row of a CSV batch (an array of objects), restricted to numbers."""
    return f"""
        SELECT l.received_ms AS received_ms, j.key AS key, CAST(j.value AS REAL) AS value
        FROM logs AS l, json_each(l.payload) AS j
        WHERE l.payload IS NOT NULL AND json_type(l.payload) = 'object' AND {_NUMERIC} {where}
        UNION ALL
        SELECT l.received_ms, j.key, CAST(j.value AS REAL)
        FROM logs AS l, json_each(l.payload) AS r, json_each(r.value) AS j
        WHERE l.payload IS NOT NULL AND json_type(l.payload) = 'array' AND r.type = 'object'
              AND {_NUMERIC} {where}
    """


def numeric_fields(
    store: Store,
    since_ms: int | None = None,
    until_ms: int | None = None,
    topics: Sequence[str] | None = None,
    sample: int = 2000,
) -> list[dict[str, Any]]:
    """Top-level numeric payload fields among the newest ``sample`` records: {field, count}."""
    where, params = _range(since_ms, until_ms, topics, column="l.received_ms")
    where = where.replace("topic IN", "l.topic IN")
    sql = f"""
        WITH recent AS (
            SELECT log_id FROM logs AS l WHERE l.status = '{PROCESSED}' {where}
            ORDER BY l.received_ms DESC LIMIT ?
        ), v AS ({_payload_values("AND l.log_id IN (SELECT log_id FROM recent)")})
        SELECT key AS field, COUNT(*) AS count FROM v WHERE key IS NOT NULL
        GROUP BY key ORDER BY count DESC, key LIMIT 200
    """
    with store.read() as db:
        return _dicts(db.execute(sql, [*params, int(sample)]))


def field_series(
    store: Store,
    name: str,
    bucket_ms: int,
    since_ms: int | None = None,
    until_ms: int | None = None,
    topics: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One numeric payload field per bucket: {bucket, count, sum, mean, min, max}.

    Counts every value of the field: a CSV batch of 100 rows contributes 100 values.
    """
    where, params = _range(since_ms, until_ms, topics, column="l.received_ms")
    where = where.replace("topic IN", "l.topic IN")
    values = _payload_values(f"AND j.key = ? AND l.status = '{PROCESSED}' {where}")
    sql = f"""
        SELECT (received_ms / ?) * ? AS bucket, COUNT(value) AS count, SUM(value) AS sum,
               AVG(value) AS mean, MIN(value) AS min, MAX(value) AS max
        FROM ({values}) GROUP BY bucket ORDER BY bucket
    """
    args = [bucket_ms, bucket_ms, name, *params, name, *params]
    with store.read() as db:
        return _dicts(db.execute(sql, args))
