"""The store under hostile records and a hostile disk (issue 15): big payloads are never read by lists,
a row SQLite refuses never holds back its batch, an unusable store says why in one line, and a stop
leaves a complete database file."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import sqlite3
import threading
import tracemalloc
from pathlib import Path

import pytest

from backend import analytics
from backend import store as store_module
from backend.config import ConfigError
from backend.events import CSV_BATCH, FAILED, PROCESSED
from backend.store import (
    DUPLICATE,
    INSERTED,
    REPLACED,
    SCHEMA_VERSION,
    Saved,
    Store,
    StoreOpenError,
    StoreUnavailable,
)
from tests.support import wait_for
from tests.test_store import row

BIG = 40_000_000  # characters of payload: a 40 MB stored value

# --- reads never load what they do not return ---------------------------------------------------


def test_listing_by_topic_never_reads_a_big_payload(tmp_path: Path) -> None:
    store = Store(tmp_path)
    try:
        store.save([row(0, payload={"blob": "x" * BIG}), row(1), row(2, topic="payments")])
        tracemalloc.start()
        try:
            listed = store.logs(topic="orders")
            counted = store.count_logs(topic="orders")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert [r.offset for r in listed] == [1, 0] and counted == 2
        assert peak < 1_000_000, f"a list read allocated {peak:,} bytes"
        big, small = listed[1], listed[0]
        assert big.stored_apart and big.payload is None and big.payload_preview.startswith('{"blob": "xxx')
        assert len(big.payload_preview) == store_module.PREVIEW_CHARS
        assert not small.stored_apart and small.payload == {"offset": 1}  # small payloads stay in lists
        bare = store.logs(topic="orders", payloads=False)  # the REST list shows no payloads at all
        assert [(r.payload, r.result) for r in bare] == [(None, None)] * 2 and bare[1].stored_apart
        assert store.log(big.log_id).payload == {"blob": "x" * BIG}  # the full value, on demand
        exported = store.with_payloads(listed)
        assert exported[1].payload == {"blob": "x" * BIG} and exported[0] is small
        assert [r.offset for r in store.logs(text="xxxxxxxx", topic="orders")] == [0]  # search reads it
    finally:
        store.close()


def test_list_queries_never_touch_the_payloads_table(tmp_path: Path) -> None:
    store = Store(tmp_path)
    try:
        with store.read() as db:
            for sql in (
                "SELECT {} FROM log_rows AS l WHERE topic = ? LIMIT 50",
                "SELECT COUNT(*) FROM log_rows",
            ):
                plan = db.execute(
                    "EXPLAIN QUERY PLAN " + sql.format(store_module._ROW_COLUMNS), ["t"][: sql.count("?")]
                )
                assert "payloads" not in " ".join(str(step) for step in plan.fetchall())
    finally:
        store.close()


def test_analytics_read_payloads_stored_apart_through_the_logs_view(tmp_path: Path) -> None:
    store = Store(tmp_path)
    try:
        batch = [{"sku": f"s{i}", "qty": str(i)} for i in range(500)]  # JSON text over INLINE_CHARS
        csv = row(0, payload=batch)
        csv.data_type, csv.row_count = CSV_BATCH, len(batch)
        store.save([csv, row(1, payload={"qty": 7})])
        assert store.logs()[1].stored_apart
        fields = {f["field"]: f["count"] for f in analytics.numeric_fields(store)}
        assert fields["qty"] == 501
        assert sum(r["sum"] for r in analytics.field_series(store, "qty", 3_600_000)) == sum(range(500)) + 7
        with store.read() as db:
            assert db.execute("SELECT SUM(has_payload) FROM logs").fetchone()[0] == 2
    finally:
        store.close()


SCHEMA_1 = """
CREATE TABLE logs (
    log_id TEXT PRIMARY KEY, cluster_id TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL,
    "offset" INTEGER NOT NULL, record_key TEXT, data_type TEXT NOT NULL, row_count INTEGER NOT NULL,
    status TEXT NOT NULL, consumer_id TEXT, error TEXT, produced_ms INTEGER, received_ms INTEGER NOT NULL,
    started_ms INTEGER, completed_ms INTEGER, size_bytes INTEGER, payload TEXT, result TEXT,
    UNIQUE (cluster_id, topic, partition, "offset")
);
CREATE INDEX logs_by_time ON logs (received_ms);
CREATE INDEX logs_by_topic ON logs (topic, received_ms);
CREATE INDEX logs_by_status ON logs (status, received_ms);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def test_a_schema_1_database_is_migrated_at_open_with_every_payload(tmp_path: Path) -> None:
    """The database the previous store wrote: one ``logs`` table with every payload in its row."""
    db = sqlite3.connect(tmp_path / store_module.DB_NAME)
    db.executescript(SCHEMA_1)
    big = '{"blob": "' + "y" * 10_000 + '"}'
    for offset, payload, status in ((0, '{"amount": 3}', PROCESSED), (1, big, PROCESSED), (2, None, FAILED)):
        r = row(offset, status)
        db.execute(
            f"INSERT INTO logs VALUES ({','.join('?' * 18)})",
            (r.log_id, r.cluster_id, r.topic, r.partition, r.offset, r.record_key, r.data_type, r.row_count,
             r.status, r.consumer_id, r.error, r.produced_ms, r.received_ms, r.started_ms, r.completed_ms,
             r.size_bytes, payload, '{"ok": true}'),
        )  # fmt: skip
    db.execute("INSERT INTO meta VALUES ('seq_reserved', '42')")
    db.commit()
    db.close()
    store = Store(tmp_path)
    try:
        assert store.get_meta("schema_version") == str(SCHEMA_VERSION)
        assert store.get_meta("seq_reserved") == "42"
        counts = store.counts()
        assert (counts.total, counts.processed, counts.failed) == (3, 2, 1)
        listed = store.logs()
        assert [(r.offset, r.stored_apart) for r in listed] == [(2, False), (1, True), (0, False)]
        assert listed[2].payload == {"amount": 3} and listed[2].result == {"ok": True}
        detail = store.log(row(1).log_id)
        assert detail.payload == {"blob": "y" * 10_000} and detail.result == {"ok": True}
        assert sum(r["sum"] for r in analytics.field_series(store, "amount", 3_600_000)) == 3
        assert store.save([row(3)]) == [True] and store.count_logs() == 4
    finally:
        store.close()
    Store(tmp_path).close()  # a second open finds schema 3 and changes nothing


