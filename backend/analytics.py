"""The analytical queries behind the dashboard: trends, failure groups, latency, payload fields.

Together with ``store.py`` this is the only module that holds SQL. Every query
reads through :meth:`Store.read` (a read-only connection) and returns plain
rows (dicts) that the dashboard turns into tables and charts; pages never see
SQL. Times are epoch milliseconds; a bucket is a width in milliseconds, and a
row's bucket is the start of the bucket its ``received_ms`` falls in.

Counts and trends (throughput, volume, failure rate, topic summary, time bounds)
stay exact when RETENTION prunes old logs: each query reads, in one snapshot,
the stored rows from the watermark on and the per-minute aggregates before it
(backend/retention.py); before the watermark, times are resolved to the minute.
Latency percentiles, errors and payload fields need the rows themselves, so
they cover only the kept logs: :func:`kept_from` says since when.

Payload fields are read with SQLite's JSON functions: ``json_tree`` over a
JSON object (a single message; nested objects give paths such as ``a.b.c``)
or over the rows of a CSV batch (an array of objects whose values are text),
so a numeric column of a CSV file can be charted like a number in a JSON
message. Values inside arrays are left out (``items[0].price`` is no field).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from backend.events import FAILED, PROCESSED
from backend.retention import watermark
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
#: numeric_fields reads at most this many records (the newest of the range), and says so when the
#: range holds more: a bound on the time one query takes on a big store (~1 s for 20,000 small JSON
#: records on the 2 shared cores measured; json_tree costs ~10-20 µs a record).
MAX_FIELD_RECORDS = 20_000


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


@contextmanager
def _snapshot(store: Store) -> Iterator[tuple[sqlite3.Connection, int]]:
    """A read transaction and the watermark in it: a prune between two reads cannot skew a count."""
    with store.read() as db:
        db.execute("BEGIN")
        try:
            yield db, watermark(db)
        finally:
            db.execute("COMMIT")  # a read transaction: nothing to keep or undo


def _counted(
    kept_from: int, since_ms: int | None, until_ms: int | None, topics: Sequence[str] | None
) -> tuple[str, list[Any]]:
    """Rows (t, topic, status, data_type, messages, rows, last_ms): one per kept log from
    ``kept_from`` on, one per aggregate (a minute, topic, status and dataType) before it."""
    kept_where, kept_params = _range(since_ms, until_ms, topics)
    old_where, old_params = _range(since_ms, until_ms, topics, column="minute_ms")
    sql = f"""
        SELECT received_ms AS t, topic, status, data_type, 1 AS messages, row_count AS rows,
               received_ms AS last_ms
        FROM log_rows WHERE received_ms >= ? {kept_where}
        UNION ALL
        SELECT minute_ms, topic, status, data_type, messages, rows, last_ms
        FROM log_minutes WHERE minute_ms < ? {old_where}
    """
    return sql, [kept_from, *kept_params, kept_from, *old_params]


def kept_from(store: Store) -> int | None:
    """Logs received before this were pruned (RETENTION); None when none were.

    Latency percentiles, errors and payload fields come from kept logs only: a chart of them over
    an earlier range says so.
    """
    with store.read() as db:
        return watermark(db) or None


def time_bounds(store: Store) -> tuple[int | None, int | None]:
    """The received time of the oldest and of the newest record ever stored (pruned ones: their
    minute)."""
    sql = """
        SELECT MIN(first), MAX(last) FROM (
            SELECT MIN(received_ms) AS first, MAX(received_ms) AS last FROM log_rows WHERE received_ms >= ?
            UNION ALL
            SELECT MIN(minute_ms), MAX(last_ms) FROM log_minutes WHERE minute_ms < ?
        )
    """
    with _snapshot(store) as (db, kept):
        first, last = db.execute(sql, (kept, kept)).fetchone()
    return first, last


def throughput(store: Store, since_ms: int, bucket_ms: int = 1000) -> list[dict[str, Any]]:
    """Outcomes per bucket of completion time and status: {bucket, status, count}.

    Pruned history is counted per minute of receipt (completion times are gone with the rows).
    """
    sql = """
        SELECT (t / ?) * ? AS bucket, status, SUM(messages) AS count FROM (
            SELECT completed_ms AS t, status, 1 AS messages FROM log_rows
            WHERE received_ms >= ? AND completed_ms >= ?
            UNION ALL
            SELECT minute_ms, status, messages FROM log_minutes WHERE minute_ms < ? AND minute_ms >= ?
        ) GROUP BY bucket, status ORDER BY bucket
    """
    since = int(since_ms)
    with _snapshot(store) as (db, kept):
        # received_ms bounds the scan through its index; completion comes after receipt.
        params = [bucket_ms, bucket_ms, max(since - 60_000, kept), since, kept, since]
        return _dicts(db.execute(sql, params))


def volume(
    store: Store,
    bucket_ms: int,
    since_ms: int | None = None,
    until_ms: int | None = None,
    topics: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Records and data rows per bucket, topic, status and data type:
    {bucket, topic, status, data_type, messages, rows} (tombstones are their own data type)."""
    with _snapshot(store) as (db, kept):
        counted, params = _counted(kept, since_ms, until_ms, topics)
        sql = (
            "SELECT (t / ?) * ? AS bucket, topic, status, data_type, SUM(messages) AS messages, "
            f"SUM(rows) AS rows FROM ({counted}) GROUP BY bucket, topic, status, data_type "
            "ORDER BY bucket, topic, status, data_type"
        )
        return _dicts(db.execute(sql, [bucket_ms, bucket_ms, *params]))


