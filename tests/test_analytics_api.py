"""The analytics API (backend/analytics_api.py) on a known store, in process: answers, and 400
``{"error"}`` for malformed, empty and hostile query values (never a 422 or a 500).

The same routes under generated requests: tests/test_openapi_fuzz.py. The remote dashboard that
reads them against a served backend: tests/test_remote_source.py.
"""

from __future__ import annotations

import csv
import io
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend import analytics
from backend.config import Settings
from backend.gateway import create_gateway_app
from backend.store import Store
from tests.support import stored_rows

TOKEN = "analytics-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    opened = Store(tmp_path_factory.mktemp("analytics-api"))
    opened.save(stored_rows(int(time.time() * 1000)))
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def client(store: Store) -> TestClient:
    """The gateway's REST app on that store (no lifespan: no fan-out, no consumers)."""
    backend = types.SimpleNamespace(settings=Settings(auth_token=TOKEN), store=store)
    return TestClient(create_gateway_app(backend).api, headers=AUTH)


def test_the_answers_are_the_local_queries_in_camel_case(client: TestClient, store: Store) -> None:
    volume = client.get("/api/analytics/volume", params={"bucketMs": 60_000}).json()
    assert sum(row["messages"] for row in volume) == 120
    errors = client.get("/api/analytics/top-errors", params={"limit": 3}).json()
    assert errors and set(errors[0]) == {"error", "count", "topics", "firstMs", "lastMs"}
    groups = client.get("/api/analytics/failed/groups").json()
    assert [g["count"] for g in groups] == [10, 10]
    records = client.get("/api/analytics/failed/records", params={"pattern": groups[0]["pattern"]}).json()
    assert len(records) == 10 and {"logId", "receivedMs", "retriable"} <= set(records[0])
    one = client.get(f"/api/consumers/logs/{records[0]['logId']}").json()
    assert one == store.log(records[0]["logId"]).to_api(with_payload=True)
    fields = client.get("/api/analytics/fields", params={"topics": "orders,payments"}).json()
    assert {f["field"]: f["count"] for f in fields} == {
        f["field"]: f["count"] for f in analytics.numeric_fields(store)
    }
    count = client.get("/api/analytics/logs/count", params={"status": "FAILED"}).json()
    assert count == {"count": 20}
    bounds = client.get("/api/analytics/bounds").json()
    assert list(bounds) == ["firstMs", "lastMs", "keptFromMs"] and bounds["firstMs"] < bounds["lastMs"]
    assert bounds["keptFromMs"] is None  # nothing pruned


def test_an_unknown_record_is_404(client: TestClient) -> None:
    answer = client.get("/api/consumers/logs/00000000-0000-0000-0000-000000000000")
    assert answer.status_code == 404 and "error" in answer.json()


HOSTILE = [
    ("/api/analytics/volume", {}),  # bucketMs is required
    ("/api/analytics/volume", {"bucketMs": ""}),
    ("/api/analytics/volume", {"bucketMs": "0"}),
    ("/api/analytics/volume", {"bucketMs": "-5"}),
    ("/api/analytics/volume", {"bucketMs": "1e3"}),
    ("/api/analytics/volume", {"bucketMs": "9" * 40}),
    ("/api/analytics/volume", {"bucketMs": "1000", "sinceMs": "9" * 30}),
    ("/api/analytics/volume", {"bucketMs": "1000", "untilMs": "NaN"}),
    ("/api/analytics/volume", {"bucketMs": "1000", "topics": ""}),
    ("/api/analytics/volume", {"bucketMs": "1000", "topics": "a b"}),
    ("/api/analytics/volume", {"bucketMs": "1000", "topics": "orders,"}),
    ("/api/analytics/volume", {"bucketMs": "1000", "topics": "orders,.."}),
    ("/api/analytics/volume", {"bucketMs": "1000", "topics": ",".join(["t"] * 2501)}),
    ("/api/analytics/volume", {"bucketMs": "1000", "topics": "'; DROP TABLE logs; --"}),
    ("/api/analytics/failure-rate", {"bucketMs": "x"}),
    ("/api/analytics/latency", {"bucketMs": "1000", "kind": "completed_ms - 1"}),
    ("/api/analytics/throughput", {"sinceMs": "-1"}),
    ("/api/analytics/throughput", {}),
    ("/api/analytics/top-errors", {"limit": "0"}),
    ("/api/analytics/top-errors", {"limit": "100000000000000000000"}),
    ("/api/analytics/topics", {"sinceMs": "yesterday"}),
    ("/api/analytics/fields", {"sample": "0"}),
    ("/api/analytics/fields", {"topics": "."}),
    ("/api/analytics/field-series", {"bucketMs": "1000"}),  # field is required
    ("/api/analytics/field-series", {"bucketMs": "1000", "field": ""}),
    ("/api/analytics/field-series", {"bucketMs": "1000", "field": "x" * 501}),
    ("/api/analytics/failed/records", {}),
    ("/api/analytics/failed/records", {"pattern": "x", "limit": "-1"}),
    ("/api/analytics/logs", {"status": "DONE"}),
    ("/api/analytics/logs", {"limit": "1001"}),
    ("/api/analytics/logs", {"offset": "-1"}),
    ("/api/analytics/logs", {"topic": "x" * 250}),
    ("/api/analytics/logs", {"text": "x" * 501}),
    ("/api/analytics/logs/count", {"topic": ".."}),
    ("/api/analytics/logs", {"headerValue": "x" * 1001}),
    ("/api/analytics/logs/count", {"keyMatch": "suffix"}),
    ("/api/analytics/logs/count", {"key": "k" * 1001}),
    ("/api/analytics/logs/export", {"header": "h" * 1001}),
    ("/api/analytics/logs/export", {"limit": "x", "untilMs": "tomorrow"}),
    ("/api/analytics/logs/export", {"status": "DONE"}),
    ("/api/analytics/logs/export", {"sinceMs": "-1"}),
    ("/api/analytics/logs/export", {"topic": "a b"}),
    ("/api/analytics/logs/export", {"text": "x" * 501}),
    ("/api/analytics/logs/export", {"keyMatch": "'; DROP TABLE logs; --"}),
    ("/api/consumers/logs/" + "x" * 201, {}),
    ("/api/consumers/logs/not-a-log-id", {}),
]