SCHEMA_2 = """
CREATE TABLE log_rows (
    log_id TEXT PRIMARY KEY, cluster_id TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL,
    "offset" INTEGER NOT NULL, record_key TEXT, data_type TEXT NOT NULL, row_count INTEGER NOT NULL,
    status TEXT NOT NULL, consumer_id TEXT, error TEXT, produced_ms INTEGER, received_ms INTEGER NOT NULL,
    started_ms INTEGER, completed_ms INTEGER, size_bytes INTEGER, payload TEXT, result TEXT,
    apart INTEGER NOT NULL DEFAULT 0, payload_preview TEXT,
    UNIQUE (cluster_id, topic, partition, "offset")
);
CREATE INDEX logs_by_time ON log_rows (received_ms);
CREATE TABLE payloads (log_id TEXT PRIMARY KEY, payload TEXT, result TEXT);
CREATE VIEW logs AS SELECT log_id, topic, received_ms, payload, result, 1 AS has_payload FROM log_rows;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '2');
"""


def test_a_schema_2_database_gains_the_record_metadata_at_open(tmp_path: Path) -> None:
    """Rows written before keys, headers and kept values read back with none; new rows keep theirs."""
    db = sqlite3.connect(tmp_path / store_module.DB_NAME)
    db.executescript(SCHEMA_2)
    big = '{"blob": "' + "y" * 10_000 + '"}'
    for offset, payload, apart in ((0, '{"amount": 3}', 0), (1, None, 1)):
        r = row(offset)
        db.execute(
            f"INSERT INTO log_rows VALUES ({','.join('?' * 20)})",
            (r.log_id, r.cluster_id, r.topic, r.partition, r.offset, "old-key", r.data_type, r.row_count,
             r.status, r.consumer_id, r.error, r.produced_ms, r.received_ms, r.started_ms, r.completed_ms,
             r.size_bytes, payload, None, apart, big[:200] if apart else None),
        )  # fmt: skip
    db.execute("INSERT INTO payloads VALUES (?, ?, NULL)", (row(1).log_id, big))
    db.commit()
    db.close()
    store = Store(tmp_path)
    try:
        assert store.get_meta("schema_version") == str(SCHEMA_VERSION)
        old = store.log(row(0).log_id)
        assert (old.record_key, old.key_base64, old.headers, old.headers_truncated) == (
            "old-key",
            None,
            [],
            False,
        )
        assert old.payload == {"amount": 3} and old.value_bytes is None
        assert store.log(row(1).log_id).payload == {"blob": "y" * 10_000}
        headers = [{"key": "trace", "value": "a"}, {"key": "trace", "valueBase64": "/w=="}]
        new = dataclasses.replace(
            row(2, FAILED), key_base64="AP8=", record_key=None, headers=headers, value_bytes=b"\x00\xff",
            size_bytes=9,
        )  # fmt: skip
        assert store.save([new]) == [True]
        stored = store.log(new.log_id)
        assert (stored.key_base64, stored.headers, stored.value_bytes) == ("AP8=", headers, b"\x00\xff")
        assert stored.to_api(with_payload=True)["valueTruncated"] is True
        listed = {r.log_id: r for r in store.logs()}
        assert listed[new.log_id].headers == headers and listed[new.log_id].value_bytes is None
        with store.read() as db:
            columns = [c[0] for c in db.execute("SELECT * FROM logs LIMIT 0").description]
            assert {"key_base64", "headers", "headers_truncated", "has_payload"} <= set(columns)
    finally:
        store.close()
    Store(tmp_path).close()


