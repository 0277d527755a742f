"""The dashboard's pages under Streamlit's AppTest, on a real backend; and the helpers behind them.

The backend is real and scoped to this module: an embedded broker (Tansu), the
store in a temporary directory and three consumers, started without HTTP
servers (AppTest draws no browser, and free ports stay free). It is installed
as the process's backend with ``dashboard.runtime.install``, which is what the
st.App lifespan does in ``streamlit run``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from backend import analytics, events
from backend.config import Settings
from backend.events import CSV_BATCH, FAILED, PROCESSED, SINGLE_MESSAGE, make_log_id
from backend.service import Backend
from backend.store import LogRow, Store
from dashboard import producing, runtime
from dashboard.live import LiveFeed
from dashboard.source import LocalSource, RemoteSource
from tests.support import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "dashboard_app.py"
PAGES = [
    "pages/overview.py",
    "pages/logs.py",
    "pages/trends.py",
    "pages/failed.py",
    "pages/producer.py",
    "pages/consumers.py",
]
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("dashboard-data"),
        gateway_port=free_port(),
        producer_port=free_port(),
        consumer_count=3,
    )
    started = Backend(settings).start(serve_http=False)
    runtime.install(LocalSource(started))
    wait_for(lambda: started.health().ok, 30, "the consumers to reach the embedded broker")
    yield started
    runtime.install(None)
    started.stop()


def render(page: str) -> AppTest:
    """Run the app, switch to ``page`` and run it again (AppTest needs a first run to know the pages)."""
    app = AppTest.from_file(str(APP), default_timeout=30)
    app.run()
    if page != PAGES[0]:
        app.switch_page(page).run()
    return app


def problems(app: AppTest) -> list[str]:
    return [str(exc.value) for exc in app.exception] + [str(e.value) for e in app.error]


def stored_rows(now_ms: int) -> list[LogRow]:
    """A spread of records: processed and failed, JSON and CSV, with and without payloads."""
    rows = []
    for offset in range(120):
        received = now_ms - (120 - offset) * 1000
        failed = offset % 6 == 0
        decode_failure = failed and offset % 12 == 0
        csv = offset % 10 == 5
        payload: object = {
            "orderId": offset,
            "amount": offset * 1.5,
            "note": HOSTILE if offset == 7 else "ok",
        }
        if csv:
            payload = [{"sku": "a", "qty": "2"}, {"sku": "b", "qty": "3"}]
        rows.append(
            LogRow(
                log_id=make_log_id("apptest", "orders", offset % 3, offset),
                cluster_id="apptest",
                topic="orders" if offset % 4 else "payments",
                partition=offset % 3,
                offset=offset,
                record_key=f"k{offset}" if offset % 5 == 0 else None,
                data_type=CSV_BATCH if csv else SINGLE_MESSAGE,
                row_count=2 if csv else 1,
                status=FAILED if failed else PROCESSED,
                consumer_id=f"consumer-{offset % 3 + 1}",
                error=(
                    f"invalid JSON: Expecting value at line 1 column {offset}"
                    if decode_failure
                    else ("ValueError: amount <script>alert(1)</script> too high" if failed else None)
                ),
                produced_ms=received - 5,
                received_ms=received,
                started_ms=received + 1,
                completed_ms=received + 2 + offset % 7,
                size_bytes=40,
                payload=None if decode_failure else payload,
            )
        )
    return rows


# --- every page, empty and with data ------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES)
def test_pages_render_on_an_empty_store(backend: Backend, page: str) -> None:
    assert backend.store is not None and backend.store.counts().total == 0
    app = render(page)
    assert not problems(app), problems(app)
    assert app.title, f"{page} drew no title"


def test_the_overview_offers_demo_traffic_when_nothing_arrived(backend: Backend) -> None:
    app = render(PAGES[0])
    assert [b for b in app.button if b.label == "Start demo traffic"]


@pytest.fixture(scope="module")
def with_data(backend: Backend) -> Backend:
    """The store with a spread of stored rows, plus one record that went through Kafka for real."""
    assert backend.store is not None
    backend.store.save(stored_rows(int(time.time() * 1000)))
    seq = backend.bus.last_seq
    backend.produce("apptest-live", json.dumps({"amount": 12.5}).encode(), SINGLE_MESSAGE)
    wait_for(
        lambda: any(e.name == events.PROCESSING_COMPLETED for e in backend.bus.since(seq) or []),
        30,
        "the produced record to be processed",
    )
    return backend


@pytest.mark.parametrize("page", PAGES)
def test_pages_render_with_data(with_data: Backend, page: str) -> None:
    app = render(page)
    assert not problems(app), problems(app)
    # User data is never rendered as markdown or HTML anywhere.
    for element in [*app.markdown, *app.caption, *app.get("html")]:
        assert "<script" not in str(element.value), f"{page}: payload text reached markdown/HTML"


def test_the_logs_explorer_counts_and_filters(with_data: Backend) -> None:
    app = render("pages/logs.py")
    assert any("**121** matching records" in c.value for c in app.caption), [c.value for c in app.caption]
    app.segmented_control(key="logs_status").set_value(FAILED).run()
    assert not problems(app)
    assert any("**20** matching records" in c.value for c in app.caption), [c.value for c in app.caption]
    app.text_input(key="logs_text").set_value('orderId": 7,').run()
    assert not problems(app)


def test_the_trends_page_finds_payload_fields(with_data: Backend) -> None:
    app = render("pages/trends.py")
    app.segmented_control(key="trends_range").set_value("All").run()
    assert not problems(app)
    fields = app.selectbox(key="trends_field")
    assert "amount" in fields.options[0] or "amount" in str(fields.options)
    app.segmented_control(key="trends_aggregate").set_value("max").run()
    assert not problems(app)


def test_the_failed_page_groups_errors_and_knows_what_can_be_retried(with_data: Backend) -> None:
    app = render("pages/failed.py")
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Failed records"] == "20"
    assert metrics["Kinds of error"] == "2"  # the column numbers are particulars, not kinds
    assert metrics["Can be retried"] == "10"


def test_starting_a_consumer_from_the_page(with_data: Backend) -> None:
    app = render("pages/consumers.py")
    before = with_data.pool.active_count
    [start] = [b for b in app.button if b.label == "Start a consumer"]
    start.click().run()
    assert not problems(app)
    assert with_data.pool.active_count == before + 1
    new_id = f"consumer-{before + 1}"
    assert any(new_id in str(df.value.to_dict()) for df in app.dataframe)
    with_data.stop_consumer(new_id)


def test_sending_one_json_message_validates_first(with_data: Backend) -> None:
    app = render("pages/producer.py")
    app.text_area(key="single_body").set_value('{"amount": NaN}').run()
    assert any("NaN" in e.value for e in app.error)
    [send] = [b for b in app.button if b.label == "Send message"]
    assert send.disabled
    app.text_input(key="single_topic").set_value("apptest-single").run()
    app.text_area(key="single_body").set_value('{"amount": 3}').run()
    [send] = [b for b in app.button if b.label == "Send message"]
    assert not send.disabled
    send.click().run()
    assert any("apptest-single" in s.value for s in app.success), [s.value for s in app.success]


# --- attached to a backend elsewhere (BACKEND_URL) ----------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """A second, separate backend with its gateway and producer API, as `python -m backend` runs it."""
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("served-data"),
        gateway_port=free_port(),
        producer_port=free_port(),
        consumer_count=2,
    )
    started = Backend(settings).start(serve_http=True)
    wait_for(lambda: started.health().ok, 30, "the served backend")
    yield started
    started.stop()


@pytest.mark.parametrize("shares_data_dir", [True, False], ids=["same-data-dir", "rest-only"])
def test_pages_render_attached_to_a_running_backend(
    backend: Backend, served: Backend, tmp_path: Path, shares_data_dir: bool
) -> None:
    settings = Settings(
        backend_url=f"http://127.0.0.1:{served.settings.gateway_port}",
        producer_port=served.settings.producer_port,
        data_dir=served.settings.data_dir if shares_data_dir else tmp_path,
    )
    remote = RemoteSource(settings).start()
    runtime.install(remote)
    try:
        assert (remote.store is not None) == shares_data_dir
        wait_for(lambda: remote.connected, 10, "the /ws mirror to connect")
        produced = remote.produce("attached", json.dumps({"amount": 2}).encode(), SINGLE_MESSAGE)
        assert produced.topic == "attached"

        def mirrored() -> bool:
            held = remote.bus.since(remote.bus.oldest_seq - 1) or []
            return any(e.name == events.PROCESSING_COMPLETED for e in held)

        wait_for(mirrored, 30, "the outcome to reach the mirrored bus")
        wait_for(lambda: remote.statistics()["totalMessages"] >= 1, 10, "stats-updated to follow")
        assert [c.consumer_id for c in remote.consumers()] == ["consumer-1", "consumer-2"]
        for page in PAGES:
            app = render(page)
            assert not problems(app), (page, problems(app))
        logs = render("pages/logs.py")
        assert any(" matching record" in c.value and "**0**" not in c.value for c in logs.caption)
    finally:
        remote.close()
        runtime.install(LocalSource(backend))


# --- the dashboard process ---------------------------------------------------------------------


def test_a_bad_setting_stops_the_dashboard_with_one_line(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "DATA_DIR": str(tmp_path),
        "CONSUMER_COUNT": "many",
    }
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "dashboard_app.py",
        "--server.port",
        str(free_port()),
    ]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: CONSUMER_COUNT='many' is not a whole number"]


# --- the pieces behind the pages ---------------------------------------------------------------


def test_analytics_on_a_known_store(tmp_path: Path) -> None:
    store = Store(tmp_path)
    now = int(time.time() * 1000)
    store.save(stored_rows(now))
    volume = analytics.volume(store, 60_000)
    assert sum(r["messages"] for r in volume) == 120
    assert {r["status"] for r in volume} == {PROCESSED, FAILED}
    rate = analytics.failure_rate(store, 3_600_000)
    assert sum(r["failed"] for r in rate) == 20
    latency = analytics.latency(store, 3_600_000)
    assert latency and all(r["p50"] <= r["p90"] <= r["p99"] <= r["max"] for r in latency)
    assert max(r["max"] for r in latency) == 8
    groups = analytics.error_groups(store)
    assert [g.count for g in groups] == [10, 10]
    assert sorted(g.retriable for g in groups) == [0, 10]
    decode = next(g for g in groups if g.pattern.startswith("invalid JSON"))
    assert decode.pattern == "invalid JSON: Expecting value at line # column #"
    assert len(analytics.failed_records(store, decode.errors, 5)) == 5
    fields = {f["field"]: f["count"] for f in analytics.numeric_fields(store)}
    assert fields["amount"] == 88 and fields["qty"] == 2 * 12  # CSV text that spells a number counts
    series = analytics.field_series(store, "amount", 3_600_000)
    expected = sum(o * 1.5 for o in range(120) if o % 6 and o % 10 != 5)
    assert sum(r["sum"] for r in series) == pytest.approx(expected)
    assert max(r["max"] for r in series) == 119 * 1.5
    topics = {t["topic"]: t for t in analytics.topic_summary(store)}
    assert topics["payments"]["total"] == 30


def test_a_live_feed_follows_the_bus_and_stays_bounded(backend: Backend) -> None:
    feed = LiveFeed()
    source = LocalSource(backend)
    feed.sync(source)
    start = feed.cursor
    for number in range(500):
        log_id = f"feed-{number}"
        at = events.now_ms()
        backend.bus.publish(
            events.MESSAGE_RECEIVED, events.message_received(log_id, "feed", 0, number, SINGLE_MESSAGE, 1, at)
        )
        backend.bus.publish(
            events.PROCESSING_COMPLETED, events.processing_completed(log_id, "consumer-1", at)
        )
    new = feed.sync(source)
    assert new >= 1000  # and whatever the backend published meanwhile
    assert feed.cursor == start + new
    assert len(feed.rows) <= 200
    assert feed.tail(3)[0]["logId"] == "feed-499" and feed.tail(3)[0]["status"] == PROCESSED
    assert sum(r["count"] for r in feed.throughput(5, 5)) >= 500
    snapshot = feed.snapshot(None)
    assert snapshot["seq"] == feed.cursor and len(snapshot["rows"]) == 50


def test_a_feed_that_fell_behind_reloads_from_the_store(backend: Backend) -> None:
    feed = LiveFeed()
    source = LocalSource(backend)
    feed.sync(source)
    feed.cursor -= 10**6  # as if this tab slept through more than the bus holds
    newest = backend.bus.last_seq
    assert feed.sync(source) == 0
    assert feed.resyncs == 1 and newest <= feed.cursor <= backend.bus.last_seq


def test_retry_sends_the_decoded_payload_again() -> None:
    rows = stored_rows(int(time.time() * 1000))
    json_row = next(
        r for r in rows if r.status == FAILED and r.payload is not None and r.data_type == SINGLE_MESSAGE
    )
    value, data_type = producing.retry_payload(json_row)
    assert data_type == SINGLE_MESSAGE and json.loads(value) == json_row.payload
    csv_row = next(r for r in rows if r.data_type == CSV_BATCH)
    value, data_type = producing.retry_payload(csv_row)
    assert data_type == CSV_BATCH and value == b"sku,qty\na,2\nb,3\n"
    assert producing.retry_payload(next(r for r in rows if r.payload is None)) is None


def test_large_csv_files_are_split_into_batches_that_fit() -> None:
    header = ["id", "text"]
    rows = [{"id": str(i), "text": "x" * 50} for i in range(1000)]
    chunks = producing.csv_chunks(header, rows, 10_000)
    assert len(chunks) > 1 and all(len(c) <= 10_000 for c in chunks)
    assert all(c.startswith(b"id,text\n") for c in chunks)
    assert sum(c.count(b"\n") - 1 for c in chunks) == 1000
    assert producing.csv_chunks(header, rows[:3], 10_000) == [producing.to_csv(header, rows[:3])]


def test_demo_traffic_is_bounded_and_stoppable() -> None:
    sent: list[tuple[str, bytes, str]] = []

    def produce(topic: str, value: bytes, data_type: str, key: bytes | None) -> object:
        sent.append((topic, value, data_type))
        return None

    generator = producing.TrafficGenerator()
    run = generator.start(produce, "demo", 10_000, 10_000, 0.5)
    assert run.rate == producing.MAX_RATE and run.duration_s == producing.MAX_DURATION_S
    with pytest.raises(RuntimeError):
        generator.start(produce, "demo", 1, 1, 0)
    wait_for(lambda: run.sent >= 20, 10, "some demo records")
    generator.stop()
    wait_for(lambda: not run.running, 10, "the generator to stop")
    assert run.stopped and run.sent < run.planned
    assert 0 < run.bad < run.sent
    good = [
        json.loads(v)
        for _, v, t in sent
        if t == SINGLE_MESSAGE and b'"customer"' in v  # a good order, not one of the bad kinds
    ]
    assert good and all(isinstance(g["amount"], float) for g in good)
