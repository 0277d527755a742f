"""The soak (bench/soak.py) for ~20 s on the embedded broker: it runs, and its verdict holds.

Why: the soak is how issue 15's hardening is checked over time; this keeps it runnable and its
verdict's shape stable. The figures themselves are for bench/README.md, not asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(240)
def test_soak_loses_nothing_doubles_nothing_and_counts_exactly(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "bench.soak", "--broker", "embedded", "--minutes", "0.33"]
    command += ["--idle-sockets", "40", "--work", str(tmp_path / "soak")]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=220)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["ok"] is True
    assert (summary["seq_gaps"], summary["duplicates"], summary["wrong_sequences"]) == (0, 0, 0)
    assert summary["counts_exact"] is True
    assert summary["produced"] > 0 and summary["events_received"] >= 3 * summary["produced"]
    assert summary["statistics_total_processed_failed"][0] == summary["produced"]
    assert summary["statistics_total_processed_failed"][2] > 0  # the poison did reach the consumers
    full = json.loads((tmp_path / "soak-latest.json").read_text())
    assert full["figures"]["samples"] >= 1
    assert full["mix_counts"]["api_poison_refused"] > 0 and full["mix_counts"]["idle_opened"] >= 40


def test_the_monitor_counts_gaps_duplicates_and_wrong_sequences() -> None:
    """The checker itself: a verdict of 0 means something only if it can say otherwise."""
    from bench.soak_mix import Monitor

    monitor = Monitor(port=0)
    frames = [
        ("connection-success", 0, {}),
        ("message-received", 1, {"logId": "a"}),
        ("processing-started", 2, {"logId": "a"}),
        ("processing-completed", 2, {"logId": "a"}),  # a duplicate seq
        ("processing-completed", 3, {"logId": "a"}),
        ("message-received", 6, {"logId": "b"}),  # seq 4 and 5 lost
        ("processing-failed", 7, {"logId": "b"}),  # started never came
    ]
    for name, seq, data in frames:
        monitor.on_frame({"event": name, "seq": seq, "data": data})
    assert (monitor.received, monitor.gaps, monitor.duplicates) == (5, 2, 1)
    assert monitor.wrong_sequences() == [("b", "RF")] and monitor.outcomes() == {"C": 1}
