"""The dashboard's pages under Streamlit's AppTest, on a real backend (the pieces behind the pages,
without Streamlit: test_analytics.py).

The backend is real and scoped to this module: an embedded broker (Tansu), the
store in a temporary directory and three consumers, started without HTTP
servers (AppTest draws no browser, and free ports stay free). It is installed
as the process's backend with ``dashboard.runtime.install``, which is what the
st.App lifespan does in ``streamlit run``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from backend import events
from backend.config import Settings
from backend.events import FAILED, SINGLE_MESSAGE
from backend.service import Backend
from backend.store import Store
from dashboard import charts, fmt, runtime
from dashboard.source import LocalSource, RemoteSource
from tests.support import ServedBackend, free_port, stored_rows, wait_for

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
    before = with_data.active_consumers()
    [start] = [b for b in app.button if b.label == "Start a consumer"]
    start.click().run()
    assert not problems(app)
    assert with_data.active_consumers() == before + 1
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


# --- how the pages write times, counts and shares (the specs behind them: test_dashboard_formats) -


def column_configs(table: Any) -> dict[str, dict[str, Any]]:
    """A st.dataframe's column_config as the browser receives it."""
    return json.loads(table.proto.columns)


def test_the_trends_charts_have_24_hour_axes_whole_counts_and_uncut_legends(with_data: Backend) -> None:
    app = render("pages/trends.py")
    app.segmented_control(key="trends_range").set_value("All").run()
    assert not problems(app)
    specs = [json.loads(chart.proto.spec) for chart in app.get("vega_lite_chart")]
    assert len(specs) == 6, "volume by status, type and topic, failure rate, latency, payload field"
    for spec in specs:
        assert spec["encoding"]["x"]["axis"]["format"] == charts.TIME_FORMAT
        if "legend" in spec["encoding"].get("color", {}):
            assert spec["encoding"]["color"]["legend"]["labelLimit"] == charts.LEGEND_PX
    counted = [s for s in specs if s["encoding"]["y"].get("title") == "messages"]
    assert len(counted) == 3 and all(s["encoding"]["y"]["axis"]["format"] == ",d" for s in counted)
    assert "~s" not in json.dumps(specs)
    failure = next(c.value for c in app.caption if "overall" in c.value)
    assert re.search(r" 1\d\.\d% overall", failure), failure  # 20 of about 120, one decimal


def test_counts_and_shares_in_tables_have_one_format(with_data: Backend) -> None:
    failed = render("pages/failed.py")
    groups = column_configs(failed.dataframe[0])
    assert groups["count"]["type_config"]["format"] == fmt.COUNT_FORMAT
    assert groups["retriable"]["type_config"]["format"] == fmt.COUNT_FORMAT
    overview = render(PAGES[0])
    [topics] = [t for t in overview.dataframe if "failed_share" in t.value]
    share = column_configs(topics)["failed_share"]["type_config"]
    assert (share["format"], share["max_value"]) == (fmt.PERCENT_FORMAT, 100)
    shares = topics.value.set_index("topic")["failed_share"]
    assert 0 < shares["orders"] <= 100 and shares.max() <= 100
    assert fmt.PERCENT_FORMAT % shares["payments"] == f"{shares['payments']:.1f}%"
    consumers = column_configs(render("pages/consumers.py").dataframe[0])
    assert {consumers[c]["type_config"]["format"] for c in ("lag", "processed", "failed")} == {
        fmt.COUNT_FORMAT
    }


def test_the_overview_topics_table_fits_in_half_a_1280_px_window(with_data: Backend) -> None:
    """A topic column sized to its longest name pushed "Last" out of sight (seen in Chromium)."""
    overview = render(PAGES[0])
    [topics] = [t for t in overview.dataframe if "failed_share" in t.value]
    configs = column_configs(topics)
    shown = ("topic", "total", "failed", "failed_share", "last")
    widths = {name: configs[name].get("width") for name in shown}
    assert all(isinstance(width, int) for width in widths.values()), widths
    assert sum(widths.values()) <= 400


# --- attached to a backend elsewhere (BACKEND_URL) ----------------------------------------------


@pytest.fixture(scope="module")
def served_settings() -> dict[str, Any]:
    """A second, separate backend with its gateway and producer API, on its own embedded broker."""
    return {"bootstrap_servers": None, "consumer_count": 2}


@pytest.fixture(scope="module")
def filled(served: ServedBackend) -> ServedBackend:
    """The served backend with stored records of every kind: what the analytics pages draw."""
    assert served.backend.store is not None
    served.backend.store.save(stored_rows(int(time.time() * 1000)))
    return served


@pytest.mark.parametrize("shares_data_dir", [True, False], ids=["same-data-dir", "rest-only"])
def test_pages_render_attached_to_a_running_backend(
    backend: Backend, filled: ServedBackend, tmp_path: Path, shares_data_dir: bool
) -> None:
    served = filled
    settings = Settings(
        backend_url=f"http://127.0.0.1:{served.settings.gateway_port}",
        producer_port=served.settings.producer_port,
        data_dir=served.settings.data_dir if shares_data_dir else tmp_path,
    )
    remote = RemoteSource(settings).start()
    runtime.install(remote)
    try:
        # Attached, the dashboard reads everything over REST: it never opens the SQLite file, even
        # when it could (same DATA_DIR), so a backend on another machine serves every page.
        assert not [name for name, value in vars(remote).items() if isinstance(value, Store)]
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
        failed = render("pages/failed.py")
        metrics = {m.label: m.value for m in failed.metric}
        assert (metrics["Failed records"], metrics["Kinds of error"], metrics["Can be retried"]) == (
            "20",
            "2",
            "10",
        )
        trends = render("pages/trends.py")
        trends.segmented_control(key="trends_range").set_value("All").run()
        assert not problems(trends)
        assert "amount" in str(trends.selectbox(key="trends_field").options)
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
