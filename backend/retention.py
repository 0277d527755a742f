"""Bounded disk: per-minute aggregates that keep counters and trends exact, and pruning (RETENTION).

Every stored log is also counted in ``log_minutes``, one row per (minute of receipt, topic, status,
dataType): how many records, their data rows, their processing latency (count, sum, max) and the
last receipt time. The store updates it in the same transaction as the inserts, one UPSERT per
group of a batch (a poll batch of 500 records on one topic is one or two statements, not 500).

Pruning deletes old logs and their payloads, never their aggregates. It first moves the
*watermark* (``meta.kept_from_ms``, always a whole minute) and then deletes the rows below it in
small transactions, so the pipeline's commits wait at most one small DELETE. Readers combine the
two sources at the watermark (backend/analytics.py): rows from it on, aggregates before it. A
query therefore never counts a record twice or misses one, even while a prune is half done;
before the watermark its times are resolved to the minute. Counters are loaded from the
aggregates at open, so they stay exact when the rows they counted are gone.

A database written before aggregates existed (or by an older version that did not keep them) is
reconciled at open: when the aggregates after the watermark do not add up to the rows there, they
are rebuilt from the rows, once, in one transaction.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from backend.config import Retention
from backend.events import FAILED, PROCESSED

if TYPE_CHECKING:
    from backend.store import LogRow, Store

log = logging.getLogger(__name__)

MINUTE_MS = 60_000
KEPT_FROM_KEY = "kept_from_ms"
#: Rows deleted per transaction: ~5-10 ms of holding the write lock (measured beside a writer, 2 cores).
PRUNE_BATCH = 300
#: A pause between two deleting transactions, so waiting writers get the lock first.
PRUNE_PAUSE_S = 0.005
#: How often the background pruner looks for logs past RETENTION.
PRUNE_INTERVAL_S = 10.0

AGGREGATES = """
CREATE TABLE IF NOT EXISTS log_minutes (
    minute_ms      INTEGER NOT NULL,
    topic          TEXT NOT NULL,
    status         TEXT NOT NULL,
    data_type      TEXT NOT NULL,
    messages       INTEGER NOT NULL,
    rows           INTEGER NOT NULL,
    latency_count  INTEGER NOT NULL,
    latency_sum_ms INTEGER NOT NULL,
    latency_max_ms INTEGER,
    last_ms        INTEGER NOT NULL,
    PRIMARY KEY (minute_ms, topic, status, data_type)
) WITHOUT ROWID
"""
_COLUMNS = (
    "minute_ms, topic, status, data_type, messages, rows, latency_count, latency_sum_ms, "
    "latency_max_ms, last_ms"
)
_UPSERT = f"""
INSERT INTO log_minutes ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (minute_ms, topic, status, data_type) DO UPDATE SET
    messages = messages + excluded.messages,
    rows = rows + excluded.rows,
    latency_count = latency_count + excluded.latency_count,
    latency_sum_ms = latency_sum_ms + excluded.latency_sum_ms,
    latency_max_ms = MAX(COALESCE(latency_max_ms, excluded.latency_max_ms),
                         COALESCE(excluded.latency_max_ms, latency_max_ms)),
    last_ms = MAX(last_ms, excluded.last_ms)
"""
_REBUILD = f"""
INSERT INTO log_minutes ({_COLUMNS})
SELECT (received_ms / {MINUTE_MS}) * {MINUTE_MS}, topic, status, data_type, COUNT(*), SUM(row_count),
       COUNT(completed_ms), COALESCE(SUM(MAX(completed_ms - received_ms, 0)), 0),
       MAX(MAX(completed_ms - received_ms, 0)), MAX(received_ms)
