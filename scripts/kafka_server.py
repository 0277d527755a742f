"""Run a local Kafka broker in the foreground, for development and manual tests.

    python scripts/kafka_server.py                      # Apache Kafka 4.x on a free port
    python scripts/kafka_server.py --port 9092          # ... on a fixed port
    python scripts/kafka_server.py --data-dir data/kafka   # keep its data between runs
    python scripts/kafka_server.py --embedded           # Tansu, the embedded broker, instead
    python scripts/kafka_server.py --download-only      # fetch the Kafka jars and exit (CI warm-up)

It prints one line, ``KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:PORT``, once the broker answers, then runs
until Ctrl-C or SIGTERM, and stops the broker on the way out. It runs in the foreground on purpose:
the broker is bound to this process and dies with it, so no stray broker is left behind to hold a
port; put it in the background with your shell (``&``) if you need to. Apache Kafka's jars are
fetched once with Maven into ``.cache/kafka/<version>/jars``; its log is ``<data-dir>/kafka.log``.

Importable too: ``main(argv)`` returns the exit code.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.broker import BrokerError, EmbeddedBroker  # noqa: E402 - needs the path above
from scripts.kafka_launcher import KAFKA_VERSION, ApacheKafka, kafka_libs  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=None, help="client port (default: a free one)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="broker data and log folder (default: a new temporary folder)",
    )
    parser.add_argument("--embedded", action="store_true", help="run Tansu instead of Apache Kafka")
    parser.add_argument(
        "--kafka-version", default=KAFKA_VERSION, help="Apache Kafka version (default: %(default)s)"
    )
    parser.add_argument("--download-only", action="store_true", help="fetch the Kafka jars, then exit")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for readiness")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.download_only:
            print(kafka_libs(args.kafka_version))
            return 0
        data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="kafka-"))
        broker = (
            EmbeddedBroker(data_dir, args.port)
            if args.embedded
            else ApacheKafka(data_dir, args.port, version=args.kafka_version)
        )
        broker.start(timeout=args.timeout)
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap}", flush=True)
    print(f"# {broker.name}, data and log in {data_dir}; Ctrl-C to stop", file=sys.stderr, flush=True)
    _wait_for_signal()
    broker.stop()
    return 0


def _wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM (a plain wait keeps Ctrl-C from raising mid-shutdown)."""
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: done.set())
    while not done.wait(1.0):
        pass


if __name__ == "__main__":
    sys.exit(main())
