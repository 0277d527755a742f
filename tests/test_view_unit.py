"""A view applying the events topic: stored rows become events with a seq that every view agrees on.

No broker here: records are fed to :class:`backend.view.EventsApplier` as the reader would, with a
real SQLite store and bus (tests/test_cluster_views.py runs views against Apache Kafka).
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from backend import event_log, events
from backend import store as store_module
from backend import view as view_module
from backend.bus import EventBus
from backend.cluster import ConsumerDirectory, free_consumer_ids
from backend.event_log import ConsumerReport, WorkerReport
from backend.replay_journal import ReplayJournal
from backend.store import LogRow, Store
from backend.view import EventsApplier

WORKER = "abcd1234-w1"


def row(offset: int, status: str = events.PROCESSED, error: str | None = None) -> LogRow:
    return LogRow(
        log_id=events.make_log_id("c", "orders", 0, offset), cluster_id="c", topic="orders", partition=0,
        offset=offset, record_key=f"k{offset}", data_type=events.SINGLE_MESSAGE, row_count=1, status=status,
        consumer_id="consumer-1", error=error, produced_ms=1, received_ms=1_000 + offset,
        started_ms=1_000 + offset, completed_ms=1_001 + offset, size_bytes=10, payload={"n": offset},
    )  # fmt: skip


TopicRecord = tuple[list[tuple[str, bytes]], bytes]


def rows_record(rows: list[LogRow]) -> TopicRecord:
    (value,) = event_log.encode_rows(WORKER, "consumer-1", rows)
    return event_log.headers_for(event_log.ROWS), value


def report(consumer: str, status: str = events.ACTIVE, reporter: str = WORKER, started: str = "t1"):
    value = event_log.encode_consumer(
        ConsumerReport(consumer, WORKER, status, started_at=started, polled=True, reporter=reporter)
    )
    return event_log.headers_for(event_log.CONSUMER), value


class View:
    """A view's store, bus and applier in a directory; ``events`` records what the bus published."""

    def __init__(self, path: Path) -> None:
        self.store = Store(path)
        self.bus = EventBus(start_seq=EventsApplier.start_seq(self.store))
        self.events: list[events.Event] = []
        self.bus.subscribe(self.events.append)
        self.applier = EventsApplier(self.store, self.bus, ConsumerDirectory())

    def feed(self, records: list[TopicRecord], first_offset: int = 0) -> None:
        """One record at a time, as a view that is caught up gets them."""
        for offset, (headers, value) in enumerate(records, start=first_offset):
            self.applier.apply(offset, headers, value)

    def feed_at_once(
        self, records: list[tuple[list[tuple[str, bytes]], bytes]], first_offset: int = 0
    ) -> None:
        """All in one call, as one poll of a view that catches up hands them over."""
        self.applier.apply_many(
            [(offset, headers, value) for offset, (headers, value) in enumerate(records, start=first_offset)]
        )

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def view(tmp_path: Path):
    v = View(tmp_path / "a")
    yield v
    v.close()


def test_rows_become_three_events_each_then_stats(view: View) -> None:
    view.feed([rows_record([row(0), row(1, events.FAILED, "bad JSON")])])
    names = [e.name for e in view.events]
    assert names == [
        events.MESSAGE_RECEIVED, events.PROCESSING_STARTED, events.PROCESSING_COMPLETED,
        events.MESSAGE_RECEIVED, events.PROCESSING_STARTED, events.PROCESSING_FAILED,
        events.STATS_UPDATED,
    ]  # fmt: skip
    assert [e.seq for e in view.events] == list(range(1, 8))
    assert view.events[0].data["key"] == "k0" and view.events[0].data["offset"] == "0"
    assert view.events[5].data["error"] == "bad JSON"
    assert view.events[-1].data["totalMessages"] == 2 and view.events[-1].data["failedMessages"] == 1


def test_a_row_written_twice_is_stored_and_announced_once(view: View) -> None:
    view.feed([rows_record([row(0), row(1)]), rows_record([row(1), row(2)])])
    outcomes = [e for e in view.events if e.name in events.OUTCOME_EVENTS]
    assert [e.data["logId"] for e in outcomes] == [row(0).log_id, row(1).log_id, row(2).log_id]
    assert view.store.counts().total == 3
    assert view.bus.last_seq == len(view.events)


def test_a_restarted_view_goes_on_with_the_same_seq_and_position(tmp_path: Path) -> None:
    first = View(tmp_path / "a")
    first.feed([rows_record([row(0)]), report("consumer-1")])
    seq, position = first.bus.last_seq, first.applier.position
    first.close()
    again = View(tmp_path / "a")
    assert again.bus.last_seq == seq and again.applier.position == position == 2
    assert again.applier.directory.entry("consumer-1").status == events.ACTIVE
    again.feed([rows_record([row(1)])], first_offset=2)
    assert again.events[0].seq == seq + 1
    again.close()


