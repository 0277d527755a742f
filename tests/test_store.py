"""The store: idempotent by record, exact counters that survive a reopen."""

from __future__ import annotations

from pathlib import Path

from backend.events import FAILED, PROCESSED, make_log_id
from backend.store import LogRow, Store
from tests.support import wait_for


def row(offset: int, status: str = PROCESSED, topic: str = "orders", payload: object = None) -> LogRow:
    return LogRow(
        log_id=make_log_id("c1", topic, 0, offset),
        cluster_id="c1",
        topic=topic,
        partition=0,
        offset=offset,
        record_key=None,
        data_type="SINGLE_MESSAGE",
        row_count=1,
        status=status,
        consumer_id="consumer-1",
        error=None if status == PROCESSED else "invalid JSON",
        produced_ms=1_700_000_000_000,
        received_ms=1_700_000_000_000 + offset,
        started_ms=1_700_000_000_001 + offset,
        completed_ms=1_700_000_000_002 + offset,
        size_bytes=10,
        payload=payload if payload is not None else {"offset": offset},
    )


def test_a_record_is_stored_and_counted_once(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.save([row(0), row(1, FAILED)]) == [True, True]
    assert store.save([row(1, FAILED), row(2)]) == [False, True]
    counts = store.counts()
    assert (counts.total, counts.processed, counts.failed) == (3, 2, 1)
    assert store.known([row(0).log_id, row(9).log_id]) == {row(0).log_id}


def test_counts_survive_a_reopen(tmp_path: Path) -> None:
    Store(tmp_path).save([row(0), row(1, FAILED), row(2)])
    reopened = Store(tmp_path)
    counts = reopened.counts()
    assert (counts.total, counts.processed, counts.failed) == (3, 2, 1)


def test_in_flight_records_count_in_the_total(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.mark_in_flight([row(0).log_id])
    assert store.counts().total == 1
    store.save([row(0)])
    assert (store.counts().total, store.counts().processed) == (1, 1)


def test_logs_are_newest_first_and_filtered(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.save([row(0), row(1, FAILED), row(2, topic="payments", payload={"note": "<script>x</script>"})])
    assert [r.offset for r in store.logs()] == [2, 1, 0]
    assert [r.offset for r in store.logs(status=FAILED)] == [1]
    assert [r.topic for r in store.logs(topic="payments")] == ["payments"]
    assert [r.offset for r in store.logs(text="<SCRIPT>")] == [2]
    assert [r.offset for r in store.logs(text="invalid json")] == [1]
    assert store.count_logs(topic="orders") == 2
    api = store.logs(limit=1)[0].to_api()
    assert api["offset"] == "2" and api["receivedAt"].endswith("Z") and api["status"] == PROCESSED


def test_hostile_filter_text_is_only_data(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.save([row(0)])
    assert store.logs(text="'; DROP TABLE logs; --") == []
    assert store.logs(topic="x' OR '1'='1") == []
    assert store.counts().total == 1


def test_log_detail_keeps_the_payload(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.save([row(7, payload={"name": "Test", "value": 100})])
    detail = store.log(row(7).log_id)
    assert detail is not None and detail.payload == {"name": "Test", "value": 100}
    assert store.log("missing") is None


def test_commits_never_checkpoint_and_close_folds_the_wal_back(tmp_path: Path) -> None:
    store = Store(tmp_path)
    # The writer leaves checkpoints (and their fsync) to the store's own thread.
    assert store._writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    store.save([row(offset) for offset in range(3000)])
    # Over CHECKPOINT_ROWS rows: the store's own thread copies the WAL into the database.
    wait_for(lambda: store.checkpoints >= 1, 30, "a checkpoint after 3,000 rows")
    store.close()
    assert not store._checkpointer.is_alive()
    assert not (tmp_path / "dashboard.sqlite3-wal").exists()
    reopened = Store(tmp_path)
    try:
        assert reopened.counts().total == 3000
    finally:
        reopened.close()
