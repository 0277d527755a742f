"""Shared plumbing: the backend as a subprocess, Node clients, HTTP, percentiles."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from backend.broker import free_port, spawn, terminate

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
JS_DIR = BENCH_DIR / "js"
RESULTS_DIR = BENCH_DIR / "results"
HOST = "127.0.0.1"

# Variables of the contract that an outer environment must not leak into our backends.
CONTRACT_VARIABLES = (
    "KAFKA_BOOTSTRAP_SERVERS",
    "KAFKA_TOPICS",
    "KAFKA_GROUP_ID",
    "CONSUMER_COUNT",
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SSL_CAFILE",
    "GATEWAY_HOST",
    "GATEWAY_PORT",
    "PRODUCER_PORT",
    "DATA_DIR",
    "CORS_ORIGINS",
    "AUTH_TOKEN",
    "BACKEND_URL",
    "BACKEND_ROLE",
    "WORKERS",
    "EVENTS_TOPIC",
    "WORKER_ID",
    "WORKER_CONSUMERS",
    "KAFKA_CLUSTER_ID",
)


@contextlib.contextmanager
def broker() -> Iterator[str]:
    """KAFKA_BOOTSTRAP_SERVERS, or an Apache Kafka of our own for the block (a phase run alone)."""
    with broker_process() as (bootstrap, _pid):
        yield bootstrap


@contextlib.contextmanager
def broker_process() -> Iterator[tuple[str, int | None]]:
    """As :func:`broker`, with the broker's pid when it is ours (to read its CPU), else None."""
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if bootstrap:
        yield bootstrap, None
        return
    from scripts.kafka_launcher import ApacheKafka

    with tempfile.TemporaryDirectory() as tmp:
        kafka = ApacheKafka(Path(tmp))
        kafka.start()
        try:
            yield kafka.bootstrap, kafka.pid
        finally:
            kafka.stop()


