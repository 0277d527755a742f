"""What one record may become: the issue's poison CSVs fail fast, readably and in bounded memory."""

from __future__ import annotations

import json
import tracemalloc
from typing import Any

import pytest

from backend.config import ConfigError, Settings
from backend.events import CSV_BATCH, SINGLE_MESSAGE
from backend.processing import (
    DecodedRecord,
    Limits,
    apply_processor,
    check_producible,
    decode_record,
    json_depth,
    limit_result,
)

MIB = 1_048_576


def poison_csv(columns: int, name_chars: int, rows: int) -> bytes:
    """A header of long column names, then rows of empty fields: each row's JSON repeats every name."""
    header = ",".join(f"c{i:04d}".ljust(name_chars, "x") for i in range(columns))
    return (header + "\n" + ("," * (columns - 1) + "\n") * rows).encode()


def decoded_in_bounded_memory(value: bytes, data_type: str | None) -> tuple[str | None, int]:
    """The decoding error and the peak memory decoding took (tracemalloc, bytes)."""
    tracemalloc.start()
    try:
        result = decode_record(value, {"data-type": data_type} if data_type else {}, Limits())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return result.error, peak


@pytest.mark.parametrize("data_type", [CSV_BATCH, None])
def test_long_column_names_fail_at_the_header(data_type: str | None) -> None:
    """The issue's first poison: 1 MB, 250 columns of 2,000 characters, 2,191 empty rows (~1.1 GB of JSON)."""
    value = poison_csv(250, 2_000, 2_191)
    assert len(value) <= MIB
    error, peak = decoded_in_bounded_memory(value, data_type)
    assert error == (
        "CSV has 250 columns whose names are up to 2,000 characters: column names are limited to "
        "256 characters (MAX_COLUMN_NAME_CHARS)"
    )
    assert peak < 10 * MIB  # the would-be JSON is ~1,100 MiB


def test_many_wide_rows_fail_before_their_json_is_built() -> None:
    """The issue's second poison: 1,000 columns of 200 characters (a 174 MB row once stored)."""
    value = poison_csv(1_000, 200, 846)
    assert len(value) <= MIB
    error, peak = decoded_in_bounded_memory(value, None)
    assert error is not None and error.startswith("CSV too large once decoded: 1,000 columns")
    assert "names are up to 200 characters" in error and "16,777,216 (MAX_DECODED_CHARS)" in error
    assert peak < 20 * MIB  # the would-be JSON is ~176 MB


def test_a_table_just_under_the_limits_is_decoded() -> None:
    value = poison_csv(1_000, 256 - 8, 10)
    result = decode_record(value, {"data-type": CSV_BATCH}, Limits())
    assert result.ok and result.row_count == 10
    assert result.payload_json is not None and json.loads(result.payload_json) == result.payload


def test_too_many_columns() -> None:
    error = check_producible(poison_csv(1_001, 3, 1), CSV_BATCH, Limits())
    assert error == "CSV has 1,001 columns: at most 1,000 are allowed (MAX_CSV_COLUMNS)"


def test_too_many_rows() -> None:
    limits = Limits(max_csv_rows=10)
    assert check_producible(b"a\n" + b"1\n" * 10, CSV_BATCH, limits) is None
    error = check_producible(b"a\n" + b"1\n" * 11, CSV_BATCH, limits)
    assert error == "CSV has more than 10 rows (MAX_CSV_ROWS)"


def test_the_exact_json_size_is_checked_too() -> None:
    """Values count as well as names: the estimate only refuses early, the JSON text decides."""
    limits = Limits(max_decoded_chars=2_000)
    error = check_producible(b"a\n" + b"x" * 1_000 + b"\n" + b"y" * 1_000 + b"\n", CSV_BATCH, limits)
    assert error is not None and error.startswith("CSV too large once decoded: 2,02")


