"""Fan-out: many concurrent clients (Socket.IO and /ws), each receiving every event at a steady rate.

Node processes (``bench/js/fanout.mjs``) hold the clients; each client checks ``seq`` continuity and
records each event's latency (receipt minus the event's ``timestamp``). Once all are connected, this
side produces records straight to Kafka at ``rate`` per second for ``WARMUP_S`` (unmeasured) and then
``seconds`` (each record gives ``message-received``, ``processing-started``, ``processing-completed``,
plus a share of the merged ``stats-updated``), then waits until every client holds the newest ``seq``
any client saw. The load is produced with kafka-python, not through the producer API, so that it stays
steady however busy the gateway's event loop (which also serves the producer API) gets.

* ``fanout_events_per_s``: the slowest client's events per second within the window;
* ``fanout_p99_ms``: over every event delivered to every client;
* ``fanout_lost``: client deliveries missing: gaps in a client's ``seq`` (``fanout_seq_gaps``) plus,
  once the load stopped and the gateway had ``DRAIN_TIMEOUT_S`` to catch up, the events after a
  client's last one that another client got (``fanout_undelivered_after_drain``); 0 means every
  client got every event.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

from kafka import KafkaProducer

from bench.common import (
    BackendProcess,
    NodeProcess,
    cpu_seconds,
    histogram_percentile,
    rounded,
    say,
)

DRAIN_TIMEOUT_S = 20.0
# The load runs this long, at the same rate, before the measured window opens. Its first second is
# the clients' and the backend's cold start: in a probe of per-event arrival times (1,000 clients),
# both Node processes' event loops stalled 150-190 ms together there and the first events reached
# their last client 420-480 ms after creation, against <= 116 ms for every event after the first
# ~0.6 s. The warm-up's latency is still reported, as ``fanout_warmup_p99_ms``.
WARMUP_S = 3.0


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run(
    backend: BackendProcess, clients: int, ws_share: float, procs: int, rate: float, seconds: float
) -> dict[str, Any]:
    ws_total = round(clients * ws_share)
    sio_total = clients - ws_total
    nodes = [
        NodeProcess("fanout.mjs", {"url": backend.gateway_url, "sio": sio, "ws": ws, "batch": 50})
        for sio, ws in zip(split(sio_total, procs), split(ws_total, procs), strict=True)
    ]
    producer = KafkaProducer(bootstrap_servers=backend.broker(), acks="all", linger_ms=0)
    headers = [("data-type", b"SINGLE_MESSAGE")]
    try:
        say(f"fanout: connecting {sio_total} Socket.IO + {ws_total} /ws clients in {procs} node process(es)")
        ready = [node.expect("ready", timeout=120) for node in nodes]
        connected = sum(r["connected"] for r in ready)
        ramp_s = max(r["seconds"] for r in ready)
        say(f"fanout: {connected} connected in {ramp_s:.1f}s; {rate:g} rec/s, {WARMUP_S:g}s + {seconds:g}s")
        time.sleep(1.0)
        for node in nodes:
            node.send({"cmd": "warmup"})
        warmup, total = int(rate * WARMUP_S), int(rate * seconds)
        start = time.perf_counter()
        for i in range(warmup + total):
            if i == warmup:  # the measured window opens, the load goes on at the same pace
                node_cpu = sum(cpu_seconds(node.proc.pid) or 0.0 for node in nodes)
                node_started = time.monotonic()
                backend_cpu = cpu_seconds(backend.pid) or 0.0
                for node in nodes:
                    node.send({"cmd": "start"})
                measured_from = time.perf_counter()
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            value = json.dumps({"fanout": i, "value": i}).encode()
            producer.send(backend.topic, value=value, headers=headers)
        producer.flush(timeout=30)
        achieved = total / (time.perf_counter() - measured_from)
        node_cpu = (sum(cpu_seconds(node.proc.pid) or 0.0 for node in nodes) - node_cpu) / (
            time.monotonic() - node_started
        )
        for node in nodes:
            node.send({"cmd": "stop"})
        drained = wait_drained(nodes, timeout=DRAIN_TIMEOUT_S)
        backend_cpu = (cpu_seconds(backend.pid) or 0.0) - backend_cpu
        for node in nodes:
            node.send({"cmd": "report"})
        reports = [node.expect("report", timeout=30) for node in nodes]
    finally:
        producer.close(timeout=5)
        for node in nodes:
            node.close()
    result = summarize(reports, connected, clients, achieved, drained, ramp_s)
    deliveries = result["fanout_latency_samples"]
    # The backend's CPU per event delivered to one client, over the window and the drain: what one
    # delivery costs, whatever share of the machine the backend got.
    per_delivery = backend_cpu / deliveries * 1e6 if deliveries else None
    result["fanout_backend_cpu_us_per_delivery"] = rounded(per_delivery)
    result["fanout_node_clients_cpu_cores"] = round(node_cpu, 2)
    return result


def wait_drained(nodes: list[NodeProcess], timeout: float) -> tuple[float, bool]:
    """Wait until every client holds the newest seq seen by any, for 1 s; (seconds waited, whether so)."""
    started = time.monotonic()
    stable_since: float | None = None
    last_max = -1
    while time.monotonic() - started < timeout:
        for node in nodes:
            node.send({"cmd": "status"})
        statuses = [node.expect("status", timeout=10) for node in nodes]
        low = min(s["minLast"] for s in statuses)
        high = max(s["maxLast"] for s in statuses)
        if low == high and high == last_max:
            stable_since = stable_since or time.monotonic()
            if time.monotonic() - stable_since >= 1.0:
                return time.monotonic() - started, True
        else:
            stable_since = None
        last_max = high
        time.sleep(0.25)
    return time.monotonic() - started, False


def summarize(
    reports: list[dict[str, Any]],
    connected: int,
    wanted: int,
    rate: float,
    drained: tuple[float, bool],
    ramp_s: float,
) -> dict[str, Any]:
    histogram: Counter[int] = Counter()
    warmup: Counter[int] = Counter()
    everyone: list[dict[str, Any]] = []
    for report in reports:
        histogram.update({int(ms): count for ms, count in report["histogram"].items()})
        warmup.update({int(ms): count for ms, count in report["warmupHistogram"].items()})
        # A client that never connected shows in fanout_clients, not as losses.
        everyone.extend(c for c in report["clients"] if c["last"] is not None)
    seconds = max(report["seconds"] for report in reports)
    newest = max((c["last"] for c in everyone), default=0)
    gaps = sum(c["missing"] for c in everyone)
    undelivered = sum(newest - c["last"] for c in everyone)
    rates = [c["count"] / seconds for c in everyone] if seconds > 0 and everyone else [0.0]
    by_kind: dict[str, int] = Counter(c["kind"] for c in everyone)
    kind_rates = {
        kind: [c["count"] / seconds for c in everyone if c["kind"] == kind] for kind in sorted(by_kind)
    }
    deliveries = sum(histogram.values())
    return {
        "fanout_clients": connected,
        "fanout_clients_wanted": wanted,
        "fanout_clients_sio": by_kind.get("sio", 0),
        "fanout_clients_ws": by_kind.get("ws", 0),
        "fanout_connect_s": round(ramp_s, 1),
        "fanout_records_per_s": round(rate, 1),
        "fanout_events_per_s": rounded(min(rates)),
        "fanout_events_per_s_mean": rounded(sum(rates) / len(rates)),
        # Per kind (sio, ws): (slowest, mean) events/s, to see whether one transport falls behind.
        "fanout_events_per_s_by_kind": {
            kind: [rounded(min(rates)), rounded(sum(rates) / len(rates))]
            for kind, rates in kind_rates.items()
            if rates and seconds > 0
        },
        "fanout_deliveries_per_s": round(sum(c["count"] for c in everyone) / seconds) if seconds else 0,
        "fanout_p50_ms": histogram_percentile(histogram, 0.5),
        "fanout_p99_ms": histogram_percentile(histogram, 0.99),
        "fanout_max_ms": float(max(histogram)) if histogram else None,
        "fanout_warmup_s": WARMUP_S,
        "fanout_warmup_p99_ms": histogram_percentile(warmup, 0.99),
        "fanout_warmup_max_ms": float(max(warmup)) if warmup else None,
        "fanout_lost": gaps + undelivered,
        "fanout_seq_gaps": gaps,
        "fanout_undelivered_after_drain": undelivered,
        "fanout_duplicates": sum(c["dups"] for c in everyone),
        "fanout_disconnects": sum(c["disconnects"] for c in everyone),
        "fanout_latency_samples": deliveries,
        "fanout_drain_s": round(drained[0], 1),
        "fanout_drained": drained[1],
    }
