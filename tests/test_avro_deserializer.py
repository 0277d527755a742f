"""examples/avro_deserializer.py on real Avro bytes written by fastavro, schemas from files or a registry.

The registry is a real HTTP server on 127.0.0.1 answering ``GET /schemas/ids/{id}`` as Confluent's
does, counting the requests (each schema id is asked once).
"""

from __future__ import annotations

import datetime
import decimal
import http.server
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import pytest

from backend.events import FAILED, PROCESSED, SINGLE_MESSAGE
from backend.pipeline import Pipeline
from backend.processing import Limits, decode_record
from backend.store import Store
from examples.avro_deserializer import AvroDeserializer, AvroFormatError
from tests.test_record_meta import detail, record

ORDER = {
    "type": "record",
    "name": "Order",
    "namespace": "shop",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "customer", "type": "string"},
        {"name": "note", "type": ["null", "string"], "default": None},
        {"name": "placed", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "total", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
        {"name": "blob", "type": "bytes"},
    ],
}
PLACED = datetime.datetime(2024, 5, 1, 12, 30, 15, 123000, tzinfo=datetime.UTC)
DATUM = {
    "id": 42,
    "customer": "Zoë",
    "note": None,
    "placed": PLACED,
    "total": decimal.Decimal("199.95"),
    "blob": b"\x00\xff",
}


def confluent(schema_id: int, datum: dict[str, Any], schema: dict[str, Any] = ORDER) -> bytes:
    """What Confluent's KafkaAvroSerializer writes: magic 0, the id (4 bytes, big-endian), the datum."""
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(schema), datum)
    return b"\x00" + schema_id.to_bytes(4, "big") + body.getvalue()


@pytest.fixture
def schema_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "schemas"
    folder.mkdir()
    (folder / "7.avsc").write_text(json.dumps(ORDER))
    return folder


class Registry(http.server.BaseHTTPRequestHandler):
    schemas: dict[int, dict[str, Any]] = {7: ORDER}
    asked: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        Registry.asked.append(self.path)
        schema_id = self.path.rsplit("/", 1)[-1]
        schema = self.schemas.get(int(schema_id)) if schema_id.isdigit() else None
        status, body = (200, {"schema": json.dumps(schema)}) if schema else (404, {"error_code": 40403})
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def registry() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    Registry.asked = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_avro_from_a_schema_file_decodes_to_the_datum(schema_dir: Path) -> None:
    assert AvroDeserializer(schema_dir=schema_dir)(confluent(7, DATUM)) == DATUM


def test_avro_through_the_pipeline_becomes_a_json_payload(schema_dir: Path, tmp_path: Path) -> None:
    decode = AvroDeserializer(schema_dir=schema_dir)
    store = Store(tmp_path / "data")
    try:
        Pipeline(
            cluster_id="c",
            sink=store,
            publish=lambda items: None,
            processor=None,
            limits=Limits(),
            counts_changed=lambda: None,
            deserializer=decode,
        ).handle("consumer-1", [record(0, confluent(7, DATUM)), record(1, confluent(8, DATUM))])
        good, unknown = detail(store, 0), detail(store, 1)
    finally:
        store.close()
    assert (good["status"], good["dataType"], good["rowCount"]) == (PROCESSED, SINGLE_MESSAGE, 1)
    assert good["payload"] == {
        "id": 42,
        "customer": "Zoë",
        "note": None,
        "placed": "2024-05-01T12:30:15.123000+00:00",
        "total": "199.95",
        "blob": "AP8=",
    }
    assert unknown["status"] == FAILED and unknown["valueBase64"]
    assert unknown["error"].startswith("DESERIALIZER failed: AvroFormatError: unknown Avro schema id 8: no ")


def test_avro_from_a_registry_asks_once_per_schema_id(registry: str) -> None:
    decode = AvroDeserializer(registry_url=registry + "/")
    assert decode(confluent(7, DATUM)) == DATUM
    assert decode(confluent(7, {**DATUM, "id": 43}))["id"] == 43
    with pytest.raises(AvroFormatError, match=r"GET .*/schemas/ids/9 answered 404"):
        decode(confluent(9, DATUM))
    assert Registry.asked == ["/schemas/ids/7", "/schemas/ids/9"]


def test_an_unreachable_registry_is_a_readable_error() -> None:
    decode = AvroDeserializer(registry_url="http://127.0.0.1:9")  # discard port: nobody listens
    with pytest.raises(
        AvroFormatError, match=r"^schema registry: GET http://127.0.0.1:9/schemas/ids/7 failed"
    ):
        decode(confluent(7, DATUM))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"", r"starts with nothing"),
        (b'{"json": 1}', r"^not the Confluent Avro wire format: starts with 7b226a736f"),
        (b"\x00\x00\x00", r"starts with 000000"),
        (b"\x00\x00\x00\x00\x07\x54", r"does not match schema 7: EOFError"),  # cut short
    ],
)
def test_what_is_not_confluent_avro_fails_readably(schema_dir: Path, value: bytes, expected: str) -> None:
    with pytest.raises(AvroFormatError, match=expected):
        AvroDeserializer(schema_dir=schema_dir)(value)


def test_bytes_left_after_the_datum_mean_the_wrong_schema(schema_dir: Path) -> None:
    with pytest.raises(AvroFormatError, match=r"^3 bytes left after the Avro datum"):
        AvroDeserializer(schema_dir=schema_dir)(confluent(7, DATUM) + b"xyz")


def test_no_schema_source_says_which_variables_to_set() -> None:
    with pytest.raises(AvroFormatError, match="AVRO_SCHEMA_DIR or SCHEMA_REGISTRY_URL"):
        AvroDeserializer()


def test_decode_record_hands_binary_values_to_it(schema_dir: Path) -> None:
    outcome = decode_record(confluent(7, DATUM), {}, Limits(), AvroDeserializer(schema_dir=schema_dir))
    assert outcome.ok and outcome.payload["customer"] == "Zoë"
