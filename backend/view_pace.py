"""Workers keep pace with their view, through Kafka: a burst queues in the source topic, not after it.

Why: two worker processes carry ~47,000 records/s on this 2-core machine, while the view they feed
(in the same process as Streamlit and the gateway, beside the broker and the browser) stores
8,000-12,000 a second. Without a pace the workers ran ahead through a 200,000-record burst: the
records waited in the events topic, already "received", and a row reached the screen 4-7 s after
its ``message-received`` (bench/README.md, "The view is the pipeline's ceiling"). Worse, the
source topic's lag read 0 while the screens were seconds behind: the wait was where no Kafka
tool shows it. Kafka is the buffer; the wait belongs in the source topic, where consumer lag
says how far behind the whole pipeline is.

How, talking only through Kafka:

- a view commits its position in the events topic (the next offset it applies, transaction
  markers stepped over) as the offset of the consumer group :func:`view_group`, at most every
  :data:`SHARE_EVERY_S`, with the metadata :data:`WATCHED` while anybody watches it live (a
  client of its gateway, a dashboard session). ``kafka-consumer-groups --describe`` then also
  shows how far a view is behind its events topic;
- a worker started with ``WORKER_PACE_VIEW`` (a view's instance id; ``BACKEND_ROLE=all`` sets it
  for the workers it starts) reads that offset and the topic's end; while the view is watched,
  its consumers poll batches of ``PACED_POLL_RECORDS`` and only while the view is at most
  :data:`MAX_DELAY_S` behind. While nobody watches, they run at full speed: a small
  batch and a short queue cost a catch-up a third of its rate (bench/README.md), and nobody
  would see the latency they buy. The embedded broker keeps no commit metadata: there the workers
  keep pace whether the view is watched or not.

A view that stops applying (disk full, killed, never started) must not stop the workers: when its
offset has not moved for :data:`STALLED_S` while behind, the workers go on at full speed (the events
topic keeps everything for the view). A consumer never waits more than :data:`MAX_WAIT_S` without
polling, well inside ``max_poll_interval_ms`` (10 s), so it keeps its partitions.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from backend.config import Settings

log = logging.getLogger(__name__)

#: How long records may have waited for the view (since a probe first saw the topic's end past the
#: view's position) before the workers wait. A time, not a count of offsets: a position shared up
#: to SHARE_EVERY_S + PROBE_EVERY_S ago looks a few offsets behind at any moment, and the queue's
#: age is what the screen's latency is made of. Through a burst the queue stays about this long
#: plus those intervals: 0.1-0.2 s of the view's work (0.2 s here gave event to screen p99
#: 0.95-1.3 s, 0.1 s 0.63-1.1 s; bench/README.md, "Workers keep pace with their view").
MAX_DELAY_S = 0.1
#: A view shares its position at most this often (one OffsetCommit).
SHARE_EVERY_S = 0.05
#: A worker asks for the view's position and the topic's end this often while it hands over.
PROBE_EVERY_S = 0.05
#: Probing starts when a worker hands over this many records in a second (below, no view falls behind).
BUSY_RECORDS_PER_S = 1_000
#: Probing stops this long after the last handoff (then the worker only looks, every LOOK_EVERY_S).
PROBE_FOR_S = 2.0
#: While it hands over little, a worker still asks this often whether its view is watched (one
#: OffsetFetch), so that a burst starts with the batches it needs: without this look a worker's
#: first busy second after start-up, or after somebody opened the dashboard, ran at full speed, and
#: the view's queue reached a second (``python -m bench.burst``'s probe, 50,000 records).
LOOK_EVERY_S = 1.0
#: A view whose position has not moved for this long while behind is not waited for.
STALLED_S = 2.0
#: Ends remembered while the view is behind (one per probe that saw the end move).
MAX_ENDS_KEPT = 1_000
#: The longest a consumer waits without polling.
MAX_WAIT_S = 3.0


#: The commit metadata of a view that somebody watches live.
WATCHED = "watched"


def view_group(events_topic: str, view_instance: str) -> str:
    """The consumer group whose committed offset is a view's position in the events topic."""
    return f"{events_topic}.view.{view_instance}"


class PositionSharer:
    """The view's side: commits its reader's position as its group's offset, rate-limited."""

    def __init__(self, partition: TopicPartition) -> None:
        self.partition = partition
        self._shared: tuple[int, bool] | None = None
        self._shared_at = 0.0

    def share(self, consumer: KafkaConsumer, position: int | None, watched: bool) -> None:
        """Commit ``position`` and ``watched`` (asynchronously) if either changed, at most every
        SHARE_EVERY_S."""
        now = time.monotonic()
        if position is None or (position, watched) == self._shared or now - self._shared_at < SHARE_EVERY_S:
            return
        self._shared, self._shared_at = (position, watched), now
        metadata = WATCHED if watched else ""
        try:
            consumer.commit_async(
                {self.partition: OffsetAndMetadata(position, metadata, -1)}, callback=_shared
            )
        except Exception as exc:  # the broker is away: the next position is shared later
            log.debug("view position not shared: %s", exc)
            self._shared = None


def _is_watched(shared: OffsetAndMetadata | None) -> bool:
    """Whether a view's shared position says that somebody watches it. The embedded broker (Tansu)
    keeps no commit metadata (None): there, watched or not, the workers keep pace."""
    return shared is not None and shared.metadata in (WATCHED, None)


