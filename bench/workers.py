"""Worker processes: 1 against 2 on the same records, their CPU per record against raw kafka-python.

``python -m bench`` runs this on its Apache Kafka; ``python -m bench.workers`` runs it alone (on
KAFKA_BOOTSTRAP_SERVERS, or on an Apache Kafka of its own).

Runs alternate, 1 2 2 1 worker processes, and each side's best is reported (the machine is shared).
Each run gets a fresh topic, a fresh group (so a fresh events topic) and fresh
``python -m backend.worker`` children (WORKER_ID, WORKER_CONSUMERS; no view: nobody reads the events
topic, the workers' cost is measured alone). The records must be there before the clock starts, and
the group must be settled too: a second worker joining while the first one consumes would put its
rebalance inside the measurement. So the workers start on an empty topic; once every consumer
holds a partition, one **warm-up** record per partition is written and committed, and each
consumer hands its record over in its first transaction. That sets up what every later
transaction reuses (the events topic's metadata, the group coordinator's address, the broker's
first transactional writes): a fresh producer's first transaction took 180-370 ms against 25-60 ms
for the next ones, and in a 1.3-2.6 s run it weighed more on the faster side. Then the records are
written in **one open Kafka transaction**: the workers (``read_committed``) see nothing of them
until it is committed, and then every record at once. That commit starts the clock; it stops when
the group's committed offsets (which a worker commits in the same transaction as the batch's rows)
reach the last record of every partition. The workers' CPU is read from ``/proc/<pid>/stat`` at
both moments.

The raw side is ``bench.throughput.raw_consume`` (kafka-python consumers in threads of this process,
the workers' consumer options, only counting) on the best 1-worker run's topic, as many consumers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from kafka import KafkaAdminClient, KafkaProducer, TopicPartition

from backend import events
from backend.broker import spawn, terminate
from backend.config import Settings
from backend.group_status import group_state_name, parse_members
from backend.service import discover_cluster_id
from backend.supervisor import spread
from bench.common import CONTRACT_VARIABLES, REPO_ROOT, broker_process, cpu_seconds, say
from bench.profiling import PySpy, render, summarize
from bench.throughput import create_topic, payload, raw_consume

#: How often the committed offsets are asked for while the workers run (the clock's resolution).
OFFSETS_EVERY_S = 0.05
#: An open transaction must outlive the workers' start; the broker allows up to 15 minutes.
STAGING_TIMEOUT_MS = 300_000


@dataclass
class WorkersRun:
    """One run: ``workers`` processes consumed ``records`` in ``seconds`` using ``cpu_seconds``."""

    workers: int
    consumers: int
    records: int
    seconds: float
    cpu_seconds: float  # all worker processes, from the commit to the last committed offset
    topic: str
    broker_cpu_seconds: float | None = None  # the broker's, over the same window (when it is ours)

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us_per_record(self) -> float:
        return self.cpu_seconds / self.records * 1e6 if self.records else 0.0

    @property
    def cpu_cores(self) -> float | None:
        return self._cores(self.cpu_seconds)

    @property
    def broker_cpu_cores(self) -> float | None:
        return self._cores(self.broker_cpu_seconds)

    def _cores(self, cpu_seconds: float | None) -> float | None:
        """``cpu_seconds`` spent over this run's window, as cores."""
        if cpu_seconds is None or self.seconds <= 0:
            return None
        return round(cpu_seconds / self.seconds, 2)


class StagedRecords:
    """Records for a fresh topic: committed warm-ups (:meth:`warm_up`), then ``count`` records in one
    transaction (:meth:`stage`) left open until :meth:`release`."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        create_topic(bootstrap, topic, partitions)
        self.topic = topic
        self.partitions = partitions
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            transactional_id=f"bench-stage-{topic}",
            transaction_timeout_ms=STAGING_TIMEOUT_MS,
            acks="all",
            linger_ms=5,
            batch_size=256 * 1024,
        )
        self._producer.init_transactions()
        #: The committed offset that means "every record of this partition is done".
        self.targets: dict[TopicPartition, int] = {}

    def warm_up(self) -> dict[TopicPartition, int]:
        """One record per partition, committed; the committed offsets that mean they are done."""
        ends = self._write(range(self.partitions))
        self._producer.commit_transaction()
        return ends

    def stage(self, count: int) -> None:
        """``count`` records in a transaction left open: nobody reading committed sees them yet."""
        self.targets = self._write(range(count))

    def _write(self, numbers: range) -> dict[TopicPartition, int]:
        """Begin a transaction, write ``payload(i)`` for each number; each partition's end offset."""
        self._producer.begin_transaction()
        headers = [("data-type", events.SINGLE_MESSAGE.encode())]
        futures = [
            self._producer.send(self.topic, value=payload(i), partition=i % self.partitions, headers=headers)
            for i in numbers
        ]
        self._producer.flush(timeout=120)
        ends: dict[TopicPartition, int] = {}
        for future in futures:
            meta = future.get(timeout=0)
            tp = TopicPartition(self.topic, meta.partition)
            ends[tp] = max(ends.get(tp, 0), meta.offset + 1)
        return ends

    def release(self) -> None:
        """Commit: every record becomes visible to read_committed consumers at once."""
        self._producer.commit_transaction()
        self._producer.close(timeout=10)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._producer.abort_transaction()
        self._producer.close(timeout=5)


