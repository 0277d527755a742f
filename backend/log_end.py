"""The log-end offset of every partition the consumers hold, asked of the broker once a second.

A consumer knows a partition's end (its high watermark) only from the last fetch response it
*parsed*. While it works through a backlog, the partitions whose buffered responses wait their
turn keep an old end, and their lag reads too small, often 0: with ~3,200 records unread on three
partitions one sample showed {0, 713, 0}. This thread asks for the ends itself (ListOffsets, from
a KafkaConsumer of its own without a group), so the consumers' threads never wait on it.

The lag view takes the larger of the two ends: the embedded broker answers ListOffsets with its
last batch's base offset + 1, which is below the real end when that batch holds several records,
while a fetch response's high watermark is exact when it is made.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from backend.config import Settings

log = logging.getLogger(__name__)

INTERVAL_S = 1.0
TIMEOUT_MS = 5_000  # without one, end_offsets blocks for good on a partition that no longer exists


def local_position(consumer: KafkaConsumer, tp: TopicPartition) -> int | None:
    """The next offset ``consumer`` reads from ``tp`` (transaction markers stepped over), from its
    own state: ``position()`` may block on the network. None when not known (yet)."""
    state = consumer._subscription.assignment.get(tp)  # noqa: SLF001
    position = getattr(state, "position", None)
    return getattr(position, "offset", None)


def partition_name(tp: TopicPartition) -> str:
    """The name the API and the dashboard use: ``topic-partition``."""
    return f"{tp.topic}-{tp.partition}"


def parse_partition_name(name: str) -> TopicPartition:
    topic, _, partition = name.rpartition("-")
    return TopicPartition(topic, int(partition))


class LogEndOffsets(threading.Thread):
    """The log-end offset of each held partition (``end(name)``), refreshed every INTERVAL_S."""

    def __init__(self, bootstrap: str, settings: Settings, held: Callable[[], Iterable[str]]) -> None:
        super().__init__(name="log-end-offsets", daemon=True)
        self.bootstrap = bootstrap
        self.settings = settings
        self.held = held  # the partition names the consumers hold now
        self._ends: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def end(self, name: str) -> int | None:
        with self._lock:
            return self._ends.get(name)

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        client: KafkaConsumer | None = None
        try:
            while not self._stopping.wait(INTERVAL_S):
                names = set(self.held())
                if not names:
                    continue
                try:
                    client = client or KafkaConsumer(
                        bootstrap_servers=self.bootstrap,
                        enable_auto_commit=False,
                        **self.settings.kafka_client_options(),
                    )
                    ends = client.end_offsets([parse_partition_name(n) for n in names], timeout_ms=TIMEOUT_MS)
                except Exception as exc:  # broker away: the lag view keeps the consumers' own figures
                    log.debug("log-end offsets unavailable: %s", exc)
                    continue
                with self._lock:
                    self._ends = {partition_name(tp): offset for tp, offset in ends.items()}
        finally:
            if client is not None:
                client.close()
