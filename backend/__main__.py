"""``python -m backend``: consumers, event gateway and producer API, headless.

Stops cleanly on SIGINT/SIGTERM. A bad setting ends start-up with one line
naming the variable (exit code 2), never a traceback.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from backend.config import ConfigError, Settings
from backend.service import Backend, keep_startup_objects_out_of_gc


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
        backend = Backend(Settings.from_env()).start()
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


if __name__ == "__main__":
    sys.exit(main())