def test_two_views_give_the_same_events_the_same_seq(tmp_path: Path) -> None:
    records = [
        report("consumer-1"),
        rows_record([row(0), row(1)]),
        rows_record([row(1)]),  # a redelivery: nothing
        report("consumer-1", events.INACTIVE, reporter="view:x"),
        report("consumer-1", events.INACTIVE, reporter="view:y"),  # the second view's same finding
        rows_record([row(2)]),
    ]
    a, b = View(tmp_path / "a"), View(tmp_path / "b")
    a.feed(records)
    b.feed(records[:3])
    b.close()
    b = View(tmp_path / "b")  # b restarts in the middle
    b.feed(records[3:], first_offset=3)
    seen_a = {(e.seq, e.name, e.data.get("logId"), e.data.get("consumerId")) for e in a.events}
    seen_b = {(e.seq, e.name, e.data.get("logId"), e.data.get("consumerId")) for e in b.events}
    assert seen_b <= seen_a and max(s for s, *_ in seen_b) == a.bus.last_seq
    changes = [e for e in a.events if e.name == events.CONSUMER_STATUS_CHANGED]
    assert [(e.data["consumerId"], e.data["status"]) for e in changes] == [
        ("consumer-1", events.ACTIVE), ("consumer-1", events.INACTIVE)
    ]  # fmt: skip
    a.close()
    b.close()


def test_unreadable_records_are_skipped_and_the_view_goes_on(view: View) -> None:
    hostile = [
        ([], b"not json"),
        (event_log.headers_for(event_log.ROWS), b""),
        (
            event_log.headers_for(event_log.ROWS),
            b'{"v": 1, "worker": "w", "consumer": "c", "rows": [[1, 2]]}',
        ),
        (event_log.headers_for("surprise"), b'{"v": 1}'),
        (event_log.headers_for(event_log.ROWS), b'{"v": 99, "rows": []}'),
        (event_log.headers_for(event_log.CONSUMER), b"[" * 100_000),
    ]
    view.feed([*hostile, rows_record([row(0)])])
    assert view.applier.position == len(hostile) + 1
    assert [e.name for e in view.events][-1] == events.STATS_UPDATED
    assert view.store.counts().total == 1


def test_a_worker_that_stops_takes_its_consumers_with_it(view: View) -> None:
    view.feed([report("consumer-1"), report("consumer-2")])
    down = event_log.encode_worker(WorkerReport(WORKER, "down"))
    view.feed([(event_log.headers_for(event_log.WORKER), down)], first_offset=2)
    assert view.applier.directory.active_count() == 0
    changes = [e.data["status"] for e in view.events if e.name == events.CONSUMER_STATUS_CHANGED]
    assert changes == [events.ACTIVE, events.ACTIVE, events.INACTIVE, events.INACTIVE]


def test_a_new_life_of_a_consumer_clears_what_views_said(view: View) -> None:
    view.feed([report("consumer-1"), report("consumer-1", events.INACTIVE, reporter="view:x")])
    assert view.applier.directory.entry("consumer-1").status == events.INACTIVE
    view.feed([report("consumer-1")], first_offset=2)  # the same life: still out
    assert view.applier.directory.entry("consumer-1").status == events.INACTIVE
    view.feed([report("consumer-1", started="t2")], first_offset=3)
    assert view.applier.directory.entry("consumer-1").status == events.ACTIVE


def test_free_consumer_ids_skip_active_names_of_other_instances(view: View) -> None:
    view.feed([report("consumer-1"), report("consumer-3")])
    assert free_consumer_ids(view.applier.directory, 3, set()) == ["consumer-2", "consumer-4", "consumer-5"]
    assert free_consumer_ids(view.applier.directory, 2, {WORKER}) == ["consumer-1", "consumer-2"]


# --- the replay journal: what a view published, read back from its store ---------------------


def mixed_records() -> list[tuple[list[tuple[str, bytes]], bytes]]:
    return [
        report("consumer-1"),
        rows_record([row(0), row(1, events.FAILED, "bad JSON")]),
        rows_record([row(1), row(2)]),  # a redelivery of row 1: only row 2 is new
        ([], b"not json"),  # skipped: no event
        report("consumer-1", events.INACTIVE, reporter="view:x"),
        rows_record([row(3)]),
    ]


def published(view: View) -> list[tuple[int, str, dict]]:
    """What the view published; the time of a stats or status event is the view's own clock."""
    timed = (events.STATS_UPDATED, events.CONSUMER_STATUS_CHANGED)
    return [
        (e.seq, e.name, {k: v for k, v in e.data.items() if not (k == "timestamp" and e.name in timed)})
        for e in view.events
    ]


