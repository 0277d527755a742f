"""The worker supervisor (backend/supervisor.py) with real child processes.

The children run a tiny fake worker (FAKE_WORKER) that writes what it was given to a file and waits
for a signal, so these tests check the supervisor alone: the environment, the consumer spread,
restarts, stop() and death with the parent. ``python -m backend`` with BACKEND_ROLE=worker runs the
real ``backend.worker`` children against Apache Kafka.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from backend.config import Settings
from backend.store import DB_NAME
from backend.supervisor import (
    BACKOFF_MAX_S,
    INSTANCE_FILE,
    WorkerSupervisor,
    instance_id,
    next_delay,
    plan_consumers,
)
from tests.support import AUTOGROUPS, autogroup, wait_for

ROOT = Path(__file__).resolve().parent.parent
INSTANCE = "0a1b2c3d"

#: argv: output directory, mode (run | crash-once | ignore-term). Writes <WORKER_ID>.<pid>.json.
FAKE_WORKER = r"""
import json, os, signal, sys
out, mode = sys.argv[1], sys.argv[2]
worker_id = os.environ["WORKER_ID"]
marker = os.path.join(out, worker_id + ".crashed")
if mode == "crash-once" and not os.path.exists(marker):
    open(marker, "w").close()
    sys.exit(3)
if mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
names = ("WORKER_ID", "WORKER_CONSUMERS", "KAFKA_CLUSTER_ID", "KAFKA_BOOTSTRAP_SERVERS",
         "EMBEDDED_BROKER", "PYTHONPATH", "INHERITED_FROM_PARENT")
temporary = os.path.join(out, f".{worker_id}.{os.getpid()}")
with open(temporary, "w") as file:
    json.dump({name: os.environ.get(name) for name in names}, file)
os.rename(temporary, os.path.join(out, f"{worker_id}.{os.getpid()}.json"))
while True:
    signal.pause()
"""


def fake_command(out: Path, mode: str = "run") -> list[str]:
    return [sys.executable, "-c", FAKE_WORKER, str(out), mode]


def reports(out: Path) -> dict[int, dict[str, str | None]]:
    """What each fake child wrote, by pid."""
    return {int(path.name.split(".")[-2]): json.loads(path.read_text()) for path in out.glob("*.json")}


def gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie waiting for its new parent to reap it counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def processes_of(instance: str) -> list[int]:
    """Pids of live processes whose environment says they are a worker of ``instance``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours
            continue
        if f"WORKER_ID={instance}-w".encode() in environ and not gone(int(entry.name)):
            found.append(int(entry.name))
    return found


CLUSTER = Settings(bootstrap_servers="127.0.0.1:9092", consumer_count=3, workers=2)


@pytest.fixture
def supervise(tmp_path: Path) -> Iterator[Callable[..., WorkerSupervisor]]:
    """``supervise(settings, mode, on_exit)``: a started supervisor of fake workers, stopped at the end."""
    started: list[WorkerSupervisor] = []

    def factory(settings: Settings, mode: str = "run", on_exit=None) -> WorkerSupervisor:
        supervisor = WorkerSupervisor(
            settings,
            "127.0.0.1:9092",
            "cluster-x",
            INSTANCE,
            on_exit=on_exit,
            command=fake_command(tmp_path, mode),
        )
        started.append(supervisor.start())
        return supervisor

    yield factory
    for supervisor in started:
        supervisor.stop(grace=1.0)


# --------------------------------------------------------------------------------------------
# Pure parts.
# --------------------------------------------------------------------------------------------


def test_consumers_are_spread_round_robin() -> None:
    assert plan_consumers("all", 5, 2, INSTANCE) == [
        ["consumer-1", "consumer-3", "consumer-5"],
        ["consumer-2", "consumer-4"],
    ]
    assert plan_consumers("worker", 3, 3, INSTANCE) == [
        [f"consumer-1-{INSTANCE}"],
        [f"consumer-2-{INSTANCE}"],
        [f"consumer-3-{INSTANCE}"],
    ]
    assert plan_consumers("all", 1, 3, INSTANCE) == [["consumer-1"], [], []]  # more workers than consumers
    assert plan_consumers("all", 0, 1, INSTANCE) == [[]]


