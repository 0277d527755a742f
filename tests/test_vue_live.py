"""The example Vue page (examples/vue-client/) in live mode, in headless Chromium, through a burst.

The page's "Live mode (sampled)" switch reconnects its Socket.IO with ``auth: {mode: "live",
maxRate: 100}``. Against a served backend on Apache Kafka, a burst produced straight to Kafka must
reach it as ``records-skipped`` (shown on the page), and its counters, which then come from
``stats-updated`` alone, must end at the backend's exact totals. The default stays the seed's
``mode=all`` (tests/test_socketio_client.py covers that page as the seed had it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    ServedBackend,
    chromium,
    foreign_producer,
    npm_install,
    static_server,
    unique,
    wait_for,
)

VUE_DIR = Path(__file__).resolve().parent.parent / "examples" / "vue-client"
BURST = 5_000


@pytest.fixture(scope="module")
def served_settings() -> dict[str, Any]:
    npm_install(VUE_DIR, "vue")  # before the backend starts, so its time is not the backend's
    return {"topics": (unique("vue-live"),), "consumer_count": 2}


def statistics(served: ServedBackend) -> dict[str, Any]:
    return httpx.get(f"{served.gateway}/api/consumers/statistics", timeout=10).json()


def produce_burst(served: ServedBackend, count: int) -> None:
    """Records as any other application sends them, as fast as Kafka takes them."""
    producer = foreign_producer(served.bootstrap)
    try:
        for number in range(count):
            producer.send(served.topic, f'{{"n": {number}}}'.encode())
        producer.flush()
    finally:
        producer.close()


def test_the_vue_page_in_live_mode_shows_skipped_records_and_exact_counters(served: ServedBackend) -> None:
    with static_server(VUE_DIR) as port, chromium() as browser:
        page = browser.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        frames: list[str] = []
        page.on("websocket", lambda ws: ws.on("framesent", lambda payload: frames.append(str(payload))))
        page.goto(f"http://127.0.0.1:{port}/index.html?gateway={served.gateway}")
        status = page.get_by_test_id("status")
        status.filter(has_text="WebSocket: connected").wait_for(timeout=30_000)
        switch = page.get_by_test_id("live-mode")
        assert not switch.is_checked()  # the seed's mode=all by default
        assert page.get_by_test_id("skipped").count() == 0

        switch.check()
        status.filter(has_text="WebSocket: connected").wait_for(timeout=30_000)
        wait_for(lambda: any('"mode":"live"' in frame for frame in frames), 10, "the live subscription")
        assert any('"maxRate":100' in frame for frame in frames)
        skipped = page.get_by_test_id("skipped")
        assert skipped.inner_text().startswith("Live mode: 0 records skipped")

        before = statistics(served)
        produce_burst(served, BURST)
        total = before["totalMessages"] + BURST
        wait_for(
            lambda: statistics(served)["processedMessages"] == before["processedMessages"] + BURST,
            120,
            "the burst",
        )

        def shown(name: str) -> int:
            return int(page.get_by_test_id(name).inner_text())

        wait_for(lambda: shown("totalMessages") == total, 30, "the page's total to reach the backend's")
        wait_for(
            lambda: shown("processedMessages") == before["processedMessages"] + BURST,
            30,
            "the processed count",
        )
        assert shown("failedMessages") == before["failedMessages"]
        count = int(skipped.inner_text().split(" records skipped")[0].rsplit(" ", 1)[-1].replace(",", ""))
        assert 0 < count < BURST, skipped.inner_text()
        rows = page.get_by_test_id("log-status").all_inner_texts()
        assert 0 < len(rows) <= 50
        assert status.inner_text() == "WebSocket: connected"  # never cut off
        page.screenshot(path=str(_artifact("vue-live-after-burst.png")), full_page=True)
        assert problems == []


def _artifact(name: str) -> Path:
    directory = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"
    directory.mkdir(parents=True, exist_ok=True)
    return directory / name
