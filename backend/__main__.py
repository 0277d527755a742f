"""``python -m backend``: consumers, event gateway and producer API, headless.

With ``BACKEND_ROLE=worker`` only the worker processes (backend/supervisor.py): no HTTP, no store,
no broker. Stops cleanly on SIGINT/SIGTERM. A bad setting ends start-up with one line
naming the variable (exit code 2), never a traceback.
"""

from __future__ import annotations

import sys

from backend.config import ConfigError, Settings
from backend.entrypoint import Stoppable, run_until_signalled
from backend.service import Backend, discover_cluster_id, keep_startup_objects_out_of_gc
from backend.supervisor import WorkerSupervisor, instance_id

NO_BOOTSTRAP_FOR_WORKERS = (
    "BACKEND_ROLE=worker needs KAFKA_BOOTSTRAP_SERVERS (the embedded broker runs inside BACKEND_ROLE=all)"
)


def main() -> int:
    return run_until_signalled(start_role)


def start_role(settings: Settings) -> tuple[Stoppable, str]:
    """The backend of ``BACKEND_ROLE`` (all, view, or worker) and its ready line."""
    if settings.role == "worker":
        return start_workers(settings)
    backend = Backend(settings).start()
    keep_startup_objects_out_of_gc()
    return backend, (
        f"Backend ready: gateway http://{settings.gateway_host}:{settings.gateway_port} "
        f"producer http://{settings.gateway_host}:{settings.producer_port} broker {backend.bootstrap}"
    )


def start_workers(settings: Settings) -> tuple[Stoppable, str]:
    """BACKEND_ROLE=worker: the worker children's supervisor; the cluster must exist already.

    Raises ConfigError for a missing or unreachable cluster (one line, exit code 2).
    """
    if not settings.bootstrap_servers:
        raise ConfigError(NO_BOOTSTRAP_FOR_WORKERS)
    cluster_id = discover_cluster_id(settings)
    instance = instance_id(settings.data_dir)
    supervisor = WorkerSupervisor(settings, settings.bootstrap_servers, cluster_id, instance).start()
    return supervisor, (
        f"Workers ready: {settings.worker_count} worker process(es) of instance {instance}, group "
        f"{settings.group_id}, broker {settings.bootstrap_servers}: {supervisor.describe()}"
    )


if __name__ == "__main__":
    sys.exit(main())
