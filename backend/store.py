"""The store: one SQLite database in WAL mode holding one row per Kafka record.

Only final outcomes (PROCESSED or FAILED) are written, a poll batch per
transaction; the row is keyed by ``log_id``, which is derived from
cluster/topic/partition/offset, so a redelivered record can never be stored
or counted twice. Offsets are committed to Kafka only after this returns.
Counters are kept in memory, loaded at open from the per-minute aggregates
(backend/retention.py, written in the same transaction as the rows) and advanced
by the inserts that actually happened, so they are exact, survive restarts and
survive the pruning of old logs (RETENTION).
Records received but not yet stored are tracked in memory (``in_flight``).

Layout (schema 3): ``log_rows`` holds what lists, filters, counts and exports
read, the record's key and headers included; a payload or result whose JSON text
is over ``INLINE_CHARS`` is stored apart in ``payloads`` (the row keeps a short
preview), so a list never reads a 174 MB CSV to answer with 2 KB. The first bytes
of a value that could not be decoded are kept in ``payloads.value`` too, read only
by :meth:`Store.log`. The view ``logs`` shows every row with its full payload and
result, for the analytical queries (backend/analytics.py). A database of schema 1
(one ``logs`` table) or 2 (no key bytes, headers or kept values) is migrated at open.

Failures are told apart: a row SQLite refuses (too big, a constraint) is
replaced by a FAILED row saying why and its batch goes on (``save_outcomes``);
a store that cannot write at all (disk full, I/O error, locked, read-only)
raises :class:`StoreUnavailable` and sets :attr:`Store.problem` until a write
succeeds. A DATA_DIR or a database that cannot be used stops the open with
:class:`StoreOpenError`, one line naming DATA_DIR.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from backend import retention as aggregates
from backend import wire
from backend.config import ConfigError, Retention
from backend.events import FAILED, PROCESSED

log = logging.getLogger(__name__)

DB_NAME = "dashboard.sqlite3"
SCHEMA_VERSION = 4

#: The checkpoint thread looks this often whether the WAL should be copied into the database file:
#: when this many rows were stored since the last copy, or any row and the copy is this old. Each
#: copy ends with an fsync; ~2,000 rows are a few MB of WAL, about SQLite's own 1,000-page default.
CHECKPOINT_CHECK_S = 0.5
CHECKPOINT_ROWS = 2_000
CHECKPOINT_MAX_AGE_S = 30.0
#: A PASSIVE checkpoint cannot finish while readers hold old snapshots, so under sustained load the
#: WAL only grows (1.13 GB beside a 193 MB database was seen). Over this size the checkpoint thread
#: tries a TRUNCATE, which waits at most TRUNCATE_WAIT_MS for readers (new writers wait meanwhile)
#: and otherwise tries again next round; SQLite also cuts a reset WAL back to this size.
WAL_LIMIT_BYTES = 16 * 1024 * 1024
TRUNCATE_WAIT_MS = 100
#: How long close() waits for readers in other processes before its final TRUNCATE gives up.
CLOSE_CHECKPOINT_WAIT_MS = 5_000

#: How many events the replay journal keeps (older entries go): a client further behind resyncs.
JOURNAL_EVENTS = 200_000

#: A payload or result whose JSON text is longer than this is stored apart (table ``payloads``);
#: lists then carry the first PREVIEW_CHARS characters of the payload instead.
INLINE_CHARS = 4_096
PREVIEW_CHARS = 200

#: SQLite's primary result codes for a refusal of one row; any other error means the store itself
#: cannot write (disk full, I/O error, busy, read-only, corrupt).
_ROW_REFUSALS = {
    sqlite3.SQLITE_TOOBIG,
    sqlite3.SQLITE_CONSTRAINT,
    sqlite3.SQLITE_MISMATCH,
    sqlite3.SQLITE_RANGE,
}

#: An export reads the store in pages of this many rows, and stored-apart payloads this many at a time.
EXPORT_PAGE_ROWS = 5_000
APART_READ_ROWS = 100
#: A key or header value filter written ``base64:<text>`` matches a binary key / value's base64.
BASE64_PREFIX = "base64:"

_HEAD_COLUMNS = (
    'log_id, cluster_id, topic, partition, "offset", record_key, data_type, row_count, status, '
    "consumer_id, error, produced_ms, received_ms, started_ms, completed_ms, size_bytes"
)
#: The record's metadata beyond the key's text (schema 3): after the head, read by keyword.
_META_COLUMNS = "key_base64, headers, headers_truncated"
_ROW_COLUMNS = f"{_HEAD_COLUMNS}, {_META_COLUMNS}, payload, result, apart, payload_preview"
_ROW_MARKS = ",".join("?" * len(_ROW_COLUMNS.split(",")))


def _full(column: str) -> str:
    """The full payload or result of row ``l`` of log_rows, inline or stored apart."""
    return (
        f"CASE WHEN l.apart THEN (SELECT p.{column} FROM payloads AS p WHERE p.log_id = l.log_id) "
        f"ELSE l.{column} END"
    )


_FULL_PAYLOAD = _full("payload")
#: The text (or base64) of each header value of row ``l``: ``SELECT v FROM json_each(...)``.
_HEADER_VALUES = (
    "SELECT coalesce(h.value ->> '$.value', h.value ->> '$.valueBase64') AS v FROM json_each(l.headers) AS h"
)
#: Where received_ms is in a row of _ROW_COLUMNS.
_RECEIVED_AT = _HEAD_COLUMNS.split(", ").index("received_ms")


@dataclass(frozen=True, slots=True)
class RecordMatch:
    """Filters on a record's own metadata: its key (exact or a prefix) and a header (name, value).

    A key or value written ``base64:<base64>`` matches a binary one (``keyBase64``, ``valueBase64``).
    A header value without a name matches that value in any header (a trace id, wherever it is).
    """

    key: str | None = None
    key_prefix: bool = False
    header: str | None = None
    header_value: str | None = None

    def where(self, clauses: list[str], params: list[Any]) -> None:
        """Add this match's SQL conditions on ``log_rows AS l`` (and their parameters)."""
        if self.key is not None:
            column, key = "record_key", self.key
            if key.startswith(BASE64_PREFIX):
                column, key = "key_base64", key[len(BASE64_PREFIX) :]
            if self.key_prefix:  # substr, not LIKE: no wildcards to escape, case kept
                clauses.append(f"substr({column}, 1, length(?)) = ?")
                params.extend([key, key])
            else:
                clauses.append(f"{column} = ?")
                params.append(key)
        conditions = []
        if self.header:
            conditions.append("h.value ->> '$.key' = ?")
            params.append(self.header)
        if self.header_value is not None:
            field, value = "$.value", self.header_value
            if value.startswith(BASE64_PREFIX):
                field, value = "$.valueBase64", value[len(BASE64_PREFIX) :]
            conditions.append(f"h.value ->> '{field}' = ?")
            params.append(value)
        if conditions:
            headers = f"SELECT 1 FROM json_each(l.headers) AS h WHERE {' AND '.join(conditions)}"
            clauses.append(f"(headers IS NOT NULL AND EXISTS ({headers}))")

    @property
    def empty(self) -> bool:
        return self.key is None and not self.header and self.header_value is None


