"""backend/wire.py: each REST body is built, documented and parsed from one definition.

The builders make plain dicts (the hot path builds no models); these tests hold them to their
models: the same fields, and values the model accepts. And an analytics row survives the trip
through the wire (camelCase) back to the dict the local query gives.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from backend import analytics, wire
from backend.consumers import ConsumerSnapshot, PartitionState
from backend.service import Health
from backend.stats import statistics
from backend.store import Counts, Store
from tests.support import stored_rows


def exactly(model: type[BaseModel], body: dict) -> None:
    assert set(body) == set(model.model_fields), model.__name__
    model.model_validate(body)


def test_the_builders_make_their_models_bodies(tmp_path: Path) -> None:
    store = Store(tmp_path)
    try:
        store.save(stored_rows(int(time.time() * 1000)))
        row = store.logs(limit=1)[0]
        exactly(wire.LogBody, row.to_api())
        exactly(wire.LogDetailBody, row.to_api(with_payload=True))
    finally:
        store.close()
    snapshot = ConsumerSnapshot(
        "consumer-1", "ACTIVE", {"t-10": PartitionState(1, 5), "t-9": PartitionState()}
    )
    body = snapshot.to_api()
    exactly(wire.ConsumerBody, body)
    assert body["partitions"] == ["t-9", "t-10"] and body["lag"] == {"t-10": 4, "t-9": None}
    exactly(wire.HealthBody, {**Health(False, "starting", "b:9092", False).to_api(), "gatewayClients": 0})
    exactly(wire.ProducedBody, wire.produced_body("t", 0, 12))
    exactly(wire.ErrorBody, wire.error_body("no"))


def test_the_stats_event_is_the_statistics_body() -> None:
    """stats-updated and GET /api/consumers/statistics are one shape, built by one function."""
    event = statistics(Counts(5, 3, 1), 2)
    exactly(wire.StatisticsBody, event)
    rest = {**wire.statistics_body(5, 3, 1, 2), "timestamp": event["timestamp"]}
    assert json.dumps(event) == json.dumps(rest)
    exactly(wire.StatisticsBody, wire.statistics_body(0, 0, 0, 0))


def test_parsing_refuses_what_is_not_the_shape() -> None:
    with pytest.raises(ValidationError):
        wire.parse(wire.ProducedBody, {"topic": "t", "partition": -1, "offset": "1"})
    with pytest.raises(ValidationError):
        wire.parse_list(wire.LogBody, [{"logId": "x"}])


def test_analytics_rows_go_over_the_wire_and_back_unchanged(tmp_path: Path) -> None:
    store = Store(tmp_path)
    try:
        store.save(stored_rows(int(time.time() * 1000)))
        cases = [
            (wire.VolumeRow, analytics.volume(store, 60_000)),
            (wire.FailureRateRow, analytics.failure_rate(store, 60_000)),
            (wire.LatencyRow, analytics.latency(store, 60_000)),
            (wire.TopErrorRow, analytics.top_errors(store)),
            (wire.TopicSummaryRow, analytics.topic_summary(store)),
            (wire.FieldCountRow, analytics.numeric_fields(store)),
            (wire.FieldSeriesRow, analytics.field_series(store, "amount", 60_000)),
            (wire.ThroughputRow, analytics.throughput(store, 0, 1000)),
        ]
        for model, local in cases:
            assert local, model.__name__
            sent = wire.dump_rows(model, local)
            assert "first_ms" not in str(sent) and "last_ms" not in str(sent)
            assert wire.rows(model, sent) == local, model.__name__
    finally:
        store.close()
