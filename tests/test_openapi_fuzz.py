"""schemathesis against both OpenAPI documents: thousands of generated requests, every answer as documented.

One backend on Apache Kafka, with AUTH_TOKEN set, serves both documents: the gateway's
(/openapi.json on GATEWAY_PORT) and the producer API's (/openapi.json on PRODUCER_PORT). Every
operation of each is fuzzed by schemathesis in all its phases (explicit examples, coverage
boundaries, then Hypothesis generation), positive and negative inputs, up to ``MAX_EXAMPLES``
generated cases per operation, each request with a ``REQUEST_TIMEOUT`` deadline (a hang fails),
each test within pytest's ``timeout`` (pyproject.toml). Hypothesis is derandomized: every run
sends the same requests.

Checks (the documents describe what the servers do, so the answers are held to them):

- ``not_a_server_error``: no 5xx, except the contract's own 503 on ``/api/health`` (with a
  reason), which the fuzz can provoke legitimately by starting consumers with POST /api/consumers.
- ``status_code_conformance``, ``content_type_conformance``, ``response_schema_conformance``:
  every status code is documented for its operation, and so are its media type and body
  (errors included: ``{"error": "<why>"}``).
- ``negative_data_rejection``: a request outside the document is refused (4xx).
- ``positive_data_acceptance``: a request inside the document is accepted, except on
  ``/send/csv``: JSON Schema cannot say "a well-formed CSV document", so most generated documents
  are rightly refused with 400.
- ``ignored_auth``: the documents declare a bearer token on every operation; schemathesis replays
  a request without it and with a wrong one and expects 401.

The producer API really produces to Kafka. Any generated topic that is a valid Kafka name is
mapped onto one of two topics of this test, so the fuzz does not create hundreds of topics on the
session broker; invalid names are sent as generated, so topic validation is fuzzed too.
"""

from __future__ import annotations

import types
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema_rs
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from backend.config import Settings, is_valid_topic
from backend.gateway import create_gateway_app
from backend.producer_api import create_producer_app
from tests.support import (
    ServedBackend,
    served_backend,
    unique,
    wait_for,
)

TOKEN = "fuzz-token"
#: Generated cases per operation (on top of the explicit examples and coverage cases).
MAX_EXAMPLES = 300
#: POST /api/consumers starts a real consumer each time it succeeds: far fewer of those.
START_CONSUMER_EXAMPLES = 5
#: Seconds one request may take before the test fails as a hang.
REQUEST_TIMEOUT = 10.0
FUZZ_TOPICS = (unique("fuzz-a"), unique("fuzz-b"))

#: The analytics API (backend/analytics_api.py), part of the gateway's document.
ANALYTICS_WITHOUT_PARAMETERS = {
    "GET /api/analytics/bounds",
    "GET /api/analytics/failed/groups",
    "GET /api/analytics/topic-names",
}
ANALYTICS_WITH_PARAMETERS = {
    "GET /api/analytics/throughput",
    "GET /api/analytics/volume",
    "GET /api/analytics/failure-rate",
    "GET /api/analytics/latency",
    "GET /api/analytics/top-errors",
    "GET /api/analytics/topics",
    "GET /api/analytics/fields",
    "GET /api/analytics/field-series",
    "GET /api/analytics/failed/records",
    "GET /api/analytics/logs",
    "GET /api/analytics/logs/count",
    "GET /api/analytics/logs/export",
}
ANALYTICS_OPERATIONS = {
    *ANALYTICS_WITHOUT_PARAMETERS,
    *ANALYTICS_WITH_PARAMETERS,
    "GET /api/consumers/logs/{logId}",
}
GATEWAY_OPERATIONS = {
    "GET /api/health",
    "GET /api/consumers/statistics",
    "GET /api/consumers/logs",
    "GET /api/consumers",
    "POST /api/consumers",
    "DELETE /api/consumers/{consumerId}",
    *ANALYTICS_OPERATIONS,
    "POST /api/stream-tickets",
}
PRODUCER_OPERATIONS = {"POST /api/producers/send/single", "POST /api/producers/send/csv"}

#: Requests sent per operation label, and status codes seen, over the module.
SENT: Counter[str] = Counter()
STATUSES: Counter[tuple[str, int]] = Counter()


@pytest.fixture(scope="module")
def fuzzed(kafka: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedBackend]:
    with served_backend(
        tmp_path_factory.mktemp("fuzz"),
        kafka.bootstrap,
        topics=FUZZ_TOPICS,
        consumer_count=1,
        auth_token=TOKEN,
    ) as served:
        yield served


# --- the two documents --------------------------------------------------------------------------
# schemathesis' pytest integration needs the schema when the module is collected, before any
# backend runs, and its fixture-based loader (schemathesis.pytest.from_fixture) does not work with
# pytest 9 (it sets ``node._nodeid``, which pytest 9 no longer has). So the documents are built
# here from the same app factories, without a backend; test_the_served_documents_are_the_fuzzed_ones
# checks that the running servers serve exactly these.


