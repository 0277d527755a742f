"""Markup in records is rendered inert in the example Vue page (examples/vue-client/).

What of a record reaches that page: its topic, partition, offset, data type, row count, status,
consumer and its processing ``error``. Topic names cannot carry markup (Kafka allows only
letters, digits, '.', '_', '-'; the producer API refuses anything else, checked below), so the
error is where a record's own text gets in: a user processor (PROCESSOR) that reports a bad
payload's text in its exception, and the decoder's error for an unknown ``data-type`` header,
which quotes the header. Both are produced here with ``<script>``, ``<img onerror>``, ``<svg
onload>`` and a Vue template expression in them, and checked on the live path (Socket.IO events)
and after a reload (REST /api/consumers/logs): no dialog fires, no injected element or script
runs, and the text is shown literally.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.processing import DecodedRecord
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

SCRIPT = "<script>window.__xss = 'script'; alert('script')</script>"
IMG = "<img src=x onerror=\"window.__xss = 'img'; alert('img')\">"
SVG = "<svg onload=\"window.__xss = 'svg'; alert('svg')\"></svg>"
TEMPLATE = "{{ constructor.constructor(\"window.__xss = 'vue'; alert('vue')\")() }}"
MARKUP = (SCRIPT, IMG, SVG, TEMPLATE)
HEADER = "<img src=x onerror=alert('hdr')>"  # the decoder quotes it (upper-cased) in its error
INJECTED = "#app script, #app img, #app svg, #app iframe, #app object, #app embed"


def reject_with_markup(record: DecodedRecord) -> None:
    """The PROCESSOR of this test: fails a record with the text of its ``markup`` field."""
    if isinstance(record.payload, dict) and "markup" in record.payload:
        raise ValueError(record.payload["markup"])


@pytest.fixture(scope="module")
def served_settings() -> dict[str, Any]:
    npm_install(VUE_DIR, "vue")  # before the backend starts, so its time is not the backend's
    return {
        "topics": (unique("xss-script-img"),),
        "consumer_count": 1,
        "processor": f"{__name__}:{reject_with_markup.__name__}",
    }


def expected_errors() -> list[str]:
    header = repr(HEADER.upper())
    return [f"ValueError: {markup}" for markup in MARKUP] + [f"unknown data-type header {header}"]


def produce_markup(served: ServedBackend, bootstrap: str) -> None:
    topic = served.settings.topics[0]
    with httpx.Client(timeout=30) as http:
        for markup in MARKUP:
            response = http.post(
                f"{served.producer}/api/producers/send/single",
                params={"topic": topic},
                json={"markup": markup},
            )
            assert response.status_code == 201, response.text
    producer = foreign_producer(bootstrap)
    try:
        producer.send(topic, value=b'{"name": "x"}', headers=[("data-type", HEADER.encode())]).get(timeout=30)
    finally:
        producer.close()


def test_markup_cannot_be_a_topic_name(served: ServedBackend) -> None:
    with httpx.Client(timeout=30) as http:
        for name in (SCRIPT, IMG):
            response = http.post(
                f"{served.producer}/api/producers/send/single", params={"topic": name}, json={"a": 1}
            )
            assert response.status_code == 400, response.text
            assert response.headers["content-type"].startswith("application/json")


def test_markup_in_records_is_shown_as_text_live_and_after_reload(served: ServedBackend, kafka: Any) -> None:
    expected = expected_errors()
    with static_server(VUE_DIR) as port, chromium() as browser:
        page = browser.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.goto(f"http://127.0.0.1:{port}/index.html?gateway={served.gateway}")
        page.get_by_test_id("status").filter(has_text="WebSocket: connected").wait_for(timeout=30_000)

        def check_inert(where: str) -> None:
            failed = page.get_by_test_id("log-status").filter(has_text="failed")
            wait_for(lambda: failed.count() >= len(expected), 60, f"the failed records, {where}")
            cells = page.get_by_test_id("logs").locator("td").all_inner_texts()
            for error in expected:  # each error is one cell's text, exactly as the server sent it
                assert error in cells, f"{where}: {error!r} is not shown as text"
            assert dialogs == [], f"{where}: dialogs fired: {dialogs}"
            assert page.locator(INJECTED).count() == 0, f"{where}: injected elements in the page"
            assert page.evaluate("window.__xss") is None, f"{where}: injected code ran"

        produce_markup(served, kafka.bootstrap)
        check_inert("live, from Socket.IO events")
        page.reload()
        page.get_by_test_id("status").filter(has_text="WebSocket: connected").wait_for(timeout=30_000)
        check_inert("after a reload, from the REST API")