def say(message: str) -> None:
    """Progress goes to stderr, so that stdout is the table and the final JSON line."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: Iterable[float], fraction: float) -> float | None:
    """Nearest-rank percentile (fraction in 0..1); None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(int(-(-fraction * len(ordered) // 1)), 1)  # ceil, at least 1
    return ordered[min(rank, len(ordered)) - 1]


def histogram_percentile(histogram: Mapping[int, int], fraction: float) -> float | None:
    """Nearest-rank percentile of a {value: count} histogram."""
    total = sum(histogram.values())
    if total == 0:
        return None
    rank = max(int(-(-fraction * total // 1)), 1)
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return float(value)
    return float(max(histogram))


def rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def epoch_ms() -> float:
    return time.time() * 1000.0


def iso_to_ms(text: str) -> float:
    """The contract's ISO-8601 UTC time (milliseconds, Z) as epoch milliseconds."""
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000.0


def read_rss_mb(pid: int) -> tuple[float | None, float | None]:
    """(VmRSS, VmHWM) of a process in MiB, from /proc/<pid>/status."""
    values: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024.0  # kB
    return values.get("VmRSS"), values.get("VmHWM")


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process (all its threads) so far, from /proc/<pid>/stat; None
    when it is gone or unknown (no pid: a broker this bench did not start)."""
    if not pid:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    mem_total = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = round(int(line.split()[1]) / 1024 / 1024, 1)
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gib": mem_total,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
    }


# --- HTTP ---------------------------------------------------------------------------------------


class Http:
    """One keep-alive HTTP/1.1 connection (reconnects when the server closed it)."""

    def __init__(self, port: int, host: str = HOST, timeout: float = 15.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._conn: http.client.HTTPConnection | None = None

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        sent_headers = {"Content-Type": "application/json"} if data is not None else {}
        sent_headers.update(headers or {})
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.request(method, path, body=data, headers=sent_headers)
                response = self._conn.getresponse()
                raw = response.read()
            except (http.client.HTTPException, ConnectionError, OSError):
                self.close()
                if attempt == 2:
                    raise
                continue
            try:
                return response.status, json.loads(raw) if raw else None
            except ValueError:
                return response.status, raw.decode(errors="replace")
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# --- the backend as `python -m backend` --------------------------------------------------------


@dataclass
class BackendProcess:
    """``python -m backend`` with our environment; on Apache Kafka, or the embedded broker."""

    name: str
    data_dir: Path
    topic: str
    group_id: str
    bootstrap: str | None = None  # None: the backend starts the embedded broker itself
    consumers: int = 3
    args: tuple[str, ...] = ("-m", "backend")  # after the interpreter
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. BACKEND_ROLE, WORKERS
    gateway_port: int = field(default_factory=free_port)
    producer_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    @property
    def gateway_url(self) -> str:
        return f"http://{HOST}:{self.gateway_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "backend.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in CONTRACT_VARIABLES}
        env.update(
            KAFKA_TOPICS=self.topic,
            KAFKA_GROUP_ID=self.group_id,
            CONSUMER_COUNT=str(self.consumers),
            GATEWAY_PORT=str(self.gateway_port),
            PRODUCER_PORT=str(self.producer_port),
            DATA_DIR=str(self.data_dir / "data"),
            PYTHONPATH=str(REPO_ROOT),
        )
        if self.bootstrap:
            env["KAFKA_BOOTSTRAP_SERVERS"] = self.bootstrap
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 90.0) -> BackendProcess:
        """Start it and wait until /api/health answers 200."""
        self._spawn()
        assert self.proc is not None
        health = Http(self.gateway_port, timeout=3.0)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
                with contextlib.suppress(OSError, http.client.HTTPException):
                    status, _ = health.request("GET", "/api/health")
                    if status == 200:
                        return self
                time.sleep(0.2)
        finally:
            health.close()
        raise RuntimeError(f"{self.name} not healthy after {timeout:.0f}s; see {self.log_path}")

    def _spawn(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        # spawn(): the child gets PDEATHSIG, so it cannot outlive the benchmark.
        self.proc = spawn([sys.executable, *self.args], self._log, cwd=REPO_ROOT, env=self.env())

    def start_headless(self, ready: str, timeout: float = 90.0) -> BackendProcess:
        """Start a process without HTTP (``BACKEND_ROLE=worker``); wait for a log line starting ``ready``."""
        self._spawn()
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            lines = self.log_path.read_text(errors="replace").splitlines()
            if any(line.startswith(ready) for line in lines):
                return self
            time.sleep(0.2)
        raise RuntimeError(f"{self.name}: no {ready!r} line after {timeout:.0f}s; see {self.log_path}")

    def broker(self) -> str:
        """The bootstrap address the backend uses (for the embedded broker: from its ready line)."""
        if self.bootstrap:
            return self.bootstrap
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("Backend ready:") and " broker " in line:
                return line.rsplit(" broker ", 1)[1].strip()
        raise RuntimeError(f"{self.name}: no 'Backend ready' line in {self.log_path}")

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, grace=20.0)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def rss_mb(self) -> tuple[float | None, float | None]:
        return read_rss_mb(self.pid) if self.proc else (None, None)


# --- Node clients -------------------------------------------------------------------------------


def ensure_node_modules() -> None:
    """``npm install`` in bench/js when its node_modules is missing."""
    marker = JS_DIR / "node_modules" / "socket.io-client" / "package.json"
    if marker.exists() and (JS_DIR / "node_modules" / "ws" / "package.json").exists():
        return
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise RuntimeError("the client benchmarks need Node.js and npm on PATH")
    say("installing the Node clients (npm install in bench/js)")
    subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=JS_DIR,
        check=True,
        timeout=300,
    )


class NodeProcess:
    """A Node script speaking JSON lines: we read its stdout, it reads commands on stdin."""

    def __init__(self, script: str, config: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(
            ["node", str(JS_DIR / script), json.dumps(config)],
            cwd=JS_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name=f"node-{script}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.lines.put(json.loads(line))

    def send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def expect(self, kind: str, timeout: float) -> dict[str, Any]:
        """The next line of type ``kind`` (other lines are dropped); TimeoutError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {kind!r} from node within {timeout:.0f}s")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line.get("type") == kind:
                return line

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin:
                self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def tree_cpu_seconds(pid: int) -> tuple[float, float]:
    """(the process's CPU, its descendants' CPU) so far: the view, and its workers (which it starts
    through a spawner process, so they are its grandchildren)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    descendants, pending = [], list(parents.get(pid, ()))
    while pending:
        child = pending.pop()
        descendants.append(child)
        pending.extend(parents.get(child, ()))
    return cpu_seconds(pid) or 0.0, sum(cpu_seconds(child) or 0.0 for child in descendants)
