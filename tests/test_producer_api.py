"""The producer API (:3000) against Apache Kafka: what it produces, and that bad requests produce nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from kafka import KafkaConsumer, TopicPartition

from backend.broker import list_topics
from tests.support import ServedBackend, ensure_topic, served_backend, unique

LIMIT = 4096  # MAX_MESSAGE_BYTES of the backend under test
TOKEN = "producer-token"


def producer_settings(**overrides: Any) -> dict[str, Any]:
    """Settings of the backends under test: no consumers, small records, new topics of 2 partitions."""
    return {
        "topics": (unique("unused"),),
        "consumer_count": 0,
        "max_message_bytes": LIMIT,
        "topic_partitions": 2,
        **overrides,
    }


@pytest.fixture(scope="module")
def served_settings() -> dict[str, Any]:
    return producer_settings()


@pytest.fixture(scope="module")
def target(served: ServedBackend) -> str:
    """A topic that exists and holds one record, for the tests that check nothing more arrives."""
    topic = unique("target")
    ensure_topic(served.bootstrap, topic, partitions=2)
    response = httpx.post(
        f"{served.producer}/api/producers/send/single", params={"topic": topic}, json={"first": True}
    )
    assert response.status_code == 201
    return topic


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        consumer.close()


def read_record(bootstrap: str, topic: str, partition: int, offset: int, timeout: float = 15.0) -> Any:
    """The record at topic/partition/offset, read back from Kafka."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50)
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in consumer.poll(timeout_ms=200).get(tp, []):
                if record.offset == offset:
                    return record
        raise AssertionError(f"no record at {topic}-{partition}@{offset}")
    finally:
        consumer.close()


def check_produced(
    served: ServedBackend, response: httpx.Response, topic: str, body: bytes, data_type: str
) -> None:
    assert response.status_code == 201, response.text
    result = response.json()
    assert result["topic"] == topic
    assert type(result["partition"]) is int and type(result["offset"]) is str
    record = read_record(served.bootstrap, topic, result["partition"], int(result["offset"]))
    assert record.value == body, "the record must carry the exact bytes that were sent"
    assert ("data-type", data_type.encode()) in list(record.headers)


# --- what it produces -------------------------------------------------------------------------


def test_seed_curl_produces_the_exact_body_with_its_data_type(served: ServedBackend) -> None:
    topic = unique("seed")
    body = b'{"name": "Test", "value": 100}'
    response = httpx.post(
        f"{served.producer}/api/producers/send/single",
        params={"topic": topic},
        content=body,
        headers={"Content-Type": "application/json"},
    )
    check_produced(served, response, topic, body, "SINGLE_MESSAGE")
    # The topic did not exist: it was created with TOPIC_PARTITIONS partitions.
    assert set(end_offsets(served.bootstrap, topic)) == {0, 1}


@pytest.mark.parametrize(
    "body, content_type",
    [
        (b"[1, 2, 3]", "application/json"),
        (b'"just a string"', "application/json"),
        (b"42", "application/json; charset=utf-8"),
        (b"null", "application/json"),
        (
            '{"emoji": "\U0001f680", "rtl": "\u202eevil", "html": "<script>alert(1)</script>"}'.encode(),
            "application/json",
        ),
        (b'{"ok": true}', "application/vnd.api+json"),
    ],
)
def test_any_json_value_is_produced_as_sent(
    served: ServedBackend, target: str, body: bytes, content_type: str
) -> None:
    response = httpx.post(
        f"{served.producer}/api/producers/send/single",
        params={"topic": target},
        content=body,
        headers={"Content-Type": content_type},
    )
    check_produced(served, response, target, body, "SINGLE_MESSAGE")


def test_csv_document_is_one_csv_batch_record(served: ServedBackend, target: str) -> None:
    document = b'name,value\nA,1\n"B, with comma",2\n'
    response = httpx.post(
        f"{served.producer}/api/producers/send/csv",
        params={"topic": target},
        content=document,
        headers={"Content-Type": "text/csv"},
    )
    check_produced(served, response, target, document, "CSV_BATCH")
    assert response.json()["rowCount"] == 2


def test_csv_upload_as_multipart_file(served: ServedBackend, target: str) -> None:
    document = b"id,city\n1,Hanoi\n2,Paris\n3,Lima\n"
    response = httpx.post(
        f"{served.producer}/api/producers/send/csv",
        params={"topic": target},
        files={"file": ("rows.csv", document, "text/csv")},
    )
    check_produced(served, response, target, document, "CSV_BATCH")
    assert response.json()["rowCount"] == 3


