"""The events topic and its control topic exist before a worker writes or a view reads.

Both have one partition (the events topic's single partition is what makes ``seq`` one total
order, see :mod:`backend.event_log`), and the events topic accepts records up to
:data:`backend.event_log.MAX_EVENT_RECORD_BYTES`. Every worker and view calls
:func:`ensure_event_topics` at start; several processes may race, and whoever loses the race
finds the topic there, which is fine.
"""

from __future__ import annotations

import logging

from kafka.admin import KafkaAdminClient
from kafka.errors import TopicAlreadyExistsError, for_code

from backend.config import Settings
from backend.event_log import MAX_EVENT_RECORD_BYTES

log = logging.getLogger(__name__)

#: The most replicas the event topics get (fewer on a smaller cluster).
MAX_REPLICATION = 3


class EventTopicsError(RuntimeError):
    """The event topics could not be created (and do not exist)."""


def ensure_event_topics(bootstrap: str, settings: Settings, timeout_ms: int = 30_000) -> None:
    """Create ``settings.events_topic`` and ``settings.control_topic`` when they are missing.

    Idempotent and safe when two processes race: a topic that already exists is fine. A broker
    that refuses the ``max.message.bytes`` config (an embedded broker may not know it) gets the
    topic without it; the producer's ``max_request_size`` still bounds what is written.
    """
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms, **settings.kafka_client_options()
    )
    try:
        existing = set(admin.list_topics())
        missing = [name for name in (settings.events_topic, settings.control_topic) if name not in existing]
        if not missing:
            return
        replication = min(MAX_REPLICATION, max(1, len(admin.describe_cluster()["brokers"])))
        for name in missing:
            _create(admin, name, replication, timeout_ms)
    finally:
        admin.close()


def _create(admin: KafkaAdminClient, name: str, replication: int, timeout_ms: int) -> None:
    """One topic, first with its config, then (if that alone was refused) without."""
    configs = {"max.message.bytes": str(MAX_EVENT_RECORD_BYTES)}
    error = _create_one(admin, name, replication, configs, timeout_ms)
    if error is not None and not isinstance(error, TopicAlreadyExistsError):
        log.warning("Creating %s with max.message.bytes failed (%s); creating it without", name, error)
        error = _create_one(admin, name, replication, {}, timeout_ms)
    if error is None:
        log.info("Created topic %s (1 partition, replication %d)", name, replication)
    elif not isinstance(error, TopicAlreadyExistsError):
        raise EventTopicsError(f"could not create topic {name}: {error}")


def _create_one(
    admin: KafkaAdminClient, name: str, replication: int, configs: dict[str, str], timeout_ms: int
) -> Exception | None:
    """The broker's error for creating ``name`` (an instance), or None when it was created."""
    spec = {"num_partitions": 1, "replication_factor": replication, "configs": configs}
    response = admin.create_topics({name: spec}, timeout_ms=timeout_ms, raise_errors=False)
    for topic in response["topics"]:
        code = topic["error_code"]
        if topic["name"] == name and code:
            return for_code(code)(topic.get("error_message") or "")
    try:
        admin.wait_for_topics([name], timeout_ms=timeout_ms)
    except Exception as exc:
        return exc
    return None