@pytest.mark.parametrize(("role", "workers"), [("view", 1), ("all", 0)])
def test_a_plan_without_workers_is_refused(role: str, workers: int) -> None:
    with pytest.raises(ValueError):
        plan_consumers(role, 3, workers, INSTANCE)


def test_restart_back_off_doubles_to_its_cap_and_resets_after_a_long_run() -> None:
    delays = [next_delay(0.0, 0.5)]
    for _ in range(7):
        delays.append(next_delay(delays[-1], 0.5))
    assert delays == [1, 2, 4, 8, 16, BACKOFF_MAX_S, BACKOFF_MAX_S, BACKOFF_MAX_S]
    assert next_delay(BACKOFF_MAX_S, 60.0) == 1  # up a minute: healthy again


# --------------------------------------------------------------------------------------------
# The instance id.
# --------------------------------------------------------------------------------------------


def test_instance_id_is_created_once_and_kept(tmp_path: Path) -> None:
    data = tmp_path / "new" / "data"
    first = instance_id(data)
    assert re.fullmatch(r"[0-9a-f]{8}", first)
    assert (data / INSTANCE_FILE).read_text().strip() == first
    assert instance_id(data) == first
    assert sorted(path.name for path in data.iterdir()) == [INSTANCE_FILE]  # no temporary file left


def test_concurrent_first_starts_agree_on_one_id(tmp_path: Path) -> None:
    ids: list[str] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        ids.append(instance_id(tmp_path))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == 8 and len(set(ids)) == 1
    assert (tmp_path / INSTANCE_FILE).read_text().strip() == ids[0]


