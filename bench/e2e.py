"""End-to-end latency: producer API call -> ``processing-completed`` at a real socket.io-client.

POSTs to ``/api/producers/send/single`` go out on a fixed schedule (``rate`` per second), from a few
threads with a keep-alive connection each, so that a slow answer does not hold back the next request
(a late request is sent at once, never skipped). The Node probe connects to the
gateway like the seed's client and writes every ``message-received`` and ``processing-completed`` with
its receipt time. The response's partition/offset finds the ``message-received`` of the record, whose
``logId`` finds its ``processing-completed``. Latency = receipt of ``processing-completed`` minus the
moment the POST was sent (both wall clocks of this machine).

The breakdown uses the events' ``timestamp`` fields (server clock, millisecond resolution):
``to_received`` = POST sent -> the consumer polled the record; ``processing`` = polled -> outcome
ready; ``delivery`` = outcome ready -> received by the client (store commit, bus, gateway, socket).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.common import BackendProcess, Http, NodeProcess, epoch_ms, iso_to_ms, percentile, rounded, say

SENDERS = 4  # concurrent POSTs at most; each with its own keep-alive connection
# Traffic at the measured rate before measuring. Right after a start the first seconds are slower
# (a fresh backend and broker: p99 ~40 ms over the first 2 s, then under 20), and the bar is for the
# steady state; their latency is still reported, as ``<label>_warmup_p99_ms``.
STEADY_AFTER_S = 3.0
WATCHED = ["message-received", "processing-completed", "processing-failed"]


class Correlator:
    """Collects the probe's events and matches them to the POSTs."""

    def __init__(self, probe: NodeProcess) -> None:
        self.probe = probe
        self.received: dict[tuple[int, str], dict[str, Any]] = {}  # (partition, offset) -> event line
        self.completed: dict[str, dict[str, Any]] = {}  # logId -> event line

    def drain(self) -> None:
        while not self.probe.lines.empty():
            line = self.probe.lines.get_nowait()
            if line.get("type") != "event":
                continue
            data = line["data"]
            if line["name"] == "message-received":
                self.received[(int(data["partition"]), str(data["offset"]))] = line
            else:
                self.completed[data["logId"]] = line

    def outcome(self, partition: int, offset: str) -> dict[str, Any] | None:
        received = self.received.get((partition, offset))
        return self.completed.get(received["data"]["logId"]) if received else None


def post(producer: Http, topic: str, i: int) -> tuple[float, float, int, str]:
    """One POST; (sent at epoch ms, round trip ms, partition, offset)."""
    sent = epoch_ms()
    started = time.perf_counter()
    status, body = producer.request(
        "POST", f"/api/producers/send/single?topic={topic}", {"i": i, "name": "Test", "value": 100}
    )
    took = (time.perf_counter() - started) * 1000.0
    if status != 201:
        raise RuntimeError(f"producer API answered {status}: {body}")
    return sent, took, int(body["partition"]), str(body["offset"])


def post_on_schedule(
    backend: BackendProcess, total: int, rate: float
) -> tuple[list[tuple[float, float, int, str]], float]:
    """POST ``total`` records, the i-th at start + i/rate; (results in order, achieved rate)."""
    local = threading.local()
    connections: list[Http] = []

    def send(i: int) -> tuple[float, float, int, str]:
        if not hasattr(local, "http"):
            local.http = Http(backend.producer_port)
            connections.append(local.http)
        return post(local.http, backend.topic, i)

    futures = []
    with ThreadPoolExecutor(max_workers=SENDERS, thread_name_prefix="post") as pool:
        start = time.perf_counter()
        for i in range(total):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(send, i))
        # The rate the requests went out at (a slow answer does not count against it).
        achieved = (total - 1) / (time.perf_counter() - start) if total > 1 else 0.0
        results = [future.result() for future in futures]
    for http in connections:
        http.close()
    return results, achieved


def warm_up(producer: Http, topic: str, correlator: Correlator, timeout: float = 45.0) -> int:
    """POST until a record comes back completed: topic created, consumers assigned, connections warm."""
    deadline = time.monotonic() + timeout
    posted: list[tuple[int, str]] = []
    i = 0
    while time.monotonic() < deadline:
        if len(posted) < 100:
            _, _, partition, offset = post(producer, topic, -1 - i)
            posted.append((partition, offset))
            i += 1
        time.sleep(0.1)
        correlator.drain()
        if any(correlator.outcome(p, o) for p, o in posted[-10:]):
            return i
    raise RuntimeError(f"no processing-completed for warm-up records within {timeout:.0f}s")


def run(backend: BackendProcess, rate: float, seconds: float, label: str) -> dict[str, Any]:
    """Measure at ``rate`` records/s for ``seconds``; keys are prefixed with ``label``."""
    probe = NodeProcess("probe.mjs", {"url": backend.gateway_url, "events": WATCHED})
    producer = Http(backend.producer_port)
    try:
        probe.expect("connect", timeout=20)
        correlator = Correlator(probe)
        warm = warm_up(producer, backend.topic, correlator)
        say(f"e2e {label}: first record back after {warm}; {rate:g}/s for {STEADY_AFTER_S:g}s unmeasured")
        early, _ = post_on_schedule(backend, int(rate * STEADY_AFTER_S), rate)
        say(f"e2e {label}: measuring {rate:g}/s for {seconds:g}s")
        sent, achieved = post_on_schedule(backend, int(rate * seconds), rate)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            correlator.drain()
            if all(correlator.outcome(p, o) for _, _, p, o in early + sent):
                break
            time.sleep(0.1)
        correlator.drain()
    finally:
        producer.close()
        probe.close()

    early_latencies = [done["at"] - at for at, _, p, o in early if (done := correlator.outcome(p, o))]
    latencies, posts, to_received, processing, delivery = [], [], [], [], []
    missing = 0
    for at, took, partition, offset in sent:
        done = correlator.outcome(partition, offset)
        if done is None:
            missing += 1
            continue
        received = correlator.received[(partition, offset)]
        received_ms = iso_to_ms(received["data"]["timestamp"])
        completed_ms = iso_to_ms(done["data"]["timestamp"])
        latencies.append(done["at"] - at)
        posts.append(took)
        to_received.append(received_ms - at)
        processing.append(completed_ms - received_ms)
        delivery.append(done["at"] - completed_ms)
    result: dict[str, Any] = {
        f"{label}_p50_ms": rounded(percentile(latencies, 0.5)),
        f"{label}_p99_ms": rounded(percentile(latencies, 0.99)),
        f"{label}_max_ms": rounded(max(latencies, default=None)),
        f"{label}_records": len(sent),
        f"{label}_missing": missing,
        f"{label}_rate": round(achieved, 1),
        f"{label}_warmup_s": STEADY_AFTER_S,
        f"{label}_warmup_p99_ms": rounded(percentile(early_latencies, 0.99)),
        f"{label}_breakdown_p50_ms": {
            "post": rounded(percentile(posts, 0.5)),
            "to_received": rounded(percentile(to_received, 0.5)),
            "processing": rounded(percentile(processing, 0.5)),
            "delivery": rounded(percentile(delivery, 0.5)),
        },
        f"{label}_breakdown_p99_ms": {
            "post": rounded(percentile(posts, 0.99)),
            "to_received": rounded(percentile(to_received, 0.99)),
            "processing": rounded(percentile(processing, 0.99)),
            "delivery": rounded(percentile(delivery, 0.99)),
        },
    }
    say(
        f"e2e {label}: p50 {result[f'{label}_p50_ms']} ms, p99 {result[f'{label}_p99_ms']} ms, "
        f"missing {missing}"
    )
    return result
