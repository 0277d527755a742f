"""``python -m bench.soak [--minutes N]``: the adversarial mix against ``python -m backend`` for N minutes.

Why: issue 15's defects (a poison record blocking its partition, idle sockets taking every file
descriptor, memory spikes on big rows, duplicated events) showed only under a mix of abuse held for
a while. This runs that mix (see :mod:`bench.soak_mix`) while a monitor client checks that every
event arrives exactly once and every record ends, and samples the backend's RSS, open fds, threads,
CPU and ``/api/health`` every 10 s. At the end it compares what was produced, what the monitor saw
and ``/api/consumers/statistics``; the exit code is 1 when anything was lost, doubled or miscounted.

stderr: progress and the samples; stdout: the table, the verdict and, last, one JSON line.
Everything also goes to ``bench/results/soak-latest.json`` (with ``--work``: next to that folder).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import shutil
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, BackendProcess, Http, cpu_seconds, machine, read_rss_mb, say
from bench.soak_mix import (
    Mix,
    Monitor,
    Tally,
    api_producer,
    churn,
    idle_socket,
    kafka_producer,
    log_queries,
    slowloris,
)
from bench.throughput import create_topic

SAMPLE_EVERY_S = 10.0
DRAIN_TIMEOUT_S = 120.0
TOPICS = 3


@dataclass
class Sample:
    """One look at the backend process."""

    t_s: float
    rss_mb: float | None
    fds: int | None
    threads: int | None
    cpu_cores: float | None
    health: int | str
    events: int
    produced: int


@dataclass
class Run:
    """What the soak needs while it runs."""

    backend: BackendProcess
    topics: list[str]
    mix: Mix
    tally: Tally = field(default_factory=Tally)
    samples: list[Sample] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def produced(self) -> int:
        """Records the broker acknowledged or the producer API answered 201 for."""
        c = self.tally.counts
        return c["api_ok"] + c["api_poison_accepted"] + c["kafka_ok"] + c["kafka_poison_ok"]

    def expected_failed(self) -> int:
        c = self.tally.counts
        return c["api_poison_accepted"] + c["kafka_poison_ok"]


# --- the backend process ----------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, str]:
    with contextlib.suppress(OSError):
        text = Path(f"/proc/{pid}/status").read_text()
        return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
    return {}


def open_fds(pid: int) -> int | None:
    with contextlib.suppress(OSError):
        return len(os.listdir(f"/proc/{pid}/fd"))
    return None


def health(port: int) -> int | str:
    """/api/health's status code, or the error that stood in for it (5 s timeout)."""
    with contextlib.suppress(OSError, http.client.HTTPException):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/api/health")
            return conn.getresponse().status
        finally:
            conn.close()
    return "error"


# --- the run ----------------------------------------------------------------------------------


async def sampler(run: Run, monitor: Monitor, started: float) -> None:
    """Every SAMPLE_EVERY_S: RSS, fds, threads, CPU over the interval, health; one line each."""
    pid = run.backend.pid
    cpu_before, t_before = cpu_seconds(pid), time.monotonic()
    while True:
        await asyncio.sleep(SAMPLE_EVERY_S)
        cpu, now = cpu_seconds(pid), time.monotonic()
        cores = None if cpu is None or cpu_before is None else (cpu - cpu_before) / (now - t_before)
        cpu_before, t_before = cpu, now
        threads = proc_status(pid).get("Threads")
        sample = Sample(
            t_s=round(now - started, 1),
            rss_mb=_round(read_rss_mb(pid)[0]),
            fds=open_fds(pid),
            threads=int(threads) if threads else None,
            cpu_cores=_round(cores, 2),
            health=await asyncio.to_thread(health, run.backend.gateway_port),
            events=monitor.received,
            produced=run.produced(),
        )
        run.samples.append(sample)
        say(
            f"t={sample.t_s:>6}s rss={sample.rss_mb} MiB fds={sample.fds} threads={sample.threads} "
            f"cpu={sample.cpu_cores} health={sample.health} events={sample.events} produced={sample.produced}"
        )