def build_documents() -> tuple[dict[str, Any], dict[str, Any]]:
    offline = types.SimpleNamespace(settings=Settings(auth_token=TOKEN))
    gateway_app = create_gateway_app(offline).api  # the FastAPI app behind Socket.IO
    return gateway_app.openapi(), create_producer_app(offline).openapi()


def operations_of(document: dict[str, Any]) -> set[str]:
    return {f"{method.upper()} {path}" for path, item in document["paths"].items() for method in item}


class BearerToken:
    """schemathesis auth provider: the AUTH_TOKEN on every generated request (explicit auth, so
    ``ignored_auth`` probes the operation without it and with a wrong one)."""

    def get(self, case: schemathesis.Case, context: schemathesis.AuthContext) -> str:
        return TOKEN

    def set(self, case: schemathesis.Case, data: str, context: schemathesis.AuthContext) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


def load_schema(document: dict[str, Any]) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_dict(document)
    schema.auth()(BearerToken)
    return schema


# schemathesis sends text/* bodies as text; application/csv (which /send/csv also takes) likewise.
schemathesis.serializer.alias("application/csv", "text/plain")
GATEWAY_DOCUMENT, PRODUCER_DOCUMENT = build_documents()
gateway_schema = load_schema(GATEWAY_DOCUMENT)
producer_schema = load_schema(PRODUCER_DOCUMENT)


def test_the_served_documents_are_the_fuzzed_ones(fuzzed: ServedBackend) -> None:
    for base, document, operations in (
        (fuzzed.gateway, GATEWAY_DOCUMENT, GATEWAY_OPERATIONS),
        (fuzzed.producer, PRODUCER_DOCUMENT, PRODUCER_OPERATIONS),
    ):
        response = httpx.get(f"{base}/openapi.json", headers=fuzzed.auth_headers, timeout=REQUEST_TIMEOUT)
        assert response.status_code == 200, response.text
        assert response.json() == document
        assert operations_of(document) == operations


# --- what the documents say (no server needed) -----------------------------------------------------

#: Every status code each operation can answer, as the code and the contract have them.
DOCUMENTED_STATUSES = {
    "GET /api/health": {"200", "401", "403", "503"},
    "GET /api/consumers/statistics": {"200", "401", "403"},
    "GET /api/consumers/logs": {"200", "400", "401", "403", "503"},
    "GET /api/consumers": {"200", "401", "403"},
    "POST /api/consumers": {"201", "401", "403", "429", "504"},
    "DELETE /api/consumers/{consumerId}": {"200", "401", "403", "404", "504"},
    "POST /api/stream-tickets": {"201", "401", "403"},
    "POST /api/producers/send/single": {"201", "400", "401", "403", "413", "429", "503"},
    "POST /api/producers/send/csv": {"201", "400", "401", "403", "413", "429", "503"},
    **{label: {"200", "401", "403", "503"} for label in ANALYTICS_WITHOUT_PARAMETERS},
    **{label: {"200", "400", "401", "403", "503"} for label in ANALYTICS_WITH_PARAMETERS},
    "GET /api/consumers/logs/{logId}": {"200", "400", "401", "403", "404", "503"},
}


def test_the_documents_declare_every_answer_and_errors_as_error_bodies() -> None:
    """No FastAPI 422 (validation errors are 400s); every error answer is ``{"error": "<why>"}``
    (except /api/health's 503, which is the health body with a reason)."""
    error_body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for document in (GATEWAY_DOCUMENT, PRODUCER_DOCUMENT):
        assert "HTTPValidationError" not in document["components"]["schemas"]
        assert document["components"]["schemas"]["ErrorBody"]["required"] == ["error"]
        for path, item in document["paths"].items():
            for method, operation in item.items():
                label = f"{method.upper()} {path}"
                assert set(operation["responses"]) == DOCUMENTED_STATUSES[label]
                for status, response in operation["responses"].items():
                    if int(status) >= 400 and label != "GET /api/health":
                        assert response["content"] == error_body, (label, status)


def topic_parameter(operation: dict[str, Any]) -> dict[str, Any]:
    return next(p for p in operation["parameters"] if p["in"] == "query" and p["name"] == "topic")


TOPIC_NAMES = ["orders", "a", "A.b_c-9", "x" * 249, "x" * 250, "", ".", "..", "...", "has space",
               "name\n", "t\u00f6pic", "a/b", "__consumer_offsets", "_private"]  # fmt: skip


