"""RETENTION: old logs are pruned with their payloads while counters and trends stay exact.

Pruning is driven with an explicit ``now_ms`` (no clock to wait for); the concurrent test runs a
real pruning thread beside a real writer and checks that every record was stored and counted.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from backend import analytics, retention
from backend.config import ConfigError, Retention, Settings
from backend.events import CSV_BATCH, FAILED, PROCESSED, SINGLE_MESSAGE, make_log_id
from backend.store import DB_NAME, INLINE_CHARS, LogRow, Store
from tests.support import wait_for

T0 = 1_700_000_040_000  # a whole minute
MINUTE = 60_000


def record(n: int, received_ms: int, topic: str = "orders", payload: Any = None, big: bool = False) -> LogRow:
    """Record ``n``: every 5th FAILED, every 7th a CSV batch of 3 rows; ``big`` stores it apart."""
    failed = n % 5 == 0
    csv = n % 7 == 0 and not failed
    if payload is None:
        payload = [{"qty": "1"}] * 3 if csv else {"amount": n, "pad": "x" * (INLINE_CHARS if big else 4)}
    return LogRow(
        log_id=make_log_id("c1", topic, 0, n),
        cluster_id="c1",
        topic=topic,
        partition=0,
        offset=n,
        record_key=None,
        data_type=CSV_BATCH if csv else SINGLE_MESSAGE,
        row_count=3 if csv else 1,
        status=FAILED if failed else PROCESSED,
        consumer_id="consumer-1",
        error="invalid JSON" if failed else None,
        produced_ms=received_ms - 3,
        received_ms=received_ms,
        started_ms=received_ms + 1,
        completed_ms=received_ms + 2 + n % 4,
        size_bytes=20,
        payload=None if failed else payload,
    )


def spread(count: int, minutes: int, start: int = T0, first: int = 0) -> list[LogRow]:
    """``count`` records (offsets from ``first``) over ``minutes`` minutes on two topics; every
    10th stored apart."""
    step = minutes * MINUTE // count
    return [
        record(first + n, start + n * step, "orders" if n % 3 else "payments", big=n % 10 == 1)
        for n in range(count)
    ]


def trends(store: Store) -> dict[str, Any]:
    """Everything that must not change when logs are pruned (minute buckets: the aggregates')."""
    counts = store.counts()
    return {
        "counts": (counts.total, counts.processed, counts.failed),
        "volume": analytics.volume(store, MINUTE),
        "volume_hour": analytics.volume(store, 3_600_000, since_ms=T0, topics=["orders"]),
        "failure_rate": analytics.failure_rate(store, 5 * MINUTE),
        "throughput": analytics.throughput(store, T0, MINUTE),
        "topics": analytics.topic_summary(store),
        "topics_since": analytics.topic_summary(store, T0 + 10 * MINUTE),
        "bounds": analytics.time_bounds(store),
    }


def payloads_stored(store: Store) -> int:
    with store.read() as db:
        return db.execute("SELECT COUNT(*) FROM payloads").fetchone()[0]


# --- the setting -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", None),
        ("7d", Retention(max_age_ms=7 * 86_400_000)),
        ("12h", Retention(max_age_ms=12 * 3_600_000)),
        (" 30m ", Retention(max_age_ms=30 * MINUTE)),
        ("1000000", Retention(max_count=1_000_000)),
        ("1_000_000", Retention(max_count=1_000_000)),
    ],
)
def test_retention_values(raw: str, expected: Retention | None) -> None:
    assert Settings.from_env({"RETENTION": raw}).retention == expected


@pytest.mark.parametrize("raw", ["0", "0d", "-5", "7w", "1e6", "seven days", "7d12h", "9" * 20, "99999999d"])
def test_a_bad_retention_is_one_line_naming_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"RETENTION": raw})
    message = str(caught.value)
    assert message.startswith("RETENTION=") and "\n" not in message


# --- pruning -----------------------------------------------------------------------------------