async def soak(run: Run, seconds: float) -> Monitor:
    """The monitor first, then the whole mix for ``seconds``; then the drain. Returns the monitor."""
    backend, mix, tally = run.backend, run.mix, run.tally
    monitor = Monitor(backend.gateway_port)
    monitor_task = asyncio.create_task(monitor.run())
    await asyncio.wait_for(monitor.connected.wait(), 30)
    started = time.monotonic()
    tasks = [asyncio.create_task(sampler(run, monitor, started))]
    tasks += [asyncio.create_task(idle_socket(backend.gateway_port, tally)) for _ in range(mix.idle_sockets)]
    tasks += [
        asyncio.create_task(slowloris(port, mix.slowloris_every_s, tally))
        for port in [backend.gateway_port, backend.producer_port] * (mix.slowloris // 2 + 1)
    ][: mix.slowloris]
    tasks += [asyncio.create_task(churn(backend.gateway_port, tally, seed)) for seed in range(mix.churners)]
    threads = [
        threading.Thread(target=api_producer, args=(backend.producer_port, run.topics, mix, tally, run.stop)),
        threading.Thread(target=kafka_producer, args=(backend.broker(), run.topics, mix, tally, run.stop)),
        threading.Thread(target=log_queries, args=(backend.gateway_port, run.topics, mix, tally, run.stop)),
    ]
    for thread in threads:
        thread.start()
    say(f"soak: the mix runs for {seconds:.0f} s")
    try:
        await asyncio.sleep(seconds)
    finally:
        run.stop.set()
        for task in tasks[1:]:
            task.cancel()
        await asyncio.gather(*tasks[1:], return_exceptions=True)
        for thread in threads:
            await asyncio.to_thread(thread.join)
    say(f"soak: mix stopped; draining (up to {DRAIN_TIMEOUT_S:.0f} s)")
    await drain(run, monitor)
    tasks[0].cancel()
    monitor_task.cancel()
    await asyncio.gather(tasks[0], monitor_task, return_exceptions=True)
    return monitor


async def drain(run: Run, monitor: Monitor) -> None:
    """Wait until every produced record has its outcome at the monitor and the counts say so."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        ended = sum(monitor.outcomes().values())
        stats = monitor.stats or {}
        if ended >= run.produced() and stats.get("totalMessages") == run.produced():
            return
        await asyncio.sleep(1.0)


# --- the verdict ------------------------------------------------------------------------------


def verdict(run: Run, monitor: Monitor, stats: dict[str, Any]) -> dict[str, Any]:
    """Lost, doubled, wrongly sequenced or miscounted events: all must be 0 / exact."""
    produced, expected_failed = run.produced(), run.expected_failed()
    outcomes = monitor.outcomes()
    wrong = monitor.wrong_sequences()
    counts = (stats.get("totalMessages"), stats.get("processedMessages"), stats.get("failedMessages"))
    expected = (produced, produced - expected_failed, expected_failed)
    seen = (len(monitor.by_log), outcomes["C"], outcomes["F"])
    pushed = monitor.stats or {}
    result = {
        "events_received": monitor.received,
        "seq_gaps": monitor.gaps,
        "duplicates": monitor.duplicates,
        "resyncs": monitor.resyncs,
        "monitor_connections": monitor.connections,
        "position_mismatches": monitor.position_mismatches,
        "log_ids": len(monitor.by_log),
        "wrong_sequences": len(wrong),
        "wrong_sequence_examples": [f"{log_id}:{ev}" for log_id, ev in wrong[:5]],
        "produced": produced,
        "expected_total_processed_failed": list(expected),
        "statistics_total_processed_failed": list(counts),
        "monitor_total_processed_failed": list(seen),
        "last_stats_updated_matches": (
            pushed.get("totalMessages"),
            pushed.get("processedMessages"),
            pushed.get("failedMessages"),
        )
        == counts,
        "producer_errors": sum(n for key, n in run.tally.counts.items() if "_error_" in key),
        "api_poison_accepted": run.tally["api_poison_accepted"],
    }
    result["counts_exact"] = counts == expected == seen and result["last_stats_updated_matches"]
    result["ok"] = (
        result["counts_exact"]
        and monitor.gaps == monitor.duplicates == monitor.resyncs == monitor.position_mismatches == 0
        and not wrong
        and result["producer_errors"] == 0
        and result["api_poison_accepted"] == 0
    )
    return result


def figures(run: Run) -> dict[str, Any]:
    """min / max / last of the samples, and how often health was not 200."""
    out: dict[str, Any] = {}
    for key in ("rss_mb", "fds", "threads", "cpu_cores"):
        values = [getattr(s, key) for s in run.samples if getattr(s, key) is not None]
        out[key] = [min(values), max(values), values[-1]] if values else None
    out["health_not_200"] = sum(1 for s in run.samples if s.health != 200)
    out["samples"] = len(run.samples)
    return out


def log_noise(path: Path) -> dict[str, int]:
    """How loud the backend was: lines, tracebacks and ERROR lines in its log."""
    text = path.read_text(errors="replace") if path.exists() else ""
    lines = text.splitlines()
    return {
        "log_lines": len(lines),
        "log_kb": len(text.encode()) // 1024,
        "log_tracebacks": sum(1 for line in lines if line.startswith("Traceback")),
        "log_errors": sum(1 for line in lines if " ERROR " in line),
    }


def report(run: Run, result: dict[str, Any]) -> None:
    """The table and the verdict on stdout; the JSON line last."""
    fig, verdict_ = result["figures"], result["verdict"]
    print("\nbackend process (min / max / last over the samples)")
    for key, unit in (("rss_mb", "MiB"), ("fds", ""), ("threads", ""), ("cpu_cores", "cores")):
        values = fig[key]
        text = " / ".join(str(v) for v in values) if values else "-"
        print(f"  {key:<12} {text:>28} {unit}")
    print(f"  {'health':<12} {fig['health_not_200']:>10} of {fig['samples']} samples not 200")
    print("\nthe mix (counts)")
    for key, n in sorted(run.tally.counts.items()):
        print(f"  {key:<44} {n:>10,}")
    for key, value in sorted(run.tally.maxima.items()):
        print(f"  {key:<44} {value:>10,.1f}")
    print("\nmonitor and counts")
    for key, value in verdict_.items():
        print(f"  {key:<36} {value}")
    print(f"\nverdict: {'OK' if verdict_['ok'] else 'FAILED'}")
    summary = {
        "minutes": result["minutes"],
        "broker": result["broker"],
        "ok": verdict_["ok"],
        **{k: verdict_[k] for k in ("events_received", "seq_gaps", "duplicates", "wrong_sequences")},
        **{k: verdict_[k] for k in ("produced", "counts_exact", "statistics_total_processed_failed")},
        "rss_mb_min_max_last": fig["rss_mb"],
        "fds_min_max_last": fig["fds"],
        "threads_min_max_last": fig["threads"],
        "health_not_200": fig["health_not_200"],
        "logs_max_ms": _round(run.tally.maxima.get("logs_max_ms")),
        "log_tracebacks": result["log"]["log_tracebacks"],
        "elapsed_s": result["elapsed_s"],
    }
    print(json.dumps(summary, separators=(",", ":")))


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


# --- main -------------------------------------------------------------------------------------


def start_backend(work: Path, broker: str, kafka_bootstrap: str | None) -> tuple[BackendProcess, list[str]]:
    """``python -m backend`` on fresh topics (Apache Kafka: created first; embedded: by the API)."""
    tag = uuid.uuid4().hex[:6]
    topics = [f"soak-{tag}-{i}" for i in range(TOPICS)]
    if kafka_bootstrap:
        for topic in topics:
            create_topic(kafka_bootstrap, topic, partitions=3)
    # KAFKA_TOPICS takes a comma list: BackendProcess passes ``topic`` through as it is.
    backend = BackendProcess(
        f"backend on {broker}", work / "backend", ",".join(topics), f"soak-{tag}", kafka_bootstrap
    )
    say(f"starting python -m backend on {broker}")
    backend.start()
    if not kafka_bootstrap:
        api = Http(backend.producer_port)
        for topic in topics:  # creates the topic; the record counts like any other
            status, body = api.request("POST", f"/api/producers/send/single?topic={topic}", {"create": topic})
            if status != 201:
                raise RuntimeError(f"could not create {topic}: {status} {body}")
        api.close()
    return backend, topics


def run_soak(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from scripts.kafka_launcher import ApacheKafka

    kafka = ApacheKafka(work / "kafka") if args.broker == "kafka" else None
    if kafka:
        say("starting Apache Kafka")
    bootstrap = kafka.start() if kafka else None
    backend: BackendProcess | None = None
    try:
        backend, topics = start_backend(work, args.broker, bootstrap)
        mix = replace(Mix(), idle_sockets=args.idle_sockets)
        run = Run(backend, topics, mix)
        if not bootstrap:  # the records that created the topics
            run.tally.add("api_ok", len(topics))
        monitor = asyncio.run(soak(run, args.minutes * 60))
        stats = Http(backend.gateway_port).request("GET", "/api/consumers/statistics")[1]
        return {
            "verdict": verdict(run, monitor, stats),
            "figures": figures(run),
            "mix_counts": dict(run.tally.counts),
            "mix_maxima": {k: round(v, 1) for k, v in run.tally.maxima.items()},
            "samples_list": [asdict(s) for s in run.samples],
            "mix": asdict(mix),
            "run": run,
        }
    finally:
        if backend:
            backend.stop()
        if kafka:
            kafka.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the mix runs (default 10)")
    parser.add_argument("--broker", choices=("kafka", "embedded"), default="kafka")
    parser.add_argument("--idle-sockets", type=int, default=Mix.idle_sockets)
    parser.add_argument("--work", type=Path, help="where logs and data go (default bench/results/soak-work)")
    args = parser.parse_args(argv)
    work = args.work or RESULTS_DIR / "soak-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started, info = time.monotonic(), machine()
    result = run_soak(args, work)
    run = result.pop("run")
    result.update(
        minutes=args.minutes,
        broker=args.broker,
        log=log_noise(run.backend.log_path),
        machine=info,
        loadavg_end=[round(x, 2) for x in os.getloadavg()],
        elapsed_s=round(time.monotonic() - started, 1),
    )
    (work.parent / "soak-latest.json").write_text(json.dumps(result, indent=2) + "\n")
    report(run, result)
    return 0 if result["verdict"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
