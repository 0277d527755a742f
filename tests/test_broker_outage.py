"""The broker goes away for 30 s mid-stream: the backend and the dashboard say so, it recovers by
itself, and nothing is lost."""

from __future__ import annotations

import json
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

from backend.events import FAILED
from backend.service import Backend
from dashboard import runtime
from dashboard.source import LocalSource
from tests.support import backend_settings, create_topic, foreign_producer, start_backend, unique, wait_for

APP = Path(__file__).resolve().parent.parent / "dashboard_app.py"

OUTAGE_S = 30


def test_broker_outage_is_reported_and_survived(kafka, tmp_path: Path) -> None:
    topic = unique("outage")
    create_topic(kafka.bootstrap, topic, partitions=3)
    backend = start_backend(backend_settings(tmp_path, kafka.bootstrap, topics=(topic,)))
    before, after = 400, 400
    try:
        producer = foreign_producer(kafka.bootstrap)
        for i in range(before):
            producer.send(topic, value=json.dumps({"i": i}).encode() if i % 9 else b"<not json>")
        producer.flush()
        producer.close()
        wait_for(lambda: backend.store.count_logs(topic=topic) >= before // 2, 60, "half of the first part")

        kafka.stop()
        try:
            wait_for(lambda: not backend.health().ok, 15, "health to turn bad")
            assert "broker unreachable" in (backend.health().reason or "")
            assert backend.health().to_api()["status"] != "ok"
            sidebar = dashboard_sidebar(backend)
            assert "unreachable" in sidebar and "broker unreachable" in sidebar, sidebar
            time.sleep(OUTAGE_S)  # the outage itself: a duration under test, not synchronisation
        finally:
            kafka.start()

        wait_for(lambda: backend.health().ok, 60, "health to recover")
        sidebar = dashboard_sidebar(backend)
        assert "reachable" in sidebar and "unreachable" not in sidebar, sidebar
        producer = foreign_producer(kafka.bootstrap)
        for i in range(before, before + after):
            producer.send(topic, value=json.dumps({"i": i}).encode() if i % 9 else b"<not json>")
        producer.flush()
        producer.close()
        wait_for(
            lambda: backend.store.count_logs(topic=topic) >= before + after,
            120,
            "every record after recovery",
        )
        logs = backend.store.logs(limit=2000, topic=topic)
    finally:
        backend.stop()
    total = before + after
    assert len(logs) == total
    assert len({(log.partition, log.offset) for log in logs}) == total
    assert sum(1 for log in logs if log.status == FAILED) == len(range(0, total, 9))


def dashboard_sidebar(backend: Backend) -> str:
    """The text of the dashboard's sidebar (its System block) with ``backend`` as the process's backend."""
    runtime.install(LocalSource(backend))
    try:
        app = AppTest.from_file(str(APP), default_timeout=30)
        app.run()
        assert not app.exception, [exc.value for exc in app.exception]
        parts = [element.value for element in app.sidebar.markdown] + [c.value for c in app.sidebar.caption]
        return "\n".join(str(part) for part in parts)
    finally:
        runtime.install(None)