def test_openapi_documents_both_endpoints(served: ServedBackend) -> None:
    spec = httpx.get(f"{served.producer}/openapi.json").json()
    assert {"/api/producers/send/single", "/api/producers/send/csv"} <= set(spec["paths"])
    csv_body = spec["paths"]["/api/producers/send/csv"]["post"]["requestBody"]["content"]
    assert {"text/csv", "multipart/form-data"} <= set(csv_body)
    assert httpx.get(f"{served.producer}/docs").status_code == 200


# --- what it refuses --------------------------------------------------------------------------

JSON = {"Content-Type": "application/json"}
CSV = {"Content-Type": "text/csv"}
TOO_BIG_JSON = b'{"pad": "' + b"x" * LIMIT + b'"}'
TOO_BIG_CSV = b"a,b\n" + b"1,2\n" * (LIMIT // 4 + 1)
LONG_NAME_CSV = b"x" * 2000 + b",b\n1,2\n"


def chunks(data: bytes) -> Iterator[bytes]:
    """A body sent with chunked transfer encoding: no Content-Length to check up front."""
    for start in range(0, len(data), 1000):
        yield data[start : start + 1000]


BAD_REQUESTS: list[tuple[str, str, dict[str, Any], dict[str, Any], int, str]] = [
    # (id, endpoint, query, request kwargs, status, fragment of the error)
    ("not-json", "single", {}, {"content": b'{"broken": ', "headers": JSON}, 400, "not JSON"),
    ("empty-body", "single", {}, {"content": b"", "headers": JSON}, 400, "empty body"),
    ("blank-body", "single", {}, {"content": b"  \n ", "headers": JSON}, 400, "empty body"),
    ("nan", "single", {}, {"content": b'{"v": NaN}', "headers": JSON}, 400, "NaN"),
    ("two-values", "single", {}, {"content": b"{} {}", "headers": JSON}, 400, "not JSON"),
    ("not-utf8", "single", {}, {"content": b'{"v": "\xff\xfe"}', "headers": JSON}, 400, "UTF-8"),
    ("too-deep", "single", {}, {"content": b"[" * 2000 + b"]" * 2000, "headers": JSON}, 400, "deep"),
    (
        "text-plain",
        "single",
        {},
        {"content": b'{"a": 1}', "headers": {"Content-Type": "text/plain"}},
        400,
        "Content-Type",
    ),
    ("form", "single", {}, {"data": {"a": "1"}}, 400, "Content-Type"),
    ("no-content-type", "single", {}, {"content": b'{"a": 1}'}, 400, "Content-Type"),
    ("too-large", "single", {}, {"content": TOO_BIG_JSON, "headers": JSON}, 413, "limit"),
    ("too-large-chunked", "single", {}, {"content": chunks(TOO_BIG_JSON), "headers": JSON}, 413, "limit"),
    ("bad-csv", "csv", {}, {"content": b'a,b\n"1,2\n', "headers": CSV}, 400, "CSV"),
    ("header-only-csv", "csv", {}, {"content": b"name,value\n", "headers": CSV}, 400, "no data rows"),
    ("ragged-csv", "csv", {}, {"content": b"a,b\n1,2\n3\n", "headers": CSV}, 400, "row 3 has 1 fields"),
    ("duplicate-column", "csv", {}, {"content": b"a,a\n1,2\n", "headers": CSV}, 400, "repeats"),
    ("empty-csv", "csv", {}, {"content": b"", "headers": CSV}, 400, "empty"),
    ("csv-not-utf8", "csv", {}, {"content": b"a,b\n\xff,1\n", "headers": CSV}, 400, "UTF-8"),
    ("csv-as-json", "csv", {}, {"content": b"a,b\n1,2\n", "headers": JSON}, 400, "Content-Type"),
    ("csv-too-large", "csv", {}, {"content": TOO_BIG_CSV, "headers": CSV}, 413, "limit"),
    ("multipart-no-file", "csv", {}, {"files": {"upload": ("x.csv", b"a,b\n1,2\n")}}, 400, "'file'"),
    ("multipart-header-only", "csv", {}, {"files": {"file": ("x.csv", b"a,b\n")}}, 400, "no data rows"),
    ("multipart-too-large", "csv", {}, {"files": {"file": ("x.csv", TOO_BIG_CSV)}}, 413, "limit"),
    # Well formed, but the consumers would refuse it once decoded (issue 15: a 201 must mean it can be
    # processed): the poison had 2,000-character column names.
    ("csv-long-column-name", "csv", {}, {"content": LONG_NAME_CSV, "headers": CSV}, 413, "MAX_COLUMN_NAME"),
    ("deep-json", "single", {}, {"content": b"[" * 100 + b"]" * 100, "headers": JSON}, 400, "MAX_JSON_DEPTH"),
]
BAD_TOPICS = [
    None,
    "",
    "has space",
    "../../etc/passwd",
    "<script>alert(1)</script>",
    "x" * 250,
    ".",
    "..",
    "t\u00f6pic",
    "new\r\nline",
    "trailing-newline\n",  # is_valid_topic once took it (re.match's $), and the broker refused it: 503
    "nul\x00byte",
    "orders'; DROP TABLE logs;--",
    "__consumer_offsets",
]


@pytest.mark.parametrize(
    "endpoint, query, kwargs, status, fragment",
    [pytest.param(*case[1:], id=case[0]) for case in BAD_REQUESTS],
)
def test_malformed_request_is_refused_and_produces_nothing(
    served: ServedBackend,
    target: str,
    endpoint: str,
    query: dict[str, Any],
    kwargs: dict[str, Any],
    status: int,
    fragment: str,
) -> None:
    before = end_offsets(served.bootstrap, target)
    response = httpx.post(
        f"{served.producer}/api/producers/send/{endpoint}", params={"topic": target, **query}, **kwargs
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert fragment in error and len(error) < 400
    assert end_offsets(served.bootstrap, target) == before


@pytest.mark.parametrize("endpoint", ["single", "csv"])
@pytest.mark.parametrize("topic", BAD_TOPICS, ids=lambda t: repr(t)[:30])
def test_missing_or_invalid_topic_is_refused_and_creates_nothing(
    served: ServedBackend, endpoint: str, topic: str | None
) -> None:
    kwargs: dict[str, Any] = (
        {"json": {"name": "Test", "value": 100}}
        if endpoint == "single"
        else {"content": b"a,b\n1,2\n", "headers": CSV}
    )
    params = {} if topic is None else {"topic": topic}
    response = httpx.post(f"{served.producer}/api/producers/send/{endpoint}", params=params, **kwargs)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert "topic" in error and len(error) < 400
    if topic:
        assert topic not in list_topics(served.bootstrap) or topic == "__consumer_offsets"


def test_wrong_method_and_unknown_path_are_json_errors(served: ServedBackend) -> None:
    wrong = httpx.get(f"{served.producer}/api/producers/send/single", params={"topic": "test"})
    assert wrong.status_code == 405 and "not allowed" in wrong.json()["error"]
    unknown = httpx.post(f"{served.producer}/api/producers/send/many", params={"topic": "test"}, json={})
    assert unknown.status_code == 404 and "error" in unknown.json()


# --- token and origins ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured(kafka: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedBackend]:
    settings = producer_settings(auth_token=TOKEN, cors_origins=("http://app.example",))
    with served_backend(tmp_path_factory.mktemp("producer"), kafka.bootstrap, **settings) as running:
        yield running


def test_token_is_required_and_nothing_is_produced_without_it(secured: ServedBackend) -> None:
    topic = unique("secured")
    ensure_topic(secured.bootstrap, topic, partitions=2)
    before = end_offsets(secured.bootstrap, topic)
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
        for endpoint, kwargs in (
            ("single", {"json": {"a": 1}}),
            ("csv", {"content": b"a\n1\n", "headers": CSV}),
        ):
            merged = {**kwargs, "headers": {**kwargs.get("headers", {}), **headers}}
            response = httpx.post(
                f"{secured.producer}/api/producers/send/{endpoint}", params={"topic": topic}, **merged
            )
            assert response.status_code == 401 and "error" in response.json(), (endpoint, headers)
    assert end_offsets(secured.bootstrap, topic) == before
    response = httpx.post(
        f"{secured.producer}/api/producers/send/single",
        params={"topic": topic},
        json={"a": 1},
        headers={"Authorization": f"Bearer {TOKEN}", "Origin": "http://app.example"},
    )
    assert response.status_code == 201
    assert response.headers["access-control-allow-origin"] == "http://app.example"


def test_disallowed_origin_is_refused_before_anything_is_produced(secured: ServedBackend) -> None:
    topic = unique("origin")
    ensure_topic(secured.bootstrap, topic, partitions=2)
    before = end_offsets(secured.bootstrap, topic)
    for origin in ("http://evil.example", "http://localhost:5173"):
        response = httpx.post(
            f"{secured.producer}/api/producers/send/single",
            params={"topic": topic},
            json={"a": 1},
            headers={"Authorization": f"Bearer {TOKEN}", "Origin": origin},
        )
        assert response.status_code == 403 and "not allowed" in response.json()["error"]
        preflight = httpx.options(
            f"{secured.producer}/api/producers/send/single",
            headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code == 403
    assert end_offsets(secured.bootstrap, topic) == before
