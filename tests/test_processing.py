"""The decoders: every kind of input gives an outcome, never an exception."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.config import ConfigError
from backend.events import CSV_BATCH, SINGLE_MESSAGE, TOMBSTONE
from backend.processing import (
    DecodedRecord,
    Limits,
    apply_processor,
    decode_record,
    header_map,
    load_deserializer,
    load_processor,
)

LIMIT = 1024


def outcome(value: bytes | None, data_type: str | None = None, limit: int = LIMIT):
    headers = {"data-type": data_type} if data_type else {}
    return decode_record(value, headers, limit)


def test_json_object_is_one_single_message() -> None:
    result = outcome(b'{"name": "Test", "value": 100}')
    assert (result.ok, result.data_type, result.row_count) == (True, SINGLE_MESSAGE, 1)
    assert result.payload == {"name": "Test", "value": 100}


def test_json_array_counts_its_elements() -> None:
    result = outcome(b'[{"a": 1}, {"a": 2}, {"a": 3}]')
    assert (result.ok, result.data_type, result.row_count) == (True, SINGLE_MESSAGE, 3)


def test_integer_beyond_pythons_digit_limit_is_a_readable_error() -> None:
    result = outcome(b'{"v": ' + b"9" * 5000 + b"}", limit=10_000)
    assert not result.ok
    assert result.error is not None and result.error.startswith("invalid JSON") and "digits" in result.error


def test_csv_with_header_counts_data_rows() -> None:
    result = outcome(b"name,value\nA,1\nB,2\n")
    assert (result.ok, result.data_type, result.row_count) == (True, CSV_BATCH, 2)
    assert result.payload == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]


def test_header_decides_the_type() -> None:
    assert outcome(b"a,b\n1,2", CSV_BATCH).data_type == CSV_BATCH
    failed = outcome(b"a,b\n1,2", SINGLE_MESSAGE)
    assert not failed.ok and "invalid JSON" in failed.error


def test_csv_with_quoted_commas_and_newlines() -> None:
    result = outcome(b'name,note\n"Doe, J","line one\nline two"\n', CSV_BATCH)
    assert result.ok and result.payload == [{"name": "Doe, J", "note": "line one\nline two"}]


@pytest.mark.parametrize(
    ("value", "data_type", "expected"),
    [
        (b"", None, "empty message"),
        (b"   \n\t", None, "empty message"),
        (b"\xff\xfe\x00bad", None, "not valid UTF-8"),
        (b'{"name": "Test",', None, "invalid JSON"),
        (b"{'single': 'quotes'}", None, "invalid JSON"),
        (b'{"x": NaN}', None, "invalid JSON"),
        (b"a,b\n1,2,3\n", None, "row 2 has 3 fields"),
        (b"a,b\n", CSV_BATCH, "no data rows"),
        (b"a,,c\n1,2,3", CSV_BATCH, "empty column name"),
        (b"a,a\n1,2", CSV_BATCH, "repeats a column"),
        (b'a,b\n"unterminated,2\n', CSV_BATCH, "malformed CSV"),
        (b"x" * (LIMIT + 1), None, "too large"),
        (b"{}", "XML", "unknown data-type"),
    ],
)
def test_bad_input_fails_with_a_readable_error(
    value: bytes | None, data_type: str | None, expected: str
) -> None:
    result = outcome(value, data_type)
    assert not result.ok
    assert expected in result.error
    assert result.row_count == 0


def test_deep_nesting_fails_cleanly() -> None:
    result = outcome(b"[" * 50_000 + b"]" * 50_000, limit=200_000)
    assert not result.ok and "nested too deeply" in result.error


def test_hostile_text_is_kept_as_data() -> None:
    result = outcome(
        json.dumps({"html": "<script>alert(1)</script>", "sql": "'; DROP TABLE logs; --"}).encode()
    )
    assert result.ok and result.payload["html"] == "<script>alert(1)</script>"


def test_headers_are_decoded_leniently() -> None:
    assert header_map([("Data-Type", b"CSV_BATCH"), ("x", None), ("y", b"\xff")]) == {
        "data-type": "CSV_BATCH",
        "x": "",
        "y": "\ufffd",
    }


def _boom(record: DecodedRecord) -> None:
    raise RuntimeError(f"cannot handle {record.topic}")


def _double(record: DecodedRecord) -> dict:
    return {"double": record.payload["value"] * 2}


def test_processor_exception_becomes_the_error() -> None:
    result = apply_processor(outcome(b'{"value": 1}'), _boom, "orders", 0, 5, None, {})
    assert not result.ok and result.error == "RuntimeError: cannot handle orders"


def test_processor_result_is_kept() -> None:
    result = apply_processor(outcome(b'{"value": 21}'), _double, "orders", 0, 5, b"k", {})
    assert result.ok and result.result == {"double": 42}


def test_processor_is_loaded_by_name() -> None:
    loaded = load_processor("tests.test_processing:_double")
    assert loaded is not None and loaded.__name__ == "_double"
    assert load_processor(None) is None


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048), st.sampled_from([None, SINGLE_MESSAGE, CSV_BATCH, "junk"]))
def test_any_bytes_give_an_outcome(value: bytes, data_type: str | None) -> None:
    result = outcome(value, data_type, limit=1500)
    assert result.ok or result.error
    assert result.row_count >= 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.text(max_size=8), min_size=2, max_size=2), min_size=1, max_size=20))
def test_any_text_table_gives_an_outcome(rows: list[list[str]]) -> None:
    text = "\n".join(",".join(row) for row in rows)
    result = outcome(text.encode(), CSV_BATCH)
    assert result.ok or result.error


# --- tombstones, binary values and the DESERIALIZER ----------------------------------------------


def test_a_null_value_is_a_processed_tombstone_the_processor_never_sees() -> None:
    result = apply_processor(outcome(None), _boom, "orders", 0, 5, b"k", {})
    assert (result.ok, result.data_type, result.row_count, result.payload) == (True, TOMBSTONE, 0, None)


def test_an_empty_value_is_not_a_tombstone() -> None:
    result = outcome(b"")
    assert not result.ok and result.data_type == SINGLE_MESSAGE and "empty message" in result.error


def test_a_tombstone_type_cannot_be_declared() -> None:
    result = outcome(b"{}", TOMBSTONE)
    assert not result.ok and "unknown data-type" in result.error


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"\x00\x00\x00\x00\x07\x06abc", "binary value: byte 0 is NUL"),
        (b"a,b\n1,\x002\n", "binary value: byte 6 is NUL"),  # Python's csv module would take it
        (b"\xc3\x28", "not valid UTF-8 (byte 0)"),
    ],
)
def test_binary_values_fail_with_a_hint_to_set_a_deserializer(value: bytes, expected: str) -> None:
    result = outcome(value)
    assert not result.ok and expected in result.error and "set DESERIALIZER" in result.error


def _hexer(value: bytes, headers: list) -> dict:
    """A DESERIALIZER: the bytes as hex, with the headers it was given (in order)."""
    if value.startswith(b"!"):
        raise ValueError("bad magic byte 0x21")
    return {"hex": value.hex(), "headers": [[name, raw.decode() if raw else raw] for name, raw in headers]}


def _odd(value: bytes, headers: list) -> object:
    import datetime
    import decimal
    import uuid

    if value.endswith(b"nan"):
        return {"x": float("nan")}
    return {
        "bytes": b"\x00\x01",
        "when": datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC),
        "price": decimal.Decimal("12.3456789012345678901"),
        "id": uuid.UUID(int=1),
    }


def deserialized(value: bytes, deserializer, headers=(), data_type=None, limit=LIMIT):
    declared = {"data-type": data_type} if data_type else {}
    return decode_record(value, declared, limit, deserializer, headers)


def test_the_deserializer_decodes_binary_values_with_the_headers_in_order() -> None:
    headers = [("trace", b"a"), ("trace", b"b"), ("empty", None)]
    result = deserialized(b"\x00\x01\xff", _hexer, headers)
    assert (result.ok, result.data_type, result.row_count) == (True, SINGLE_MESSAGE, 1)
    assert result.payload == {"hex": "0001ff", "headers": [["trace", "a"], ["trace", "b"], ["empty", None]]}
    assert json.loads(result.payload_json) == result.payload


def test_the_deserializer_gets_text_that_is_neither_json_nor_csv_but_not_json_or_csv() -> None:
    assert deserialized(b"plain words", _hexer).payload["hex"] == b"plain words".hex()
    assert deserialized(b'{"a": 1}', _hexer).payload == {"a": 1}
    assert deserialized(b"a,b\n1,2", _hexer).data_type == CSV_BATCH
    broken = deserialized(b'{"a": ', _hexer)
    assert not broken.ok and "invalid JSON" in broken.error


def test_a_declared_data_type_is_never_given_to_the_deserializer() -> None:
    result = deserialized(b"\x00\x01", _hexer, data_type=SINGLE_MESSAGE)
    assert not result.ok and "binary value" in result.error and "DESERIALIZER" not in result.error


def test_deserializer_errors_are_the_records_readable_error() -> None:
    result = deserialized(b"!\x00", _hexer)
    assert not result.ok and result.error == "DESERIALIZER failed: ValueError: bad magic byte 0x21"
    assert result.row_count == 0


def test_what_json_lacks_becomes_text_and_nan_is_refused() -> None:
    result = deserialized(b"\x00", _odd)
    assert result.ok, result.error
    assert result.payload == {
        "bytes": "AAE=",
        "when": "2024-05-01T12:30:00+00:00",
        "price": "12.3456789012345678901",
        "id": "00000000-0000-0000-0000-000000000001",
    }
    nan = deserialized(b"\x00nan", _odd)
    assert not nan.ok and nan.error.startswith("DESERIALIZER returned a value that is not JSON")


def test_a_deserialized_value_is_held_to_the_decoded_limits() -> None:
    def huge(value: bytes, headers: list) -> list:
        return ["x" * 100] * 1000

    result = decode_record(b"\x00", {}, Limits(max_decoded_chars=10_000), huge)
    assert not result.ok and "too large once decoded" in result.error


def test_plugins_that_cannot_be_loaded_name_their_variable() -> None:
    assert load_deserializer("tests.test_processing:_hexer").__name__ == "_hexer"
    with pytest.raises(ConfigError, match=r"^DESERIALIZER='no_such_module:f' cannot be loaded: "):
        load_deserializer("no_such_module:f")
    with pytest.raises(ConfigError, match=r"^PROCESSOR='tests.test_processing:LIMIT' is not callable"):
        load_processor("tests.test_processing:LIMIT")