_SCHEMA_1_TO_2 = [
    "ALTER TABLE logs RENAME TO log_rows",
    "ALTER TABLE log_rows ADD COLUMN apart INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE log_rows ADD COLUMN payload_preview TEXT",
]
#: key_base64: the key when it is not UTF-8 (record_key is then NULL); headers: the contract's
#: list as JSON text (NULL: none); headers_truncated: some were left out (record_meta).
_LOG_ROWS_2_TO_3 = [
    "ALTER TABLE log_rows ADD COLUMN key_base64 TEXT",
    "ALTER TABLE log_rows ADD COLUMN headers TEXT",
    "ALTER TABLE log_rows ADD COLUMN headers_truncated INTEGER NOT NULL DEFAULT 0",
]
_SCHEMA_2_TO_3 = [
    *_LOG_ROWS_2_TO_3,
    "ALTER TABLE payloads ADD COLUMN value BLOB",
    "DROP VIEW IF EXISTS logs",
]
_LOG_ROWS = """
CREATE TABLE log_rows (
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
    apart         INTEGER NOT NULL DEFAULT 0,
    payload_preview TEXT,
    key_base64    TEXT,
    headers       TEXT,
    headers_truncated INTEGER NOT NULL DEFAULT 0,
    UNIQUE (cluster_id, topic, partition, "offset")
)
"""
_SCHEMA = [
    "CREATE INDEX IF NOT EXISTS logs_by_time ON log_rows (received_ms)",
    "CREATE INDEX IF NOT EXISTS logs_by_topic ON log_rows (topic, received_ms)",
    "CREATE INDEX IF NOT EXISTS logs_by_status ON log_rows (status, received_ms)",
    # value: the first bytes of a value that could not be decoded (record_meta.MAX_KEPT_VALUE_BYTES).
    "CREATE TABLE IF NOT EXISTS payloads (log_id TEXT PRIMARY KEY, payload TEXT, result TEXT, value BLOB)",
    # Schema 4: what a view published, so a client's lastSeq replays from here after any restart
    # (backend/replay_journal.py). One entry per applied events-topic record: seqs first..last.
    "CREATE TABLE IF NOT EXISTS replay_journal "
    "(first_seq INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL, entry BLOB NOT NULL)",
    # has_payload answers "is a payload stored" without reading one stored apart.
    f"""CREATE VIEW IF NOT EXISTS logs AS SELECT {_HEAD_COLUMNS}, {_META_COLUMNS},
        {_FULL_PAYLOAD} AS payload, {_full("result")} AS result,
        (l.payload IS NOT NULL OR l.payload_preview IS NOT NULL) AS has_payload
        FROM log_rows AS l""",
]


class StoreOpenError(ConfigError):
    """DATA_DIR cannot hold the store (not a writable directory, not a usable database).

    A ConfigError, so start-up ends with its one line naming DATA_DIR like any bad setting.
    """


class StoreUnavailable(RuntimeError):
    """The store cannot write at all just now (disk full, I/O error, locked, read-only, closed).

    Nothing of the call was stored or counted; the same call can succeed once the cause is gone.
    """


INSERTED, DUPLICATE, REPLACED, REFUSED = "inserted", "duplicate", "replaced", "refused"


