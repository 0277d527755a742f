"""Burst: records as fast as Kafka takes them, watched by 1,000 ``mode=live`` clients and the panel.

Issue 14's screen-side measure. Node processes (``bench/js/live.mjs``) hold ``clients`` live clients
(half Socket.IO, half /ws, ``maxRate`` 100, as the Vue example's switch asks); one more live /ws
client here (:class:`Probe`, ``maxRate`` 50 like the dashboard's panel) keeps every stats-updated
it receives, while a poller reads the backend's own counts over REST every ``POLL_S``. The
records are produced straight to Kafka with kafka-python, as fast as it takes them.

The same burst runs twice: first with the probe alone (the baseline), then with the clients, so
that the gateway's CPU for the clients is the difference between the two.

* ``burst_records_per_s``: records the backend took per second (produce start to the last outcome);
* ``burst_deliveries_per_s``: frames received per second by all the Node clients together;
* ``burst_lag_worst_ms``: the probe's counters behind the truth, the worst over the burst: for every
  count the poller saw (timed when its request left, so a lag is never made smaller than it was), how
  long until the probe's counters showed at least as much;
* ``burst_event_to_client_p50_ms``, ``..._p99_ms``: the probe's sampled records, from their
  ``message-received`` time to their arrival at the probe, in the burst with the probe alone (what
  the dashboard's panel gets before the browser draws it); ``..._loaded_p99_ms`` with the clients;
* ``burst_backend_cpu_ms_per_client``: the view process's CPU (the gateway lives there) with the
  clients minus without them, per client; ``burst_backend_cpu_cores`` the whole backend (view and
  workers) with the clients;
* ``burst_disconnects``, ``burst_partial_records`` (records a client got only part of),
  ``burst_clients_exact`` (clients whose last stats-updated equals the backend's final counts, read
  once every client has them or 15 s after the burst; ``burst_clients_settle_s`` how long that took):
  0, 0 and every client are what the contract promises.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import websockets
from kafka import KafkaProducer

from bench.common import (
    BackendProcess,
    NodeProcess,
    epoch_ms,
    iso_to_ms,
    percentile,
    rounded,
    say,
    tree_cpu_seconds,
)

RECORDS = 50_000
POLL_S = 0.05
SETTLE_TIMEOUT_S = 300.0
PANEL_MAX_RATE = 50  # dashboard/static/live_panel.js LIVE_MAX_RATE
CLIENT_MAX_RATE = 100  # examples/vue-client/index.html LIVE_MAX_RATE
SETTLE_MAX_S = 15.0  # after the burst, how long the Node clients may take to read what was sent


class Probe:
    """One live /ws client (the panel's subscription) and a poller of the backend's own counts."""

    def __init__(self, backend: BackendProcess) -> None:
        self.ws_url = backend.gateway_url.replace("http", "ws", 1) + f"/ws?mode=live&maxRate={PANEL_MAX_RATE}"
        self.stats_url = backend.gateway_url + "/api/consumers/statistics"
        self.seen: list[tuple[float, int, int]] = []  # (time, total, outcomes) as the probe received them
        self.truth: list[tuple[float, int, int]] = []  # (time the request left, total, outcomes)
        #: (monotonic time, ms) per sampled record: its message-received time to its arrival here.
        self.record_lags: list[tuple[float, float]] = []
        self.skipped = 0
        self.disconnects = 0
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._run()), name="burst-probe", daemon=True
        )

    def __enter__(self) -> Probe:
        self._thread.start()
        if not self.connected.wait(30):
            raise RuntimeError("the probe's /ws did not open")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    async def _run(self) -> None:
        await asyncio.gather(self._listen(), self._poll())

    async def _listen(self) -> None:
        async with websockets.connect(self.ws_url, max_size=None) as ws:
            self.connected.set()
            while not self._stop.is_set():
                try:
                    raw = await asyncio.wait_for(ws.recv(), 0.5)
                except TimeoutError:
                    continue
                except websockets.ConnectionClosed:
                    self.disconnects += 1
                    return
                frame = json.loads(raw)
                data = frame.get("data") or {}
                if frame.get("event") == "stats-updated":
                    outcomes = data["processedMessages"] + data["failedMessages"]
                    self.seen.append((time.monotonic(), data["totalMessages"], outcomes))
                elif frame.get("event") == "message-received":
                    self.record_lags.append((time.monotonic(), epoch_ms() - iso_to_ms(data["timestamp"])))
                elif frame.get("event") == "records-skipped":
                    self.skipped += data["count"]

    async def _poll(self) -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            while not self._stop.is_set():
                sent = time.monotonic()
                body = (await http.get(self.stats_url)).json()
                outcomes = body["processedMessages"] + body["failedMessages"]
                self.truth.append((sent, body["totalMessages"], outcomes))
                await asyncio.sleep(POLL_S)

    def worst_lag_ms(self, since: float) -> float | None:
        """How far the probe's counters were behind the backend's, at worst, after ``since``."""
        worst = 0.0
        for column in (1, 2):
            shown = [sample[column] for sample in self.seen]
            for at, *counts in (t for t in self.truth if t[0] >= since):
                index = bisect.bisect_left(shown, counts[column - 1])
                if index == len(shown):
                    return None  # the probe never showed that count
                worst = max(worst, self.seen[index][0] - at)
        return worst * 1000


def produce(bootstrap: str, topic: str, count: int) -> float:
    """``count`` records as fast as Kafka takes them; the seconds it took."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024)
    started = time.monotonic()
    try:
        for number in range(count):
            producer.send(topic, json.dumps({"burst": number, "value": number % 100}).encode())
        producer.flush(timeout=120)
    finally:
        producer.close(timeout=5)
    return time.monotonic() - started


def one_burst(backend: BackendProcess, records: int, probe: Probe) -> dict[str, Any]:
    """Produce a burst and wait until the backend's counts have it all; timings and CPU."""
    before = probe.truth[-1] if probe.truth else (0.0, 0, 0)
    cpu_before = tree_cpu_seconds(backend.pid)
    started = time.monotonic()
    produce_s = produce(backend.broker(), backend.topic, records)
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while not (probe.truth and probe.truth[-1][2] >= before[2] + records):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the backend did not take {records} records in {SETTLE_TIMEOUT_S:.0f}s")
        time.sleep(POLL_S)
    elapsed = time.monotonic() - started
    own, children = tree_cpu_seconds(backend.pid)
    return {
        "started": started,
        "record_lags_ms": [lag for at, lag in probe.record_lags if started <= at <= started + elapsed],
        "produce_s": produce_s,
        "elapsed_s": elapsed,
        "view_cpu_s": own - cpu_before[0],
        "workers_cpu_s": children - cpu_before[1],
        "total": before[1] + records,
    }


def run(backend: BackendProcess, records: int, clients: int, procs: int) -> dict[str, Any]:
    with Probe(backend) as probe:
        time.sleep(1.0)  # a few polls: the counts before the burst
        say(f"burst: {records:,} records, the probe alone (baseline)")
        baseline = one_burst(backend, records, probe)
        nodes = [
            NodeProcess(
                "live.mjs",
                {"url": backend.gateway_url, "sio": n // 2, "ws": n - n // 2, "maxRate": CLIENT_MAX_RATE},
            )
            for n in split(clients, procs)
        ]
        try:
            ready = [node.expect("ready", timeout=180) for node in nodes]
            connected = sum(r["connected"] for r in ready)
            say(f"burst: {connected} live clients connected; {records:,} records again")
            for node in nodes:
                node.send({"cmd": "start"})
            loaded = one_burst(backend, records, probe)
            for node in nodes:
                node.send({"cmd": "stop"})
            reports, settle_s = settled_reports(nodes, loaded["total"])
            loaded["settle_s"] = settle_s
        finally:
            for node in nodes:
                node.close()
        lag = probe.worst_lag_ms(baseline["started"])
        probe_exact = bool(probe.seen) and probe.seen[-1][1] == loaded["total"]
    return summarize(baseline, loaded, reports, connected, clients, records, probe, lag, probe_exact)


def settled_reports(nodes: list[NodeProcess], total: int) -> tuple[list[dict[str, Any]], float | None]:
    """The Node clients' reports once every client shows ``total`` (at most SETTLE_MAX_S later),
    and how many seconds after the burst that took (None: some never did).

    The Node processes read their sockets on one event loop each: at 100-160k frames/s they end
    the burst seconds behind what the gateway sent, so one report right away undercounts."""
    started = time.monotonic()
    while True:
        for node in nodes:
            node.send({"cmd": "report"})
        reports = [node.expect("report", timeout=60) for node in nodes]
        waited = time.monotonic() - started
        if all(c["total"] == total for r in reports for c in r["clients"]):
            return reports, round(waited, 1)
        if waited > SETTLE_MAX_S:
            return reports, None
        time.sleep(0.5)


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def summarize(
    baseline: dict[str, Any],
    loaded: dict[str, Any],
    reports: list[dict[str, Any]],
    connected: int,
    wanted: int,
    records: int,
    probe: Probe,
    lag: float | None,
    probe_exact: bool,
) -> dict[str, Any]:
    everyone = [client for report in reports for client in report["clients"]]
    seconds = max((report["seconds"] for report in reports), default=0.0)
    window_frames = sum(client["windowFrames"] for client in everyone)
    exact = sum(1 for client in everyone if client["total"] == loaded["total"])
    extra_cpu = loaded["view_cpu_s"] - baseline["view_cpu_s"]
    return {
        "burst_records": records,
        "burst_records_per_s": round(records / loaded["elapsed_s"]),
        "burst_baseline_records_per_s": round(records / baseline["elapsed_s"]),
        "burst_produce_s": round(loaded["produce_s"], 1),
        "burst_clients": connected,
        "burst_clients_wanted": wanted,
        "burst_deliveries_per_s": round(window_frames / seconds) if seconds else None,
        "burst_records_delivered_per_client": round(
            sum(c["records"] for c in everyone) / max(1, len(everyone))
        ),
        "burst_records_skipped_per_client": round(
            sum(c["skipped"] for c in everyone) / max(1, len(everyone))
        ),
        "burst_lag_worst_ms": rounded(lag),
        # The probe's sampled records (maxRate 50, the panel's): message-received to arrival.
        "burst_event_to_client_p50_ms": rounded(percentile(baseline["record_lags_ms"], 0.5)),
        "burst_event_to_client_p99_ms": rounded(percentile(baseline["record_lags_ms"], 0.99)),
        "burst_event_to_client_loaded_p99_ms": rounded(percentile(loaded["record_lags_ms"], 0.99)),
        "burst_probe_exact": probe_exact,
        "burst_probe_skipped": probe.skipped,
        "burst_clients_exact": exact,
        "burst_clients_settle_s": loaded.get("settle_s"),
        "burst_partial_records": sum(client["partial"] for client in everyone),
        "burst_disconnects": sum(client["disconnects"] for client in everyone) + probe.disconnects,
        "burst_backend_cpu_cores": round(
            (loaded["view_cpu_s"] + loaded["workers_cpu_s"]) / loaded["elapsed_s"], 2
        ),
        "burst_view_cpu_s": [round(baseline["view_cpu_s"], 1), round(loaded["view_cpu_s"], 1)],
        "burst_backend_cpu_ms_per_client": rounded(extra_cpu * 1000 / connected) if connected else None,
    }


def main() -> None:
    """``python -m bench.burst [clients]``: this phase alone, on its own Apache Kafka and backend."""
    import sys
    import tempfile
    import uuid

    from bench import throughput
    from bench.common import ensure_node_modules
    from scripts.kafka_launcher import ApacheKafka

    clients = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000
    ensure_node_modules()
    with tempfile.TemporaryDirectory(prefix="bench-burst-") as work:
        kafka = ApacheKafka(Path(work) / "kafka")
        bootstrap = kafka.start()
        try:
            topic = f"bench-burst-{uuid.uuid4().hex[:8]}"
            throughput.create_topic(bootstrap, topic, partitions=3)
            backend = BackendProcess("backend", Path(work) / "backend", topic, f"bench-{topic}", bootstrap)
            backend.start()
            try:
                print(json.dumps(run(backend, RECORDS, clients, 2), indent=2))
            finally:
                backend.stop()
        finally:
            kafka.stop()


if __name__ == "__main__":
    main()
