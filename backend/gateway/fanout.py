"""The gateway's fan-out, free of I/O: from the bus to one bounded queue per client.

Events reach clients in three hops; the first two are here, the third in :mod:`backend.gateway.clients`:

1. **Bus -> loop.** :class:`Fanout` holds the one bus subscription. Its callback runs in the
   publishing (consumer) thread under the bus lock, so it only appends the event to an inbox and,
   when none is pending, wakes the fan-out task with ``loop.call_soon_threadsafe``.
2. **Loop -> clients.** The fan-out task offers each event to every :class:`ClientStream`: a
   bounded queue per client. Offering never waits; a client whose queue is full is cut off (with a
   logged reason) and can come back with ``lastSeq`` to be replayed from the bus's ring buffer.
3. **Client stream -> socket.** One sender task per client drains its queue (:meth:`ClientStream.pump`).

What a client receives depends on its subscription (:mod:`backend.gateway.subscriptions`). The
seed's clients (every event) take each round's :class:`Batch` as it is. Clients of the same other
subscription form a :class:`Group` with one feed: a topic filter makes one batch per round for all
of them; a live sampler makes one :class:`LiveBatch` per LIVE_INTERVAL_S (the ``_tick`` task).
A live client's :class:`LiveStream` is never cut off: when it falls behind, its queue is coalesced
into the newest state instead.

Live feeds do not wait behind the rounds: the bus callback also appends every event to a second
inbox, which the ticker drains whole when a tick is due. One events-topic record brings thousands
of events with its ``stats-updated`` last; offered in rounds of FANOUT_CHUNK, a yield to the loop
between rounds, the newest counts reached live clients only after all of them (issue 14: up to
~350 ms of a burst's ~1.2 s lag behind the REST counts). The ticker also keeps a fixed cadence:
a tick starts LIVE_INTERVAL_S after the previous one started, not after it ended.

Replay: a client connecting with ``lastSeq`` first gets the held events after it, in order, then the
live ones, with nothing lost or doubled in between (see :meth:`Fanout.attach`); when those events
are no longer held it gets ``resync-required``.

Each event is encoded once for every client (:class:`Outgoing`), by the encoders of
:mod:`backend.gateway.transport`; nothing here touches a socket.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from contextlib import suppress
from typing import Any

from engineio import packet as engineio_packet

from backend import events
from backend.bus import EventBus
from backend.events import Event
from backend.gateway.subscriptions import (
    EVERYTHING,
    LIVE_INTERVAL_S,
    LiveSampler,
    RecentRecords,
    Subscription,
    filter_topics,
    note_record,
)
from backend.gateway.transport import engineio_message, text_frame

#: Reads events the bus no longer holds: (after_seq, until_seq) -> events, or None when gone.
History = Callable[[int, int], list[Event] | None]

log = logging.getLogger(__name__)

#: Events a client may fall behind before it is cut off. The bus holds 20,000 for replay, so a
#: client cut off at this depth can reconnect with ``lastSeq`` and still be replayed.
CLIENT_QUEUE_MAX = 5_000
#: Events handed to one client's transport before waiting for it to take them.
SEND_BATCH_MAX = 500
#: Events offered to all clients before the fan-out yields to their senders.
FANOUT_CHUNK = 128
#: The longest the fan-out waits for more events before writing (see Fanout._run).
FANOUT_LINGER_MAX_S = 0.010
#: While it lingers, the fan-out writes as soon as no new event came for this long: a record's
#: bursts come within ~1-2 ms of each other, so waiting out the whole linger only adds latency.
FANOUT_QUIET_S = 0.002
#: Live batches (one per LIVE_INTERVAL_S) a live client may fall behind before its queue is
#: coalesced into the newest state: about a second.
LIVE_PENDING_MAX = 10
#: Batches after a coalescing during which a live client still leaves out the later events of the
#: records it left out (about a minute): a redelivered record has no outcome to end it.
LIVE_DROPPED_BATCHES = 600


class Outgoing:
    """One event on its way to clients: its messages and frames are encoded once, for all of them."""

    __slots__ = ("event", "_text", "_engineio", "_ws_frame", "_sio_frame")

    def __init__(self, event: Event) -> None:
        self.event = event
        self._text: str | None = None
        self._engineio: engineio_packet.Packet | None = None
        self._ws_frame: bytes | None = None
        self._sio_frame: bytes | None = None

    @property
    def seq(self) -> int:
        return self.event.seq

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = json.dumps(self.event.as_wire(), ensure_ascii=False, separators=(",", ":"))
        return self._text

    @property
    def engineio(self) -> engineio_packet.Packet:
        """The Engine.IO MESSAGE carrying ``42["name",{...},seq]``, encoded once for all Socket.IO clients.

        ``sio.emit(..., to=sid)`` re-encoded the packet and spawned a task per client and event
        (measured by the benchmark: 88 us of backend CPU per delivery, 18 us this way).
        """
        if self._engineio is None:
            self._engineio = engineio_message(self.event.name, self.event.data, self.event.seq)
        return self._engineio

    @property
    def ws_frame(self) -> bytes:
        """:attr:`text` as a WebSocket frame (a server's frames are the same for every client)."""
        if self._ws_frame is None:
            self._ws_frame = text_frame(self.text.encode())
        return self._ws_frame

    @property
    def sio_frame(self) -> bytes:
        """:attr:`engineio` as a WebSocket frame."""
        if self._sio_frame is None:
            self._sio_frame = text_frame(self.engineio.encode().encode())
        return self._sio_frame


class Batch(list[Outgoing]):
    """Events written to clients together; their frames are joined once, for every client that
    takes the whole batch (all but those catching up). Not changed once handed out."""

    __slots__ = ("_ws_frames", "_sio_frames")

    def __init__(self, items: Iterable[Outgoing] = ()) -> None:
        super().__init__(items)
        self._ws_frames: bytes | None = None
        self._sio_frames: bytes | None = None

    @property
    def ws_frames(self) -> bytes:
        if self._ws_frames is None:
            self._ws_frames = b"".join([item.ws_frame for item in self])
        return self._ws_frames

    @property
    def sio_frames(self) -> bytes:
        if self._sio_frames is None:
            self._sio_frames = b"".join([item.sio_frame for item in self])
        return self._sio_frames


class ClientStream:
    """One client's view of the bus: where it is, its replay backlog, and a bounded queue.

    Only touched on the event loop. ``offer`` never waits: when the queue is full the client is
    too slow, ``on_overflow`` is called once and nothing more is queued for it.
    """

    def __init__(
        self,
        name: str,
        on_overflow: Callable[[], None],
        limit: int | None = None,
        subscription: Subscription = EVERYTHING,
    ) -> None:
        self.name = name
        self.subscription = subscription
        self.limit = limit or CLIENT_QUEUE_MAX
        self.on_overflow = on_overflow
        self.overflowed = False
        self.position = 0  # newest seq handed to this client (queued or in the backlog)
        self.start_seq = 0  # the position its stream continues from; sent with connection-success
        self.backlog: list[Outgoing] = []
        self.resync: dict[str, Any] | None = None
        # A deque and one waiter instead of an asyncio.Queue: ``offer`` runs once per event and
        # client (~32,000 times a second with 1,000 clients), and the queue's per-item bookkeeping
        # (getter futures, unfinished-task counts) was a tenth of the gateway's CPU.
        self._queued: deque[Outgoing] = deque()
        self._waiter: asyncio.Future[None] | None = None
        # Set by the client's sender while it waits with nothing queued: writes events straight
        # to the socket without waiting (False: it would have to wait, so they are queued).
        self.write_now: Callable[[Batch], bool] | None = None

    def offer(self, items: Batch) -> None:
        """Events in seq order: written at once when the client keeps up, else queued for its sender."""
        if self.overflowed or not items:
            return
        if items[0].seq <= self.position:
            items = Batch(item for item in items if item.seq > self.position)
            if not items:
                return
        self.position = items[-1].seq
        if not self._queued and self.write_now is not None and self.write_now(items):
            return
        if len(self._queued) + len(items) > self.limit:
            self.overflowed = True
            self.on_overflow()
            return
        self._queued.extend(items)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def take(self, most: int = SEND_BATCH_MAX) -> list[Outgoing]:
        """Wait for at least one event; return everything queued, up to ``most``."""
        while not self._queued:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        queued = self._queued
        if len(queued) <= most:
            items = list(queued)
            queued.clear()
            return items
        return [queued.popleft() for _ in range(most)]

    @property
    def behind(self) -> int:
        return len(self._queued)

    async def pump(
        self,
        send: Callable[[list[Outgoing]], Awaitable[None]],
        write_now: Callable[[Batch], bool] | None,
    ) -> None:
        """Live, forever: the fan-out writes events itself while ``write_now`` can; the rest is sent here."""
        try:
            while True:
                self.write_now = write_now
                items = await self.take()
                self.write_now = None  # until these are sent, later events queue up behind them
                await send(items)
        finally:
            self.write_now = None


class LiveBatch(Batch):
    """A live feed's batch of one interval, shared by the feed's clients; ``record_seqs`` gives the
    seq of each record's ``message-received``, so that a client that joined after it can leave the
    record out whole."""

    __slots__ = ("record_seqs", "oldest_record_seq")

    def __init__(self, items: Iterable[Outgoing] = (), record_seqs: dict[str, int] | None = None) -> None:
        super().__init__(items)
        self.record_seqs = record_seqs or {}
        self.oldest_record_seq = min(self.record_seqs.values()) if self.record_seqs else None


class LiveStream(ClientStream):
    """A ``mode=live`` client's stream: never cut off; when behind, its queue is coalesced.

    It takes its feed's shared batches as they are, except the first ones after it joined (records
    received before then are left out whole) and while records were coalesced away (their later
    events are left out too). When more than LIVE_PENDING_MAX batches wait for its sender (it reads
    slowly, or not at all), they become one: the newest ``stats-updated``, the newest status of each
    consumer, the later events of records it already has the beginning of, and one
    ``records-skipped`` counting every record left out. Records stay whole, the counts add up, and
    what waits for a client that does not read stays bounded.
    """

    def __init__(self, name: str, subscription: Subscription) -> None:
        super().__init__(name, on_overflow=lambda: None, subscription=subscription)
        self.joined_at = 0  # records received up to this seq are not this client's
        self.coalesced = 0  # how often its queue was coalesced (for tests and logs)
        self._batches: deque[Batch] = deque()
        self._dropped = RecentRecords()  # records coalesced away whose outcome has not passed yet
        self._dropped_batches = 0  # batches left until _dropped is forgotten

    def offer(self, items: Batch) -> None:
        items = self._own(items)
        if not items:
            return
        self.position = max(self.position, items[-1].seq)
        if not self._batches and self.write_now is not None and self.write_now(items):
            return
        self._batches.append(items)
        if len(self._batches) > LIVE_PENDING_MAX:
            self._coalesce()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _own(self, items: Batch) -> Batch:
        """``items`` as this client takes them: the shared batch itself, unless it must leave some out."""
        oldest = getattr(items, "oldest_record_seq", None)
        fresh = oldest is None or oldest > self.joined_at
        if fresh and not self._dropped and items and items[0].seq > self.position:
            return items
        record_seqs: dict[str, int] = getattr(items, "record_seqs", {})
        self._dropped_batches -= 1
        if self._dropped_batches <= 0 and self._dropped:
            self._dropped = RecentRecords()
        kept = Batch()
        for item in items:
            event = item.event
            if event.name in events.RECORD_EVENTS:
                log_id = event.data.get("logId", "")
                if log_id in self._dropped:
                    if event.name in events.OUTCOME_EVENTS:
                        self._dropped.pop(log_id)
                    continue
                if record_seqs.get(log_id, 0) <= self.joined_at:
                    continue
            elif event.seq <= self.position:
                continue
            kept.append(item)
        return kept

    def _coalesce(self) -> None:
        """The waiting batches as one: the newest state, records whole, every left-out record counted."""
        pending = [item for batch in self._batches for item in batch]
        left_out = {
            item.event.data.get("logId") for item in pending if item.event.name == events.MESSAGE_RECEIVED
        }
        skipped = len(left_out) + sum(
            item.event.data["count"] for item in pending if item.event.name == events.RECORDS_SKIPPED
        )
        # Other events: the newest of each kind (stats; a consumer's status) is the state to show.
        newest = {
            _state_key(item.event): item for item in pending if item.event.name not in events.RECORD_EVENTS
        }
        counted_at = max(
            (
                item.seq
                for item in pending
                if item.event.name in (events.MESSAGE_RECEIVED, events.RECORDS_SKIPPED)
            ),
            default=-1,
        )
        kept = Batch()
        for item in pending:
            event = item.event
            if item.seq == counted_at:  # where the newest left-out record began: its count goes here
                kept.append(
                    Outgoing(Event(item.seq, events.RECORDS_SKIPPED, events.records_skipped(skipped)))
                )
            elif event.name in events.RECORD_EVENTS:
                log_id = event.data.get("logId")
                if log_id not in left_out:
                    kept.append(item)  # the rest of a record this client has the beginning of
                elif event.name in events.OUTCOME_EVENTS:
                    left_out.discard(log_id)  # left out whole: nothing more of it will come
            elif event.name != events.RECORDS_SKIPPED and newest[_state_key(event)] is item:
                kept.append(item)
        for log_id in left_out:  # their later events are still to come: leave them out too
            self._dropped.set(log_id, True)
        self._dropped_batches = LIVE_DROPPED_BATCHES
        self._batches = deque([kept])
        self.coalesced += 1

    async def take(self, most: int = SEND_BATCH_MAX) -> list[Outgoing]:
        """Wait for a batch; return whole batches, as many as fit in ``most`` events (at least one)."""
        while not self._batches:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        items = list(self._batches.popleft())
        while self._batches and len(items) + len(self._batches[0]) <= most:
            items.extend(self._batches.popleft())
        return items

    @property
    def behind(self) -> int:
        return sum(len(batch) for batch in self._batches)


class Group:
    """The clients of one subscription other than everything, and their shared feed."""

    def __init__(self, subscription: Subscription) -> None:
        self.subscription = subscription
        self.streams: set[ClientStream] = set()
        self.sampler = LiveSampler(subscription) if subscription.live else None


class Fanout:
    """The gateway's single bus subscription, handing events to every client stream on the loop.

    The bus callback only appends to an inbox and wakes the fan-out task (one wake-up per burst,
    not per event). The task offers the inbox to the streams in chunks, yielding to the loop
    between chunks so that client senders move events out of their queues as they arrive: a
    burst larger than a client's queue does not cut off a client that keeps up.

    Before taking the inbox it lingers as long as the previous round of offers took (at most
    FANOUT_LINGER_MAX_S), or until no event came for FANOUT_QUIET_S. Each round costs a write per
    client, and a record's events come in three or four bursts a few milliseconds apart
    (received+started, the outcome, the merged stats): with one client a round takes microseconds
    and nothing waits; with 1,000 it takes tens of milliseconds, and gathering the bursts into one
    write per client cut the writes, and with them most of the fan-out's CPU, by about three
    (bench: fan-out phase).
    """

    def __init__(self) -> None:
        self.streams: set[ClientStream] = set()  # the clients of every event (the seed's)
        self.groups: dict[Subscription, Group] = {}  # the others, by subscription
        self.records = RecentRecords()  # logId -> topic of recent records, for topic filters
        self.latest_stats: Outgoing | None = None  # the newest stats-updated handed to live feeds
        self.bus: EventBus | None = None
        self.history: History | None = None
        self.dispatched = 0  # newest seq offered to the streams
        self.live_dispatched = 0  # newest seq handed to the live feeds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: deque[Event] = deque()
        self._live_inbox: deque[Event] = deque()  # the same events, for the live feeds' next tick
        self._lock = threading.Lock()
        self._scheduled = False
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._linger = 0.0  # seconds: how long the last round of offers took

    def start(self, bus: EventBus, history: History | None = None) -> None:
        """Subscribe to ``bus``; call on the event loop that serves the clients.

        ``history(after, until)``: the events the bus no longer holds, read back from the store
        (backend/replay_journal.py), or None when those are gone too.
        """
        self.bus, self._loop, self.history = bus, asyncio.get_running_loop(), history
        start = bus.last_seq
        backlog, self._unsubscribe = bus.subscribe_from(start, self._receive, batches=True)
        self.dispatched = self.live_dispatched = backlog[-1].seq if backlog else start
        for event in bus.held():
            self._note(event)
            if event.name == events.STATS_UPDATED:
                self.latest_stats = Outgoing(event)
        self._task = self._loop.create_task(self._run(), name="gateway-fanout")
        self._ticker = self._loop.create_task(self._tick(), name="gateway-live-feeds")

    def stop(self) -> None:
        if self._unsubscribe:
            self._unsubscribe()
            self._unsubscribe = None
        for task in (self._task, self._ticker):
            if task:
                task.cancel()

    def _receive(self, published: list[Event]) -> None:
        """Bus callback, in the publishing thread under the bus lock: hand over, never wait.

        One publish at a time, whole: a live tick then never carries a record's events without the
        stats-updated published after them (records-skipped could say more than the counters did).
        """
        with self._lock:
            self._inbox.extend(published)
            self._live_inbox.extend(published)
            if self._scheduled:
                return
            self._scheduled = True
        with suppress(RuntimeError):  # the loop is closed: the server is stopping
            self._loop.call_soon_threadsafe(self._wakeup.set)  # type: ignore[union-attr]

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._linger > 0.001:
                await self._gather(self._linger)
            while chunk := self._take_chunk():
                started = time.perf_counter()
                self._offer(chunk)
                self._linger = min(FANOUT_LINGER_MAX_S, time.perf_counter() - started)
                await asyncio.sleep(0)  # let the senders run

    async def _gather(self, most: float) -> None:
        """Wait up to ``most`` seconds for the rest of a burst: until no event came for FANOUT_QUIET_S."""
        deadline = time.perf_counter() + most
        waiting = len(self._inbox)  # a hint, read without the lock
        while (left := deadline - time.perf_counter()) > 0:
            await asyncio.sleep(min(FANOUT_QUIET_S, left))
            if len(self._inbox) == waiting:
                return
            waiting = len(self._inbox)

    def _take_chunk(self) -> list[Event]:
        """The next round's events: FANOUT_CHUNK, or all of them when no client's sender waits for
        its share between rounds (only live clients, which the ticker feeds)."""
        chunked = self.streams or any(group.sampler is None for group in self.groups.values())
        with self._lock:
            if not self._inbox:
                self._scheduled = False  # the next event wakes us again
                return []
            count = min(FANOUT_CHUNK, len(self._inbox)) if chunked else len(self._inbox)
            return [self._inbox.popleft() for _ in range(count)]

    def _offer(self, chunk: list[Event]) -> None:
        """A round for the clients of every event and of topic filters (live feeds: see _drain_live)."""
        streams = tuple(self.streams)
        debug = log.isEnabledFor(logging.DEBUG)
        items = Batch()
        for event in chunk:
            if event.seq <= self.dispatched:
                continue
            self.dispatched = event.seq
            items.append(Outgoing(event))
            self._note(event)
            if debug:
                log.debug("%s to %d client(s)", _describe(event), len(streams))
        for stream in streams:
            stream.offer(items)
        for group in tuple(self.groups.values()):
            if group.sampler is None and group.streams:
                filtered = Batch(filter_topics(items, group.subscription.topics or frozenset(), self.records))
                for stream in tuple(group.streams):
                    stream.offer(filtered)

    def _note(self, event: Event) -> None:
        """What later clients need of a dispatched event: a record's topic (for topic filters)."""
        note_record(self.records, event)

    def _drain_live(self) -> None:
        """Everything published since the last drain, to every live feed (on the loop, at a tick and
        when a live client attaches): encoded once for all feeds, the newest stats kept for newcomers."""
        with self._lock:
            taken, self._live_inbox = self._live_inbox, deque()
        samplers = [group.sampler for group in self.groups.values() if group.sampler is not None]
        items = Batch()
        for event in taken:
            if event.seq <= self.live_dispatched:
                continue
            self.live_dispatched = event.seq
            if samplers:
                items.append(Outgoing(event))
            if event.name == events.STATS_UPDATED:
                self.latest_stats = items[-1] if samplers else Outgoing(event)
        for sampler in samplers:
            sampler.add(items)

    async def _tick(self) -> None:
        """Every LIVE_INTERVAL_S: each live feed's batch, drawn and encoded once for all its clients.

        A tick is due LIVE_INTERVAL_S after the previous one began, not after it ended: its own work
        (a write per client, tens of milliseconds with 1,000 clients on a busy machine) no longer
        stretches the period, and two ticks are still never less than LIVE_INTERVAL_S apart.
        """
        loop = asyncio.get_running_loop()
        began = loop.time()
        while True:
            await asyncio.sleep(max(0.0, began + LIVE_INTERVAL_S - loop.time()))
            began = loop.time()
            self._drain_live()
            for group in tuple(self.groups.values()):
                if group.sampler is None or not group.streams:
                    continue
                sample = group.sampler.flush(Outgoing)
                if sample is None:
                    continue
                batch = LiveBatch(sample.items, sample.record_seqs)
                for stream in tuple(group.streams):
                    stream.offer(batch)

    async def older(self, stream: ClientStream, last_seq: int | None) -> list[Event] | None:
        """The events after ``last_seq`` that the bus no longer holds, read in a thread (so a long
        replay never stalls the loop); [] when the bus holds them all, None when they are gone.

        Not for a live client: it is not replayed record by record (see :meth:`_attach_live`), and
        after a restart every live screen reconnects at once with a ``lastSeq`` the bus lacks.
        """
        assert self.bus is not None, "the gateway is not started"
        oldest = self.bus.oldest_seq
        if last_seq is None or last_seq + 1 >= oldest:
            return []
        if self.history is None or isinstance(stream, LiveStream):
            return None
        return await asyncio.to_thread(self.history, last_seq, oldest - 1)

    def _held_since(self, last_seq: int, older: list[Event] | None) -> list[Event] | None:
        """The events after ``last_seq``: ``older`` (see :meth:`older`), then what the bus holds."""
        assert self.bus is not None
        held = self.bus.since(last_seq)
        if held is not None or not older:
            return held
        rest = self.bus.since(older[-1].seq)  # None if the bus moved past them meanwhile
        return None if rest is None else older + rest

    def attach(self, stream: ClientStream, last_seq: int | None, older: list[Event] | None = None) -> None:
        """Register a client; with ``last_seq``, give it the held events after it first.

        Runs on the loop, where ``dispatched`` says exactly which events the live stream will still
        bring: the backlog is what the bus holds up to ``dispatched``, the queue gets the rest.
        ``older``: what :meth:`older` read before (events the bus no longer holds).
        """
        assert self.bus is not None, "the gateway is not started"
        if isinstance(stream, LiveStream):
            self._attach_live(stream, last_seq, older)
        else:
            stream.position = stream.start_seq = self.dispatched
            if last_seq is not None:
                held = self._held_since(last_seq, older)
                if held is None:
                    stream.resync = events.resync_required(last_seq, self.bus.oldest_seq)
                else:
                    stream.backlog = [Outgoing(event) for event in held if event.seq <= self.dispatched]
                    stream.position = max(last_seq, self.dispatched)
                    stream.start_seq = last_seq
            topics = stream.subscription.topics
            if topics is not None:
                stream.backlog = filter_topics(stream.backlog, topics, self.records)
        if stream.subscription.everything:
            self.streams.add(stream)
        else:
            group = self.groups.get(stream.subscription)
            if group is None:
                group = self.groups[stream.subscription] = Group(stream.subscription)
            group.streams.add(stream)

    def _attach_live(self, stream: LiveStream, last_seq: int | None, older: list[Event] | None) -> None:
        """A live client is not replayed record by record: it gets the newest counts at once.

        With a ``lastSeq`` still held it gets, after it, the ``consumer-status-changed`` events (which
        a live client always receives) and the newest ``stats-updated``, and its stream continues
        from ``lastSeq``. Without one, or with one no longer held (``resync-required``), it gets the
        newest ``stats-updated`` and its stream continues from just before it. Records received
        before it joined are left out whole.
        """
        assert self.bus is not None
        self._drain_live()  # what its feed has been given so far is where this client joins
        stream.position = stream.joined_at = max(last_seq or 0, self.live_dispatched)
        stats = self.latest_stats
        held = self._held_since(last_seq, older) if last_seq is not None else None
        if last_seq is not None and held is not None:
            stream.start_seq = last_seq
            backlog = [
                Outgoing(event)
                for event in held
                if event.seq <= self.live_dispatched and event.name == events.CONSUMER_STATUS_CHANGED
            ]
            if stats is not None and stats.seq > last_seq:
                backlog.append(stats)
            stream.backlog = sorted(backlog, key=lambda item: item.seq)
            return
        if last_seq is not None:
            stream.resync = events.resync_required(last_seq, self.bus.oldest_seq)
        stream.backlog = [stats] if stats is not None else []
        stream.start_seq = stats.seq - 1 if stats is not None else self.live_dispatched

    def detach(self, stream: ClientStream) -> None:
        self.streams.discard(stream)
        group = self.groups.get(stream.subscription)
        if group is not None:
            group.streams.discard(stream)
            if not group.streams:
                del self.groups[stream.subscription]


def _state_key(event: Event) -> tuple[str, Any]:
    """What a newer event of the same kind replaces: stats-updated, or one consumer's status."""
    return event.name, event.data.get("consumerId")


def _describe(event: Event) -> str:
    if event.name == events.STATS_UPDATED:
        return "Broadcasted stats update"
    if "logId" in event.data:
        return f"Broadcasted {event.name} for log {event.data['logId']}"
    if "consumerId" in event.data:
        return f"Broadcasted {event.name} for {event.data['consumerId']}"
    return f"Broadcasted {event.name}"


def parse_last_seq(value: Any) -> int | None:
    """``lastSeq`` from a client: absent, or a non-negative integer (number or digits)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError("lastSeq must be a non-negative integer")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().isdigit() and len(value.strip()) < 20:
        number = int(value.strip())
    else:
        raise ValueError("lastSeq must be a non-negative integer")
    if number < 0:
        raise ValueError("lastSeq must be a non-negative integer")
    return number
