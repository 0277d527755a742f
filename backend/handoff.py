"""Handing a consumer's processed batch to the events topic, and committing its source offsets.

One :class:`Handoff` per consumer thread of a worker (``python -m backend.worker``). The consumer
polls a batch, the pipeline turns it into rows (:meth:`backend.pipeline.Pipeline.rows_for`), and
the handoff writes the rows to ``EVENTS_TOPIC`` partition 0 and commits the batch's offsets:

- :class:`TransactionalHandoff` (Apache Kafka): rows and offsets in one Kafka transaction, so a
  ``read_committed`` view sees a batch's rows exactly when its offsets are committed: killing the
  worker at any moment loses nothing and doubles nothing.
- :class:`PlainHandoff` (the embedded broker, which has no transactions): the rows are written
  with ``acks=all`` and awaited, then the offsets are committed. A worker killed in between
  writes the rows again after the restart: at least once in the topic, exactly once on the views,
  which store and announce a ``logId`` once.

A failed handoff raises; the consumer seeks back to the batch's first offsets and reads it again
after its back-off. :class:`HandoffFenced` means another process took over this handoff's
transactional id (the same WORKER_ID started twice): the consumer must stop.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import InvalidProducerEpochError, ProducerFencedError
from kafka.structs import OffsetAndMetadata

from backend import event_log
from backend.config import Settings
from backend.pipeline import failed_row
from backend.store import LogRow

log = logging.getLogger(__name__)

Offsets = dict[TopicPartition, OffsetAndMetadata]

#: How long a write to the events topic may take before the batch counts as failed (and is retried).
SEND_TIMEOUT_S = 30.0
#: Room left in a record for the record's own framing: a row must fit with it.
RECORD_OVERHEAD_BYTES = 64 * 1024


class HandoffFenced(RuntimeError):
    """Another producer with this transactional id is active: this consumer must stop."""


class Handoff(Protocol):
    """Takes one polled batch (its rows and the offsets after it) to the events topic."""

    def send(self, consumer: KafkaConsumer, rows: list[LogRow], offsets: Offsets) -> None: ...

    def close(self) -> None: ...


def producer_options(settings: Settings) -> dict[str, Any]:
    """Options shared by every events-topic producer: big records, lz4, no lingering (latency)."""
    return {
        "max_request_size": event_log.MAX_EVENT_RECORD_BYTES,
        "compression_type": "lz4",
        "linger_ms": 0,
        "acks": "all",
        **settings.kafka_client_options(),
    }


def record_values(worker_id: str, consumer_id: str, rows: list[LogRow]) -> list[bytes]:
    """The events-topic values for ``rows``; a row too big for one record is sent as a FAILED row.

    Rows are encoded once; only when some value is over the limit (a huge decoded payload whose
    JSON text, escaped once more, outgrows the events topic's record size) are the big rows
    replaced by small FAILED rows saying why, so the batch still goes through and loses nothing.
    """
    limit = event_log.MAX_EVENT_RECORD_BYTES - RECORD_OVERHEAD_BYTES
    values = event_log.encode_rows(worker_id, consumer_id, rows)
    if all(len(value) <= limit for value in values):
        return values
    fitted = [_fit(row, limit) for row in rows]
    return event_log.encode_rows(worker_id, consumer_id, fitted)


def _fit(row: LogRow, limit: int) -> LogRow:
    size = len(event_log.encode_rows("", "", [row])[0])
    if size <= limit:
        return row
    log.warning("The outcome of %s is %d bytes, over the events topic's limit: sent FAILED", row.log_id, size)
    return failed_row(row, f"the outcome is {size} bytes, more than the events topic takes ({limit} bytes)")


class TransactionalHandoff:
    """Rows and source offsets in one Kafka transaction (Apache Kafka).

    ``transactional_id`` is ``<EVENTS_TOPIC>.<WORKER_ID>.s<slot>``: stable across restarts, so
    the restarted worker's ``init_transactions`` aborts a killed predecessor's open transaction
    at once. A killed worker that is NOT restarted leaves its transaction open until the broker
    times it out: ``transaction_timeout_ms`` = 10 s, the longest a ``read_committed`` view (and
    the committed offsets of those partitions) can be held back by it.

    Cost (``python -m bench.handoff_cost --batches 60``, Apache Kafka 4 on the 2-core dev machine
    under a load of 2-6, batches of up to 500 small rows): 19-25 ms median, p90 54-81 ms per
    transaction, against 4-6 ms for the plain write-then-commit. A transaction is five or six
    broker round trips in a row: AddPartitionsToTxn (often twice: the broker answers
    CONCURRENT_TRANSACTIONS while it writes the previous commit's markers), Produce,
    AddOffsetsToTxn, TxnOffsetCommit, EndTxn. Batches grow while one is in flight, so the cost
    per record falls as the load rises; it is a latency floor, not a throughput ceiling.
    """

    def __init__(
        self, bootstrap: str, settings: Settings, transactional_id: str, worker_id: str, consumer_id: str
    ) -> None:
        self.topic = settings.events_topic
        self.worker_id = worker_id
        self.consumer_id = consumer_id
        self.transactional_id = transactional_id
        self._bootstrap = bootstrap
        self._settings = settings
        self._producer: KafkaProducer | None = self._open()

    def _open(self) -> KafkaProducer:
        """A producer for the transactional id; ``init_transactions`` aborts whatever it left open."""
        producer = KafkaProducer(
            bootstrap_servers=self._bootstrap,
            transactional_id=self.transactional_id,
            transaction_timeout_ms=10_000,
            # A transaction begun right after the last one's commit is refused (CONCURRENT_TRANSACTIONS)
            # until the broker wrote its markers; kafka-python sleeps this long before the retry.
            retry_backoff_ms=20,
            client_id=self.transactional_id,
            **producer_options(self._settings),
        )
        try:
            producer.init_transactions()  # fences (aborts) a dead predecessor's transaction
        except Exception:
            producer.close(timeout=1)
            raise
        return producer

    def send(self, consumer: KafkaConsumer, rows: list[LogRow], offsets: Offsets) -> None:
        """Begin, write the rows, add the offsets, commit; abort and raise on any error.

        After an error the producer is replaced by a new one before the next batch: a transactional
        producer that lost its broker mid-transaction can stay in an error state for good (seen:
        a broker restart left every batch failing), and the new one's ``init_transactions`` aborts
        what the old one left open.
        """
        if self._producer is None:
            self._producer = self._open()
        producer = self._producer
        headers = event_log.headers_for(event_log.ROWS)
        try:
            producer.begin_transaction()
            for value in record_values(self.worker_id, self.consumer_id, rows):
                producer.send(self.topic, value=value, headers=headers, partition=0)
            producer.send_offsets_to_transaction(offsets, consumer.group_metadata())
            producer.commit_transaction()
        except (ProducerFencedError, InvalidProducerEpochError) as exc:
            raise HandoffFenced(
                f"transactional id {self.transactional_id} was taken over by another process ({exc})"
            ) from None
        except Exception:
            self._discard()
            raise

    def _discard(self) -> None:
        """Drop the producer after a failed batch (the next batch opens a new one)."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            producer.abort_transaction()
        except Exception as exc:  # no open transaction, or the broker is away: init_transactions sorts it out
            log.info("%s: abort failed (%s)", self.consumer_id, exc)
        try:
            producer.close(timeout=1)
        except Exception:
            log.debug("closing a failed producer", exc_info=True)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=5)


class PlainHandoff:
    """Embedded broker: write the rows (``acks=all``, awaited), then commit the offsets.

    The commit is asynchronous, as in the in-process path: the rows are safe in the topic before
    it, so a lost commit means the batch is written again (at least once in the topic), and views
    store and announce each ``logId`` once.
    """

    def __init__(self, bootstrap: str, settings: Settings, worker_id: str, consumer_id: str) -> None:
        self.topic = settings.events_topic
        self.worker_id = worker_id
        self.consumer_id = consumer_id
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap, client_id=f"{worker_id}-{consumer_id}", **producer_options(settings)
        )

    def send(self, consumer: KafkaConsumer, rows: list[LogRow], offsets: Offsets) -> None:
        headers = event_log.headers_for(event_log.ROWS)
        values = record_values(self.worker_id, self.consumer_id, rows)
        futures = [self._producer.send(self.topic, value=v, headers=headers, partition=0) for v in values]
        for future in futures:
            future.get(timeout=SEND_TIMEOUT_S)
        consumer.commit_async(offsets, callback=self._committed)

    def _committed(self, offsets: Offsets, result: Any) -> None:
        if isinstance(result, Exception):
            log.info("%s: commit failed (%s); the batch will be written again", self.consumer_id, result)

    def close(self) -> None:
        self._producer.close(timeout=5)