@pytest.mark.parametrize(
    "content", [b"", b"xyz", b"0A1B2C3D", b"0a1b2c3d0a", b"\xff\xfe\x00garbage", b"0a1b2c3d" * 100_000]
)
def test_a_corrupt_instance_file_is_replaced_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    (tmp_path / INSTANCE_FILE).write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="backend.supervisor"):
        replaced = instance_id(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{8}", replaced)
    assert instance_id(tmp_path) == replaced
    assert [record.getMessage() for record in caplog.records if "instance id" in record.getMessage()]


# --------------------------------------------------------------------------------------------
# Children.
# --------------------------------------------------------------------------------------------


def test_children_get_the_parent_environment_and_who_they_are(
    supervise: Callable[..., WorkerSupervisor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INHERITED_FROM_PARENT", "yes")
    monkeypatch.setenv("EMBEDDED_BROKER", "1")  # stale: this cluster is not the embedded broker
    supervisor = supervise(CLUSTER)
    written = wait_for(lambda: len(reports(tmp_path)) == 2 and reports(tmp_path), 30, "two workers report")
    states = supervisor.workers()
    assert [(s.worker_id, s.consumers, s.alive, s.restarts) for s in states] == [
        (f"{INSTANCE}-w1", ("consumer-1", "consumer-3"), True, 0),
        (f"{INSTANCE}-w2", ("consumer-2",), True, 0),
    ]
    by_id = {env["WORKER_ID"]: (pid, env) for pid, env in written.items()}
    for state in states:
        pid, env = by_id[state.worker_id]
        assert pid == state.pid
        assert env["WORKER_CONSUMERS"] == ",".join(state.consumers)
        assert (env["KAFKA_CLUSTER_ID"], env["KAFKA_BOOTSTRAP_SERVERS"]) == ("cluster-x", "127.0.0.1:9092")
        assert env["EMBEDDED_BROKER"] is None
        assert env["INHERITED_FROM_PARENT"] == "yes"
        assert (env["PYTHONPATH"] or "").split(os.pathsep)[0] == str(ROOT)


def test_children_of_the_embedded_broker_are_told_so(
    supervise: Callable[..., WorkerSupervisor], tmp_path: Path
) -> None:
    supervise(Settings(consumer_count=3, workers=4))  # embedded: one worker, whatever WORKERS says
    (env,) = wait_for(lambda: list(reports(tmp_path).values()), 30, "the worker reports")
    assert env["WORKER_ID"] == f"{INSTANCE}-w1"
    assert env["WORKER_CONSUMERS"] == "consumer-1,consumer-2,consumer-3"
    assert env["EMBEDDED_BROKER"] == "1"


def test_a_crashed_child_is_reported_then_restarted_with_the_same_id(
    supervise: Callable[..., WorkerSupervisor], tmp_path: Path
) -> None:
    exits: list[tuple[str, tuple[str, ...], int, bool]] = []
    supervisor: WorkerSupervisor | None = None

    def on_exit(worker_id: str, consumers: tuple[str, ...], code: int) -> None:
        # a child may crash before supervise() has returned: wait for the name to be bound
        wait_for(lambda: supervisor is not None, 30, "supervise() to return")
        assert supervisor is not None
        (state,) = [s for s in supervisor.workers() if s.worker_id == worker_id]
        exits.append((worker_id, consumers, code, state.alive or state.restarts > 0))

    supervisor = supervise(CLUSTER, mode="crash-once", on_exit=on_exit)
    written = wait_for(
        lambda: len(reports(tmp_path)) == 2 and reports(tmp_path), 30, "both restarted workers"
    )
    assert sorted(exits) == [
        (f"{INSTANCE}-w1", ("consumer-1", "consumer-3"), 3, False),  # reported before the restart
        (f"{INSTANCE}-w2", ("consumer-2",), 3, False),
    ]
    states = supervisor.workers()
    assert [(s.alive, s.restarts) for s in states] == [(True, 1), (True, 1)]
    assert {env["WORKER_ID"]: pid for pid, env in written.items()} == {s.worker_id: s.pid for s in states}


def test_a_child_killed_from_outside_is_restarted(
    supervise: Callable[..., WorkerSupervisor], tmp_path: Path
) -> None:
    exits: list[int] = []
    supervisor = supervise(CLUSTER, on_exit=lambda _id, _consumers, code: exits.append(code))
    wait_for(lambda: len(reports(tmp_path)) == 2, 30, "two workers report")
    victim = supervisor.workers()[0]
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    wait_for(lambda: len(reports(tmp_path)) == 3, 30, "the killed worker's successor reports")
    after = supervisor.workers()[0]
    assert (after.worker_id, after.alive, after.restarts) == (victim.worker_id, True, 1)
    assert after.pid != victim.pid and gone(victim.pid)
    assert exits == [-signal.SIGKILL]


def test_stop_ends_every_child_also_one_that_ignores_sigterm(
    supervise: Callable[..., WorkerSupervisor], tmp_path: Path
) -> None:
    supervisor = supervise(CLUSTER, mode="ignore-term")
    wait_for(lambda: len(reports(tmp_path)) == 2, 30, "two workers report")
    pids = [state.pid for state in supervisor.workers()]
    supervisor.stop(grace=0.5)
    assert all(pid is not None and gone(pid) for pid in pids)
    assert [state.alive for state in supervisor.workers()] == [False, False]
    assert len(reports(tmp_path)) == 2  # stopped children are not restarted
    supervisor.stop()  # a second stop is harmless


def test_stop_ends_children_that_honour_sigterm(
    supervise: Callable[..., WorkerSupervisor], tmp_path: Path
) -> None:
    supervisor = supervise(CLUSTER)
    wait_for(lambda: len(reports(tmp_path)) == 2, 30, "two workers report")
    supervisor.stop()
    assert processes_of(INSTANCE) == []


PARENT = """
import json, signal, sys
from backend.config import Settings
from backend.store import DB_NAME
from backend.supervisor import WorkerSupervisor
settings = Settings(bootstrap_servers="127.0.0.1:9092", consumer_count=3, workers=3)
command = [sys.executable, "-c", sys.argv[1], sys.argv[2], "run"]
supervisor = WorkerSupervisor(settings, "127.0.0.1:9092", "c", sys.argv[3], command=command).start()
print(json.dumps([state.pid for state in supervisor.workers()]), flush=True)
signal.pause()
"""


def test_children_die_with_a_parent_killed_by_sigkill(tmp_path: Path) -> None:
    instance = "dead0001"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, FAKE_WORKER, str(tmp_path), instance],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        pids = json.loads(parent.stdout.readline())
        wait_for(lambda: sorted(reports(tmp_path)) == sorted(pids), 30, "three workers report")
        assert sorted(processes_of(instance)) == sorted(pids)
    finally:
        parent.kill()
        parent.wait()
    wait_for(lambda: all(gone(pid) for pid in pids), 30, "the children to die with their parent")
    assert processes_of(instance) == []


# --------------------------------------------------------------------------------------------
# python -m backend with BACKEND_ROLE=worker.
# --------------------------------------------------------------------------------------------


def backend_env(tmp_path: Path, **env: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "EMBEDDED_BROKER")}
    return {**base, "DATA_DIR": str(tmp_path / "data"), "BACKEND_ROLE": "worker", **env}


def test_worker_role_without_a_cluster_is_one_clear_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "backend"],
        cwd=ROOT,
        env=backend_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: BACKEND_ROLE=worker needs KAFKA_BOOTSTRAP_SERVERS "
        "(the embedded broker runs inside BACKEND_ROLE=all)"
    )
    assert not (tmp_path / "data").exists()  # no store, no instance id, nothing started