# --- a row SQLite refuses never holds back its batch --------------------------------------------


def test_a_row_over_sqlites_limit_becomes_failed_and_its_batch_goes_on(tmp_path: Path) -> None:
    store = Store(tmp_path, value_limit_bytes=1_000_000)
    try:
        batch = [row(0), row(1, payload={"blob": "z" * 1_100_000}), row(2)]
        store.mark_in_flight(r.log_id for r in batch)
        outcomes = store.save_outcomes(batch)
        reason = "stored value too large: 1.1 MB over SQLite's limit of 1 MB"
        assert outcomes == [Saved(INSERTED), Saved(REPLACED, reason), Saved(INSERTED)]
        counts = store.counts()
        assert (counts.total, counts.processed, counts.failed) == (3, 2, 1)
        stored = store.log(row(1).log_id)
        assert stored.status == FAILED and stored.error == reason and stored.payload is None
        # A redelivery of the same batch stores nothing and counts nothing.
        assert store.save_outcomes(batch) == [Saved(DUPLICATE)] * 3
        assert store.save(batch) == [False, False, False] and store.counts().total == 3
        assert store.problem is None
    finally:
        store.close()


def test_a_record_twice_in_one_batch_is_stored_once(tmp_path: Path) -> None:
    store = Store(tmp_path)
    try:
        assert store.save([row(0), row(0), row(1)]) == [True, False, True]
        assert store.counts().total == 2
    finally:
        store.close()


# --- a store that cannot write says so, once ----------------------------------------------------


