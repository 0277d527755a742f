"""Worker processes: start them, restart a crashed one, stop them all, never leave one behind.

``BACKEND_ROLE=all`` and ``BACKEND_ROLE=worker`` run ``WORKERS`` children ``python -m backend.worker``
(see /work/prompts/design12.md). Each child is started through :func:`backend.broker.spawn`, so it
gets ``PR_SET_PDEATHSIG=SIGKILL`` from the one long-lived spawner thread: a child dies with us, also
when we are SIGKILLed, and cannot keep consuming for a dashboard that is gone. A child that exits on
its own is restarted with the same ``WORKER_ID`` (its transactional ids follow from it, so the new
process fences the dead one's open transaction at once), after a back-off that keeps a child that
crashes at start-up from burning a core.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from backend.broker import kill, spawn
from backend.config import Settings

log = logging.getLogger(__name__)

INSTANCE_FILE = "instance-id"
_INSTANCE_ID = re.compile(r"[0-9a-f]{8}")
#: Restart back-off: the first restart waits FIRST, each quick crash doubles it up to MAX; a child
#: that stayed up RESET seconds counts as healthy again.
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
BACKOFF_RESET_S = 60.0
#: Where the package lives; put on the children's PYTHONPATH so that ``-m backend.worker`` is found
#: whatever directory the dashboard was started from.
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)

#: on_exit(worker_id, consumers, returncode): a child exited without being asked to.
ExitCallback = Callable[[str, tuple[str, ...], int], None]


def instance_id(data_dir: Path) -> str:
    """This installation's id: 8 hex characters kept in ``DATA_DIR/instance-id``, the same on every start.

    It names the worker ids (and through them the transactional ids), so it must not change
    between restarts. The file is created atomically (written aside, then hard-linked into place,
    which fails if another process got there first), so concurrent first starts agree on one id.
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / INSTANCE_FILE
    for _ in range(3):  # another process may replace a corrupt file between our steps
        current = _read_instance_id(path)
        if current is not None:
            return current
        _create_instance_id(path)  # then read back what is in place: ours, or the winner's
    raise OSError(f"{path}: cannot create a stable instance id")


def _read_instance_id(path: Path) -> str | None:
    """The id in ``path``; None when there is none; a corrupt file is removed with a warning."""
    try:
        with open(path, "rb") as file:
            raw = file.read(64)
    except FileNotFoundError:
        return None
    text = raw.decode("ascii", errors="replace").strip()
    if _INSTANCE_ID.fullmatch(text):
        return text
    log.warning("%s holds %r, not 8 hex characters: replacing it with a new instance id", path, text[:20])
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return None


