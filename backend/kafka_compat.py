"""A fix for kafka-python's consumer group coordinator, applied once when the consumers are imported.

kafka-python 3.0.12 (the newest on PyPI): a JoinGroup/SyncGroup that completes after ``poll()``
timed out is only collected by ``ensure_active_group()``, which ``ConsumerCoordinator.poll()``
calls only while ``need_rejoin()`` is True; but ``need_rejoin()`` turned False when the JoinGroup
was sent. The finished join is never collected: heartbeats stay disabled, the broker expels the
member after the session timeout, and the thread spins in ``poll`` (0.5-0.9 of a core) until some
later metadata change happens to trigger a rejoin. Any rebalance slower than our 100 ms poll
timeout (a new topic matching the pattern on a busy machine) starts it. Measured on Apache Kafka
4.4 with two CPU burners, a 200k burst and four new topics: unpatched, all three members expelled
and the group Empty for ~27 s while the backend said ACTIVE (the issue saw minutes); patched, no
member expelled. Java's client counts a join in flight (``rejoinNeededOrPending()``); so does this.
"""

from __future__ import annotations

import logging

import kafka
from kafka.coordinator.consumer import ConsumerCoordinator
from packaging.version import Version

log = logging.getLogger(__name__)

#: Versions known to need the patch; a later version is checked for the same attributes first.
PATCHED_UP_TO = Version("3.99")
_original_need_rejoin = ConsumerCoordinator.need_rejoin


def _need_rejoin_or_pending(self: ConsumerCoordinator) -> bool:
    """A join in flight counts as needing the rejoin, so poll() goes on to collect it."""
    return getattr(self, "_join_task", None) is not None or _original_need_rejoin(self)


def apply() -> bool:
    """Patch ``ConsumerCoordinator.need_rejoin`` once; False (and one log line) when not applicable."""
    if ConsumerCoordinator.need_rejoin is _need_rejoin_or_pending:
        return True
    version = Version(kafka.__version__)
    if version > PATCHED_UP_TO or not hasattr(ConsumerCoordinator, "ensure_active_group"):
        log.info("kafka-python %s: the need_rejoin fix is not applied", version)
        return False
    ConsumerCoordinator.need_rejoin = _need_rejoin_or_pending  # type: ignore[method-assign]
    return True


apply()
