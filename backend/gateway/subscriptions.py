"""What a client receives (docs/CONTRACT.md): its subscription, and the feeds that shape events for it.

A client chooses when it connects (Socket.IO ``auth``, ``/ws`` query string):

- ``mode=all`` (the default): every event, as the seed's client always had them.
- ``mode=live``: a screen's view. ``stats-updated`` at most once per :data:`LIVE_INTERVAL_S` (the
  newest of the interval), and the events of at most ``maxRate`` records a second, chosen whole:
  a record is in the sample or not when its ``message-received`` is seen, and a record in it keeps
  all its later events. Within an interval the newest records win. ``records-skipped`` says how
  many records were left out since the previous one; its ``seq`` is the ``seq`` of the newest
  left-out ``message-received``, so every client-visible ``seq`` still increases.
- ``topics``: per-record events of those topics only; ``stats-updated`` stays global, and records
  of other topics are not "skipped", just not subscribed to.

``lastSeq`` for a live client: it is not replayed record by record (its sample is of the present).
It gets the newest ``stats-updated`` at once and, when its ``lastSeq`` is still held, the
``consumer-status-changed`` events after it; its stream then continues from ``lastSeq`` (or, without
one, from just before that ``stats-updated``). Seqs a live client never sees were left out by design.

Clients with the same subscription share one feed: a live sample is drawn and encoded once per
interval for all of them (:class:`LiveSampler`), a topic filter runs once per round.
Nothing here does I/O; :mod:`backend.gateway.fanout` drives the feeds.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from backend import events
from backend.events import Event

if TYPE_CHECKING:
    from backend.gateway.fanout import Outgoing

ALL = "all"
LIVE = "live"
MODES = (ALL, LIVE)
#: Records a second a live client gets when it names no ``maxRate``.
DEFAULT_MAX_RATE = 100
#: The highest ``maxRate``: beyond it a screen draws nothing more (``mode=all`` has every record).
MAX_RATE_LIMIT = 10_000
MAX_TOPICS = 100
#: A live feed's period: ``stats-updated`` at most 10 times a second.
LIVE_INTERVAL_S = 0.100
#: Records in flight remembered (their topic, or their being in a sample). The bus holds 20,000
#: events (~7,000 records) for replay; records older than this lose their later events in filtered
#: and sampled streams, never in ``mode=all``.
RECENT_RECORDS_MAX = 50_000
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")


class Subscription(NamedTuple):
    """What one client receives; clients with equal subscriptions share one feed."""

    mode: str = ALL
    max_rate: int = DEFAULT_MAX_RATE
    topics: frozenset[str] | None = None

    @property
    def live(self) -> bool:
        return self.mode == LIVE

    @property
    def everything(self) -> bool:
        """Every event, unfiltered: the seed's client."""
        return self.mode == ALL and self.topics is None

    def describe(self) -> str:
        topics = ",".join(sorted(self.topics)) if self.topics else "all"
        rate = f" maxRate={self.max_rate}" if self.live else ""
        return f"mode={self.mode}{rate} topics={topics}"


EVERYTHING = Subscription()


def parse_subscription(mode: Any = None, max_rate: Any = None, topics: Any = None) -> Subscription:
    """A client's ``mode``, ``maxRate`` and ``topics`` (absent: defaults); ValueError says what is wrong."""
    chosen = ALL if mode is None or mode == "" else mode
    if chosen not in MODES:
        raise ValueError(f"mode must be all or live, not {_shown(mode)}")
    rate = _parse_rate(max_rate)
    if chosen == ALL:
        if max_rate not in (None, ""):
            raise ValueError("maxRate applies to mode=live only")
        rate = DEFAULT_MAX_RATE
    return Subscription(chosen, rate, _parse_topics(topics))


def _parse_rate(value: Any) -> int:
    if value is None or value == "":
        return DEFAULT_MAX_RATE
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 6:
        number = int(value.strip())
    if number is None or not 0 <= number <= MAX_RATE_LIMIT:
        raise ValueError(f"maxRate must be an integer from 0 to {MAX_RATE_LIMIT} (records a second)")
    return number


def _parse_topics(value: Any) -> frozenset[str] | None:
    """A comma list (query string) or a list of names (Socket.IO auth); None: every topic."""
    if value is None:
        return None
    if isinstance(value, str):
        names = value.split(",")
    elif isinstance(value, list) and all(isinstance(name, str) for name in value):
        names = value
    else:
        raise ValueError("topics must be a comma-separated string or a list of topic names")
    names = [name.strip() for name in names]
    if not any(names):
        raise ValueError("topics must name at least one topic (leave it out for every topic)")
    if len(names) > MAX_TOPICS:
        raise ValueError(f"topics names more than {MAX_TOPICS} topics")
    for name in names:
        if not _TOPIC_NAME.fullmatch(name):
            raise ValueError(f"topics: {_shown(name)} is not a Kafka topic name (letters, digits, . _ -)")
    return frozenset(names)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class RecentRecords:
    """A bounded map from a record's logId to something about it, oldest forgotten first."""

    def __init__(self, limit: int = RECENT_RECORDS_MAX) -> None:
        self.limit = limit
        self._items: OrderedDict[str, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, log_id: object) -> bool:
        return log_id in self._items

    def set(self, log_id: str, value: Any) -> None:
        items = self._items
        items[log_id] = value
        items.move_to_end(log_id)
        if len(items) > self.limit:
            items.popitem(last=False)

    def get(self, log_id: str) -> Any:
        return self._items.get(log_id)

    def pop(self, log_id: str) -> Any:
        return self._items.pop(log_id, None)


