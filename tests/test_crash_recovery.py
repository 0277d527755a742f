"""SIGKILL the backend mid-stream, start it again: nothing lost, nothing counted twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from backend.store import Store
from tests.support import create_topic, foreign_producer, free_port, unique, wait_for

ROOT = Path(__file__).resolve().parent.parent


def run_backend(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``python -m backend`` and return once it says it is ready (it has its signal handlers then)."""
    readies = log_path.read_text().count("Backend ready") if log_path.exists() else 0
    log_file = log_path.open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "backend"], cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT
    )
    wait_for(
        lambda: process.poll() is None and log_path.read_text().count("Backend ready") > readies,
        60,
        "the backend to be ready",
    )
    return process


def stored(data_dir: Path, topic: str) -> int:
    if not (data_dir / "dashboard.sqlite3").exists():
        return 0
    store = Store(data_dir)
    try:
        return store.count_logs(topic=topic)
    finally:
        store.close()


def test_sigkill_mid_stream_then_restart_counts_exactly(kafka, tmp_path: Path) -> None:
    topic = unique("crash")
    create_topic(kafka.bootstrap, topic, partitions=3)
    data_dir = tmp_path / "data"
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
        "KAFKA_TOPICS": topic,
        "KAFKA_GROUP_ID": unique("crash-group"),
        "DATA_DIR": str(data_dir),
        "GATEWAY_PORT": str(free_port()),
        "PRODUCER_PORT": str(free_port()),
        "LOG_LEVEL": "WARNING",
    }
    total, bad_every = 3000, 7
    producer = foreign_producer(kafka.bootstrap)

    def stream() -> None:
        for i in range(total):
            producer.send(topic, value=b"{oops" if i % bad_every == 0 else json.dumps({"i": i}).encode())
            if i % 100 == 0:
                producer.flush()
                time.sleep(0.01)  # pacing the stream, not synchronisation
        producer.flush()

    sender = threading.Thread(target=stream)
    sender.start()
    kills = 0
    for threshold in (300, 900, 1500):
        process = run_backend(env, tmp_path / "backend.log")
        try:
            wait_for(lambda t=threshold: stored(data_dir, topic) >= t, 90, f"{threshold} records stored")
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(10)
            kills += 1
    sender.join()
    process = run_backend(env, tmp_path / "backend.log")
    try:
        wait_for(lambda: stored(data_dir, topic) >= total, 120, "every record stored after the restarts")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, (tmp_path / "backend.log").read_text()[-2000:]

    store = Store(data_dir)
    logs = store.logs(limit=total + 100, topic=topic)
    counts = store.counts()
    bad = len(range(0, total, bad_every))
    assert kills == 3
    assert len(logs) == total
    assert len({(log.partition, log.offset) for log in logs}) == total
    assert (counts.total, counts.processed, counts.failed) == (total, total - bad, bad)
