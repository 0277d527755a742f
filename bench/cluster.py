"""3 workers and 2 views on one machine: records/s through the whole cluster, and exact counts.

One ``python -m backend`` with ``BACKEND_ROLE=worker WORKERS=3`` (three ``python -m backend.worker``
children, one consumer each) and two with ``BACKEND_ROLE=view`` (each its own DATA_DIR and ports),
all in one fresh group, so one events topic. Once the workers' group holds every partition and both
views answer ``/api/health`` 200, ``count`` records are produced straight to Kafka (kafka-python,
as fast as it sends). The clock runs from the first send until both views' ``totalMessages`` reach
``count``; then, once the group has committed every record (so every row is in the events topic),
both views' counters must be exactly ``count`` processed, 0 failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaProducer, TopicPartition

from backend import events
from bench.common import BackendProcess, Http, broker, cpu_seconds, say
from bench.throughput import create_topic, payload
from bench.workers import wait_committed_offsets, wait_settled

WORKERS = 3
VIEWS = 2
STATS = "/api/consumers/statistics"


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (the worker role's ``python -m backend.worker`` processes)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            found.extend(int(child) for child in (task / "children").read_text().split())
    return found


def cpu_of(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) or 0.0 for pid in pids)


def produce(
    bootstrap: str, topic: str, count: int, partitions: int
) -> tuple[float, dict[TopicPartition, int]]:
    """Send ``count`` records; (time.time() of the first send, per partition the offset after its last)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, batch_size=256 * 1024)
    headers = [("data-type", events.SINGLE_MESSAGE.encode())]
    started = time.time()
    futures = [
        producer.send(topic, value=payload(i), partition=i % partitions, headers=headers)
        for i in range(count)
    ]
    producer.flush(timeout=120)
    producer.close()
    targets: dict[TopicPartition, int] = {}
    for future in futures:
        meta = future.get(timeout=0)
        tp = TopicPartition(topic, meta.partition)
        targets[tp] = max(targets.get(tp, 0), meta.offset + 1)
    return started, targets


def statistics(views: list[Http]) -> list[dict[str, Any]]:
    answers = []
    for client in views:
        status, body = client.request("GET", STATS)
        if status != 200 or not isinstance(body, dict):
            raise RuntimeError(f"GET {STATS} answered {status}: {str(body)[:200]}")
        answers.append(body)
    return answers


def wait_counts(
    views: list[Http],
    count: int,
    admin: KafkaAdminClient,
    group: str,
    targets: dict[TopicPartition, int],
    timeout: float,
) -> tuple[list[float], float | None]:
    """Until every view's totalMessages reaches ``count``: the time.time() each did, and when the
    group had committed every record (the workers' part done; None if not seen by then)."""
    reached: list[float | None] = [None] * len(views)
    handed: float | None = None
    deadline = time.monotonic() + timeout
    totals: list[int] = []
    while time.monotonic() < deadline:
        now = time.time()
        totals = [int(body["totalMessages"]) for body in statistics(views)]
        for i, total in enumerate(totals):
            if reached[i] is None and total >= count:
                reached[i] = now
        if handed is None and committed_all(admin, group, targets):
            handed = now
        if all(at is not None for at in reached):
            return [at for at in reached if at is not None], handed
        time.sleep(0.05)
    raise RuntimeError(f"the views counted {totals} of {count} records within {timeout:.0f}s")


def committed_all(admin: KafkaAdminClient, group: str, targets: dict[TopicPartition, int]) -> bool:
    offsets = admin.list_group_offsets({group: list(targets)}).get(group, {})
    return all(getattr(offsets.get(tp), "offset", -1) >= target for tp, target in targets.items())


def run(bootstrap: str, work: Path, count: int, timeout: float = 180.0) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    topic, group = f"bench-cluster-{tag}", f"bench-cluster-{tag}"
    create_topic(bootstrap, topic, WORKERS)

    def process(name: str, folder: str, **env: str) -> BackendProcess:
        return BackendProcess(name, work / folder, topic, group, bootstrap, WORKERS, extra_env=env)

    workers = process("worker role", "cluster-workers", BACKEND_ROLE="worker", WORKERS=str(WORKERS))
    views = [process(f"view {i + 1}", f"cluster-view-{i + 1}", BACKEND_ROLE="view") for i in range(VIEWS)]
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    clients = [Http(view.gateway_port) for view in views]
    try:
        say(f"cluster: {WORKERS} workers (BACKEND_ROLE=worker WORKERS={WORKERS}) and {VIEWS} views")
        workers.start_headless("Workers ready:")
        wait_settled(admin, group, WORKERS, WORKERS, timeout=60)
        for view in views:
            view.start()
        pids = [*children(workers.pid), workers.pid, *(view.pid for view in views)]
        say(f"cluster: producing {count} records to {topic}")
        cpu_before = cpu_of(pids)
        started, targets = produce(bootstrap, topic, count, WORKERS)
        reached, handed = wait_counts(clients, count, admin, group, targets, timeout)
        cpu = cpu_of(pids) - cpu_before
        wait_committed_offsets(admin, group, targets, timeout)
        final = statistics(clients)
    finally:
        for client in clients:
            client.close()
        for process in (*views, workers):
            process.stop()
        admin.close()
    seconds = max(reached) - started
    counts = [[int(b["totalMessages"]), int(b["processedMessages"]), int(b["failedMessages"])] for b in final]
    exact = all(c == [count, count, 0] for c in counts)
    say(f"cluster: {count / seconds:,.0f} records/s; counts {counts} ({'exact' if exact else 'NOT exact'})")
    return {
        "cluster_records": count,
        "cluster_msgs_per_s": round(count / seconds),
        "cluster_view_counts": counts,  # per view: total, processed, failed
        "cluster_counts_exact": exact,
        # From the first send: when the workers had handed over every record, when each view had it.
        "cluster_handed_over_s": round(handed - started, 2) if handed else None,
        "cluster_view_done_s": [round(at - started, 2) for at in reached],
        "cluster_cpu_cores": round(cpu / (max(reached) - started), 2),
        "cluster_cpu_us_per_msg": round(cpu / count * 1e6, 1),
    }


def main() -> None:
    """``python -m bench.cluster``: this phase alone (KAFKA_BOOTSTRAP_SERVERS or its own Kafka)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    args = parser.parse_args()
    with broker() as bootstrap, tempfile.TemporaryDirectory() as work:
        print(json.dumps(run(bootstrap, Path(work), args.records), indent=2))


if __name__ == "__main__":
    main()