def test_disk_full_raises_store_unavailable_and_counts_stay_exact(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLite's max_page_count makes the database full for real (SQLITE_FULL, as on a full disk)."""
    store = Store(tmp_path)
    try:
        store.save([row(0)])
        pages = store._writer.execute("PRAGMA page_count").fetchone()[0]
        store._writer.execute(f"PRAGMA max_page_count={pages}")
        batch = [row(offset, payload={"pad": "p" * 2_000}) for offset in range(1, 201)]
        store.mark_in_flight(r.log_id for r in batch)
        with caplog.at_level(logging.INFO, logger="backend.store"):
            for _ in range(3):  # a consumer retrying
                with pytest.raises(StoreUnavailable, match="full"):
                    store.save(batch)
            assert "full" in (store.problem or "")
            counts = store.counts()
            assert (counts.total, counts.processed) == (201, 1) and store.count_logs() == 1
            store._writer.execute("PRAGMA max_page_count=1073741823")
            assert store.save(batch) == [True] * 200
        assert store.problem is None
        counts = store.counts()
        assert (counts.total, counts.processed, counts.failed) == (201, 201, 0) and store.count_logs() == 201
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "full" in errors[0]  # once, not once per retry
        assert not any("rollback" in r.getMessage() for r in caplog.records)
    finally:
        store.close()


def _open_error(data_dir: Path) -> str:
    with pytest.raises(StoreOpenError) as caught:
        Store(data_dir)
    message = str(caught.value)
    assert isinstance(caught.value, ConfigError) and "\n" not in message
    assert message.startswith(f"DATA_DIR={data_dir}: ")
    return message


def test_a_garbage_header_is_reported_in_one_line_naming_data_dir(tmp_path: Path) -> None:
    (tmp_path / store_module.DB_NAME).write_bytes(b"this is not SQLite at all" * 400)
    message = _open_error(tmp_path)
    assert (
        f"{tmp_path / store_module.DB_NAME} is not a usable SQLite database (file is not a database)"
        in message
    )


def test_a_corrupted_page_is_found_at_open(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.save([row(offset, payload={"n": offset, "pad": "q" * 300}) for offset in range(3000)])
    store.close()
    path = tmp_path / store_module.DB_NAME
    size = path.stat().st_size
    assert size > 100 * 4096
    with path.open("r+b") as file:  # a page in the middle: its b-tree header and cells
        file.seek((size // 4096 // 2) * 4096)
        file.write(b"\xa5" * 4096)
    message = _open_error(tmp_path)
    assert "is not a usable SQLite database" in message


@pytest.mark.parametrize("layout", ["under a regular file", "a regular file"])
def test_an_unusable_data_dir_is_reported_in_one_line(tmp_path: Path, layout: str) -> None:
    """Not a directory (tests run as root here, which ignores chmod; a file is refused to root too)."""
    (tmp_path / "file").write_text("x")
    data_dir = tmp_path / "file" / "data" if layout == "under a regular file" else tmp_path / "file"
    message = _open_error(data_dir)
    assert "not a directory" in message.lower()


# --- a stop leaves a complete database file; the WAL stays bounded ------------------------------


def test_after_close_the_database_file_alone_holds_every_row(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.save([row(offset) for offset in range(500)])  # fewer than CHECKPOINT_ROWS: all in the WAL
    assert store.logs(limit=1)  # this thread's reader
    read, done = threading.Event(), threading.Event()

    def dashboard_thread() -> None:  # a reader in another thread, alive at close
        store.count_logs()
        read.set()
        done.wait(30)

    thread = threading.Thread(target=dashboard_thread)
    thread.start()
    try:
        assert read.wait(30)
        store.close()
        copy = tmp_path / "copy"
        copy.mkdir()
        shutil.copy(tmp_path / store_module.DB_NAME, copy / store_module.DB_NAME)
        db = sqlite3.connect(copy / store_module.DB_NAME)
        assert db.execute("SELECT COUNT(*) FROM log_rows").fetchone()[0] == 500
        db.close()
        with pytest.raises(StoreUnavailable, match="closed"):
            store.logs()
        store.close()  # twice is fine
    finally:
        done.set()
        thread.join(30)


def test_the_wal_is_cut_back_once_an_old_snapshot_is_released(tmp_path: Path, monkeypatch) -> None:
    """A reader on an old snapshot keeps PASSIVE checkpoints from ever resetting the WAL; the store
    then cuts it back with TRUNCATE as soon as the reader lets go."""
    monkeypatch.setattr(store_module, "CHECKPOINT_CHECK_S", 0.02)
    store = Store(tmp_path)
    try:
        store.save([row(offset) for offset in range(3)])  # not checkpointed yet: a snapshot in the WAL
        reader = sqlite3.connect(tmp_path / store_module.DB_NAME)
        snapshot = reader.execute("SELECT log_id FROM log_rows")
        snapshot.fetchone()  # a statement in progress (rows left to read) holds its snapshot
        monkeypatch.setattr(store_module, "WAL_LIMIT_BYTES", 512 * 1024)
        monkeypatch.setattr(store_module, "CHECKPOINT_ROWS", 1)
        for batch in range(40):
            store.save([row(batch * 200 + i, payload={"pad": "w" * 1_000}) for i in range(3, 203)])
        wal = tmp_path / (store_module.DB_NAME + "-wal")
        assert wal.stat().st_size > 8 * store_module.WAL_LIMIT_BYTES  # held back by the old snapshot
        before = store.checkpoints
        snapshot.close()
        reader.close()
        wait_for(lambda: store.checkpoints > before and store.wal_truncations, 30, "a TRUNCATE checkpoint")
        assert wal.stat().st_size <= store_module.WAL_LIMIT_BYTES
        assert store.count_logs() == 8003
    finally:
        store.close()