FROM log_rows WHERE received_ms >= ? GROUP BY 1, 2, 3, 4
"""


def minute(ms: int) -> int:
    """The start of the minute ``ms`` falls in (as SQLite's integer division computes it)."""
    return int(ms / MINUTE_MS) * MINUTE_MS


# --- aggregates ------------------------------------------------------------------------------


def prepare(connection: sqlite3.Connection) -> None:
    """Create ``log_minutes`` and make it add up to the rows after the watermark (see module doc)."""
    connection.execute(AGGREGATES)
    kept_from = watermark(connection)
    rows = connection.execute(
        "SELECT COUNT(*) FROM log_rows WHERE received_ms >= ?", (kept_from,)
    ).fetchone()[0]
    counted = connection.execute(
        "SELECT COALESCE(SUM(messages), 0) FROM log_minutes WHERE minute_ms >= ?", (kept_from,)
    ).fetchone()[0]
    if rows == counted:
        return
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.execute("DELETE FROM log_minutes WHERE minute_ms >= ?", (kept_from,))
        connection.execute(_REBUILD, (kept_from,))
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    log.info("store: per-minute aggregates built from %d stored logs (was %d)", rows, counted)


def add(cursor: sqlite3.Cursor, stored: Iterable[tuple[LogRow, str]]) -> None:
    """Count rows just inserted (each with the status it was stored with): one UPSERT per group."""
    groups: dict[tuple[int, str, str, str], list[int | None]] = {}
    for row, status in stored:
        key = (minute(row.received_ms), row.topic, status, row.data_type)
        group = groups.setdefault(key, [0, 0, 0, 0, None, row.received_ms])
        group[0] += 1  # type: ignore[operator]
        group[1] += row.row_count  # type: ignore[operator]
        if row.completed_ms is not None:
            latency = max(row.completed_ms - row.received_ms, 0)
            group[2] += 1  # type: ignore[operator]
            group[3] += latency  # type: ignore[operator]
            group[4] = latency if group[4] is None else max(group[4], latency)
        group[5] = max(group[5], row.received_ms)  # type: ignore[type-var]
    if groups:
        cursor.executemany(_UPSERT, [(*key, *values) for key, values in groups.items()])


def stored_counts(connection: sqlite3.Connection) -> tuple[int, int]:
    """(processed, failed) over every log ever stored, pruned ones included."""
    counts = dict(
        connection.execute("SELECT status, SUM(messages) FROM log_minutes GROUP BY status").fetchall()
    )
    return counts.get(PROCESSED, 0), counts.get(FAILED, 0)


def watermark(connection: sqlite3.Connection) -> int:
    """Logs received before this (a whole minute, epoch ms) may have been pruned; 0: none were."""
    row = connection.execute("SELECT value FROM meta WHERE key = ?", (KEPT_FROM_KEY,)).fetchone()
    return int(row[0]) if row else 0


# --- pruning ---------------------------------------------------------------------------------


def cutoff(connection: sqlite3.Connection, policy: Retention, now_ms: int) -> int:
    """The whole minute before which logs are past ``policy`` (0: none are).

    By count, the newest ``max_count`` logs are kept, and the rest of the minute the oldest kept
    one falls in: pruning works in whole minutes, the aggregates' resolution.
    """
    if policy.max_age_ms is not None:
        return max(minute(now_ms - policy.max_age_ms), 0)
    assert policy.max_count is not None
    kept_from = watermark(connection)
    kept = connection.execute(
        "SELECT COALESCE(SUM(messages), 0) FROM log_minutes WHERE minute_ms >= ?", (kept_from,)
    ).fetchone()[0]
    if kept <= policy.max_count:  # the cheap answer, from the aggregates: nothing to prune
        return 0
    row = connection.execute(
        "SELECT received_ms FROM log_rows ORDER BY received_ms DESC LIMIT 1 OFFSET ?",
        (policy.max_count - 1,),
    ).fetchone()
    return minute(row[0]) if row else 0


def prune(store: Store, policy: Retention, now_ms: int, stop: threading.Event | None = None) -> int:
    """Delete the logs past ``policy`` (and their payloads) in small transactions; how many.

    The watermark moves first, in its own transaction: from then on readers take that history
    from the aggregates, so deleting the rows below it changes no count.
    """
    with store.read() as db:
        target = cutoff(db, policy, now_ms)
        kept_from = watermark(db)
    if target > kept_from:
        with store._transaction() as cursor:
            cursor.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (KEPT_FROM_KEY, str(target))
            )
        kept_from = target
    deleted = 0
    while kept_from and not (stop is not None and stop.is_set()):
        count = _delete_batch(store, kept_from)
        if not count:
            break
        deleted += count
        time.sleep(PRUNE_PAUSE_S)  # pacing, not synchronisation: let a waiting writer in first
    if deleted:
        log.info("store: pruned %d logs received before %d (RETENTION)", deleted, kept_from)
    return deleted


def _delete_batch(store: Store, kept_from: int) -> int:
    """Delete up to PRUNE_BATCH rows received before ``kept_from``, with their payloads."""
    with store._transaction() as cursor:
        found = cursor.execute(
            "SELECT rowid, log_id, apart FROM log_rows WHERE received_ms < ? LIMIT ?",
            (kept_from, PRUNE_BATCH),
        ).fetchall()
        if not found:
            return 0
        apart = [(log_id,) for _, log_id, is_apart in found if is_apart]
        if apart:
            cursor.executemany("DELETE FROM payloads WHERE log_id = ?", apart)
        cursor.executemany("DELETE FROM log_rows WHERE rowid = ?", [(rowid,) for rowid, _, _ in found])
        store._rows_since_checkpoint += len(found)  # deletions fill the WAL like inserts
    return len(found)


class Pruner:
    """The background thread that applies RETENTION every PRUNE_INTERVAL_S (first at start)."""

    def __init__(self, store: Store, policy: Retention, interval_s: float = PRUNE_INTERVAL_S) -> None:
        self.store = store
        self.policy = policy
        self.interval_s = interval_s
        self.rounds = 0  # completed prunes (tests wait for it)
        self.pruned = 0  # logs deleted so far
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="store-retention", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current batch (at most one small transaction)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _run(self) -> None:
        problem: str | None = None
        while not self._stop.is_set():
            try:
                self.pruned += prune(self.store, self.policy, int(time.time() * 1000), self._stop)
                problem = None
            except (sqlite3.Error, RuntimeError) as exc:  # StoreUnavailable: retried next round
                if str(exc) != problem:
                    log.warning("store: pruning failed (will retry): %s", exc)
                problem = str(exc)
            self.rounds += 1
            self._stop.wait(self.interval_s)