@dataclass(frozen=True, slots=True)
class Saved:
    """What :meth:`Store.save_outcomes` did with one row.

    ``inserted``: stored as given. ``duplicate``: stored before, nothing done.
    ``replaced``: SQLite refused the row; a FAILED row with error ``reason`` was stored instead
    (announce it as processing-failed). ``refused``: neither could be stored (``reason`` says why);
    the record is dropped from the in-flight count.
    """

    kind: str
    reason: str | None = None

    @property
    def new(self) -> bool:
        """A row for this record was added now (and counted)."""
        return self.kind in (INSERTED, REPLACED)


_INSERTED, _DUPLICATE = Saved(INSERTED), Saved(DUPLICATE)


@dataclass(slots=True)
class LogRow:
    """One processed Kafka record, as stored (``payload_json``: the payload's JSON text, when known).

    A row read by a list whose payload is stored apart has ``stored_apart`` set: it carries neither
    payload nor result, only ``payload_preview`` (the first characters of the payload's JSON text);
    :meth:`Store.log` and :meth:`Store.with_payloads` give the full values.

    The record's metadata (backend/record_meta.py): ``record_key`` is the key's text, or None with
    ``key_base64`` set when the key is not UTF-8; ``headers`` the contract's list (``{"key",
    "value"}`` or ``{"key", "valueBase64"}``, record order); ``produced_ms`` the record's own
    timestamp. ``value_bytes``: the first bytes of a value that could not be decoded, on rows
    to store and on :meth:`Store.log` only (lists never read them).
    """

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
    stored_apart: bool = False
    payload_preview: str | None = None
    key_base64: str | None = None
    headers: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    headers_truncated: bool = False
    value_bytes: bytes | None = None

    @property
    def value_truncated(self) -> bool:
        """The kept bytes are only the first of the value's ``size_bytes``."""
        return self.value_bytes is not None and (self.size_bytes or 0) > len(self.value_bytes)

    def to_api(self, with_payload: bool = False) -> dict[str, Any]:
        """The contract's log object (REST and dashboard): :class:`backend.wire.LogBody`, or
        :class:`backend.wire.LogDetailBody` ``with_payload``."""
        data = wire.log_body(
            self.log_id, self.topic, self.partition, self.offset, self.data_type, self.row_count,
            self.status, self.consumer_id, self.error, self.received_ms, self.started_ms,
            self.completed_ms, self.produced_ms, self.record_key, self.size_bytes,
            self.key_base64, self.headers, self.headers_truncated,
        )  # fmt: skip
        if with_payload:
            wire.add_detail(data, self.payload, self.result, self.value_bytes, self.value_truncated)
        return data


class JournalEntry(NamedTuple):
    """One replay journal entry: events ``first_seq``..``last_seq`` (see backend/replay_journal.py)."""

    first_seq: int
    last_seq: int
    entry: bytes


class WrittenAlong(NamedTuple):
    """What :meth:`Store.save_outcomes` writes in the same transaction as the rows."""

    meta: dict[str, str]
    journal: Sequence[JournalEntry] = ()


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


#: Headers are strings and nulls only: one encoder made once (json.dumps with options makes one a call).
_HEADERS_JSON = json.JSONEncoder(ensure_ascii=False, check_circular=False).encode


def _from_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _listed(values: tuple[Any, ...]) -> LogRow:
    """A LogRow from the columns of _ROW_COLUMNS (payload and result are NULL when stored apart)."""
    *head, key_base64, headers, headers_truncated, payload, result, apart, preview = values
    return LogRow(
        *head,
        payload=_from_json(payload),
        result=_from_json(result),
        stored_apart=bool(apart),
        payload_preview=preview,
        **_meta(key_base64, headers, headers_truncated),
    )


def _meta(key_base64: str | None, headers: str | None, headers_truncated: int) -> dict[str, Any]:
    """LogRow's metadata fields from the columns of _META_COLUMNS."""
    return {
        "key_base64": key_base64,
        "headers": _from_json(headers) or [],
        "headers_truncated": bool(headers_truncated),
    }


def _size(n: int) -> str:
    """Bytes in decimal units, as people read them: 1.1 GB, 250 kB."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def _utf8_size(value: Any) -> int:
    if isinstance(value, str):
        return len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
    return len(value) if isinstance(value, bytes) else 0


def _refuses_row(exc: BaseException) -> bool:
    """Whether this error is about one row's values (the others can still be stored)."""
    if isinstance(exc, sqlite3.InterfaceError):  # a value of a type it cannot bind
        return True
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return code is not None and code & 0xFF in _ROW_REFUSALS
    return isinstance(exc, OverflowError | ValueError | TypeError | RecursionError)


@dataclass(slots=True)
class _Prepared:
    """One row's values for log_rows, and for payloads when stored apart or with a kept value (or
    why it cannot be stored)."""

    row: LogRow
    values: tuple[Any, ...] = ()
    apart: tuple[Any, ...] | None = None
    refused: str | None = None


def _prepare(row: LogRow) -> _Prepared:
    try:
        payload = row.payload_json if row.payload_json is not None else _to_json(row.payload)
        result = _to_json(row.result)
        headers = _HEADERS_JSON(row.headers) if row.headers else None
    except (ValueError, TypeError, RecursionError) as exc:
        return _Prepared(row, refused=f"not storable as JSON: {exc}")
    head = (
        row.log_id, row.cluster_id, row.topic, row.partition, row.offset, row.record_key,
        row.data_type, row.row_count, row.status, row.consumer_id, row.error, row.produced_ms,
        row.received_ms, row.started_ms, row.completed_ms, row.size_bytes,
        row.key_base64, headers, int(row.headers_truncated),
    )  # fmt: skip
    value = row.value_bytes
    if (payload is None or len(payload) <= INLINE_CHARS) and (result is None or len(result) <= INLINE_CHARS):
        kept = None if value is None else (row.log_id, None, None, value)
        return _Prepared(row, (*head, payload, result, 0, None), kept)
    preview = None if payload is None else payload[:PREVIEW_CHARS]
    return _Prepared(row, (*head, None, None, 1, preview), (row.log_id, payload, result, value))


