"""``python -m bench [--quick] [--profile]``: the backend's numbers, side by side, in one run.

Starts Apache Kafka (``scripts.kafka_launcher.ApacheKafka``), then:

1. throughput: raw kafka-python vs the whole pipeline on one pre-filled topic (a view in this
   process, its worker processes beside it);
2. worker processes: 1 against 2 on the same records, and their CPU per record against raw
   kafka-python (``bench/workers.py``);
3. a cluster on one machine: 3 workers and 2 views, records/s and exact counts (``bench/cluster.py``);
4. a ``python -m backend`` subprocess on that Kafka: end-to-end latency, fan-out to many clients,
   idle bytes, then its resident memory;
5. a ``python -m backend`` subprocess on the embedded broker: end-to-end latency.

Progress goes to stderr. stdout gets the table, the bars, and as its last line one JSON object;
everything (and the profiles with ``--profile``) is also written to bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench import burst, cluster, e2e, fanout, idle, throughput, workers
from bench.common import (
    RESULTS_DIR,
    BackendProcess,
    cpu_seconds,
    ensure_node_modules,
    machine,
    say,
)
from bench.profiling import PySpy, render, summarize


@dataclass(frozen=True)
class Plan:
    """How much of everything to do."""

    records: int  # pre-filled records for the throughput comparison
    e2e_rate: float  # records/s
    e2e_seconds: float
    clients: int
    ws_share: float  # share of the clients on /ws; the rest on Socket.IO
    node_procs: int
    fanout_rate: float  # records/s; each gives 3 events plus merged stats-updated
    fanout_seconds: float
    idle_intervals: int  # Engine.IO ping intervals (25 s each by default)
    cluster_records: int  # produced through 3 workers and 2 views


QUICK = Plan(50_000, 50, 10, 1_000, 0.5, 2, 8, 10, 2, 20_000)
FULL = Plan(200_000, 50, 30, 1_000, 0.5, 2, 8, 30, 4, 100_000)


def _fanout_bar(r: dict[str, Any]) -> bool | None:
    if r.get("fanout_clients") is None:
        return None
    return (
        r["fanout_clients"] >= 1000
        and (r.get("fanout_events_per_s") or 0) >= 20
        and r.get("fanout_lost") == 0
        and bool(_le(r.get("fanout_p99_ms"), 100))
    )


def _exact(r: dict[str, Any]) -> bool | None:
    return r.get("cluster_counts_exact")


# Issue 5's bars and issue 12's (test -> met / missed / None for no data, text). Issue 5's
# pipeline_ratio >= 0.8 is retired (issue 12): pipeline_ratio is still reported, for comparison.
BARS: list[tuple[Callable[[dict[str, Any]], bool | None], str]] = [
    (lambda r: _ge(r.get("workers_scaling"), 1.5), "workers_scaling >= 1.5 (2 worker processes / 1)"),
    (lambda r: _le(r.get("pipeline_cpu_vs_raw"), 3), "pipeline_cpu_vs_raw <= 3 (issue 12's aim)"),
    (_exact, "3 workers + 2 views: both views' counts exact"),
    (lambda r: _le(r.get("e2e_p99_ms"), 20), "e2e_p99_ms <= 20"),
    (_fanout_bar, "1,000 clients, each >= 20 events/s, fanout_lost 0, fanout_p99_ms <= 100"),
    (lambda r: _le(r.get("idle_bytes_per_min_per_client"), 512), "idle <= 512 bytes/min"),
]

ROWS: list[tuple[str, str, str]] = [
    ("Throughput (Apache Kafka, 3 consumers)", "", ""),
    ("raw_consume_msgs_per_s", "raw kafka-python consume", "msgs/s"),
    ("pipeline_msgs_per_s", "whole pipeline", "msgs/s"),
    ("pipeline_ratio", "pipeline / raw (retired bar, comparison only)", ""),
    ("raw_cpu_us_per_msg", "raw: CPU per record", "us"),
    ("pipeline_cpu_us_per_msg", "pipeline: CPU per record (view process only)", "us"),
    ("store_bytes_per_record", "disk per stored record (DB + WAL)", "bytes"),
    ("store_db_bytes", "  database file (payloads included)", "bytes"),
    ("store_wal_bytes", "  WAL", "bytes"),
    ("store_closed_bytes_per_record", "disk per stored record, after stop", "bytes"),
    ("Worker processes (Apache Kafka, records staged in one transaction)", "", ""),
    ("workers_1_msgs_per_s", "1 worker process", "msgs/s"),
    ("workers_2_msgs_per_s", "2 worker processes", "msgs/s"),
    ("workers_scaling", "2 workers / 1 worker", ""),
    ("workers_1_cpu_cores", "CPU used: 1 worker", "cores"),
    ("workers_2_cpu_cores", "CPU used: 2 workers", "cores"),
    ("workers_1_broker_cpu_cores", "CPU used by the broker meanwhile: 1 worker", "cores"),
    ("workers_2_broker_cpu_cores", "CPU used by the broker meanwhile: 2 workers", "cores"),
    ("workers_1_cpu_us_per_msg", "worker CPU per record, 1 worker", "us"),
    ("workers_2_cpu_us_per_msg", "worker CPU per record, 2 workers", "us"),
    ("workers_raw_cpu_us_per_msg", "raw kafka-python CPU per record", "us"),
    ("pipeline_cpu_vs_raw", "worker CPU / raw CPU per record", ""),
    ("Cluster on one machine: 3 workers, 2 views", "", ""),
    ("cluster_msgs_per_s", "first send -> both views have every record", "msgs/s"),
    ("cluster_handed_over_s", "first send -> group committed every record", "s"),
    ("cluster_view_done_s", "first send -> view 1 / view 2 counted every record", "s"),
    ("cluster_view_counts", "per view: total/processed/failed", ""),
    ("cluster_counts_exact", "both views exact", ""),
    ("cluster_cpu_us_per_msg", "CPU per record, all 6 processes", "us"),
    ("End to end: POST -> processing-completed", "", ""),
    ("e2e_p50_ms", "Apache Kafka p50", "ms"),
    ("e2e_p99_ms", "Apache Kafka p99", "ms"),
    ("e2e_embedded_p50_ms", "embedded broker p50", "ms"),
    ("e2e_embedded_p99_ms", "embedded broker p99", "ms"),
    ("e2e_warmup_p99_ms", "Apache Kafka p99, 3-s warm-up (no bar)", "ms"),
    ("e2e_embedded_warmup_p99_ms", "embedded p99, 3-s warm-up (no bar)", "ms"),
    ("e2e_rate", "achieved rate, Apache Kafka", "rec/s"),
    ("e2e_embedded_rate", "achieved rate, embedded", "rec/s"),
    ("e2e_breakdown_p50_ms", "p50 post|to_received|processing|delivery", "ms"),
    ("e2e_breakdown_p99_ms", "p99 post|to_received|processing|delivery", "ms"),
    ("Fan-out (Apache Kafka)", "", ""),
    ("fanout_clients", "clients connected (Socket.IO + /ws)", ""),
    ("fanout_events_per_s", "events/s, slowest client", "ev/s"),
    ("fanout_events_per_s_mean", "events/s, mean per client", "ev/s"),
    ("fanout_events_per_s_by_kind", "slowest/mean: Socket.IO | /ws", "ev/s"),
    ("fanout_deliveries_per_s", "deliveries/s, all clients", "ev/s"),
    ("fanout_p50_ms", "event latency p50", "ms"),
    ("fanout_p99_ms", "event latency p99", "ms"),
    ("fanout_warmup_p99_ms", "event latency p99, 3-s warm-up (no bar)", "ms"),
    ("fanout_lost", "lost client deliveries", ""),
    ("fanout_seq_gaps", "  of which seq gaps", ""),
    ("fanout_undelivered_after_drain", "  of which undelivered after the drain", ""),
    ("fanout_disconnects", "disconnects", ""),
    ("fanout_backend_cpu_cores", "backend CPU", "cores"),
    ("fanout_backend_cpu_us_per_delivery", "backend CPU per delivery", "us"),
    ("fanout_node_clients_cpu_cores", "Node clients' CPU", "cores"),
    ("Burst (Apache Kafka): 50,000 records at once, mode=live clients", "", ""),
    ("burst_clients", "live clients connected (Socket.IO + /ws)", ""),
    ("burst_records_per_s", "records/s taken, with the clients", "rec/s"),
    ("burst_baseline_records_per_s", "records/s taken, probe alone", "rec/s"),
    ("burst_deliveries_per_s", "deliveries/s, all clients", "ev/s"),
    ("burst_records_delivered_per_client", "records shown per client (sample)", ""),
    ("burst_records_skipped_per_client", "records-skipped per client", ""),
    ("burst_lag_worst_ms", "panel probe: counters' worst lag", "ms"),
    ("burst_event_to_client_p50_ms", "panel probe: event to client p50 (probe alone)", "ms"),
    ("burst_event_to_client_p99_ms", "panel probe: event to client p99 (probe alone)", "ms"),
    ("burst_event_to_client_loaded_p99_ms", "panel probe: event to client p99 (with the clients)", "ms"),
    ("burst_probe_exact", "panel probe: exact totals at the end", ""),
    ("burst_clients_exact", "clients with the exact totals at the end", ""),
    ("burst_clients_settle_s", "… seconds after the burst until they all had them", "s"),
    ("burst_partial_records", "records received partially", ""),
    ("burst_disconnects", "disconnects", ""),
    ("burst_backend_cpu_cores", "backend CPU (view + workers)", "cores"),
    ("burst_backend_cpu_ms_per_client", "view CPU per client (minus baseline)", "ms"),
    ("Idle cost per client", "", ""),
    ("idle_bytes_per_min_per_client", "idle Socket.IO client", "B/min"),
    ("seed_polling_bytes_per_min", "seed baseline: polling every 5 s", "B/min"),
    ("idle_backend_cpu_cores", "idle backend's own CPU", "cores"),
    ("idle_workers_cpu_cores", "idle backend's workers", "cores"),
    ("idle_broker_cpu_cores", "idle Apache Kafka broker", "cores"),
    ("Memory", "", ""),
    ("rss_mb", "backend RSS after the run", "MiB"),
    ("rss_peak_mb", "backend peak RSS", "MiB"),
]

SUMMARY_KEYS = (
    "mode",
    "raw_consume_msgs_per_s",
    "pipeline_msgs_per_s",
    "pipeline_ratio",
    "workers_1_msgs_per_s",
    "workers_2_msgs_per_s",
    "workers_scaling",
    "pipeline_cpu_vs_raw",
    "cluster_msgs_per_s",
    "cluster_counts_exact",
    "store_bytes_per_record",
    "e2e_p50_ms",
    "e2e_p99_ms",
    "e2e_embedded_p50_ms",
    "e2e_embedded_p99_ms",
    "fanout_clients",
    "fanout_events_per_s",
    "fanout_p99_ms",
    "fanout_lost",
    "fanout_backend_cpu_us_per_delivery",
    "burst_lag_worst_ms",
    "burst_event_to_client_p99_ms",
    "idle_bytes_per_min_per_client",
    "seed_polling_bytes_per_min",
    "rss_mb",
    "idle_backend_cpu_cores",
    "idle_workers_cpu_cores",
    "idle_broker_cpu_cores",
    "bars_met",
    "bars_missed",
    "loadavg_start",
    "loadavg_end",
    "elapsed_s",
    "errors",
)


def _ge(value: float | None, bar: float) -> bool | None:
    return None if value is None else value >= bar


def _le(value: float | None, bar: float) -> bool | None:
    return None if value is None else value <= bar


class Bench:
    def __init__(self, plan: Plan, profile: bool, work: Path) -> None:
        self.plan = plan
        self.profile = profile
        self.work = work
        self.results: dict[str, Any] = {}
        self.errors: list[str] = []
        self.profiles: dict[str, Any] = {}

    def phase(self, name: str, body: Callable[[], dict[str, Any]]) -> None:
        """Run one measurement; a failure is recorded and the run goes on with the next."""
        try:
            self.results.update(body())
        except Exception as exc:
            say(f"{name} failed: {type(exc).__name__}: {exc}")
            traceback.print_exc(file=sys.stderr)
            self.errors.append(f"{name}: {type(exc).__name__}: {exc}")

    def profiled(
        self, name: str, pid: int, body: Callable[[], dict[str, Any]]
    ) -> Callable[[], dict[str, Any]]:
        """``body`` under py-spy when --profile is on; the backend's CPU use either way."""

        def run() -> dict[str, Any]:
            before, started = cpu_seconds(pid), time.monotonic()
            if not self.profile:
                result = body()
            else:
                output = RESULTS_DIR / f"profile-{name}.txt"
                with PySpy(pid, output):
                    result = body()
                self.profiles[name] = summarize(output)
            after = cpu_seconds(pid)
            if before is not None and after is not None:
                result[f"{name}_backend_cpu_cores"] = round(
                    (after - before) / (time.monotonic() - started), 2
                )
            return result

        return run

    def run(self) -> None:
        from scripts.kafka_launcher import ApacheKafka

        plan = self.plan
        say("starting Apache Kafka")
        kafka = ApacheKafka(self.work / "kafka")
        bootstrap = kafka.start()
        try:
            pipeline_profile = RESULTS_DIR / "profile-pipeline.txt" if self.profile else None
            self.phase(
                "throughput",
                lambda: throughput.run(bootstrap, self.work, plan.records, profile_to=pipeline_profile),
            )
            if pipeline_profile:
                self.profiles["pipeline"] = summarize(pipeline_profile)
            worker_profile = RESULTS_DIR / "profile-worker.txt" if self.profile else None
            self.phase(
                "workers",
                lambda: workers.run(
                    bootstrap,
                    self.work / "workers",
                    plan.records,
                    profile_to=worker_profile,
                    broker_pid=kafka.pid,
                ),
            )
            if worker_profile:
                self.profiles["worker"] = summarize(worker_profile)
            self.phase("cluster", lambda: cluster.run(bootstrap, self.work, plan.cluster_records))
            self.phase("backend on Apache Kafka", lambda: self.kafka_backend(bootstrap, kafka.pid))
        finally:
            say("stopping Apache Kafka")
            kafka.stop()
        self.phase("e2e_embedded", self.embedded_e2e)

    def kafka_backend(self, bootstrap: str, broker_pid: int | None) -> dict[str, Any]:
        """``python -m backend`` on Apache Kafka: e2e, fan-out, idle, then its memory."""
        plan = self.plan
        topic = f"bench-live-{uuid.uuid4().hex[:8]}"
        throughput.create_topic(bootstrap, topic, partitions=3)
        backend = BackendProcess(
            "backend on Apache Kafka", self.work / "backend-kafka", topic, f"bench-{topic}", bootstrap
        )
        say("starting python -m backend on Apache Kafka")
        backend.start()
        try:
            e2e_run = self.profiled(
                "e2e", backend.pid, lambda: e2e.run(backend, plan.e2e_rate, plan.e2e_seconds, "e2e")
            )
            self.phase("e2e", e2e_run)
            fanout_run = self.profiled(
                "fanout",
                backend.pid,
                lambda: fanout.run(
                    backend,
                    plan.clients,
                    plan.ws_share,
                    plan.node_procs,
                    plan.fanout_rate,
                    plan.fanout_seconds,
                ),
            )
            self.phase("fanout", fanout_run)
            self.phase("burst", lambda: burst.run(backend, burst.RECORDS, plan.clients, plan.node_procs))
            self.phase("idle", lambda: idle.run(backend, plan.idle_intervals, broker_pid))
            rss, peak = backend.rss_mb()
            return {
                "rss_mb": round(rss, 1) if rss else None,
                "rss_peak_mb": round(peak, 1) if peak else None,
            }
        finally:
            backend.stop()

    def embedded_e2e(self) -> dict[str, Any]:
        topic = f"bench-embedded-{uuid.uuid4().hex[:8]}"
        backend = BackendProcess(
            "backend on the embedded broker", self.work / "backend-embedded", topic, topic
        )
        say("starting python -m backend on the embedded broker")
        backend.start()
        try:
            return self.profiled(
                "e2e_embedded",
                backend.pid,
                lambda: e2e.run(backend, self.plan.e2e_rate, self.plan.e2e_seconds, "e2e_embedded"),
            )()
        finally:
            backend.stop()