@pytest.mark.parametrize(("path", "query"), HOSTILE, ids=[f"{p} {q}"[:80] for p, q in HOSTILE])
def test_bad_query_values_are_400_with_an_error_body(client: TestClient, path: str, query: dict) -> None:
    answer = client.get(path, params=query)
    assert answer.status_code == 400, answer.text
    assert list(answer.json()) == ["error"] and answer.json()["error"]


def test_odd_but_valid_values_are_answered(client: TestClient) -> None:
    for path, query in [
        ("/api/analytics/logs", {"text": "'%_\\\" OR 1=1 --", "topic": "orders"}),
        ("/api/analytics/logs", {"text": ""}),
        ("/api/analytics/field-series", {"bucketMs": "1", "field": "'); DROP TABLE logs; --"}),
        ("/api/analytics/volume", {"bucketMs": "1000", "sinceMs": "5", "untilMs": "1"}),
        ("/api/analytics/failed/records", {"pattern": ""}),
        ("/api/analytics/logs", {"key": "k%", "keyMatch": "prefix", "header": "'; --", "headerValue": ""}),
        ("/api/analytics/logs/export", {"key": "\u0000", "header": "h", "text": "%_"}),
    ]:
        answer = client.get(path, params=query)
        assert answer.status_code == 200, (path, answer.text)


def test_every_route_wants_the_token(store: Store) -> None:
    backend = types.SimpleNamespace(settings=Settings(auth_token=TOKEN), store=store)
    bare = TestClient(create_gateway_app(backend).api)
    assert bare.get("/api/analytics/bounds").status_code == 401
    assert bare.get("/api/consumers/logs/x").status_code == 401
    assert bare.get("/api/analytics/logs/export").status_code == 401


def test_the_export_streams_every_matching_record_as_csv(client: TestClient, store: Store) -> None:
    answer = client.get("/api/analytics/logs/export", params={"status": "FAILED"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/csv")
    assert "attachment" in answer.headers["content-disposition"]
    records = list(csv.DictReader(io.StringIO(answer.text)))
    assert len(records) == store.count_logs(status="FAILED") == 20
    assert {r["status"] for r in records} == {"FAILED"}
    # The error text starts with letters; a formula-looking cell would be quoted: none is raw here.
    assert not [v for r in records for v in r.values() if v[:1] in ("=", "+", "@")]
    keyed = client.get("/api/analytics/logs/export", params={"key": "k1", "keyMatch": "prefix"}).text
    assert sorted(r["key"] for r in csv.DictReader(io.StringIO(keyed))) == [
        "k10",
        "k100",
        "k105",
        "k110",
        "k115",
        "k15",
    ]


def test_no_store_is_503(tmp_path: Path) -> None:
    backend = types.SimpleNamespace(settings=Settings(), store=None)
    answer = TestClient(create_gateway_app(backend).api).get("/api/analytics/failed/groups")
    assert answer.status_code == 503 and "error" in answer.json()
