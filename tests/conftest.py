"""Shared pytest fixtures."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from backend.broker import EmbeddedBroker
from scripts.kafka_launcher import ApacheKafka
from tests.support import ServedBackend, served_backend

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


# ============================================================================================
# A backend serving HTTP, shared by the tests of one module.
# ============================================================================================


@pytest.fixture(scope="module")
def served_settings() -> dict[str, Any]:
    """Settings overrides for the module's ``served`` backend; a test module redefines this fixture."""
    return {}


@pytest.fixture(scope="module")
def served(
    request: pytest.FixtureRequest, served_settings: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedBackend]:
    """The backend a test module shares, serving HTTP (gateway and producer API) on the session's Kafka.

    Modules differ only in settings, so they redefine ``served_settings`` (topics, consumer_count,
    a token...) rather than this fixture; the topics are created first (``served_backend``).
    ``bootstrap_servers=None`` there runs the backend on its own embedded broker, and Apache Kafka
    is then not started for that module.
    """
    overrides = dict(served_settings)
    if "bootstrap_servers" in overrides:
        bootstrap = overrides.pop("bootstrap_servers")
    else:
        bootstrap = request.getfixturevalue("kafka").bootstrap
    with served_backend(tmp_path_factory.mktemp("served"), bootstrap, **overrides) as running:
        yield running
