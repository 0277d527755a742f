"""AUTH_TOKEN on every surface: the API documents, and stream tickets for browsers (issue 15, item 7).

With a token set, ``/docs``, ``/redoc`` and ``/openapi.json`` need it on both ports. A browser
never gets the token: it opens ``/ws`` or Socket.IO with a short-lived ticket (``POST
/api/stream-tickets``, or ``STREAM_TICKETS.mint()`` in-process), which opens a stream and does
nothing else.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from kafka.admin import KafkaAdminClient
from websockets.exceptions import ConnectionClosed

from backend import events
from backend.gateway.http_policy import STREAM_TICKETS, StreamTickets
from tests.support import ServedBackend, backend_settings, ensure_topic, serve_backend, unique

TOKEN = "surface-token"
TIMEOUT = 10.0
DOCS = ["/docs", "/redoc", "/openapi.json"]


@pytest.fixture(scope="module")
def secured(kafka: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedBackend]:
    topic = unique("surfaces")
    ensure_topic(kafka.bootstrap, topic)
    settings = backend_settings(
        tmp_path_factory.mktemp("surfaces"),
        kafka.bootstrap,
        topics=(topic,),
        consumer_count=0,
        auth_token=TOKEN,
    )
    running = serve_backend(settings)
    yield running
    running.backend.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def mint(secured: ServedBackend) -> dict[str, str]:
    response = httpx.post(f"{secured.gateway}/api/stream-tickets", headers=bearer(TOKEN), timeout=TIMEOUT)
    assert response.status_code == 201, response.text
    return response.json()


def expired_ticket() -> str:
    """Minted by this process's key 2 minutes ago: authentic, but its 60 s are over."""
    return STREAM_TICKETS.mint(now=time.time() - 120).ticket


def forged_ticket() -> str:
    """A ticket with a future expiry that this process did not sign."""
    ticket = STREAM_TICKETS.mint().ticket
    expiry, _, signature = ticket.partition(".")
    return f"{int(expiry) + 3_600_000}.{signature}"


def other_view_ticket() -> str:
    """Minted by another process (another view): another key."""
    return StreamTickets().mint().ticket


# --- the API documents --------------------------------------------------------------------------


@pytest.mark.parametrize("port", ["gateway", "producer"])
@pytest.mark.parametrize("path", DOCS)
def test_the_api_documents_need_the_token(secured: ServedBackend, port: str, path: str) -> None:
    url = f"{getattr(secured, port)}{path}"
    for headers in (
        {},
        bearer("wrong"),
        bearer(mint(secured)["ticket"]),
        {"Authorization": f"Basic {TOKEN}"},
    ):
        response = httpx.get(url, headers=headers, timeout=TIMEOUT)
        assert response.status_code == 401, (headers, response.status_code)
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"]
    allowed = httpx.get(url, headers=bearer(TOKEN), timeout=TIMEOUT)
    assert allowed.status_code == 200
    if path == "/openapi.json":
        assert allowed.json()["info"]["title"]


# --- minting tickets ----------------------------------------------------------------------------


def test_tickets_are_minted_with_the_token_only(secured: ServedBackend) -> None:
    url = f"{secured.gateway}/api/stream-tickets"
    for headers in ({}, bearer("wrong"), bearer(mint(secured)["ticket"])):
        assert httpx.post(url, headers=headers, timeout=TIMEOUT).status_code == 401, headers
    body = mint(secured)
    assert set(body) == {"ticket", "expiresAt"}
    expires_ms = events.ms_from_iso(body["expiresAt"])
    assert expires_ms is not None and 50_000 < expires_ms - time.time() * 1000 <= 60_000
    assert TOKEN not in json.dumps(body)


def test_the_operation_is_documented(secured: ServedBackend) -> None:
    document = httpx.get(f"{secured.gateway}/openapi.json", headers=bearer(TOKEN), timeout=TIMEOUT).json()
    operation = document["paths"]["/api/stream-tickets"]["post"]
    assert set(operation["responses"]) == {"201", "401", "403"}


# --- a ticket opens a stream ----------------------------------------------------------------------


async def ws_outcome(secured: ServedBackend, query: str) -> str:
    """The first /ws event, or ``closed <code> <reason>``."""
    async with websockets.connect(f"{secured.ws}?{query}", proxy=None, open_timeout=TIMEOUT) as ws:
        try:
            return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["event"]
        except ConnectionClosed as closed:
            assert closed.rcvd is not None
            return f"closed {closed.rcvd.code} {closed.rcvd.reason}"