def test_retention_by_count_prunes_rows_and_payloads_and_keeps_every_count(tmp_path: Path) -> None:
    store = Store(tmp_path)  # no background pruner: this test prunes at a time it chooses
    policy = Retention(max_count=1_000)
    store.save(spread(3_000, 30))
    before = trends(store)
    apart_before = payloads_stored(store)
    deleted = retention.prune(store, policy, T0 + 31 * MINUTE)
    kept = store.count_logs()
    assert deleted == 3_000 - kept and 1_000 <= kept < 1_000 + 100 + 1  # whole minutes: 100 a minute
    assert analytics.kept_from(store) == T0 + 20 * MINUTE  # the minute the 1,000th newest fell in
    assert payloads_stored(store) == sum(1 for r in store.logs(limit=5_000) if r.stored_apart) < apart_before
    assert trends(store) == before
    assert retention.prune(store, policy, T0 + 31 * MINUTE) == 0  # nothing more to do
    store.close()
    reopened = Store(tmp_path)
    assert trends(reopened) == before  # counters from the aggregates, not from the kept rows
    reopened.close()


def test_retention_by_age_prunes_what_is_older(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.save(spread(1_200, 60))
    before = trends(store)
    assert retention.prune(store, Retention(max_age_ms=10 * MINUTE), T0 + 30 * MINUTE + 30_000) > 0
    assert analytics.kept_from(store) == T0 + 20 * MINUTE
    oldest = store.logs(limit=1, until_ms=T0 + 20 * MINUTE)
    assert oldest == [] and store.count_logs() == store.count_logs(since_ms=T0 + 20 * MINUTE) == 800
    assert trends(store) == before
    # Kept rows only, and said so: latency and payload fields cover what was kept.
    assert sum(r["count"] for r in analytics.latency(store, 3_600_000)) == 800
    amounts = {f["field"]: f["count"] for f in analytics.numeric_fields(store)}
    assert amounts["amount"] == sum(1 for n in range(400, 1_200) if n % 5 and n % 7 != 0)
    # A record that arrives late, with an old receipt time, is still counted exactly once.
    late = record(5_001, T0 + MINUTE)
    store.save([late])
    assert store.counts().total == before["counts"][0] + 1
    assert sum(r["messages"] for r in analytics.volume(store, MINUTE)) == 1_201
    store.close()


def test_the_background_pruner_prunes_and_stops(tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    Store(tmp_path).save(spread(600, 10, start=now - 20 * MINUTE) + spread(10, 1, start=now, first=600))
    store = Store(tmp_path, retention=Retention(max_age_ms=2 * MINUTE))  # prunes at once, in its thread
    assert store.pruner is not None
    wait_for(lambda: store.pruner.rounds >= 1, 30, "the first prune")
    assert store.pruner.pruned == 600 and store.count_logs() == 10
    assert store.counts().total == 610
    store.close()
    assert not store.pruner._thread.is_alive()


def test_the_pipeline_keeps_storing_while_pruning_runs(tmp_path: Path) -> None:
    """A writer stores 20,000 new records while a pruner deletes 50,000 old ones beside it."""
    store = Store(tmp_path)
    now = T0 + 24 * 60 * MINUTE
    store.save(spread(50_000, 60, start=now - 5 * 60 * MINUTE))
    stalls: list[float] = []
    done = threading.Event()

    def write() -> None:
        try:
            for batch in range(100):
                rows = [record(100_000 + batch * 200 + i, now + batch * 200 + i) for i in range(200)]
                started = time.perf_counter()
                assert all(store.save(rows))
                stalls.append(time.perf_counter() - started)
        finally:
            done.set()

    writer = threading.Thread(target=write)
    writer.start()
    deleted = retention.prune(
        store, Retention(max_age_ms=30 * MINUTE), now
    )  # the pruner's own loop, in this thread
    writer.join(120)
    assert done.is_set() and len(stalls) == 100  # every batch stored
    assert deleted == 50_000 and store.count_logs() == 20_000
    counts = store.counts()
    assert (counts.total, counts.processed + counts.failed) == (70_000, 70_000)
    assert sum(r["messages"] for r in analytics.volume(store, 3_600_000)) == 70_000
    print(f"worst commit of 200 rows while pruning: {max(stalls) * 1000:.1f} ms")
    store.close()


def test_a_schema_2_database_gets_its_aggregates_at_open(tmp_path: Path) -> None:
    """A database written before aggregates existed: they are built from its rows, once."""
    store = Store(tmp_path)
    store.save(spread(700, 14))
    before = trends(store)
    store.close()
    with sqlite3.connect(tmp_path / DB_NAME) as db:  # what the previous version left
        db.execute("DROP TABLE log_minutes")
    migrated = Store(tmp_path)
    with migrated.read() as db:
        assert db.execute("SELECT SUM(messages) FROM log_minutes").fetchone()[0] == 700
    assert trends(migrated) == before
    migrated.close()


def test_aggregates_that_do_not_add_up_are_rebuilt(tmp_path: Path) -> None:
    """Rows written by a version that kept no aggregates (after a downgrade) are counted at open."""
    store = Store(tmp_path)
    store.save(spread(100, 2))
    store.close()
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        db.execute("DELETE FROM log_minutes WHERE status = ?", (FAILED,))
    reopened = Store(tmp_path)
    assert (reopened.counts().processed, reopened.counts().failed) == (80, 20)
    reopened.close()


# --- payload fields ----------------------------------------------------------------------------


def test_numeric_field_counts_are_exact_beyond_any_sample(tmp_path: Path) -> None:
    store = Store(tmp_path)
    rows = [record(n, T0 + n, payload={"amount": n, "id": str(n)}) for n in range(8_000)]
    store.save(rows)
    carrying = sum(1 for n in range(8_000) if n % 5)  # FAILED records keep no payload
    fields = {f["field"]: f for f in analytics.numeric_fields(store)}
    assert fields["amount"]["count"] == carrying == 6_400
    assert fields["amount"]["records"] == 6_400 and fields["amount"]["sampled"] is False
    assert fields["id"]["count"] == 6_400  # text that spells a number counts, as in CSV
    sampled = analytics.numeric_fields(store, sample=1_000)
    assert {f["field"]: (f["count"], f["records"], f["sampled"]) for f in sampled} == {
        "amount": (1_000, 1_000, True),
        "id": (1_000, 1_000, True),
    }
    window = analytics.numeric_fields(store, since_ms=T0 + 1_000, until_ms=T0 + 2_000)
    assert window[0]["count"] == 800 and not window[0]["sampled"]
    store.close()


def test_nested_numeric_fields_are_listed_and_charted(tmp_path: Path) -> None:
    store = Store(tmp_path)
    payloads = [
        {"a": {"b": {"c": 1.5}}, "order": {"total": 10, "items": [{"price": 3}], "tags": [1, 2]}},
        {"a": {"b": {"c": 2.5}}, "odd key": {"x.y": 4, 'q"t': 5}, "flag": True, "none": None},
        {"a": {"b": "not a number"}, "deep": {"l1": {"l2": {"l3": {"l4": 7}}}}},
    ]
    store.save([record(n + 1, T0 + n, payload=p) for n, p in enumerate(payloads)])
    fields = {f["field"]: f["count"] for f in analytics.numeric_fields(store)}
    assert fields == {
        "a.b.c": 2,
        "order.total": 1,
        '"odd key"."x.y"': 1,
        '"odd key"."q\\"t"': 1,
        "deep.l1.l2.l3.l4": 1,
    }
    series = analytics.field_series(store, "a.b.c", 3_600_000)
    assert [(r["count"], r["sum"], r["max"]) for r in series] == [(2, 4.0, 2.5)]
    for name in fields:  # every listed name charts its values
        assert sum(r["count"] for r in analytics.field_series(store, name, 3_600_000)) == fields[name]
    assert analytics.field_series(store, "order.items", 3_600_000) == []
    assert analytics.field_series(store, "') OR 1=1 --", 3_600_000) == []
    store.close()


def test_csv_columns_stay_plain_names(tmp_path: Path) -> None:
    store = Store(tmp_path)
    batch = [{"unit price": "2.5", "qty": "3", "sku": "A1"}, {"unit price": "1", "qty": "x", "sku": "B"}]
    store.save([record(1, T0, payload=batch)])
    fields = {f["field"]: f["count"] for f in analytics.numeric_fields(store)}
    assert fields == {"unit price": 2, "qty": 1}
    assert [r["sum"] for r in analytics.field_series(store, "unit price", MINUTE)] == [3.5]
    assert record(1, T0).status == PROCESSED
    store.close()
