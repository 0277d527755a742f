"""Shared pytest fixtures."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator

import pytest

from backend.broker import EmbeddedBroker
from scripts.kafka_launcher import ApacheKafka

# ============================================================================================
# Brokers (backend/broker.py, scripts/kafka_launcher.py). One of each per test session: starting
# Apache Kafka costs ~5 s. A test that stops or kills `kafka` must start() it again before it
# returns (use try/finally); start() after stop() keeps the port, the data and the cluster id.
# ============================================================================================


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApacheKafka]:
    """A single-node Apache Kafka 4.x (KRaft) on 127.0.0.1, with ``.bootstrap``."""
    broker = ApacheKafka(tmp_path_factory.mktemp("kafka"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def embedded_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """The embedded Tansu broker (memory storage) on 127.0.0.1, with ``.bootstrap``."""
    broker = EmbeddedBroker(tmp_path_factory.mktemp("tansu"))
    broker.start()
    yield broker
    broker.stop()


def make_topic_name(prefix: str = "test") -> str:
    """A topic name no other test uses, so tests can share one broker without seeing each other."""
    clean = re.sub(r"[^A-Za-z0-9._-]", "-", prefix)[:180] or "test"
    return f"{clean}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def unique_topic(request: pytest.FixtureRequest) -> Callable[[str | None], str]:
    """``unique_topic()`` or ``unique_topic("orders")``: a fresh topic name (default prefix: test name)."""
    default = request.node.name

    def factory(prefix: str | None = None) -> str:
        return make_topic_name(prefix or default)

    return factory


# ============================================================================================
# End of the broker block.
# ============================================================================================
