"""``--profile``: py-spy on a process during a phase, and a summary of where its CPU time went.

py-spy samples the process from outside (``record --format raw``: collapsed stacks, one line per
distinct stack with its sample count). With ``--gil`` (the default here) only the thread holding the
GIL is sampled: in a Python process whose threads share one GIL that is where the Python CPU time
goes, and what the event loop waits for when it is starved. The summary gives the share of samples
per thread, per package/module (by the innermost frame) and per function, self and inclusive.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import say

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


class PySpy:
    """``with PySpy(pid, path):`` records the process while the block runs."""

    def __init__(self, pid: int, output: Path, rate: int = 100, flags: tuple[str, ...] = ("--gil",)) -> None:
        self.pid, self.output, self.rate, self.flags = pid, output, rate, list(flags)
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PySpy:
        exe = shutil.which("py-spy")
        if exe is None:
            say("profile: py-spy is not installed (pip install py-spy); not profiling")
            return self
        self.output.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.output.with_suffix(".log"), "wb")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [exe, "record", "--pid", str(self.pid), "--format", "raw", "--output", str(self.output)]
            + ["--rate", str(self.rate), "--threads"]
            + self.flags,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _frame(text: str) -> tuple[str, str]:
    match = FRAME.match(text.strip())
    if not match:
        return text.strip(), "?"
    return match["func"], match["file"]


def _module(file: str) -> str:
    """``kafka/consumer/fetcher.py`` -> ``kafka``; our own code keeps its module: ``backend/bus.py``."""
    if file.startswith(("backend/", "bench/")) or "/backend/" in file:
        return file[file.find("backend/") :] if "backend/" in file else file
    return file.split("/", 1)[0] if "/" in file else file


def summarize(path: Path, top: int = 15) -> dict[str, Any]:
    """Shares (percent of samples) by thread, by module and function of the innermost frame, and inclusive."""
    threads: Counter[str] = Counter()
    modules: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            head, _, frames_text = stack.partition(": ")
            frames = frames_text.split(";")
            thread = re.sub(r"-\d+$", "-N", frames[0]) if frames else head
            parsed = [_frame(f) for f in frames[1:]] or [(head, "?")]
            total += count
            threads[thread] += count
            func, file = parsed[-1]
            modules[_module(file)] += count
            self_time[f"{func} ({file})"] += count
            for name in {f"{f} ({m})" for f, m in parsed if "backend/" in m}:
                inclusive[name] += count

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100.0 * n / total, 1)) for name, n in counter.most_common(top)] if total else []

    return {
        "samples": total,
        "threads_pct": shares(threads),
        "modules_self_pct": shares(modules),
        "functions_self_pct": shares(self_time),
        "backend_inclusive_pct": shares(inclusive),
    }


def render(title: str, summary: dict[str, Any]) -> str:
    lines = [f"== profile: {title} ({summary['samples']} samples; % of sampled CPU) =="]
    for key, label in (
        ("threads_pct", "by thread"),
        ("modules_self_pct", "by module (self)"),
        ("functions_self_pct", "by function (self)"),
        ("backend_inclusive_pct", "backend functions (inclusive)"),
    ):
        lines.append(f"  {label}:")
        lines.extend(f"    {pct:5.1f}%  {name}" for name, pct in summary[key])
    return "\n".join(lines)
