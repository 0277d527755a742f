"""The gateway's library glue refuses to start on library versions it was not written for."""

from __future__ import annotations

import importlib.metadata
import re
import types
from collections.abc import Callable
from pathlib import Path

import pytest

from backend.config import Settings
from backend.gateway import transport
from backend.gateway.app import create_gateway_app

REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements.txt"


def installed_except(name: str, version: str) -> Callable[[str], str]:
    """importlib.metadata.version, except that ``name`` is at ``version``."""
    real = importlib.metadata.version
    return lambda distribution: version if distribution == name else real(distribution)


def test_the_installed_libraries_are_supported() -> None:
    transport.check_library_versions()


@pytest.mark.parametrize(
    ("name", "version"),
    [
        ("python-socketio", "5.19.0"),
        ("python-engineio", "4.14.0"),
        ("uvicorn", "0.56.0"),
        ("websockets", "18.0"),
    ],
)
def test_a_version_outside_the_range_stops_the_gateway_naming_the_library(
    monkeypatch: pytest.MonkeyPatch, name: str, version: str
) -> None:
    monkeypatch.setattr(importlib.metadata, "version", installed_except(name, version))
    with pytest.raises(transport.UnsupportedLibraryError) as refused:
        transport.check_library_versions()
    message = str(refused.value)
    assert f"{name} {version} is installed" in message
    assert f"{name}{transport.SUPPORTED_VERSIONS[name]}" in message
    with pytest.raises(transport.UnsupportedLibraryError):
        create_gateway_app(types.SimpleNamespace(settings=Settings()))


def test_a_patch_release_inside_the_range_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.metadata, "version", installed_except("python-socketio", "5.18.9"))
    transport.check_library_versions()


def test_requirements_pin_the_ranges_the_glue_supports() -> None:
    pinned = dict(re.findall(r"^([A-Za-z0-9_.-]+)\s*(~=[^\s#]+)", REQUIREMENTS.read_text(), re.MULTILINE))
    assert {name: pinned.get(name) for name in transport.SUPPORTED_VERSIONS} == transport.SUPPORTED_VERSIONS


def test_the_backend_refuses_to_start_before_binding_or_storing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Checked in Backend.start, not in the server thread: the process must not run without HTTP."""
    from backend.service import Backend

    monkeypatch.setattr(importlib.metadata, "version", installed_except("uvicorn", "0.99.0"))
    backend = Backend(Settings(data_dir=tmp_path / "data"))
    with pytest.raises(transport.UnsupportedLibraryError, match="uvicorn 0.99.0"):
        backend.start()
    assert backend.store is None and not (tmp_path / "data").exists()