def failure_rate(
    store: Store,
    bucket_ms: int,
    since_ms: int | None = None,
    until_ms: int | None = None,
    topics: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Per bucket: {bucket, total, failed, rate} where rate is failed / total (0..1)."""
    failed = f"SUM(CASE WHEN status = '{FAILED}' THEN messages ELSE 0 END)"
    with _snapshot(store) as (db, kept):
        counted, params = _counted(kept, since_ms, until_ms, topics)
        sql = (
            f"SELECT (t / ?) * ? AS bucket, SUM(messages) AS total, {failed} AS failed, "
            f"CAST({failed} AS REAL) / SUM(messages) AS rate "
            f"FROM ({counted}) GROUP BY bucket ORDER BY bucket"
        )
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
    the record's Kafka timestamp (set by its producer) → completed. Kept logs only (see
    :func:`kept_from`): a percentile cannot be rebuilt from per-minute sums.
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
    """The most frequent exact error texts: {error, count, topics, first_ms, last_ms} (kept logs)."""
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

    def of(status: str) -> str:
        return f"SUM(CASE WHEN status = '{status}' THEN messages ELSE 0 END)"

    with _snapshot(store) as (db, kept):
        counted, params = _counted(kept, since_ms, None, None)
        sql = (
            f"SELECT topic, SUM(messages) AS total, {of(PROCESSED)} AS processed, {of(FAILED)} AS failed, "
            f"SUM(rows) AS rows, MAX(last_ms) AS last_ms FROM ({counted}) "
            "GROUP BY topic ORDER BY total DESC, topic"
        )
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


#: A field's name: a top-level key as it is ("unit price"), a nested one as its JSON path without
#: the "$." ("a.b.c", quoted where needed: 'a."b c"'). Never built from user input.
_FIELD = "CASE WHEN j.path = '$' THEN j.key ELSE substr(j.fullkey, 3) END"
#: Not an element of an array, nor anything under one (arrays have no stable field names).
_NOT_IN_ARRAY = "typeof(j.key) = 'text' AND j.path NOT GLOB '*[[]*'"


def _payload_values(where: str) -> str:
    """(received_ms, key, value) for every numeric field, nested ones too, of a JSON object payload
    and of every row of a CSV batch (an array of objects)."""
    return f"""
        SELECT l.received_ms AS received_ms, {_FIELD} AS key, CAST(j.value AS REAL) AS value
        FROM logs AS l, json_tree(l.payload) AS j
        WHERE l.payload IS NOT NULL AND json_type(l.payload) = 'object' AND {_NUMERIC} AND {_NOT_IN_ARRAY}
              {where}
        UNION ALL
        SELECT l.received_ms, {_FIELD}, CAST(j.value AS REAL)
        FROM logs AS l, json_each(l.payload) AS r, json_tree(r.value) AS j
        WHERE l.payload IS NOT NULL AND json_type(l.payload) = 'array' AND r.type = 'object'
              AND {_NUMERIC} AND {_NOT_IN_ARRAY} {where}
    """


def numeric_fields(
    store: Store,
    since_ms: int | None = None,
    until_ms: int | None = None,
    topics: Sequence[str] | None = None,
    sample: int = MAX_FIELD_RECORDS,
) -> list[dict[str, Any]]:
    """Numeric payload fields of the processed records in range, most frequent first:
    {field, count, records, sampled}.

    ``count`` is exact: every value of the field (a CSV batch of 100 rows gives 100) in the
    ``records`` records read. Those are all of the range's kept records, or, when it holds more
    than ``sample``, its newest ``sample`` ones and ``sampled`` is true (say so beside the count).
    """
    where, params = _range(since_ms, until_ms, topics, column="l.received_ms")
    where = where.replace("topic IN", "l.topic IN")
    chosen = (
        f"SELECT log_id FROM log_rows AS l WHERE l.status = '{PROCESSED}' {where} "
        "ORDER BY l.received_ms DESC LIMIT ?"
    )
    sql = f"""
        WITH recent AS ({chosen}),
        v AS ({_payload_values("AND l.log_id IN (SELECT log_id FROM recent)")})
        SELECT key AS field, COUNT(*) AS count FROM v WHERE key IS NOT NULL
        GROUP BY key ORDER BY count DESC, key LIMIT 200
    """
    limit = max(int(sample), 1)
    with _snapshot(store) as (db, _):
        records = db.execute(f"SELECT COUNT(*) FROM ({chosen})", [*params, limit + 1]).fetchone()[0]
        rows = _dicts(db.execute(sql, [*params, limit]))
    sampled = records > limit
    for row in rows:
        row["records"] = min(records, limit)
        row["sampled"] = sampled
    return rows


def field_series(
    store: Store,
    name: str,
    bucket_ms: int,
    since_ms: int | None = None,
    until_ms: int | None = None,
    topics: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One numeric payload field (a name as :func:`numeric_fields` lists it) per bucket:
    {bucket, count, sum, mean, min, max}.

    Counts every value of the field: a CSV batch of 100 rows contributes 100 values. Kept logs
    only (see :func:`kept_from`).
    """
    where, params = _range(since_ms, until_ms, topics, column="l.received_ms")
    where = where.replace("topic IN", "l.topic IN")
    values = _payload_values(f"AND {_FIELD} = ? AND l.status = '{PROCESSED}' {where}")
    sql = f"""
        SELECT (received_ms / ?) * ? AS bucket, COUNT(value) AS count, SUM(value) AS sum,
               AVG(value) AS mean, MIN(value) AS min, MAX(value) AS max
        FROM ({values}) GROUP BY bucket ORDER BY bucket
    """
    args = [bucket_ms, bucket_ms, name, *params, name, *params]
    with store.read() as db:
        return _dicts(db.execute(sql, args))