class WorkerProcesses:
    """``python -m backend.worker`` children of one group; they die with us (``spawn``)."""

    def __init__(
        self, bootstrap: str, cluster_id: str, topic: str, group: str, plan: list[list[str]], log: IO[bytes]
    ) -> None:
        env = {k: v for k, v in os.environ.items() if k not in CONTRACT_VARIABLES}
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=bootstrap,
            KAFKA_CLUSTER_ID=cluster_id,
            KAFKA_TOPICS=topic,
            KAFKA_GROUP_ID=group,
            LOG_LEVEL="WARNING",
            PYTHONPATH=str(REPO_ROOT),
        )
        env.pop("EMBEDDED_BROKER", None)
        self.procs = [
            spawn(
                [sys.executable, "-m", "backend.worker"],
                log,
                cwd=REPO_ROOT,
                env={**env, "WORKER_ID": f"{group}-w{i + 1}", "WORKER_CONSUMERS": ",".join(ids)},
            )
            for i, ids in enumerate(plan)
        ]

    def cpu(self) -> float:
        """CPU seconds used so far by all of them (a process that is gone counts as an error)."""
        total = 0.0
        for proc in self.procs:
            used = cpu_seconds(proc.pid)
            if used is None or proc.poll() is not None:
                raise RuntimeError(f"worker pid {proc.pid} exited with {proc.returncode}")
            total += used
        return total

    def stop(self) -> None:
        for proc in self.procs:
            terminate(proc, grace=10.0)


def wait_settled(
    admin: KafkaAdminClient, group: str, consumers: int, partitions: int, timeout: float
) -> None:
    """Until the group is Stable with ``consumers`` members holding all ``partitions`` between them."""
    deadline = time.monotonic() + timeout
    last = "not described yet"
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # the group may not exist yet
            description = admin.describe_groups([group])[group]
            state = group_state_name(description)
            held = [len(member.partitions) for member in parse_members(description)]
            last = f"{state}, members holding {held}"
            if state == "Stable" and len(held) == consumers and sum(held) == partitions and all(held):
                return
        time.sleep(0.1)
    raise RuntimeError(f"the workers' group did not settle within {timeout:.0f}s ({last})")


def wait_committed_offsets(
    admin: KafkaAdminClient,
    group: str,
    targets: dict[TopicPartition, int],
    timeout: float,
    check: Callable[[], object] | None = None,
) -> float:
    """Until ``group`` committed every partition's target; the time.time() it was first seen.

    ``check`` runs between two looks (it raises to give up early: a worker died).
    """
    deadline = time.monotonic() + timeout
    committed: dict[TopicPartition, int] = {}
    while time.monotonic() < deadline:
        offsets = admin.list_group_offsets({group: list(targets)}).get(group, {})
        now = time.time()
        committed = {tp: getattr(offsets.get(tp), "offset", -1) for tp in targets}
        if all(committed[tp] >= target for tp, target in targets.items()):
            return now
        if check is not None:
            check()
        time.sleep(OFFSETS_EVERY_S)
    done = sum(max(committed.get(tp, 0), 0) for tp in targets)
    raise RuntimeError(f"the group committed {done} of {sum(targets.values())} records within {timeout:.0f}s")