def test_worker_role_with_an_unreachable_cluster_is_one_clear_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "backend"],
        cwd=ROOT,
        env=backend_env(tmp_path, KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:1: ")
    assert not (tmp_path / "data").exists()


def test_worker_role_runs_only_workers_and_stops_them_on_sigterm(tmp_path: Path, kafka) -> None:
    log_path = tmp_path / "stderr.log"
    with open(log_path, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "backend"],
            cwd=ROOT,
            env=backend_env(
                tmp_path, KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap, WORKERS="2", CONSUMER_COUNT="3"
            ),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        try:
            assert proc.stdout is not None
            ready = proc.stdout.readline()
            instance = (tmp_path / "data" / INSTANCE_FILE).read_text().strip()
            assert ready.startswith(f"Workers ready: 2 worker process(es) of instance {instance}, ")
            assert (
                f"{instance}-w1 pid " in ready and f"(consumer-1-{instance}, consumer-3-{instance})" in ready
            )
            assert f"{instance}-w2 pid " in ready and f"(consumer-2-{instance})" in ready
            assert not (tmp_path / "data" / DB_NAME).exists()  # no store
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert processes_of(instance) == []


def group_name(autogroup: str) -> str:
    """``/autogroup-<n>`` from ``/autogroup-<n> nice <k>``; "" for the root group, whose file is empty.

    Why "": a process in init's session has no autogroup of its own. The CI runner's pytest is one
    (stop 24's CI read an empty file), while a shell's is not."""
    return autogroup.split()[0] if autogroup else ""


@pytest.mark.skipif(not AUTOGROUPS, reason="this kernel has no autogroups")
@pytest.mark.parametrize("own_session", [True, False])
def test_a_worker_yields_its_session_s_cpu_share_only_when_the_session_is_its_own(own_session: bool) -> None:
    """Started by the supervisor, a worker leads a session of its own: nicing its autogroup is what
    makes it yield to the view. Started from somebody's shell, the group is the shell's: untouched."""
    code = (
        "from pathlib import Path; from backend.worker import yield_the_cpu; yield_the_cpu(3); "
        "print(Path('/proc/self/autogroup').read_text().strip())"
    )
    ours_before = autogroup()
    child = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
        start_new_session=own_session,
    ).stdout.strip()  # fmt: skip
    if own_session:
        assert child.endswith(" nice 3") and group_name(child) != group_name(ours_before), child
    else:
        assert child == ours_before == autogroup()