def _as_stored(rows: list[LogRow], outcomes: list[Saved]) -> Iterator[tuple[LogRow, str]]:
    """The rows added by a save, each with the status it was stored with (a replaced one: FAILED)."""
    for row, outcome in zip(rows, outcomes, strict=True):
        if outcome.kind == INSERTED:
            yield row, row.status
        elif outcome.kind == REPLACED:
            yield row, FAILED


def _write_meta(cursor: sqlite3.Cursor, values: dict[str, str]) -> None:
    cursor.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(values.items()))


def _write_journal(cursor: sqlite3.Cursor, entries: Sequence[JournalEntry]) -> None:
    """Add replay journal entries; entries more than JOURNAL_EVENTS events older than the last go."""
    if not entries:
        return
    sql = "INSERT OR REPLACE INTO replay_journal (first_seq, last_seq, entry) VALUES (?,?,?)"
    cursor.executemany(sql, entries)
    oldest_kept = entries[-1].first_seq - JOURNAL_EVENTS
    cursor.execute("DELETE FROM replay_journal WHERE first_seq < ?", (oldest_kept,))


def tally(rows: Iterable[LogRow], outcomes: Iterable[Saved]) -> tuple[int, int]:
    """(processed, failed): what a save adds to the counts (a row replaced by a FAILED one: failed)."""
    processed = failed = 0
    for row, outcome in zip(rows, outcomes, strict=True):
        if outcome.kind == INSERTED and row.status == PROCESSED:
            processed += 1
        elif outcome.new:
            failed += 1
    return processed, failed


def as_failed(row: LogRow, reason: str) -> LogRow:
    """The FAILED row stored in place of one the store refused: no payload, the reason as error."""
    error = reason if not row.error else f"{reason}; {row.error[:1000]}"
    return dataclasses.replace(
        row, status=FAILED, error=error, payload=None, result=None, payload_json=None, value_bytes=None
    )