def _shared(offsets: object, result: object) -> None:
    if isinstance(result, Exception):
        log.debug("view position not shared: %s", result)


class ViewPace(threading.Thread):
    """The worker's side: whether its consumers may poll, from the view's offset and the topic's end."""

    def __init__(self, bootstrap: str, settings: Settings, view_instance: str) -> None:
        super().__init__(name="view-pace", daemon=True)
        self.partition = TopicPartition(settings.events_topic, 0)
        self.group = view_group(settings.events_topic, view_instance)
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=self.group,  # never subscribes: only reads the group's committed offset
            enable_auto_commit=False,
            isolation_level=settings.isolation_level,
            request_timeout_ms=5_000,
            **settings.kafka_client_options(),
        )
        self._clear = threading.Event()  # set: the consumers may poll
        self._clear.set()
        self._wanted = threading.Event()
        self._wanted_until = 0.0
        self._counted_since, self._counted = 0.0, 0  # records handed over in the current second
        self._stopping = threading.Event()
        self._position: int | None = None
        self._moved_at = time.monotonic()
        self.behind: int | None = None  # offsets, at the last probe (None: the view shared nothing)
        self.delay = 0.0  # seconds since a probe first saw the end past the view's position
        self._ends: deque[tuple[float, int]] = deque()  # (probed at, end) past the view's position
        self.watched = False  # whether the view said that somebody watches it live
        self.probes = 0
        self.looks = 0

    def may_poll(self) -> bool:
        """Whether the consumers may poll now (the view is near enough, stalled or unknown)."""
        return self._clear.is_set()

    def handed_off(self, records: int) -> None:
        """``records`` went to the events topic. Probing starts once this worker hands over
        BUSY_RECORDS_PER_S in a second, and goes on PROBE_FOR_S after the last handoff: a view
        applies thousands a second, so a trickle never needs a pace, and probing at every record of
        one cost the end-to-end latency ~8 ms at the median (two requests per probe, and the GIL
        they take from the consumers).
        """
        now = time.monotonic()
        if now - self._counted_since >= 1.0:
            self._counted_since, self._counted = now, 0
        self._counted += records
        if self._counted >= BUSY_RECORDS_PER_S:
            self._wanted_until = now + PROBE_FOR_S
            self._wanted.set()

    def probing(self) -> bool:
        """Whether this pace asks after the view now (a busy worker, or a consumer waiting)."""
        return time.monotonic() < self._wanted_until

    def wait_turn(self, stopping: threading.Event, meanwhile: Callable[[], None]) -> None:
        """Return once the view is near enough (or stalled), after MAX_WAIT_S, or when stopping."""
        deadline = time.monotonic() + MAX_WAIT_S
        while not self._clear.is_set() and not stopping.is_set():
            self._wanted_until = time.monotonic() + PROBE_FOR_S  # keep probing while someone waits
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._clear.wait(min(left, 0.25))
            meanwhile()

    def stop(self) -> None:
        self._stopping.set()
        self._wanted.set()

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                if not self.probing():
                    self._clear.set()
                    self._wanted.clear()
                    self._look()
                    self._wanted.wait(LOOK_EVERY_S)
                    continue
                self._probe()
                self._stopping.wait(PROBE_EVERY_S)
        finally:
            self._clear.set()
            self._consumer.close(autocommit=False)

    def _shared(self) -> OffsetAndMetadata | None:
        """The view's shared position (None: it shared none); notes whether it is watched."""
        shared = self._consumer.committed(self.partition, metadata=True, timeout_ms=2_000)
        self.watched = _is_watched(shared)
        return shared

    def _look(self) -> None:
        """Whether the view is watched, and nothing else: what an idle worker needs to know."""
        try:
            self._shared()
        except Exception as exc:  # the broker is away: the next look asks again
            log.debug("view pace unknown: %s", exc)
            return
        self.looks += 1

    def _probe(self) -> None:
        try:
            end = self._consumer.end_offsets([self.partition], timeout_ms=2_000)[self.partition]
            shared = self._shared()
        except Exception as exc:  # the broker is away: do not hold the consumers back
            log.debug("view pace unknown: %s", exc)
            self._clear.set()
            return
        self.probes += 1
        now = time.monotonic()
        committed = None if shared is None else shared.offset
        if committed != self._position:
            self._position, self._moved_at = committed, now
        self.behind = None if committed is None else max(end - committed, 0)
        self.delay = self._delay(now, end, committed)
        stalled = now - self._moved_at >= STALLED_S
        if not self.watched or self.behind is None or self.delay <= MAX_DELAY_S or stalled:
            self._clear.set()
        else:
            self._clear.clear()

    def _delay(self, now: float, end: int, committed: int | None) -> float:
        """How long the oldest end this pace saw past the view's position has waited for it."""
        if not self._ends or self._ends[-1][1] != end:
            if len(self._ends) < MAX_ENDS_KEPT:
                self._ends.append((now, end))
            else:  # a view stalled for minutes: coarser is enough (it is let go after STALLED_S)
                self._ends[-1] = (self._ends[-1][0], end)
        while self._ends and (committed is None or self._ends[0][1] <= committed):
            self._ends.popleft()  # reached (ends only grow)
        return now - self._ends[0][0] if self._ends else 0.0
