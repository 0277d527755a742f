"""The store: idempotent by record, exact counters that survive a reopen."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from backend.analytics_api import LOG_ID_PATTERN
from backend.events import FAILED, PROCESSED, make_log_id
from backend.store import DUPLICATE, INSERTED, LogRow, Store
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


def test_log_ids_are_stable_uuid_shaped_and_sort_in_offset_order() -> None:
    """Same position, same id; a partition's ids sort by offset (the store's index then appends)."""
    uuid_shape = re.compile(LOG_ID_PATTERN)
    ids = [make_log_id("c1", "orders", 2, offset) for offset in (0, 1, 9, 10, 255, 256, 2**40, 2**64 - 1)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert make_log_id("c1", "orders", 2, 9) == ids[2]
    others = {
        make_log_id("c2", "orders", 2, 9),
        make_log_id("c1", "payments", 2, 9),
        make_log_id("c1", "orders", 3, 9),
    }
    assert ids[2] not in others and len(others) == 3
    beyond = [
        make_log_id("c1", "orders", 70_000, 1),
        make_log_id("c1", "orders", 0, 2**64),
        make_log_id("c", "t", -1, 0),
    ]
    assert all(uuid_shape.match(log_id) for log_id in [*ids, *others, *beyond])
    assert len(set(beyond)) == 3


def test_a_record_stored_under_an_older_log_id_is_not_stored_again(tmp_path: Path) -> None:
    """Ids were random-looking hashes before; a redelivery after the upgrade is still a duplicate."""
    store = Store(tmp_path)
    older = dataclasses.replace(row(5), log_id="0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")
    assert store.save([older]) == [True]
    assert [saved.kind for saved in store.save_outcomes([row(5), row(6)])] == [DUPLICATE, INSERTED]
    assert store.counts().total == 2
    assert store.log(older.log_id) is not None and store.log(row(6).log_id) is not None