def test_a_ticket_opens_ws(secured: ServedBackend) -> None:
    assert asyncio.run(ws_outcome(secured, f"ticket={mint(secured)['ticket']}")) == events.CONNECTION_SUCCESS
    in_process = STREAM_TICKETS.mint().ticket  # what a dashboard in the same process hands its browser
    assert asyncio.run(ws_outcome(secured, f"ticket={in_process}")) == events.CONNECTION_SUCCESS


@pytest.mark.parametrize("ticket", [expired_ticket, forged_ticket, other_view_ticket, lambda: "garbage"])
def test_an_expired_or_forged_ticket_is_refused_on_ws(secured: ServedBackend, ticket: Any) -> None:
    outcome = asyncio.run(ws_outcome(secured, f"ticket={ticket()}"))
    assert outcome.startswith("closed 1008 unauthorized: ticket"), outcome


def test_a_stream_opened_with_a_ticket_stays_open_after_it_expires(secured: ServedBackend) -> None:
    ticket = STREAM_TICKETS.mint(now=time.time() - 59).ticket  # one second left

    async def scenario() -> None:
        async with websockets.connect(f"{secured.ws}?ticket={ticket}", proxy=None) as ws:
            assert (
                json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["event"] == events.CONNECTION_SUCCESS
            )
            await asyncio.sleep(1.5)
            assert not STREAM_TICKETS.valid(ticket)
            await asyncio.wait_for(await ws.ping(), TIMEOUT)  # still served

    asyncio.run(scenario())


async def socketio_connect(secured: ServedBackend, auth: dict[str, Any]) -> str:
    """Socket.IO's answer to a CONNECT with ``auth``: the packet, "40{...}" or "44{...}"."""
    async with websockets.connect(secured.engineio, proxy=None, open_timeout=TIMEOUT) as ws:
        opened = await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert isinstance(opened, str) and opened.startswith("0{"), opened
        await ws.send("40" + json.dumps(auth))
        return str(await asyncio.wait_for(ws.recv(), TIMEOUT))


def test_a_ticket_opens_socketio_and_a_bad_one_is_a_connect_error(secured: ServedBackend) -> None:
    assert asyncio.run(socketio_connect(secured, {"ticket": mint(secured)["ticket"]})).startswith("40{")
    for ticket in (expired_ticket(), forged_ticket(), other_view_ticket(), 42):
        answer = asyncio.run(socketio_connect(secured, {"ticket": ticket}))
        assert answer.startswith("44{") and "unauthorized: ticket" in answer, answer
    missing = asyncio.run(socketio_connect(secured, {}))
    assert missing.startswith("44{") and "ticket" in missing, missing


# --- a ticket grants nothing else ---------------------------------------------------------------


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/api/health"),
        ("GET", "/api/consumers/logs"),
        ("GET", "/api/consumers"),
        ("POST", "/api/consumers"),
        ("DELETE", "/api/consumers/consumer-1"),
    ],
)
def test_a_ticket_is_refused_on_rest(secured: ServedBackend, method: str, path: str) -> None:
    ticket = mint(secured)["ticket"]
    for headers in (bearer(ticket), {}):
        response = httpx.request(method, f"{secured.gateway}{path}", headers=headers, timeout=TIMEOUT)
        assert response.status_code == 401, (method, path, response.text)
    query = httpx.get(f"{secured.gateway}{path}", params={"ticket": ticket}, timeout=TIMEOUT)
    assert query.status_code in (401, 405)


def test_a_ticket_is_refused_by_the_producer_api_and_nothing_is_produced(secured: ServedBackend) -> None:
    topic = unique("ticketed")
    ticket = mint(secured)["ticket"]
    for headers, params in ((bearer(ticket), {"topic": topic}), ({}, {"topic": topic, "ticket": ticket})):
        response = httpx.post(
            f"{secured.producer}/api/producers/send/single",
            params=params,
            headers=headers,
            json={"x": 1},
            timeout=TIMEOUT,
        )
        assert response.status_code == 401, response.text
    admin = KafkaAdminClient(bootstrap_servers=secured.bootstrap)
    try:
        assert topic not in admin.list_topics()
    finally:
        admin.close()
