"""`python -m backend`: a bad setting ends start-up with one line naming the variable."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent


def start(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {
        **os.environ,
        "DATA_DIR": str(tmp_path),
        "GATEWAY_PORT": str(free_port()),
        "PRODUCER_PORT": str(free_port()),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "backend"], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"CONSUMER_COUNT": "many"}, "CONSUMER_COUNT"),
        ({"KAFKA_SECURITY_PROTOCOL": "TELEGRAPH"}, "KAFKA_SECURITY_PROTOCOL"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}, "KAFKA_BOOTSTRAP_SERVERS"),
    ],
)
def test_bad_setting_is_one_clear_line(tmp_path: Path, env: dict[str, str], variable: str) -> None:
    result = start(tmp_path, **env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0] and "Traceback" not in result.stderr


def test_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = start(tmp_path, GATEWAY_PORT=str(port))
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"error: GATEWAY_PORT={port}: cannot listen on 127.0.0.1:{port} (Address already in use)"
    )


SERVING_AND_FROZEN = """
import gc, json, sys
from pathlib import Path
from backend.config import Settings
from backend.service import Backend, keep_startup_objects_out_of_gc
settings = Settings(data_dir=Path(sys.argv[1]), gateway_port=int(sys.argv[2]), producer_port=int(sys.argv[3]))
backend = Backend(settings).start()
try:
    serving = all(server.started for server in backend._http.servers)
    keep_startup_objects_out_of_gc()
    print(json.dumps({"serving": serving, "frozen": gc.get_freeze_count(), "tracked": len(gc.get_objects())}))
finally:
    backend.stop()
"""


def test_start_returns_serving_and_the_startup_objects_leave_the_collector(tmp_path: Path) -> None:
    """Full collections walked the ~50,000 objects of the libraries and servers and stalled every
    thread for 30-100 ms; frozen after start, they are not walked again. The servers import most of
    them while they start, so start() returns once they listen."""
    result = subprocess.run(
        [sys.executable, "-c", SERVING_AND_FROZEN, str(tmp_path), str(free_port()), str(free_port())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["serving"] is True
    assert report["frozen"] > 40_000 and report["tracked"] < 1_000, report


def test_a_corrupted_database_stops_start_up_with_one_line_naming_data_dir(tmp_path: Path) -> None:
    """The issue: the backend started and answered health 200 on a garbage database file."""
    (tmp_path / "dashboard.sqlite3").write_bytes(b"this is not a database" * 100)
    result = start(tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "DATA_DIR" in lines[0] and str(tmp_path) in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_an_unusable_data_dir_stops_start_up_with_one_line_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = start(tmp_path, DATA_DIR=str(blocker / "data"))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "DATA_DIR" in lines[0] and "Traceback" not in result.stderr