def test_records_applied_together_publish_what_one_at_a_time_does(tmp_path: Path, monkeypatch) -> None:
    """A view that catches up stores many records per transaction; its events (seq, name, data,
    stats after each record) and journal are the same as a view that applied them one by one."""
    monkeypatch.setattr(view_module, "GROUP_MAX_ROWS", 3)  # groups also split on size
    records = [*mixed_records(), rows_record([row(4), row(5)]), rows_record([row(5), row(6), row(7)])]
    alone, together = View(tmp_path / "a"), View(tmp_path / "b")
    try:
        alone.feed(records)
        together.feed_at_once(records)
        assert published(together) == published(alone)
        stats = [e.data["totalMessages"] for e in together.events if e.name == events.STATS_UPDATED]
        assert stats == sorted(stats) and stats[-1] == 8
        assert together.applier.position == alone.applier.position == len(records)
        last = alone.bus.last_seq
        assert ReplayJournal(together.store).since(0, last) == together.events
        entries = [(e.first_seq, e.last_seq) for e in together.store.journal(0, last)]
        assert entries == [(e.first_seq, e.last_seq) for e in alone.store.journal(0, last)]  # one per record
    finally:
        alone.close()
        together.close()


def test_a_row_in_two_records_of_one_transaction_is_stored_and_announced_once(view: View) -> None:
    view.feed_at_once([rows_record([row(0), row(1)]), rows_record([row(1), row(2)]), rows_record([row(2)])])
    outcomes = [e.data["logId"] for e in view.events if e.name in events.OUTCOME_EVENTS]
    assert outcomes == [row(0).log_id, row(1).log_id, row(2).log_id]
    assert [e.data["totalMessages"] for e in view.events if e.name == events.STATS_UPDATED] == [2, 3]
    assert view.store.counts().total == 3 and view.applier.position == 3


def test_a_store_that_cannot_write_keeps_what_was_applied_and_says_where_to_go_on(
    view: View, monkeypatch
) -> None:
    view.feed_at_once([rows_record([row(0)])])
    real_save = view.store.save_outcomes

    def refuse(*args, **kwargs):
        raise store_module.StoreUnavailable("disk full")

    monkeypatch.setattr(view.store, "save_outcomes", refuse)
    with pytest.raises(store_module.StoreUnavailable):
        view.feed_at_once(
            [report("consumer-1"), rows_record([row(1)]), rows_record([row(2)])], first_offset=1
        )
    assert view.applier.position == 2  # the report was applied; the rows were not
    assert view.store.counts().total == 1 and view.bus.last_seq == len(view.events)
    monkeypatch.setattr(view.store, "save_outcomes", real_save)
    view.feed_at_once([rows_record([row(1)]), rows_record([row(2)])], first_offset=2)
    assert view.store.counts().total == 3 and view.applier.position == 4


def test_the_journal_gives_back_every_published_event_after_a_restart(tmp_path: Path) -> None:
    first = View(tmp_path / "a")
    first.feed(mixed_records())
    published = list(first.events)
    first.close()
    again = View(tmp_path / "a")  # as after a SIGKILL: the bus holds nothing
    try:
        assert again.bus.since(0) is None
        journal = ReplayJournal(again.store)
        assert journal.since(0, published[-1].seq) == published
        for after in (1, 5, 8, published[-1].seq - 1):  # from any seq, also inside an entry
            assert journal.since(after, published[-1].seq) == published[after:]
        assert journal.since(3, 6) == published[3:6]
        assert journal.since(published[-1].seq, published[-1].seq) == []
        assert journal.since(0, published[-1].seq + 1) is None  # not published yet: not held
    finally:
        again.close()


def test_the_journal_does_not_replay_rows_that_retention_pruned(view: View) -> None:
    view.feed([rows_record([row(0)]), rows_record([row(1)])])
    with view.store._transaction() as cursor:  # what RETENTION does to an old row
        cursor.execute("DELETE FROM log_rows WHERE log_id = ?", (row(0).log_id,))
    journal = ReplayJournal(view.store)
    assert journal.since(0, view.bus.last_seq) is None
    assert journal.since(4, view.bus.last_seq) == view.events[4:]  # after it: still whole


def test_the_journal_keeps_a_bounded_number_of_events(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(store_module, "JOURNAL_EVENTS", 8)
    view = View(tmp_path / "a")
    try:
        view.feed([rows_record([row(n)]) for n in range(6)])  # 4 events each: 24
        journal = ReplayJournal(view.store)
        assert journal.since(0, view.bus.last_seq) is None
        assert journal.since(12, view.bus.last_seq) == view.events[12:]
    finally:
        view.close()


def test_waiting_for_the_directory_wakes_on_the_change_and_times_out_without_one() -> None:
    directory = ConsumerDirectory()

    def active() -> bool:
        entry = directory.entry("consumer-1")  # the condition may read the directory
        return entry is not None and entry.status == events.ACTIVE

    assert not directory.wait_until(active, 0.05)
    applier = threading.Thread(
        target=directory.apply_consumer,
        args=(ConsumerReport("consumer-1", WORKER, events.ACTIVE, started_at="t1", polled=True),),
    )
    applier.start()
    assert directory.wait_until(active, 30)
    applier.join()