def _create_instance_id(path: Path) -> None:
    """Put a new id in place unless a file is already there."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        with open(temporary, "xb") as file:
            file.write(f"{secrets.token_hex(4)}\n".encode())
            file.flush()
            os.fsync(file.fileno())
        with contextlib.suppress(FileExistsError):  # someone else's id won: we read it back
            os.link(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def plan_consumers(role: str, consumer_count: int, workers: int, instance: str) -> list[list[str]]:
    """The consumer ids each of ``workers`` children starts with: child i gets j where (j-1) % workers == i.

    Role ``all`` uses ``consumer-<n>`` (one dashboard, one set of names); role ``worker`` adds the
    instance id, ``consumer-<n>-<instance>``, because several worker machines share one group.
    """
    if role not in ("all", "worker"):
        raise ValueError(f"role {role!r} runs no workers")
    if workers < 1:
        raise ValueError(f"workers={workers}: at least one worker process is needed")
    suffix = f"-{instance}" if role == "worker" else ""
    return spread([f"consumer-{number}{suffix}" for number in range(1, consumer_count + 1)], workers)


def spread(consumer_ids: list[str], workers: int) -> list[list[str]]:
    """Consumer ids round-robin over ``workers`` children (child i gets the i-th, the i+workers-th...)."""
    plan: list[list[str]] = [[] for _ in range(workers)]
    for index, consumer_id in enumerate(consumer_ids):
        plan[index % workers].append(consumer_id)
    return plan


def next_delay(previous: float, uptime: float) -> float:
    """The wait before restarting a child that ran ``uptime`` seconds (``previous``: the last wait)."""
    if previous <= 0 or uptime >= BACKOFF_RESET_S:
        return BACKOFF_FIRST_S
    return min(previous * 2, BACKOFF_MAX_S)


@dataclass(frozen=True)
class WorkerState:
    """What :meth:`WorkerSupervisor.workers` tells about one child."""

    worker_id: str
    pid: int | None
    consumers: tuple[str, ...]
    alive: bool
    restarts: int


@dataclass
class _Child:
    worker_id: str
    consumers: tuple[str, ...]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0
    thread: threading.Thread | None = field(default=None, repr=False)


class WorkerSupervisor:
    """Runs ``settings.worker_count`` worker children; restarts the ones that die; stops them all."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        cluster_id: str,
        instance: str,
        on_exit: ExitCallback | None = None,
        command: list[str] | None = None,
        consumers: list[list[str]] | None = None,
    ) -> None:
        """``consumers``: the ids each child starts with (default :func:`plan_consumers`; a view
        chooses names no other instance of the group uses)."""
        self.settings = settings
        self.bootstrap = bootstrap
        self.cluster_id = cluster_id
        self.instance = instance
        self._on_exit = on_exit
        self._command = command or [sys.executable, "-m", "backend.worker"]
        plan = consumers or plan_consumers(
            settings.role, settings.consumer_count, settings.worker_count, instance
        )
        self._children = [_Child(f"{instance}-w{i + 1}", tuple(ids)) for i, ids in enumerate(plan)]
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def start(self) -> WorkerSupervisor:
        """Spawn every child and its monitor thread; if one cannot be spawned, stop the others and raise."""
        try:
            for child in self._children:
                self._spawn(child)
        except BaseException:
            self.stop(grace=2.0)
            raise
        for child in self._children:
            name = f"monitor-{child.worker_id}"
            child.thread = threading.Thread(target=self._monitor, args=(child,), name=name, daemon=True)
            child.thread.start()
        atexit.register(self.stop)  # a normal exit stops them gracefully rather than by PDEATHSIG
        log.info("Started %d worker process(es): %s", len(self._children), self.describe())
        return self

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every child, wait up to ``grace`` seconds for all of them, SIGKILL the rest."""
        with self._lock:
            self._stopping.set()
            procs = [child.proc for child in self._children if child.proc is not None]
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)  # its own session (spawn): the group is the child
        deadline = time.monotonic() + grace
        for proc in procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d ignored SIGTERM for %.0fs; killing it", proc.pid, grace)
                kill(proc)
            if proc.stdin:  # the watchdog's pipe where there is no PDEATHSIG
                proc.stdin.close()
        for child in self._children:
            if child.thread is not None and child.thread is not threading.current_thread():
                child.thread.join()
        atexit.unregister(self.stop)

    def workers(self) -> list[WorkerState]:
        """Each child: its id, current pid, consumers, whether it runs, how often it was restarted."""
        with self._lock:
            return [
                WorkerState(
                    worker_id=child.worker_id,
                    pid=child.proc.pid if child.proc else None,
                    consumers=child.consumers,
                    alive=child.proc is not None and child.proc.poll() is None,
                    restarts=child.restarts,
                )
                for child in self._children
            ]

    def describe(self) -> str:
        """One line for logs: ``<id> pid <pid> (<consumers>)`` per child."""
        return "; ".join(
            f"{state.worker_id} pid {state.pid} ({', '.join(state.consumers) or 'no consumers'})"
            for state in self.workers()
        )

    def child_env(self, worker_id: str, consumers: tuple[str, ...]) -> dict[str, str]:
        """The parent's environment, its settings (a backend built in code has settings that are not
        in the environment), and what tells a worker who it is and where the cluster is."""
        env = dict(os.environ)
        env.update(self.settings.worker_env())
        env.update(
            WORKER_ID=worker_id,
            WORKER_CONSUMERS=",".join(consumers),
            KAFKA_CLUSTER_ID=self.cluster_id,
            KAFKA_BOOTSTRAP_SERVERS=self.bootstrap,
        )
        if self.settings.role == "all":  # our parent is a view: keep pace with it (backend.view_pace)
            env["WORKER_PACE_VIEW"] = self.instance
        if self.settings.embedded:
            env["EMBEDDED_BROKER"] = "1"
        else:
            env.pop("EMBEDDED_BROKER", None)
        paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        # The parent's import path too: PROCESSOR and DESERIALIZER were checked in the parent, and a
        # module it could import (from a directory a test runner or an app added) must load here too.
        parent = [p for p in sys.path if p and os.path.isdir(p)]
        ordered = dict.fromkeys([_PACKAGE_ROOT, *paths, *parent])
        env["PYTHONPATH"] = os.pathsep.join(ordered)
        return env

    def _spawn(self, child: _Child, restart: bool = False) -> bool:
        """Start ``child``'s process unless we are stopping; False when we are."""
        with self._lock:
            if self._stopping.is_set():
                return False
            env = self.child_env(child.worker_id, child.consumers)
            child.proc = spawn(self._command, _parent_stderr(), cwd=Path.cwd(), env=env)
            child.started = time.monotonic()
            child.restarts += restart
            return True

    def _monitor(self, child: _Child) -> None:
        """Wait for ``child`` to exit; unless we are stopping, report it and restart it after a back-off."""
        delay = 0.0
        while child.proc is not None:
            code = child.proc.wait()
            if self._stopping.is_set():
                return
            uptime = time.monotonic() - child.started
            delay = next_delay(delay, uptime)
            log.warning(
                "worker %s (pid %d) exited with code %d after %.1fs; restarting it in %.0fs",
                child.worker_id, child.proc.pid, code, uptime, delay,
            )  # fmt: skip
            self._report_exit(child, code)
            if not self._restart(child, delay):
                return

    def _report_exit(self, child: _Child, code: int) -> None:
        if self._on_exit is None:
            return
        try:
            self._on_exit(child.worker_id, child.consumers, code)
        except Exception:  # the callback's bug must not stop the restarts
            log.exception("on_exit for worker %s failed", child.worker_id)

    def _restart(self, child: _Child, delay: float) -> bool:
        """Spawn ``child`` again after ``delay`` (longer after each failed spawn); False once stopping."""
        while not self._stopping.wait(delay):
            try:
                return self._spawn(child, restart=True)
            except OSError as exc:
                delay = next_delay(delay, 0.0)
                log.error("cannot restart worker %s: %s; trying again in %.0fs", child.worker_id, exc, delay)
        return False


_stderr: IO[bytes] | None = None


def _parent_stderr() -> IO[bytes]:
    """Our file descriptor 2 as a binary file: children write their logs where ours go."""
    global _stderr
    if _stderr is None:
        _stderr = open(2, "wb", buffering=0, closefd=False)  # noqa: SIM115 - lives as long as the process
    return _stderr