def judge(results: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    met, missed, unknown = [], [], []
    for test, text in BARS:
        verdict = test(results)
        (unknown if verdict is None else met if verdict else missed).append(text)
    return met, missed, unknown


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return " | ".join(_fmt(v) for v in value.values())
    if isinstance(value, list):
        return ("  " if any(isinstance(v, list) for v in value) else "/").join(_fmt(v) for v in value)
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}".rstrip("0").rstrip(".")
    return str(value)


def table(results: dict[str, Any]) -> str:
    lines = []
    for key, label, unit in ROWS:
        if label:
            lines.append(f"  {label:<50} {_fmt(results.get(key)):>14} {unit}".rstrip())
        else:
            lines.append(f"\n{key}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs; finishes within 5 minutes")
    parser.add_argument("--profile", action="store_true", help="py-spy the backend in each phase")
    parser.add_argument("--clients", type=int, help="fan-out clients (default 1000)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.clients:
        plan = replace(plan, clients=args.clients)

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s [%(name)s] %(message)s")
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    started = time.monotonic()
    info = machine()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    work = RESULTS_DIR / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ensure_node_modules()

    bench = Bench(plan, args.profile, work)
    try:
        bench.run()
    except Exception as exc:  # Kafka would not start, or similar: still report what we have
        traceback.print_exc(file=sys.stderr)
        bench.errors.append(f"run: {type(exc).__name__}: {exc}")

    results = {"mode": "quick" if args.quick else "full", **bench.results}
    met, missed, unknown = judge(results)
    results.update(
        bars_met=met,
        bars_missed=missed + unknown,
        loadavg_start=info["loadavg"],
        loadavg_end=[round(x, 2) for x in os.getloadavg()],
        elapsed_s=round(time.monotonic() - started, 1),
        errors=bench.errors,
        machine=info,
        plan=asdict(plan),
    )
    if bench.profiles:
        results["profiles"] = bench.profiles
        for name, summary in bench.profiles.items():
            print(render(name, summary))
    (RESULTS_DIR / "latest.json").write_text(json.dumps(results, indent=2) + "\n")

    print(table(results))
    print(
        f"\nmachine: {info['nproc']} cores ({info['cpu']}), {info['mem_gib']} GiB; load average "
        f"{' '.join(map(str, info['loadavg']))} at start, {' '.join(map(str, results['loadavg_end']))} "
        f"at end; {results['elapsed_s']} s"
    )
    print("\nbars:")
    for text in met:
        print(f"  MET     {text}")
    for text in missed:
        print(f"  MISSED  {text}")
    for text in unknown:
        print(f"  NO DATA {text}")
    for error in bench.errors:
        print(f"  error: {error}")
    print(json.dumps({key: results.get(key) for key in SUMMARY_KEYS}, separators=(",", ":")))
    return 0 if not bench.errors else 1


if __name__ == "__main__":
    sys.exit(main())
