"""The decoders: every kind of input gives an outcome, never an exception."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.events import CSV_BATCH, SINGLE_MESSAGE
from backend.processing import DecodedRecord, apply_processor, decode_record, header_map, load_processor

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
        (None, None, "empty message"),
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
