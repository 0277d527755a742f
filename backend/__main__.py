"""``python -m backend``: consumers, event gateway and producer API, headless.

With ``BACKEND_ROLE=worker`` only the worker processes (backend/supervisor.py): no HTTP, no store,
no broker. Stops cleanly on SIGINT/SIGTERM. A bad setting ends start-up with one line
naming the variable (exit code 2), never a traceback.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from backend.config import ConfigError, Settings
from backend.service import Backend, discover_cluster_id, keep_startup_objects_out_of_gc
from backend.supervisor import WorkerSupervisor, instance_id

NO_BOOTSTRAP_FOR_WORKERS = (
    "BACKEND_ROLE=worker needs KAFKA_BOOTSTRAP_SERVERS (the embedded broker runs inside BACKEND_ROLE=all)"
)


def main() -> int:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s [%(name)s] %(message)s",
    )
    # kafka-python logs every failed reconnect at ERROR; our broker probe reports reachability once.
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        settings = Settings.from_env()
        if settings.role == "worker":
            return run_workers(settings, stop)
        backend = Backend(settings).start()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # e.g. the embedded broker would not start
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    keep_startup_objects_out_of_gc()
    settings = backend.settings
    print(
        f"Backend ready: gateway http://{settings.gateway_host}:{settings.gateway_port} "
        f"producer http://{settings.gateway_host}:{settings.producer_port} broker {backend.bootstrap}",
        flush=True,
    )
    stop.wait()
    backend.stop()
    return 0


def run_workers(settings: Settings, stop: threading.Event) -> int:
    """BACKEND_ROLE=worker: supervise the worker children until ``stop``; the cluster must exist already.

    Raises ConfigError for a missing or unreachable cluster (one line, exit code 2 in ``main``).
    """
    if not settings.bootstrap_servers:
        raise ConfigError(NO_BOOTSTRAP_FOR_WORKERS)
    cluster_id = discover_cluster_id(settings)
    instance = instance_id(settings.data_dir)
    supervisor = WorkerSupervisor(settings, settings.bootstrap_servers, cluster_id, instance).start()
    print(
        f"Workers ready: {settings.worker_count} worker process(es) of instance {instance}, group "
        f"{settings.group_id}, broker {settings.bootstrap_servers}: {supervisor.describe()}",
        flush=True,
    )
    stop.wait()
    supervisor.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