def note_record(records: RecentRecords, event: Event) -> None:
    """Remember a ``message-received``'s topic: the later events of its record only carry the logId."""
    if event.name == events.MESSAGE_RECEIVED:
        records.set(event.data["logId"], event.data["topic"])


def in_topics(event: Event, topics: frozenset[str], records: RecentRecords) -> bool:
    """Whether ``event`` reaches a client subscribed to ``topics``: any event that is not a record's."""
    if event.name not in events.RECORD_EVENTS:
        return True
    data = event.data
    topic = data.get("topic") or records.get(data.get("logId", ""))
    return topic in topics


def filter_topics(
    items: Iterable[Outgoing], topics: frozenset[str], records: RecentRecords
) -> list[Outgoing]:
    return [item for item in items if in_topics(item.event, topics, records)]


class Sample(NamedTuple):
    """A live feed's events of one interval, and the seq of the message-received of each record in it."""

    items: list[Outgoing]
    record_seqs: dict[str, int]


class LiveSampler:
    """One live subscription's feed: the events of an interval in, one shared batch out.

    :meth:`add` collects a round's events; :meth:`flush`, once per interval, decides which of the
    records received in it are sampled (a token bucket of ``maxRate`` a second, newest first),
    keeps every event of sampled records (also those of earlier intervals), the newest
    ``stats-updated`` and every other event, and says how many records were left out.
    """

    def __init__(self, subscription: Subscription, clock: Callable[[], float] = time.monotonic) -> None:
        self.subscription = subscription
        self.rate = subscription.max_rate
        self.capacity = max(1.0, self.rate * LIVE_INTERVAL_S) if self.rate else 0.0
        self.tokens = self.capacity
        self._clock = clock
        self._refilled = clock()
        self._pending: list[Outgoing] = []
        #: Sampled records whose outcome has not come yet -> the seq of their message-received.
        self.sampled = RecentRecords()
        self.skipped_total = 0

    def add(self, items: Iterable[Outgoing]) -> None:
        self._pending.extend(items)

    def _refill(self) -> None:
        now = self._clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._refilled) * self.rate)
        self._refilled = now

    def flush(self, wrap: Callable[[Event], Outgoing]) -> Sample | None:
        """The interval's events to send (None: nothing to send); ``wrap`` readies a new event."""
        self._refill()
        pending, self._pending = self._pending, []
        if not pending:
            return None
        chosen, skipped = self._choose(pending)
        out = Sample([], {})
        newest_stats = _newest(pending, events.STATS_UPDATED)
        last_skipped = skipped[-1] if skipped else -1
        for item in pending:
            event = item.event
            name = event.name
            if name not in events.RECORD_EVENTS:
                if name != events.STATS_UPDATED or item is newest_stats:
                    out.items.append(item)
                continue
            log_id = event.data.get("logId", "")
            if name == events.MESSAGE_RECEIVED:
                if log_id in chosen:
                    self.sampled.set(log_id, event.seq)
                else:  # also a redelivered record sampled before: not this time
                    self.sampled.pop(log_id)
            received_seq = self.sampled.get(log_id)
            if received_seq is not None:
                out.items.append(item)
                out.record_seqs[log_id] = received_seq
                if name in events.OUTCOME_EVENTS:
                    self.sampled.pop(log_id)
            elif event.seq == last_skipped:
                skipped_event = Event(event.seq, events.RECORDS_SKIPPED, events.records_skipped(len(skipped)))
                out.items.append(wrap(skipped_event))
        self.skipped_total += len(skipped)
        return out if out.items else None

    def _choose(self, pending: list[Outgoing]) -> tuple[dict[str, int], list[int]]:
        """The records received in this interval: the sampled ones (logId -> seq), the others' seqs."""
        topics = self.subscription.topics
        received = [
            item.event
            for item in pending
            if item.event.name == events.MESSAGE_RECEIVED
            and (topics is None or item.event.data["topic"] in topics)
        ]
        take = min(len(received), int(self.tokens))
        self.tokens -= take
        cut = len(received) - take
        chosen = {event.data["logId"]: event.seq for event in received[cut:]}
        return chosen, [event.seq for event in received[:cut]]


def _newest(items: list[Outgoing], name: str) -> Outgoing | None:
    for item in reversed(items):
        if item.event.name == name:
            return item
    return None
