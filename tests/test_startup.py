"""`python -m backend`: a bad setting ends start-up with one line naming the variable."""

from __future__ import annotations

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
