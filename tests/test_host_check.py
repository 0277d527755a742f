"""The Host header against ALLOWED_HOSTS on both ports: no DNS rebinding (issue 15, item 8).

A page on ``attacker.example`` re-pointed to 127.0.0.1 reaches the loopback service from a victim's
browser with the page's own origin; its requests carry ``Host: attacker.example:<port>``. Every
surface refuses them with 400 ``{"error": "host not allowed: ..."}`` (a WebSocket handshake gets
the 400 as its HTTP answer) before anything runs; the default names and explicit lists work.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from kafka.admin import KafkaAdminClient
from websockets.exceptions import InvalidStatus

from backend import events
from backend.config import ConfigError, Settings
from backend.gateway.http_policy import HostPolicy
from tests.support import ServedBackend, backend_settings, ensure_topic, serve_backend, unique

ATTACKER = "attacker.example"
TIMEOUT = 10.0


@pytest.fixture(scope="module")
def served(kafka: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedBackend]:
    """Default ALLOWED_HOSTS (loopback names and GATEWAY_HOST), no token."""
    topic = unique("hosts")
    ensure_topic(kafka.bootstrap, topic)
    settings = backend_settings(
        tmp_path_factory.mktemp("hosts"), kafka.bootstrap, topics=(topic,), consumer_count=0
    )
    running = serve_backend(settings)
    yield running
    running.backend.stop()


def assert_host_refused(response: httpx.Response, host: str) -> None:
    assert response.status_code == 400, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"].startswith(f"host not allowed: '{host}"), response.text


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


# --- HTTP: REST, Socket.IO polling, docs, producer --------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/api/consumers/logs",
        "/api/consumers",
        "/api/health",
        "/docs",
        "/openapi.json",
        "/socket.io/?EIO=4&transport=polling",
    ],
)
def test_a_foreign_host_is_refused_on_every_gateway_path(served: ServedBackend, path: str) -> None:
    host = f"{ATTACKER}:{served.settings.gateway_port}"
    assert_host_refused(httpx.get(f"{served.gateway}{path}", headers={"Host": host}, timeout=TIMEOUT), host)


def test_a_foreign_host_cannot_start_consumers(served: ServedBackend) -> None:
    host = f"{ATTACKER}:{served.settings.gateway_port}"
    response = httpx.post(f"{served.gateway}/api/consumers", headers={"Host": host}, timeout=TIMEOUT)
    assert_host_refused(response, host)
    assert httpx.get(f"{served.gateway}/api/consumers", timeout=TIMEOUT).json() == []


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "[::1]", "LocalHost"])
@pytest.mark.parametrize("with_port", [True, False])
def test_the_default_names_are_answered_with_or_without_a_port(
    served: ServedBackend, name: str, with_port: bool
) -> None:
    host = f"{name}:{served.settings.gateway_port}" if with_port else name
    response = httpx.get(
        f"{served.gateway}/api/consumers/statistics", headers={"Host": host}, timeout=TIMEOUT
    )
    assert response.status_code == 200, response.text
    polling = httpx.get(
        f"{served.gateway}/socket.io/", params={"EIO": "4", "transport": "polling"}, headers={"Host": host}
    )
    assert polling.status_code == 200 and polling.text.startswith("0{"), polling.text


@pytest.mark.parametrize("host", ["", "127.0.0.1:port", "[::1", "localhost:3001:3001", "localhost.:3001"])
def test_malformed_host_headers_are_refused(served: ServedBackend, host: str) -> None:
    response = httpx.get(f"{served.gateway}/api/health", headers={"Host": host}, timeout=TIMEOUT)
    assert response.status_code == 400 and response.json()["error"].startswith("host not allowed")


def topics(bootstrap: str) -> set[str]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


@pytest.mark.parametrize("kind", ["single", "csv"])
def test_the_producer_api_refuses_a_foreign_host_and_produces_nothing(
    served: ServedBackend, kind: str
) -> None:
    topic = unique("rebound")
    host = f"{ATTACKER}:{served.settings.producer_port}"
    url = f"{served.producer}/api/producers/send/{kind}"
    body: dict[str, Any] = {"json": {"x": 1}} if kind == "single" else {"content": b"a,b\n1,2\n"}
    content_type = {} if kind == "single" else {"Content-Type": "text/csv"}
    refused = httpx.post(url, params={"topic": topic}, headers={"Host": host, **content_type}, **body)
    assert_host_refused(refused, host)
    assert httpx.get(f"{served.producer}/docs", headers={"Host": host}).status_code == 400
    assert topic not in topics(served.bootstrap)  # the topic was not even created
    allowed = httpx.post(url, params={"topic": topic}, headers={"Host": "localhost", **content_type}, **body)
    assert allowed.status_code == 201, allowed.text


# --- WebSocket handshakes: /ws and Socket.IO's websocket transport ----------------------------------


async def handshake_status(url: str, port: int, host_header: str) -> int:
    """The HTTP status of a WebSocket handshake to 127.0.0.1:``port`` sent with ``Host: host_header``."""
    try:
        async with websockets.connect(
            url, host="127.0.0.1", port=port, proxy=None, open_timeout=TIMEOUT
        ) as ws:
            await ws.close()
            return 101
    except InvalidStatus as refused:
        body = json.loads(refused.response.body)
        assert body["error"].startswith("host not allowed"), body
        return refused.response.status_code


@pytest.mark.parametrize("path", ["/ws", "/socket.io/?EIO=4&transport=websocket"])
def test_websocket_handshakes_from_a_foreign_host_are_refused(served: ServedBackend, path: str) -> None:
    port = served.settings.gateway_port
    assert asyncio.run(handshake_status(f"ws://{ATTACKER}:{port}{path}", port, ATTACKER)) == 400
    assert asyncio.run(handshake_status(f"ws://localhost:{port}{path}", port, "localhost")) == 101


def test_ws_from_an_allowed_host_streams(served: ServedBackend) -> None:
    async def hello() -> str:
        async with websockets.connect(f"ws://localhost:{served.settings.gateway_port}/ws", proxy=None) as ws:
            return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["event"]

    assert asyncio.run(hello()) == events.CONNECTION_SUCCESS


# --- the policy and its setting (no server) --------------------------------------------------------


def test_the_default_allowlist_is_the_loopback_names_and_gateway_host() -> None:
    assert Settings().host_allowlist == ("localhost", "127.0.0.1", "[::1]", "127.0.0.1")
    assert Settings(gateway_host="dash.internal").host_allowlist[-1] == "dash.internal"
    assert Settings(gateway_host="::1").host_allowlist[-1] == "[::1]"
    policy = HostPolicy(Settings(gateway_host="10.0.0.5").host_allowlist)
    assert policy.allows("10.0.0.5:3001") and policy.allows("[::1]:3000") and policy.allows("LOCALHOST")
    assert not policy.allows(f"{ATTACKER}:3001") and not policy.allows(None) and not policy.allows("::1")


def test_allowed_hosts_replaces_the_default_and_star_allows_any() -> None:
    listed = HostPolicy(Settings.from_env({"ALLOWED_HOSTS": "Dash.Example, [fd00::1]"}).host_allowlist)
    assert (
        listed.allows("dash.example:443")
        and listed.allows("[fd00::1]:3001")
        and listed.allows("dash.example")
    )
    assert not listed.allows("localhost") and not listed.allows("127.0.0.1:3001")
    anything = HostPolicy(Settings.from_env({"ALLOWED_HOSTS": "*"}).host_allowlist)
    assert anything.allows(f"{ATTACKER}:3001") and anything.allows(None)


@pytest.mark.parametrize("value", ["http://dash.example", "dash.example:3001", "::1", "a b", "dash/x", "-"])
def test_a_bad_allowed_hosts_value_is_one_line_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError) as bad:
        Settings.from_env({"ALLOWED_HOSTS": f"localhost,{value}"})
    message = str(bad.value)
    assert message.startswith("ALLOWED_HOSTS:") and "\n" not in message and repr(value) in message
