"""The two sources of dashboard/source.py give the pages the same data for the same store.

One backend on the embedded broker serves its gateway and producer API (with AUTH_TOKEN) over a
store filled with known rows. The dashboard reads it twice: in process (LocalSource, the store
itself) and attached over REST (RemoteSource, which never opens the SQLite file). Every read of
the Source protocol must agree.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import pytest

from backend.config import Settings
from backend.events import SINGLE_MESSAGE
from backend.store import Store
from dashboard.source import LocalSource, RemoteSource, Source
from tests.support import ServedBackend, backend_settings, serve_backend, stored_rows, wait_for

NOW = int(time.time() * 1000)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedBackend]:
    settings = backend_settings(
        tmp_path_factory.mktemp("remote"), None, consumer_count=1, auth_token="remote-token"
    )
    backend = serve_backend(settings)
    assert backend.backend.store is not None
    backend.backend.store.save(stored_rows(NOW))
    yield backend
    backend.backend.stop()


@pytest.fixture(scope="module")
def sources(
    served: ServedBackend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Source, Source]]:
    elsewhere = Settings(
        backend_url=served.gateway,
        producer_port=served.settings.producer_port,
        auth_token=served.settings.auth_token,
        data_dir=tmp_path_factory.mktemp("no-store-here"),
    )
    remote = RemoteSource(elsewhere).start()
    yield LocalSource(served.backend), remote
    remote.close()


def test_the_remote_source_never_opens_the_store(sources: tuple[Source, Source]) -> None:
    _, remote = sources
    assert not [name for name, value in vars(remote).items() if isinstance(value, Store)]
    assert not list(remote.settings.data_dir.iterdir())


SCOPES = [
    {},
    {"since_ms": NOW - 60_000},
    {"since_ms": NOW - 100_000, "until_ms": NOW - 30_000, "topics": ["payments"]},
    {"topics": ["orders", "payments"]},
]


@pytest.mark.parametrize("scope", SCOPES, ids=[str(s) for s in SCOPES])
def test_the_analytics_agree(sources: tuple[Source, Source], scope: dict) -> None:
    local, remote = sources
    for bucket in (1000, 60_000):
        assert remote.volume(bucket, **scope) == local.volume(bucket, **scope)
        assert remote.failure_rate(bucket, **scope) == local.failure_rate(bucket, **scope)
        for kind in ("processing", "end_to_end"):
            assert remote.latency(bucket, kind, **scope) == local.latency(bucket, kind, **scope)
        for name in ("amount", "qty", "no-such-field"):
            assert remote.field_series(name, bucket, **scope) == local.field_series(name, bucket, **scope)
    assert remote.top_errors(5, **scope) == local.top_errors(5, **scope)
    assert remote.numeric_fields(**scope) == local.numeric_fields(**scope)


def test_the_store_reads_agree(sources: tuple[Source, Source]) -> None:
    local, remote = sources
    assert remote.time_bounds() == local.time_bounds()
    assert remote.throughput(NOW - 600_000, 1000) == local.throughput(NOW - 600_000, 1000)
    assert remote.topic_summary() == local.topic_summary()
    assert remote.topic_summary(NOW - 30_000) == local.topic_summary(NOW - 30_000)
    assert remote.topics() == local.topics()
    for filters in (
        {},
        {"status": "FAILED"},
        {"topic": "payments", "text": "orderId"},
        {"since_ms": NOW - 9000},
    ):
        assert remote.count_logs(**filters) == local.count_logs(**filters)
        assert remote.logs(limit=30, offset=5, **filters) == without_cluster(
            local.logs(30, offset=5, **filters)
        )
    one = local.logs(limit=1, status="FAILED")[0]
    assert remote.log(one.log_id) == without_cluster([one])[0]
    assert remote.log("00000000-0000-0000-0000-000000000000") is None


def without_cluster(rows: list) -> list:
    """The REST log body has no cluster id (the contract's shape): compare the rest."""
    return [dataclasses.replace(row, cluster_id="", payload_json=None) for row in rows]


def test_the_failed_groups_and_records_agree(sources: tuple[Source, Source]) -> None:
    local, remote = sources
    groups = local.error_groups()
    assert remote.error_groups() == groups and len(groups) == 2
    for group in groups:
        assert remote.failed_records(group, 7) == local.failed_records(group, 7)


def test_the_system_reads_agree(sources: tuple[Source, Source]) -> None:
    local, remote = sources
    wait_for(lambda: remote.status().healthy, 10, "the attached source to see the backend healthy")
    assert [c.consumer_id for c in remote.consumers()] == [c.consumer_id for c in local.consumers()]
    assert remote.status().broker == local.status().broker
    produced = remote.produce("remote-source", b'{"amount": 1}', SINGLE_MESSAGE, b"k")
    assert produced.topic == "remote-source" and produced.offset >= 0