@pytest.mark.parametrize("name", TOPIC_NAMES, ids=repr)
def test_the_documented_topic_names_are_the_ones_the_servers_take(name: str) -> None:
    """The documents' topic schemas, read as JSON Schema reads them (ECMA-262 regular expressions,
    as schemathesis does), agree with the servers' own check."""
    produce = topic_parameter(PRODUCER_DOCUMENT["paths"]["/api/producers/send/single"]["post"])
    assert produce["required"] is True
    producible = is_valid_topic(name) and not name.startswith("__")
    assert jsonschema_rs.validator_for(produce["schema"]).is_valid(name) == producible
    logs = topic_parameter(GATEWAY_DOCUMENT["paths"]["/api/consumers/logs"]["get"])
    assert jsonschema_rs.validator_for(logs["schema"]).is_valid(name) == is_valid_topic(name)


# --- checks -----------------------------------------------------------------------------------


def no_server_error(ctx: schemathesis.CheckContext, response: schemathesis.Response, case: Any) -> Any:
    """``not_a_server_error``, except /api/health's 503 with a reason (the contract's "not ready")."""
    if case.operation.path == "/api/health" and response.status_code == 503:
        body = response.json()
        assert isinstance(body, dict) and body.get("reason"), f"503 without a reason: {response.text[:200]}"
        return True
    return not_a_server_error(ctx, response, case)


CHECKS = [
    no_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    ignored_auth,
]
#: Operations whose schema cannot express every rule of a valid request (see the module docstring).
NOT_ALL_VALID_DATA_IS_ACCEPTED = {"POST /api/producers/send/csv"}


def confine_topic(case: schemathesis.Case) -> None:
    """Send a valid generated topic name to one of this test's topics instead (see the docstring)."""
    topic = (case.query or {}).get("topic")
    if isinstance(topic, str) and is_valid_topic(topic) and not topic.startswith("__"):
        case.query["topic"] = FUZZ_TOPICS[zlib.crc32(topic.encode()) % len(FUZZ_TOPICS)]


def call_and_check(case: schemathesis.Case, base_url: str) -> None:
    confine_topic(case)
    label = case.operation.label
    SENT[label] += 1
    response = case.call(base_url=base_url, timeout=REQUEST_TIMEOUT)  # raises on a hang
    STATUSES[(label, response.status_code)] += 1
    checks = CHECKS
    if label in NOT_ALL_VALID_DATA_IS_ACCEPTED:
        checks = [check for check in CHECKS if check is not positive_data_acceptance]
    case.validate_response(
        response, checks=checks, transport_kwargs={"base_url": base_url, "timeout": REQUEST_TIMEOUT}
    )


FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,  # the same requests on every run: a failure is reproducible, CI is steady
    suppress_health_check=list(HealthCheck),
)


@gateway_schema.exclude(method="POST", path="/api/consumers").parametrize()
@FUZZ_SETTINGS
def test_gateway_api_survives_generated_requests(case: schemathesis.Case, fuzzed: ServedBackend) -> None:
    call_and_check(case, fuzzed.gateway)


@producer_schema.parametrize()
@FUZZ_SETTINGS
def test_producer_api_survives_generated_requests(case: schemathesis.Case, fuzzed: ServedBackend) -> None:
    call_and_check(case, fuzzed.producer)


@gateway_schema.include(method="POST", path="/api/consumers").parametrize()
@settings(FUZZ_SETTINGS, max_examples=START_CONSUMER_EXAMPLES)
def test_starting_consumers_survives_generated_requests(
    case: schemathesis.Case, fuzzed: ServedBackend
) -> None:
    """Each accepted request starts a real consumer (a thread and a group member): a few only."""
    call_and_check(case, fuzzed.gateway)


def test_the_fuzz_sent_thousands_of_requests_and_reached_every_outcome(fuzzed: ServedBackend) -> None:
    """Runs after the two fuzz tests (file order): they reached every operation, in bulk, and the
    producer fuzz got past validation (201s) as well as being refused (400s); the backend is healthy."""
    if not SENT:
        pytest.skip("the fuzz tests did not run in this session")
    report = ", ".join(f"{label}: {count}" for label, count in sorted(SENT.items()))
    print(f"{sum(SENT.values())} generated requests ({report}); statuses: {sorted(STATUSES.items())}")
    assert set(SENT) == GATEWAY_OPERATIONS | PRODUCER_OPERATIONS, report
    assert sum(SENT.values()) >= 2000, report
    for label in PRODUCER_OPERATIONS | {"GET /api/consumers/logs", "DELETE /api/consumers/{consumerId}"}:
        assert SENT[label] >= MAX_EXAMPLES, report
    for label in PRODUCER_OPERATIONS:
        assert STATUSES[(label, 201)] > 0 and STATUSES[(label, 400)] > 0, sorted(STATUSES.items())
    assert not [key for key in STATUSES if key[1] >= 500 and key[0] != "GET /api/health"]

    def healthy() -> bool:  # consumers the fuzz started may still be joining the group
        url = f"{fuzzed.gateway}/api/health"
        return httpx.get(url, headers=fuzzed.auth_headers, timeout=REQUEST_TIMEOUT).status_code == 200

    wait_for(healthy, 60, "the backend to be healthy after the fuzz")
