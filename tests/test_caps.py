"""Caps on what the APIs may add (issue 15 item 6): topics created by the producer API, consumers.

913 topics created through the producer API took 84 % of a core while idle and seconds of event
latency; 150 ``POST /api/consumers`` took 318 threads. Beyond MAX_CREATED_TOPICS and MAX_CONSUMERS
the APIs answer 429 with the reason, and nothing is created.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from backend.broker import list_topics
from backend.events import ACTIVE
from tests.support import ServedBackend, backend_settings, ensure_topic, serve_backend, unique

MAX_TOPICS = 2
MAX_CONSUMERS = 5
BOOT_CONSUMERS = 3


@pytest.fixture(scope="module")
def served(embedded_broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedBackend]:
    settings = backend_settings(
        tmp_path_factory.mktemp("caps"),
        embedded_broker.bootstrap,
        topics=(unique("caps"),),
        consumer_count=BOOT_CONSUMERS,
        max_created_topics=MAX_TOPICS,
        max_consumers=MAX_CONSUMERS,
    )
    running = serve_backend(settings)
    yield running
    running.backend.stop()


def send(served: ServedBackend, topic: str) -> httpx.Response:
    url = f"{served.producer}/api/producers/send/single"
    return httpx.post(url, params={"topic": topic}, json={"n": 1}, timeout=30)


def test_topics_beyond_the_cap_are_refused_and_not_created(served: ServedBackend) -> None:
    created = [unique("created") for _ in range(MAX_TOPICS)]
    for topic in created:
        assert send(served, topic).status_code == 201
    existing = unique("existing")
    ensure_topic(served.bootstrap, existing)  # created by someone else: not counted

    refused_topic = unique("refused")
    refused = send(served, refused_topic)

    assert refused.status_code == 429
    assert refused.headers["content-type"].startswith("application/json")
    reason = refused.json()["error"]
    assert "MAX_CREATED_TOPICS=2" in reason and refused_topic in reason
    assert refused_topic not in list_topics(served.bootstrap)
    # Topics that exist still take records, whoever created them.
    assert send(served, existing).status_code == 201
    assert send(served, created[0]).status_code == 201


def test_consumers_beyond_the_cap_are_refused_and_not_started(served: ServedBackend) -> None:
    url = f"{served.gateway}/api/consumers"
    # More requests at once than places left: exactly the free places are taken.
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda _: httpx.post(url, timeout=30), range(6)))

    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [201] * (MAX_CONSUMERS - BOOT_CONSUMERS) + [429] * (6 - MAX_CONSUMERS + BOOT_CONSUMERS)
    reason = next(answer.json()["error"] for answer in answers if answer.status_code == 429)
    assert "MAX_CONSUMERS=5" in reason
    active = [c for c in httpx.get(url, timeout=10).json() if c["status"] == ACTIVE]
    assert len(active) == MAX_CONSUMERS
    # Stopping one frees a place.
    assert httpx.delete(f"{url}/{active[-1]['consumerId']}", timeout=30).status_code == 200
    assert httpx.post(url, timeout=30).status_code == 201
    assert httpx.post(url, timeout=30).status_code == 429
