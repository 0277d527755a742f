"""The backend of this dashboard process: started once per process, when the process starts.

``streamlit run dashboard_app.py`` serves the ``st.App`` in ``dashboard_app.py``,
whose lifespan calls :func:`start` when the server starts (before any browser
connects, so the gateway serves other clients even while nobody looks at the
dashboard) and :func:`stop` when it stops. Where no lifespan runs (AppTest,
other runners) the first page to ask starts it, under the same lock: one
backend per process either way.

Tests install a source of their own with :func:`install`.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from backend.config import ConfigError, Settings
from backend.service import Backend, keep_startup_objects_out_of_gc
from dashboard.source import LocalSource, RemoteSource, Source

log = logging.getLogger(__name__)

#: What the pages import, loaded while the server starts: the first page a browser opens ran them in
#: its script run (pandas, pyarrow and altair were 2.5 of the first Overview run's 3.2 s).
PAGE_MODULES = (
    "pandas",
    "pyarrow",
    "altair",
    "dashboard.ui",
    "dashboard.charts",
    "dashboard.producing",
    "dashboard.retry",
)

_lock = threading.Lock()
_source: Source | None = None
_error: str | None = None


class StartError(RuntimeError):
    """The backend could not be started; the message is one line for the user."""


def start(settings: Settings | None = None) -> Source:
    """Start (or attach to) the backend unless this process already has one; return it."""
    global _source, _error
    with _lock:
        if _source is not None:
            return _source
        if _error is not None:
            raise StartError(_error)
        try:
            settings = settings or Settings.from_env()
            if settings.backend_url:
                _source = RemoteSource(settings).start()
            else:
                _source = LocalSource(Backend(settings).start())
                keep_startup_objects_out_of_gc()
        except ConfigError as exc:
            _error = str(exc)
        except Exception as exc:  # e.g. the embedded broker would not start
            log.debug("backend start failed", exc_info=True)
            _error = f"{type(exc).__name__}: {exc}"
        if _error is not None:
            raise StartError(_error)
        return _source


def source() -> Source:
    """The process's backend, started on first use where no lifespan started it."""
    return _source if _source is not None else start()


def install(new_source: Source | None) -> None:
    """Use this source (tests); None forgets the current one without stopping it."""
    global _source, _error
    with _lock:
        _source, _error = new_source, None


def stop() -> None:
    """Stop the backend this process started (safe to call twice)."""
    global _source
    with _lock:
        current, _source = _source, None
    if current is not None:
        current.close()


def describe(current: Source) -> str:
    """The one line printed when the backend is ready."""
    settings = current.settings
    if not isinstance(current, LocalSource):
        return f"Dashboard attached to the backend at {settings.backend_url}, reading it over REST"
    host = settings.gateway_host
    return (
        f"Backend ready: gateway http://{host}:{settings.gateway_port} "
        f"producer http://{host}:{settings.producer_port} broker {current.backend.bootstrap} "
        f"({current.mode})"
    )


def preload_pages() -> None:
    """Import what the pages need, so no browser waits for it (it is cached for every session)."""
    for name in PAGE_MODULES:
        importlib.import_module(name)


def _configure_logging() -> None:
    """Our warnings reach the terminal (Streamlit only configures its own logger)."""
    level = os.environ.get("LOG_LEVEL", "WARNING").upper()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s"))
    for name in ("backend", "dashboard"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
            logger.setLevel(level)
            logger.propagate = False
    logging.getLogger("kafka").setLevel(logging.ERROR)


@asynccontextmanager
async def lifespan(_app: Any) -> AsyncIterator[None]:
    """The st.App lifespan: the backend starts with the server and stops with it.

    A bad setting ends start-up with one line naming the variable, as
    ``python -m backend`` does; the process exits with status 2.
    """
    _configure_logging()
    preloading = asyncio.create_task(asyncio.to_thread(preload_pages))  # beside the backend's start
    try:
        current = await asyncio.to_thread(start)
    except StartError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        # Raising here would make uvicorn print a traceback; the contract asks for one line.
        os._exit(2)
    await preloading
    print(describe(current), flush=True)
    try:
        yield
    finally:
        await asyncio.to_thread(stop)
