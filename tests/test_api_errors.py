"""Errors nobody planned for still answer JSON {"error"}: a store that cannot be read, a bug."""

from __future__ import annotations

import sqlite3
import types
from pathlib import Path

from fastapi.testclient import TestClient

from backend.config import Settings
from backend.gateway.app import create_gateway_app
from backend.store import StoreUnavailable


class BrokenStore:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def logs(self, *args: object, **kwargs: object) -> list[object]:
        raise self.error


def client_for(error: Exception, tmp_path: Path) -> TestClient:
    backend = types.SimpleNamespace(settings=Settings(data_dir=tmp_path), store=BrokenStore(error))
    return TestClient(create_gateway_app(backend), base_url="http://127.0.0.1", raise_server_exceptions=False)


def test_a_corrupted_page_read_after_start_is_a_json_503_naming_data_dir(tmp_path: Path) -> None:
    answer = client_for(sqlite3.DatabaseError("database disk image is malformed"), tmp_path).get(
        "/api/consumers/logs?limit=1000"
    )
    assert answer.status_code == 503
    assert answer.headers["content-type"].startswith("application/json")
    assert "malformed" in answer.json()["error"] and str(tmp_path) in answer.json()["error"]


def test_an_unavailable_store_is_a_json_503(tmp_path: Path) -> None:
    answer = client_for(StoreUnavailable("the store is closed"), tmp_path).get("/api/consumers/logs")
    assert answer.status_code == 503 and "closed" in answer.json()["error"]


def test_a_bug_is_a_json_500_without_details(tmp_path: Path) -> None:
    answer = client_for(RuntimeError("secret internals"), tmp_path).get("/api/consumers/logs")
    assert answer.status_code == 500
    assert answer.json() == {"error": "internal error: RuntimeError"}
