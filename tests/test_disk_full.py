"""Disk full under the store, for real (a small tmpfs): health says so, nothing is lost or doubled.

The issue's run: storing failed, the log said "cannot rollback - no transaction is active" 202
times, health stayed 200, and clients got 141,258 duplicate message-received events in 2 minutes.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend import events
from tests.support import (
    EventRecorder,
    backend_settings,
    create_topic,
    foreign_producer,
    start_backend,
    unique,
    wait_for,
)

FIRST, DURING = 40, 200


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "16m") -> Iterator[Path]:
    path.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=False)
    if mounted.returncode != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem has no space left; return it (delete it to free the space).

    Unbuffered: a buffered file kept the bytes its failed flush could not write and, closing,
    raised ENOSPC again outside the suppression (1 fill in 6 on a 1 MiB tmpfs; failed CI once).
    """
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 65536)
            os.fsync(out.fileno())
    return filler


def produce(bootstrap: str, topic: str, start: int, count: int) -> None:
    producer = foreign_producer(bootstrap)
    for n in range(start, start + count):
        producer.send(topic, json.dumps({"n": n, "text": "x" * 2000}).encode())
    producer.flush()
    producer.close()


def test_disk_full_makes_health_say_why_and_everything_is_stored_once_after(kafka, tmp_path: Path) -> None:
    topic = unique("diskfull")
    create_topic(kafka.bootstrap, topic)
    with small_tmpfs(tmp_path / "data") as data_dir:
        backend = start_backend(
            backend_settings(tmp_path, kafka.bootstrap, topics=(topic,), data_dir=data_dir)
        )
        recorder = EventRecorder()
        recorder.attach(backend.bus)
        try:
            wait_for(lambda: backend.health().ok, 60, "health ok at start")
            produce(kafka.bootstrap, topic, 0, FIRST)
            wait_for(lambda: backend.store.count_logs(topic=topic) == FIRST, 60, "the first records stored")

            filler = fill(data_dir)
            produce(kafka.bootstrap, topic, FIRST, DURING)
            reason = wait_for(
                lambda: None if (health := backend.health()).ok else health.reason, 60, "health not ok"
            )
            assert "stored" in reason and "full" in reason, reason

            filler.unlink()
            wait_for(lambda: backend.health().ok, 60, "health ok again by itself")
            wait_for(
                lambda: backend.store.count_logs(topic=topic) == FIRST + DURING, 60, "every record stored"
            )
            counts = backend.store.counts()
        finally:
            backend.stop()
    assert (counts.processed, counts.failed, counts.total) == (FIRST + DURING, 0, FIRST + DURING)
    sequences = recorder.by_log_id()
    assert len(sequences) == FIRST + DURING
    expected = [events.MESSAGE_RECEIVED, events.PROCESSING_STARTED, events.PROCESSING_COMPLETED]
    assert {tuple(s) for s in sequences.values()} == {tuple(expected)}