def test_json_over_the_decoded_limit() -> None:
    error = check_producible(json.dumps(["x" * 100]).encode(), SINGLE_MESSAGE, Limits(max_decoded_chars=50))
    assert error == "JSON too large once decoded: 104 characters of JSON, the limit is 50 (MAX_DECODED_CHARS)"


def test_json_depth() -> None:
    limits = Limits(max_json_depth=64)
    assert check_producible(b"[" * 64 + b"]" * 64, SINGLE_MESSAGE, limits) is None
    error = check_producible(b"[" * 65 + b"]" * 65, SINGLE_MESSAGE, limits)
    assert error == "invalid JSON: nested too deeply (more than 64 levels, MAX_JSON_DEPTH)"
    deep_object = b'{"a": ' * 65 + b"1" + b"}" * 65
    assert "nested too deeply" in (check_producible(deep_object, None, limits) or "")


def test_brackets_inside_strings_and_wide_arrays_are_not_depth() -> None:
    limits = Limits(max_json_depth=3)
    assert check_producible(json.dumps({"s": "[" * 100}).encode(), None, limits) is None
    assert check_producible(json.dumps([{"a": [1]}] * 500).encode(), None, limits) is None
    assert json_depth([{"a": [1]}] * 3, 10) == 3 and json_depth(1, 10) == 0


def test_check_producible_accepts_what_the_consumers_process() -> None:
    assert check_producible(b'{"name": "Test", "value": 100}', SINGLE_MESSAGE, Limits()) is None
    assert check_producible(b"name,value\nA,1\n", CSV_BATCH, Limits()) is None
    assert check_producible(b"name,value\nA,1\n", None, 1_024) is None
    assert (
        check_producible(b"{not json", None, Limits())
        == "invalid JSON: Expecting property name enclosed in double quotes at line 1 column 2"
    )
    assert check_producible(b"x" * 11, None, 10) == "message too large: 11 bytes (limit 10)"


def _echo(record: DecodedRecord) -> Any:
    return record.payload


def test_a_processor_result_over_the_limit_fails_the_record() -> None:
    limits = Limits(max_decoded_chars=100)
    decoded = decode_record(json.dumps({"v": "x" * 60}).encode(), {}, limits)
    outcome = limit_result(apply_processor(decoded, _echo, "t", 0, 0, None, {}), limits)
    assert not outcome.ok and outcome.result is None
    assert outcome.error == (
        "processor result too large: payload and result would be 138 characters of JSON, "
        "the limit is 100 (MAX_DECODED_CHARS)"
    )


def test_a_processor_result_that_is_not_json_fails_the_record() -> None:
    circular: list[Any] = []
    circular.append(circular)
    decoded = decode_record(b"1", {}, Limits())
    outcome = limit_result(apply_processor(decoded, lambda _: circular, "t", 0, 0, None, {}), Limits())
    assert outcome.error == "processor result is not JSON: ValueError: Circular reference detected"


def test_limits_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "MAX_MESSAGE_BYTES": "1000",
            "MAX_CSV_COLUMNS": "10",
            "MAX_COLUMN_NAME_CHARS": "20",
            "MAX_CSV_ROWS": "30",
            "MAX_JSON_DEPTH": "5",
        }
    )
    assert Limits.from_settings(settings) == Limits(1000, 16_000, 10, 20, 30, 5)
    assert Settings.from_env({"MAX_DECODED_CHARS": "5000"}).decoded_limit == 5000
    assert Settings().decoded_limit == 16 * MIB
    assert Settings(max_message_bytes=100 * MIB).decoded_limit == 200_000_000  # under SQLite's limit


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MAX_DECODED_CHARS", "10", "MAX_DECODED_CHARS=10 is out of range (1024..200000000)"),
        ("MAX_CSV_COLUMNS", "many", "MAX_CSV_COLUMNS='many' is not a whole number"),
        ("MAX_JSON_DEPTH", "0", "MAX_JSON_DEPTH=0 is out of range (1..500)"),
    ],
)
def test_a_bad_limit_names_its_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({name: value})
    assert str(raised.value) == message
