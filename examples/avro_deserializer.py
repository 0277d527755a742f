"""A DESERIALIZER for Avro in the Confluent wire format, with fastavro.

Records written by Confluent's Avro serializers (Kafka Connect, ksqlDB, most JVM producers) are:
a magic byte 0, the schema id as 4 bytes big-endian, then the Avro binary encoding of one datum.
The dashboard cannot read them as JSON or CSV; with this deserializer it shows them decoded::

    pip install fastavro      # not a dependency of the dashboard itself
    DESERIALIZER=examples.avro_deserializer:deserialize \\
    SCHEMA_REGISTRY_URL=http://localhost:8081 streamlit run dashboard_app.py

Where the schemas come from (read from the environment when the first record arrives):

- ``AVRO_SCHEMA_DIR``: a directory of ``<id>.avsc`` files (``42.avsc`` is schema id 42), for
  clusters without a registry or for tests;
- ``SCHEMA_REGISTRY_URL``: a Confluent-compatible schema registry, asked ``GET /schemas/ids/{id}``
  once per id (schemas under an id never change, so they are cached for the process's life).

Every problem raises with a readable message (not this format, unknown schema id, registry
unreachable, bytes left over); the dashboard shows it as the record's error and keeps the bytes.
Avro's bytes, dates and decimals become base64, ISO-8601 and decimal text on the way to JSON.
"""

from __future__ import annotations

import io
import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fastavro

MAGIC = 0
HEADER_BYTES = 5
REGISTRY_TIMEOUT_S = 5.0


class AvroFormatError(ValueError):
    """The value is not a Confluent Avro record, or its schema cannot be had."""


class AvroDeserializer:
    """Decodes Confluent-framed Avro; schemas from a directory or a registry, cached by id."""

    def __init__(self, schema_dir: str | Path | None = None, registry_url: str | None = None) -> None:
        if not schema_dir and not registry_url:
            raise AvroFormatError("set AVRO_SCHEMA_DIR or SCHEMA_REGISTRY_URL to say where Avro schemas are")
        self.schema_dir = Path(schema_dir) if schema_dir else None
        self.registry_url = registry_url.rstrip("/") if registry_url else None
        self._schemas: dict[int, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> AvroDeserializer:
        return cls(os.environ.get("AVRO_SCHEMA_DIR") or None, os.environ.get("SCHEMA_REGISTRY_URL") or None)

    def __call__(self, value: bytes, headers: Sequence[tuple[str, bytes | None]] = ()) -> Any:
        if len(value) < HEADER_BYTES or value[0] != MAGIC:
            raise AvroFormatError(
                f"not the Confluent Avro wire format: starts with {value[:HEADER_BYTES].hex() or 'nothing'}, "
                "expected magic byte 00 and a 4-byte schema id"
            )
        schema_id = int.from_bytes(value[1:HEADER_BYTES], "big")
        body = io.BytesIO(value[HEADER_BYTES:])
        schema = self.schema(schema_id)
        try:
            datum = fastavro.schemaless_reader(body, schema)
        except Exception as exc:  # EOFError, IndexError (a union branch), UnicodeDecodeError...: bad data
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise AvroFormatError(f"Avro data does not match schema {schema_id}: {reason}") from None
        left = len(value) - HEADER_BYTES - body.tell()
        if left:
            raise AvroFormatError(
                f"{left} bytes left after the Avro datum: not written with schema {schema_id}"
            )
        return datum

    def schema(self, schema_id: int) -> Any:
        """The parsed schema of this id, loaded once (a failed load is tried again next time)."""
        with self._lock:
            cached = self._schemas.get(schema_id)
        if cached is not None:
            return cached
        parsed = fastavro.parse_schema(json.loads(self._schema_text(schema_id)))
        with self._lock:
            self._schemas[schema_id] = parsed
        return parsed

    def _schema_text(self, schema_id: int) -> str:
        if self.schema_dir is not None:
            path = self.schema_dir / f"{schema_id}.avsc"
            if path.is_file():
                return path.read_text(encoding="utf-8")
            if self.registry_url is None:
                raise AvroFormatError(f"unknown Avro schema id {schema_id}: no {path}")
        return self._from_registry(schema_id)

    def _from_registry(self, schema_id: int) -> str:
        url = f"{self.registry_url}/schemas/ids/{schema_id}"
        try:
            with urllib.request.urlopen(url, timeout=REGISTRY_TIMEOUT_S) as answer:  # noqa: S310 - the user's URL
                document = json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            raise AvroFormatError(f"schema registry: GET {url} answered {exc.code}") from None
        except (OSError, ValueError) as exc:
            raise AvroFormatError(f"schema registry: GET {url} failed: {exc}") from None
        kind = document.get("schemaType", "AVRO")
        if kind != "AVRO" or "schema" not in document:
            raise AvroFormatError(f"schema registry: schema {schema_id} is {kind}, not Avro")
        return document["schema"]


_default: AvroDeserializer | None = None
_default_lock = threading.Lock()


def deserialize(value: bytes, headers: Sequence[tuple[str, bytes | None]]) -> Any:
    """``DESERIALIZER=examples.avro_deserializer:deserialize``: schemas as the environment says."""
    global _default
    with _default_lock:
        if _default is None:
            _default = AvroDeserializer.from_env()
    return _default(value, headers)