class Store:
    """SQLite in WAL mode; one writer connection behind a lock, one reader per thread."""

    def __init__(
        self, data_dir: Path, value_limit_bytes: int | None = None, retention: Retention | None = None
    ) -> None:
        """Open (create, migrate, check) the store in ``data_dir``; :class:`StoreOpenError` if unusable.

        ``value_limit_bytes`` lowers SQLite's limit on one stored value (1 GB by default).
        ``retention`` (RETENTION) starts a background thread that prunes old logs.
        """
        self.data_dir = data_dir
        self.path = data_dir / DB_NAME
        self._write_lock = threading.Lock()
        self._writer = self._open()
        if value_limit_bytes is not None:
            self._writer.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, value_limit_bytes)
        self._local = threading.local()
        self._readers: dict[threading.Thread, sqlite3.Connection] = {}
        self._readers_lock = threading.Lock()
        self._closed = False
        self._problem: str | None = None
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
        self.wal_truncations = 0  # how many of them cut an oversized WAL back to nothing
        self._checkpoint_problem: str | None = None
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="store-checkpoint", daemon=True
        )
        self._checkpointer.start()
        self.retention = retention
        self.pruner = aggregates.Pruner(self, retention) if retention is not None else None
        if self.pruner is not None:
            self.pruner.start()

    # --- opening -------------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        """The writer connection on a checked, current-schema database."""
        self._check_data_dir()
        connection: sqlite3.Connection | None = None
        try:
            connection = self._connect()
            problems = [row[0] for row in connection.execute("PRAGMA quick_check(3)")]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError("integrity check failed: " + "; ".join(problems))
            self._upgrade(connection)
            aggregates.prepare(connection)
            return connection
        except sqlite3.Error as exc:
            if connection is not None:
                connection.close()
            cause = " ".join(str(exc).split())
            raise StoreOpenError(
                f"DATA_DIR={self.data_dir}: {self.path} is not a usable SQLite database ({cause})"
            ) from exc

    def _check_data_dir(self) -> None:
        """A directory we can create files in, or StoreOpenError naming DATA_DIR and why."""
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise StoreOpenError(f"DATA_DIR={self.data_dir}: not a directory")
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreOpenError(
                f"DATA_DIR={self.data_dir}: cannot create the directory ({exc.strerror or exc})"
            ) from exc
        try:
            with tempfile.TemporaryFile(dir=self.data_dir):
                pass
        except OSError as exc:
            raise StoreOpenError(
                f"DATA_DIR={self.data_dir}: cannot write in the directory ({exc.strerror or exc})"
            ) from exc

    @staticmethod
    def _upgrade(connection: sqlite3.Connection) -> None:
        """Create the schema, or migrate schema 1 (one ``logs`` table) or 2 in one transaction."""
        kind = connection.execute("SELECT type FROM sqlite_master WHERE name = 'logs'").fetchone()
        version = {None: 0, "table": 1}.get(kind[0] if kind else None, SCHEMA_VERSION)
        if version == SCHEMA_VERSION:  # a view: schema 2 or later, which says so in meta
            row = connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else SCHEMA_VERSION
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"written by a newer version: schema {version}")
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            steps = {
                0: [_LOG_ROWS],
                1: [*_SCHEMA_1_TO_2, *_LOG_ROWS_2_TO_3],
                2: _SCHEMA_2_TO_3,
                3: [],  # _SCHEMA adds the replay journal
            }[version]
            for statement in [*steps, *_SCHEMA]:
                connection.execute(statement)
            if version == 1:
                Store._move_big_values_apart(connection)
            connection.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        if version:
            log.info("store: migrated from schema %d to %d", version, SCHEMA_VERSION)

    @staticmethod
    def _move_big_values_apart(connection: sqlite3.Connection) -> None:
        """Schema 1 kept every payload in the row: move the big ones to ``payloads``."""
        connection.execute(
            "INSERT INTO payloads (log_id, payload, result) SELECT log_id, payload, result FROM log_rows "
            "WHERE length(payload) > :n OR length(result) > :n",
            {"n": INLINE_CHARS},
        )
        connection.execute(
            "UPDATE log_rows SET apart = 1, payload_preview = substr(payload, 1, ?), payload = NULL, "
            "result = NULL WHERE log_id IN (SELECT log_id FROM payloads)",
            (PREVIEW_CHARS,),
        )

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA busy_timeout=30000")
        connection.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
        return connection

    def _reader(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreUnavailable("the store is closed")
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._connect()
            connection.execute("PRAGMA query_only=1")
            self._local.connection = connection
            self._track_reader(connection)
        return connection

    def _track_reader(self, connection: sqlite3.Connection) -> None:
        """Remember this thread's reader, so close() can close it; close those of ended threads."""
        with self._readers_lock:
            ended = [thread for thread in self._readers if not thread.is_alive()]
            for thread in ended:
                self._readers.pop(thread).close()
            self._readers[threading.current_thread()] = connection

    def _load_counts(self) -> tuple[int, int]:
        """From the aggregates, not the rows: pruned logs stay counted."""
        return aggregates.stored_counts(self._writer)

    # --- closing and checkpoints ---------------------------------------------------------------

    def close(self) -> None:
        """Stop the checkpoints, close every connection and fold the WAL into the database file.

        After this the database file alone holds every row (it can be copied without -wal/-shm).
        Safe to call twice.
        """
        if self.pruner is not None:
            self.pruner.stop()
        self._stop_checkpoints.set()
        self._checkpointer.join(10)
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            with self._readers_lock:
                readers, self._readers = list(self._readers.values()), {}
            for connection in readers:
                connection.close()
            try:
                self._writer.execute(f"PRAGMA busy_timeout={CLOSE_CHECKPOINT_WAIT_MS}")
                busy, _, _ = self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if busy:
                    log.warning("store: at close a reader in another process kept part of the WAL")
            except sqlite3.Error as exc:
                log.warning("store: final checkpoint failed: %s", exc)
            self._writer.close()  # the last connection to close removes the WAL itself

    def _checkpoint_loop(self) -> None:
        connection = self._connect()
        connection.execute(f"PRAGMA busy_timeout={TRUNCATE_WAIT_MS}")
        try:
            last = time.monotonic()
            while not self._stop_checkpoints.wait(CHECKPOINT_CHECK_S):
                rows = self._rows_since_checkpoint
                old = time.monotonic() - last >= CHECKPOINT_MAX_AGE_S
                oversized = self._wal_bytes() > WAL_LIMIT_BYTES
                if rows < CHECKPOINT_ROWS and not (rows and old) and not oversized:
                    continue
                # Oversized: PASSIVE first copies the bulk without blocking anyone, so the TRUNCATE
                # after it (which holds writers off) only copies what was written meanwhile. A
                # TRUNCATE alone copied ~32 MiB while holding writers off: 150-550 ms stalls.
                done = self._checkpoint(connection, "PASSIVE")
                if oversized:
                    done = self._checkpoint(connection, "TRUNCATE")
                if done:
                    with self._write_lock:
                        self._rows_since_checkpoint -= rows
                    self.checkpoints += 1
                    self.wal_truncations += oversized
                    last = time.monotonic()
        finally:
            connection.close()

    def _checkpoint(self, connection: sqlite3.Connection, mode: str) -> bool:
        """One checkpoint; False when it could not run (busy: next round; an error: logged once).

        PASSIVE never waits for the writer or readers; what it cannot copy waits a turn. TRUNCATE
        waits up to TRUNCATE_WAIT_MS for readers on old snapshots, then gives up until next round.
        """
        try:
            busy, _, _ = connection.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.Error as exc:
            if str(exc) != self._checkpoint_problem:
                log.warning("store: checkpoint failed (will retry): %s", exc)
            self._checkpoint_problem = str(exc)
            return False
        if self._checkpoint_problem is not None:
            log.info("store: checkpoints work again")
            self._checkpoint_problem = None
        return not busy

    def _wal_bytes(self) -> int:
        try:
            return self.path.with_name(DB_NAME + "-wal").stat().st_size
        except OSError:
            return 0

    # --- health --------------------------------------------------------------------------------

    @property
    def problem(self) -> str | None:
        """Why the last write failed with the store unusable (e.g. disk full); None once one succeeds."""
        return self._problem

    def _note_problem(self, problem: str) -> None:
        if problem != self._problem:  # logged once per distinct error, not once per retry
            log.error("store: %s", problem)
        self._problem = problem

    def _note_success(self) -> None:
        if self._problem is not None:
            log.info("store: writing again (after: %s)", self._problem)
            self._problem = None

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        """BEGIN IMMEDIATE .. COMMIT under the write lock; a store that cannot write raises
        StoreUnavailable (with :attr:`problem` set) and has stored nothing."""
        with self._write_lock:
            if self._closed:
                raise StoreUnavailable("the store is closed")
            cursor = self._writer.cursor()
            try:
                cursor.execute("BEGIN IMMEDIATE")
                yield cursor
                cursor.execute("COMMIT")
            except BaseException as exc:
                # SQLite rolls back by itself on some errors (SQLITE_FULL): ROLLBACK only if still open.
                if self._writer.in_transaction:
                    try:
                        cursor.execute("ROLLBACK")
                    except sqlite3.Error as rollback_exc:
                        log.warning("store: rollback failed: %s", rollback_exc)
                if isinstance(exc, sqlite3.Error) and not _refuses_row(exc):
                    problem = f"cannot write to {self.path}: {exc}"
                    self._note_problem(problem)
                    raise StoreUnavailable(problem) from exc
                raise
            self._note_success()

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
            rows = self._reader().execute(f"SELECT log_id FROM log_rows WHERE log_id IN ({marks})", chunk)
            found.update(row[0] for row in rows)
        return found

    def save(self, rows: list[LogRow]) -> list[bool]:
        """Store outcomes in one transaction; per row, whether a row was added for it (counted).

        See :meth:`save_outcomes`, which also tells a row replaced by a FAILED one (and why).
        """
        return [outcome.new for outcome in self.save_outcomes(rows)]

    def save_outcomes(
        self,
        rows: list[LogRow],
        along: Callable[[list[Saved]], WrittenAlong] | None = None,
    ) -> list[Saved]:
        """Store outcomes in one transaction; per row, what was done (see :class:`Saved`).

        ``along``: given what was done, what to write in the same transaction: meta values (a
        view's position in the events topic and its last ``seq``, so that both always match the
        rows) and the replay journal's entry for the events the save publishes.

        The common case (no row stored before, every row storable) is one executemany. A row that
        SQLite refuses (e.g. a value over its length limit) never holds back the others: the batch
        is then stored row by row and that row is replaced by a FAILED row saying why. A store that
        cannot write at all raises :class:`StoreUnavailable` with nothing stored or counted.
        """
        if not rows:
            if along is not None:
                self.set_meta_many(*along([]))
            return []
        prepared = [_prepare(row) for row in rows]
        with self._transaction() as cursor:
            present = self._present_locked(cursor, rows)
            outcomes = self._insert_batch(cursor, prepared, present)
            if outcomes is None:  # rare: start again, row by row
                cursor.execute("ROLLBACK")
                cursor.execute("BEGIN IMMEDIATE")
                outcomes = self._insert_each(cursor, prepared, self._present_locked(cursor, rows))
            aggregates.add(cursor, _as_stored(rows, outcomes))
            if along is not None:
                meta, journal = along(outcomes)
                _write_meta(cursor, meta)
                _write_journal(cursor, journal)
            self._rows_since_checkpoint += sum(outcome.new for outcome in outcomes)
        self._count(rows, outcomes)
        return outcomes

    @staticmethod
    def _insert_batch(
        cursor: sqlite3.Cursor, prepared: list[_Prepared], present: set[str]
    ) -> list[Saved] | None:
        """Every new row in one executemany (and one for values stored apart); None if one is refused.

        No savepoint here (it cost ~10% of a normal batch): the caller rolls the transaction back.
        """
        fresh = [item for item in prepared if item.row.log_id not in present]
        if any(item.refused is not None for item in fresh):
            return None
        try:
            Store._insert(cursor, fresh)
        except Exception as exc:
            if not _refuses_row(exc):
                raise
            return None
        return [_DUPLICATE if item.row.log_id in present else _INSERTED for item in prepared]

    @staticmethod
    def _insert(cursor: sqlite3.Cursor, items: list[_Prepared]) -> None:
        cursor.executemany(
            f"INSERT INTO log_rows ({_ROW_COLUMNS}) VALUES ({_ROW_MARKS})", [i.values for i in items]
        )
        apart = [item.apart for item in items if item.apart is not None]
        if apart:
            cursor.executemany(
                "INSERT INTO payloads (log_id, payload, result, value) VALUES (?, ?, ?, ?)", apart
            )

    def _insert_each(
        self, cursor: sqlite3.Cursor, prepared: list[_Prepared], present: set[str]
    ) -> list[Saved]:
        """Row by row, each in a savepoint: a refused row is replaced by a FAILED row saying why."""
        outcomes: list[Saved] = []
        for item in prepared:
            if item.row.log_id in present:  # stored before, or earlier in this very batch
                outcomes.append(_DUPLICATE)
                continue
            reason = item.refused or self._try_insert(cursor, item)
            if reason is None:
                outcomes.append(_INSERTED)
            else:
                failed = as_failed(item.row, reason)
                refused_again = self._try_insert(cursor, _prepare(failed))
                if refused_again is None:
                    log.warning("store: record %s stored as FAILED: %s", item.row.log_id, reason)
                    outcomes.append(Saved(REPLACED, failed.error))
                else:
                    log.error("store: record %s not stored: %s; %s", item.row.log_id, reason, refused_again)
                    outcomes.append(Saved(REFUSED, reason))
            present.add(item.row.log_id)
        return outcomes

    def _try_insert(self, cursor: sqlite3.Cursor, item: _Prepared) -> str | None:
        """Insert one row in a savepoint; why SQLite refused it, or None once stored."""
        if item.refused is not None:
            return item.refused
        cursor.execute("SAVEPOINT one")
        try:
            self._insert(cursor, [item])
        except Exception as exc:
            cursor.execute("ROLLBACK TO one")
            cursor.execute("RELEASE one")
            if not _refuses_row(exc):
                raise
            return self._refusal(item, exc)
        cursor.execute("RELEASE one")
        return None

    def _refusal(self, item: _Prepared, exc: BaseException) -> str:
        """A readable reason, e.g. "stored value too large: 1.1 GB over SQLite's limit of 1 GB"."""
        code = getattr(exc, "sqlite_errorcode", None)
        if code is None or code & 0xFF != sqlite3.SQLITE_TOOBIG:
            return f"not storable: {exc}"
        limit = self._writer.getlimit(sqlite3.SQLITE_LIMIT_LENGTH)
        sizes = [_utf8_size(value) for value in (*item.values, *(item.apart or ()))]
        if max(sizes) > limit:
            return f"stored value too large: {_size(max(sizes))} over SQLite's limit of {_size(limit)}"
        return f"stored row too large: {_size(sum(sizes))} over SQLite's limit of {_size(limit)}"

    @staticmethod
    def _present_locked(cursor: sqlite3.Cursor, rows: list[LogRow]) -> set[str]:
        """Which rows are stored already, read inside the write transaction (so it stays true).

        Looked up by position (cluster, topic, partition, offset), the ordered unique index, not by
        logId: a record stored before logIds became positional (events.make_log_id) had another id.
        """
        offsets: dict[tuple[str, str, int], dict[int, str]] = {}
        for row in rows:
            offsets.setdefault((row.cluster_id, row.topic, row.partition), {})[row.offset] = row.log_id
        present: set[str] = set()
        for (cluster_id, topic, partition), ids in offsets.items():
            wanted = list(ids)
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                sql = (
                    'SELECT "offset" FROM log_rows WHERE cluster_id = ? AND topic = ? AND partition = ? '
                    f'AND "offset" IN ({",".join("?" * len(chunk))})'
                )
                stored = cursor.execute(sql, (cluster_id, topic, partition, *chunk))
                present.update(ids[offset] for (offset,) in stored)
        return present

    def _count(self, rows: list[LogRow], outcomes: list[Saved]) -> None:
        processed, failed = tally(rows, outcomes)
        with self._count_lock:
            self._in_flight.difference_update(row.log_id for row in rows)
            self._processed += processed
            self._failed += failed

    def counts_after(self, processed: int, failed: int) -> Counts:
        """The counts once a save that adds ``processed`` and ``failed`` (:func:`tally`) is counted
        (called within the save: its ``along`` callback sees what the save will publish, before it
        is counted)."""
        now = self.counts()
        return Counts(now.total + processed + failed, now.processed + processed, now.failed + failed)

    def prune(self, now_ms: int | None = None) -> int:
        """Apply RETENTION now (as at ``now_ms``); how many logs were deleted. See backend/retention.py."""
        if self.retention is None:
            return 0
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return aggregates.prune(self, self.retention, now)

    def set_meta(self, key: str, value: str) -> None:
        self.set_meta_many({key: value})

    def set_meta_many(self, values: dict[str, str], journal: Sequence[JournalEntry] = ()) -> None:
        """Several meta values (and replay journal entries) in one transaction."""
        with self._transaction() as cursor:
            _write_meta(cursor, values)
            _write_journal(cursor, journal)

    def journal(self, after_seq: int, until_seq: int) -> list[JournalEntry]:
        """The replay journal's entries holding the events after ``after_seq`` up to ``until_seq``."""
        sql = (
            "SELECT first_seq, last_seq, entry FROM replay_journal WHERE first_seq <= ? AND first_seq >= "
            "COALESCE((SELECT MAX(first_seq) FROM replay_journal WHERE first_seq <= ?), 0) ORDER BY first_seq"
        )
        rows = self._reader().execute(sql, (until_seq, after_seq + 1)).fetchall()
        return [JournalEntry(first, last, bytes(entry)) for first, last, entry in rows]

    def rows_by_id(self, log_ids: Iterable[str]) -> dict[str, LogRow]:
        """Stored rows by logId, without payloads (those no longer stored are left out)."""
        ids = list(dict.fromkeys(log_ids))
        columns = _ROW_COLUMNS.replace("payload, result", "NULL, NULL")
        found: dict[str, LogRow] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT {columns} FROM log_rows WHERE log_id IN ({marks})"
            found.update((row.log_id, row) for row in map(_listed, self._reader().execute(sql, chunk)))
        return found

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
        payloads: bool = True,
        match: RecordMatch | None = None,
    ) -> list[LogRow]:
        """Stored logs, newest first, filtered; ``text`` searches payload, error, key and header values.

        Payloads stored apart are never read (those rows are ``stored_apart``, with a preview);
        ``payloads=False`` leaves out the small inline ones too (the REST list shows none).
        ``match`` narrows by the record's key and headers.
        """
        where, params = self._filters(status, topic, since_ms, until_ms, text, match)
        columns = _ROW_COLUMNS if payloads else _ROW_COLUMNS.replace("payload, result", "NULL, NULL")
        sql = (
            f"SELECT {columns} FROM log_rows AS l {where} "
            'ORDER BY received_ms DESC, partition DESC, "offset" DESC LIMIT ? OFFSET ?'
        )
        rows = self._reader().execute(sql, [*params, int(limit), int(offset)]).fetchall()
        return [_listed(values) for values in rows]

    def count_logs(
        self,
        status: str | None = None,
        topic: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        text: str | None = None,
        match: RecordMatch | None = None,
    ) -> int:
        """How many stored logs match the same filters as :meth:`logs`."""
        where, params = self._filters(status, topic, since_ms, until_ms, text, match)
        return self._reader().execute(f"SELECT COUNT(*) FROM log_rows AS l {where}", params).fetchone()[0]

    def iter_logs(
        self,
        status: str | None = None,
        topic: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        text: str | None = None,
        match: RecordMatch | None = None,
        page_size: int = EXPORT_PAGE_ROWS,
    ) -> Iterator[LogRow]:
        """Every matching log with its full payload and result, newest first, in bounded memory.

        For exports of a whole filtered set: pages of ``page_size`` rows by keyset pagination on
        (received_ms, log_id), never OFFSET (which re-reads every skipped row); payloads stored
        apart are read a few rows at a time. Each page is one complete query, so the generator may
        be resumed from another thread (a streamed HTTP answer) and holds no cursor open.
        """
        where, params = self._filters(status, topic, since_ms, until_ms, text, match)
        after: tuple[int, str] | None = None
        while True:
            page_where, page_params = where, list(params)
            if after is not None:
                page_where += (" AND " if where else "WHERE ") + "(received_ms, log_id) < (?, ?)"
                page_params.extend(after)
            sql = (
                f"SELECT {_ROW_COLUMNS} FROM log_rows AS l {page_where} "
                "ORDER BY received_ms DESC, log_id DESC LIMIT ?"
            )
            values = self._reader().execute(sql, [*page_params, int(page_size)]).fetchall()
            if not values:
                return
            for start in range(0, len(values), APART_READ_ROWS):
                yield from self.with_payloads([_listed(v) for v in values[start : start + APART_READ_ROWS]])
            last = values[-1]
            after = (last[_RECEIVED_AT], last[0])
            if len(values) < page_size:
                return

    @staticmethod
    def _filters(
        status: str | None,
        topic: str | None,
        since_ms: int | None,
        until_ms: int | None,
        text: str | None,
        match: RecordMatch | None = None,
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
        if match is not None:
            match.where(clauses, params)
        if text:  # a search reads what it searches: payloads stored apart too
            clauses.append(
                f"(instr(lower({_FULL_PAYLOAD}), lower(?)) > 0 OR instr(lower(error), lower(?)) > 0"
                " OR instr(lower(record_key), lower(?)) > 0"
                " OR (headers IS NOT NULL AND EXISTS"
                f" ({_HEADER_VALUES} WHERE instr(lower(v), lower(?)) > 0)))"
            )
            params.extend([text] * 4)
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", params

    def log(self, log_id: str) -> LogRow | None:
        """One stored log with its payload and result, wherever they are stored, and its kept value."""
        sql = (
            f"SELECT {_HEAD_COLUMNS}, {_META_COLUMNS}, payload, result, "
            "(SELECT p.value FROM payloads AS p WHERE p.log_id = logs.log_id) FROM logs WHERE log_id = ?"
        )
        values = self._reader().execute(sql, (log_id,)).fetchone()
        if values is None:
            return None
        *head, key_base64, headers, headers_truncated, payload, result, value = values
        return LogRow(
            *head,
            payload=_from_json(payload),
            result=_from_json(result),
            value_bytes=value,
            **_meta(key_base64, headers, headers_truncated),
        )

    def with_payloads(self, rows: list[LogRow]) -> list[LogRow]:
        """These rows (e.g. a page to export) with full payloads and results, read only where missing."""
        missing = [row.log_id for row in rows if row.stored_apart]
        found: dict[str, tuple[str | None, str | None]] = {}
        for start in range(0, len(missing), 500):
            chunk = missing[start : start + 500]
            sql = (
                f"SELECT log_id, payload, result FROM payloads WHERE log_id IN ({','.join('?' * len(chunk))})"
            )
            found.update((r[0], (r[1], r[2])) for r in self._reader().execute(sql, chunk))
        return [
            dataclasses.replace(
                row,
                payload=_from_json(found[row.log_id][0]),
                result=_from_json(found[row.log_id][1]),
                stored_apart=False,
                payload_preview=None,
            )
            if row.log_id in found
            else row
            for row in rows
        ]

    def topics(self) -> list[str]:
        """Every topic that has stored logs."""
        return [
            row[0] for row in self._reader().execute("SELECT DISTINCT topic FROM log_rows ORDER BY topic")
        ]

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read-only connection for the analytics queries (backend/analytics.py): they read the
        view ``logs`` (every row with its full ``payload`` and ``result``, and ``has_payload``)."""
        yield self._reader()
