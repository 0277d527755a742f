"""What ``python -m backend`` and ``python -m backend.worker`` share: logging, signals, start-up errors.

Both stop cleanly on SIGINT/SIGTERM, and a bad setting ends start-up with one line naming the
variable (exit code 2; any other start-up failure: one line, exit code 1), never a traceback.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Protocol

from backend.config import ConfigError, Settings


class Stoppable(Protocol):
    def stop(self) -> None: ...


def configure_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s [%(name)s] %(message)s",
    )
    # kafka-python logs every failed reconnect at ERROR; our broker probe reports reachability once.
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("kafka").setLevel(logging.CRITICAL)


def run_until_signalled(start: Callable[[Settings], tuple[Stoppable, str]]) -> int:
    """Start what ``start`` starts from the environment's settings, print its ready line, and stop
    it on SIGINT/SIGTERM; the process's exit code."""
    configure_logging()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        running, ready = start(Settings.from_env())
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # e.g. the embedded broker would not start
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(ready, flush=True)
    stop.wait()
    running.stop()
    return 0