def run_workers(
    bootstrap: str,
    cluster_id: str,
    work: Path,
    count: int,
    workers: int,
    consumers: int,
    timeout: float,
    profile_to: Path | None = None,
    broker_pid: int | None = None,
) -> WorkersRun:
    """``workers`` processes with ``consumers`` consumers between them on ``count`` staged records.

    ``profile_to``: py-spy the first worker process while the records are consumed.
    ``broker_pid``: also read the broker's CPU over the window (it shares the machine's cores).
    """
    tag = uuid.uuid4().hex[:8]
    topic, group = f"bench-workers-{tag}", f"bench-workers-{workers}-{tag}"
    staged = StagedRecords(bootstrap, topic, partitions=consumers)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    plan = spread([f"consumer-{n}" for n in range(1, consumers + 1)], workers)
    with open(work / f"workers-{workers}.log", "ab") as log:
        procs = WorkerProcesses(bootstrap, cluster_id, topic, group, plan, log)
        try:
            say(f"workers: {workers} worker process(es), {consumers} consumers; waiting for the group")
            wait_settled(admin, group, consumers, consumers, timeout=60)
            wait_committed_offsets(admin, group, staged.warm_up(), timeout=60, check=procs.cpu)
            say(f"workers: warmed up; staging {count} records in {topic} (one open transaction)")
            staged.stage(count)
            spy = PySpy(procs.procs[0].pid, profile_to) if profile_to else contextlib.nullcontext()
            with spy:
                cpu_before, broker_before = procs.cpu(), cpu_seconds(broker_pid)
                started = time.time()
                staged.release()
                finished = wait_committed_offsets(admin, group, staged.targets, timeout, procs.cpu)
                cpu = procs.cpu() - cpu_before
                broker_after = cpu_seconds(broker_pid)
        except BaseException:
            staged.abort()
            raise
        finally:
            procs.stop()
            admin.close()
    broker_used = None
    if broker_before is not None and broker_after is not None:
        broker_used = broker_after - broker_before
    run = WorkersRun(workers, consumers, count, finished - started, cpu, topic, broker_used)
    say(f"workers: {workers} process(es): {run.rate:,.0f} rec/s, {run.cpu_us_per_record:.1f} us CPU/record")
    return run


#: The order of the runs (worker processes per run): A B B A, so that a load that rises or falls
#: steadily on a shared machine weighs on both sides alike.
ORDER = (1, 2, 2, 1)


def run(
    bootstrap: str,
    work: Path,
    count: int,
    consumers: int = 4,
    timeout: float = 180.0,
    profile_to: Path | None = None,
    broker_pid: int | None = None,
) -> dict[str, Any]:
    """1 and 2 workers in turn (:data:`ORDER`; same records, ``consumers`` consumers in all), then raw
    kafka-python. Each side's best run is reported (the one least disturbed by other work on the
    machine), every run is kept in ``workers_runs``.

    ``profile_to``: py-spy the single worker of the first run. ``broker_pid``: the broker's CPU
    too (``workers_*_broker_cpu_cores``): on one machine the workers and the broker share its cores.
    """
    work.mkdir(parents=True, exist_ok=True)
    cluster_id = discover_cluster_id(Settings(bootstrap_servers=bootstrap))
    runs: list[WorkersRun] = []
    for index, processes in enumerate(ORDER):
        spy = profile_to if index == 0 else None
        runs.append(
            run_workers(bootstrap, cluster_id, work, count, processes, consumers, timeout, spy, broker_pid)
        )
    one = max((r for r in runs if r.workers == 1), key=lambda r: r.rate)
    two = max((r for r in runs if r.workers == 2), key=lambda r: r.rate)
    say(f"workers: raw kafka-python on {one.topic}, {consumers} consumers")
    raw = raw_consume(bootstrap, one.topic, count, consumers, timeout)
    ratio = one.cpu_us_per_record / raw.cpu_us_per_record if raw.cpu_us_per_record else None
    return {
        "workers_records": count,
        "workers_consumers": consumers,
        "workers_1_msgs_per_s": round(one.rate),
        "workers_2_msgs_per_s": round(two.rate),
        "workers_scaling": round(two.rate / one.rate, 2) if one.rate else None,
        "workers_1_cpu_us_per_msg": round(one.cpu_us_per_record, 1),
        "workers_2_cpu_us_per_msg": round(two.cpu_us_per_record, 1),
        "workers_1_cpu_cores": one.cpu_cores,
        "workers_2_cpu_cores": two.cpu_cores,
        "workers_1_broker_cpu_cores": one.broker_cpu_cores,
        "workers_2_broker_cpu_cores": two.broker_cpu_cores,
        "workers_raw_msgs_per_s": round(raw.rate),
        "workers_raw_cpu_us_per_msg": round(raw.cpu_us_per_record, 1),
        "pipeline_cpu_vs_raw": round(ratio, 2) if ratio else None,
        # Every run in order: [worker processes, records/s, worker CPU us per record].
        "workers_runs": [[r.workers, round(r.rate), round(r.cpu_us_per_record, 1)] for r in runs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--consumers", type=int, default=4)
    parser.add_argument("--profile", type=Path, help="py-spy the single worker; raw stacks to this file")
    args = parser.parse_args()
    with broker_process() as (bootstrap, pid), tempfile.TemporaryDirectory() as work:
        results = run(
            bootstrap, Path(work), args.records, args.consumers, profile_to=args.profile, broker_pid=pid
        )
        print(json.dumps(results, indent=2))
        if args.profile:
            print(render("worker", summarize(args.profile)))


if __name__ == "__main__":
    main()
