"""The store: one SQLite database in WAL mode holding one row per Kafka record.

Only final outcomes (PROCESSED or FAILED) are written, a poll batch per
transaction; the row is keyed by ``log_id``, which is derived from
cluster/topic/partition/offset, so a redelivered record can never be stored
or counted twice. Offsets are committed to Kafka only after this returns.
Counters are kept in memory, loaded from the rows at open and advanced by the
inserts that actually happened, so they are exact and survive restarts.
Records received but not yet stored are tracked in memory (``in_flight``).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend import wire
from backend.events import FAILED, PROCESSED

log = logging.getLogger(__name__)

#: The checkpoint thread looks this often whether the WAL should be copied into the database file:
#: when this many rows were stored since the last copy, or any row and the copy is this old. Each
#: copy ends with an fsync; ~2,000 rows are a few MB of WAL, about SQLite's own 1,000-page default.
CHECKPOINT_CHECK_S = 1.0
CHECKPOINT_ROWS = 2_000
CHECKPOINT_MAX_AGE_S = 30.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS logs (
    log_id        TEXT PRIMARY KEY,
    cluster_id    TEXT NOT NULL,
    topic         TEXT NOT NULL,
    partition     INTEGER NOT NULL,
    "offset"      INTEGER NOT NULL,
    record_key    TEXT,
    data_type     TEXT NOT NULL,
    row_count     INTEGER NOT NULL,
    status        TEXT NOT NULL,
    consumer_id   TEXT,
    error         TEXT,
    produced_ms   INTEGER,
    received_ms   INTEGER NOT NULL,
    started_ms    INTEGER,
    completed_ms  INTEGER,
    size_bytes    INTEGER,
    payload       TEXT,
    result        TEXT,
    UNIQUE (cluster_id, topic, partition, "offset")
);
CREATE INDEX IF NOT EXISTS logs_by_time ON logs (received_ms);
CREATE INDEX IF NOT EXISTS logs_by_topic ON logs (topic, received_ms);
CREATE INDEX IF NOT EXISTS logs_by_status ON logs (status, received_ms);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

LOG_COLUMNS = (
    'log_id, cluster_id, topic, partition, "offset", record_key, data_type, row_count, status, '
    "consumer_id, error, produced_ms, received_ms, started_ms, completed_ms, size_bytes, payload, result"
)


@dataclass(slots=True)
class LogRow:
    """One processed Kafka record, as stored (``payload_json``: the payload's JSON text, when known)."""

    log_id: str
    cluster_id: str
    topic: str
    partition: int
    offset: int
    record_key: str | None
    data_type: str
    row_count: int
    status: str
    consumer_id: str | None
    error: str | None
    produced_ms: int | None
    received_ms: int
    started_ms: int | None
    completed_ms: int | None
    size_bytes: int | None
    payload: Any = None
    result: Any = None
    payload_json: str | None = None

    def to_api(self, with_payload: bool = False) -> dict[str, Any]:
        """The contract's log object (REST and dashboard): :class:`backend.wire.LogBody`, or
        :class:`backend.wire.LogDetailBody` ``with_payload``."""
        data = wire.log_body(
            self.log_id, self.topic, self.partition, self.offset, self.data_type, self.row_count,
            self.status, self.consumer_id, self.error, self.received_ms, self.started_ms,
            self.completed_ms, self.produced_ms, self.record_key, self.size_bytes,
        )  # fmt: skip
        if with_payload:
            data["payload"] = self.payload
            data["result"] = self.result
        return data


@dataclass(frozen=True)
class Counts:
    """The counters behind stats-updated."""

    total: int
    processed: int
    failed: int


def _to_json(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(value, ensure_ascii=False, default=str)


def _from_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _row(values: tuple[Any, ...]) -> LogRow:
    *head, payload, result = values
    return LogRow(*head, payload=_from_json(payload), result=_from_json(result))


class Store:
    """SQLite in WAL mode; one writer connection behind a lock, one reader per thread."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "dashboard.sqlite3"
        self._write_lock = threading.Lock()
        self._writer = self._connect()
        self._writer.executescript(SCHEMA)
        self._local = threading.local()
        self._count_lock = threading.Lock()
        self._processed, self._failed = self._load_counts()
        self._in_flight: set[str] = set()
        # Checkpoints (copying the WAL into the database, with an fsync) are taken by a thread of
        # their own, not by whichever commit crosses SQLite's 1,000-page mark: there a consumer
        # stalled ~17-21 ms once every thousand pages (measured: commit p99.9 16.9 ms -> 0.5 ms).
        self._writer.execute("PRAGMA wal_autocheckpoint=0")
        self._stop_checkpoints = threading.Event()
        self._rows_since_checkpoint = 0  # written under the write lock; read as a hint
        self.checkpoints = 0  # how many were taken (tests wait for it)
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="store-checkpoint", daemon=True
        )
        self._checkpointer.start()

    def _checkpoint_loop(self) -> None:
        connection = self._connect()
        try:
            last = time.monotonic()
            while not self._stop_checkpoints.wait(CHECKPOINT_CHECK_S):
                rows = self._rows_since_checkpoint
                old = time.monotonic() - last >= CHECKPOINT_MAX_AGE_S
                if rows < CHECKPOINT_ROWS and not (rows and old):
                    continue
                # PASSIVE never waits for the writer or readers; what it cannot copy waits a turn.
                try:
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:
                    log.warning("store checkpoint failed (will retry): %s", exc)
                    continue
                with self._write_lock:
                    self._rows_since_checkpoint -= rows
                self.checkpoints += 1
                last = time.monotonic()
        finally:
            connection.close()

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA busy_timeout=30000")
        return connection

    def _reader(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._connect()
            connection.execute("PRAGMA query_only=1")
            self._local.connection = connection
        return connection

    def _load_counts(self) -> tuple[int, int]:
        counts = dict(self._writer.execute("SELECT status, COUNT(*) FROM logs GROUP BY status").fetchall())
        return counts.get(PROCESSED, 0), counts.get(FAILED, 0)

    def close(self) -> None:
        self._stop_checkpoints.set()
        self._checkpointer.join(10)
        with self._write_lock:
            self._writer.close()  # the last connection to close checkpoints and removes the WAL itself

    # --- writing -------------------------------------------------------------------------------

    def mark_in_flight(self, log_ids: Iterable[str]) -> None:
        """Records were received and are not stored yet: they count in totalMessages."""
        with self._count_lock:
            self._in_flight.update(log_ids)

    def forget_in_flight(self, log_ids: Iterable[str]) -> None:
        """Records whose processing was abandoned (a lost partition); they will come again."""
        with self._count_lock:
            self._in_flight.difference_update(log_ids)

    def known(self, log_ids: Iterable[str]) -> set[str]:
        """Which of these records are stored already (redeliveries to skip)."""
        ids = list(log_ids)
        found: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._reader().execute(f"SELECT log_id FROM logs WHERE log_id IN ({marks})", chunk)
            found.update(row[0] for row in rows)
        return found

    def save(self, rows: list[LogRow]) -> list[bool]:
        """Store outcomes in one transaction; per row, whether it was new (False: already stored).

        The common case (no row stored before) is one executemany; only when the
        change count shows a duplicate does it look up which rows were new.
        """
        if not rows:
            return []
        sql = f"INSERT OR IGNORE INTO logs ({LOG_COLUMNS}) VALUES ({','.join('?' * 18)})"
        with self._write_lock:
            cursor = self._writer.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            try:
                present = self._present_locked(cursor, rows)
                before = self._writer.total_changes
                cursor.executemany(sql, [self._values(row) for row in rows if row.log_id not in present])
                added = self._writer.total_changes - before
                cursor.execute("COMMIT")
                self._rows_since_checkpoint += added
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
        inserted = [row.log_id not in present for row in rows]
        if added != sum(inserted):  # duplicates inside the batch itself; cannot happen with Kafka offsets
            raise RuntimeError(f"store: expected {sum(inserted)} new rows, wrote {added}")
        self._count(rows, inserted)
        return inserted

    @staticmethod
    def _present_locked(cursor: sqlite3.Cursor, rows: list[LogRow]) -> set[str]:
        """Which rows are stored already, read inside the write transaction (so it stays true)."""
        present: set[str] = set()
        for start in range(0, len(rows), 500):
            chunk = [row.log_id for row in rows[start : start + 500]]
            marks = ",".join("?" * len(chunk))
            present.update(
                r[0] for r in cursor.execute(f"SELECT log_id FROM logs WHERE log_id IN ({marks})", chunk)
            )
        return present

    @staticmethod
    def _values(row: LogRow) -> tuple[Any, ...]:
        return (
            row.log_id, row.cluster_id, row.topic, row.partition, row.offset, row.record_key,
            row.data_type, row.row_count, row.status, row.consumer_id, row.error, row.produced_ms,
            row.received_ms, row.started_ms, row.completed_ms, row.size_bytes,
            row.payload_json if row.payload_json is not None else _to_json(row.payload), _to_json(row.result),
        )  # fmt: skip

    def _count(self, rows: list[LogRow], inserted: list[bool]) -> None:
        with self._count_lock:
            for row, new in zip(rows, inserted, strict=True):
                self._in_flight.discard(row.log_id)
                if new and row.status == PROCESSED:
                    self._processed += 1
                elif new:
                    self._failed += 1

    def set_meta(self, key: str, value: str) -> None:
        with self._write_lock:
            self._writer.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def get_meta(self, key: str) -> str | None:
        row = self._reader().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    # --- reading -------------------------------------------------------------------------------

    def counts(self) -> Counts:
        """Exact totals: stored outcomes plus records in flight."""
        with self._count_lock:
            stored = self._processed + self._failed
            return Counts(stored + len(self._in_flight), self._processed, self._failed)

    def logs(
        self,
        limit: int = 50,
        status: str | None = None,
        topic: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        text: str | None = None,
        offset: int = 0,
    ) -> list[LogRow]:
        """Stored logs, newest first, filtered; ``text`` searches the payload and the error."""
        where, params = self._filters(status, topic, since_ms, until_ms, text)
        sql = (
            f"SELECT {LOG_COLUMNS} FROM logs {where} "
            'ORDER BY received_ms DESC, partition DESC, "offset" DESC LIMIT ? OFFSET ?'
        )
        rows = self._reader().execute(sql, [*params, int(limit), int(offset)]).fetchall()
        return [_row(values) for values in rows]

    def count_logs(
        self,
        status: str | None = None,
        topic: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        text: str | None = None,
    ) -> int:
        """How many stored logs match the same filters as :meth:`logs`."""
        where, params = self._filters(status, topic, since_ms, until_ms, text)
        return self._reader().execute(f"SELECT COUNT(*) FROM logs {where}", params).fetchone()[0]

    @staticmethod
    def _filters(
        status: str | None, topic: str | None, since_ms: int | None, until_ms: int | None, text: str | None
    ) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        for clause, value in (
            ("status = ?", status),
            ("topic = ?", topic),
            ("received_ms >= ?", since_ms),
            ("received_ms < ?", until_ms),
        ):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        if text:
            clauses.append("(instr(lower(payload), lower(?)) > 0 OR instr(lower(error), lower(?)) > 0)")
            params.extend([text, text])
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", params

    def log(self, log_id: str) -> LogRow | None:
        """One stored log with its payload."""
        sql = f"SELECT {LOG_COLUMNS} FROM logs WHERE log_id = ?"
        values = self._reader().execute(sql, (log_id,)).fetchone()
        return _row(values) if values else None

    def topics(self) -> list[str]:
        """Every topic that has stored logs."""
        return [row[0] for row in self._reader().execute("SELECT DISTINCT topic FROM logs ORDER BY topic")]

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read-only connection for the analytics queries (backend/analytics.py)."""
        yield self._reader()
