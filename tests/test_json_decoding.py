"""JSON values are decoded through orjson where it agrees with the stdlib: same values, same errors."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.processing import DecodeError, Limits, parse_json

STDLIB = json.JSONDecoder(parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))
LIMITS = Limits(max_json_depth=10_000)  # depth is checked apart; here only the decoders are compared


def stdlib(text: str) -> object:
    return STDLIB.decode(text)


def same(a: object, b: object) -> bool:
    """Equal values of the same types all the way down (1 and 1.0 are not the same)."""
    return repr(a) == repr(b)


@pytest.mark.parametrize(
    "text",
    [
        '{"id": 1, "name": "sensor-1", "value": 0.1, "ok": true}',
        "[1, 2.5, -0, 1e-400, null, false]",
        "123456789012345678901234567890",  # orjson would make it a float
        "-9223372036854775809",  # just past int64: orjson would make it a float
        "18446744073709551615",
        '{"big": [1, 123456789012345678901234567890123]}',
        "1e400",  # orjson refuses, the stdlib gives inf
        '"\\ud800"',  # a lone surrogate: orjson refuses, the stdlib accepts
        '{"a": "\\ud83d\\ude00"}',
        '{"a": 1, "a": 2}',
        "[" * 500 + "]" * 500,
        '  {"a": "\\u0000"}\n',
        '"é"',
    ],
)
def test_valid_json_decodes_as_the_stdlib_does(text: str) -> None:
    assert same(parse_json(text, LIMITS), stdlib(text))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1,]", "invalid JSON: Expecting value at line 1 column 4"),
        ('{"a": 1}x', "invalid JSON: Extra data at line 1 column 9"),
        ("[NaN]", "invalid JSON: NaN is not allowed"),
        ("[" * 3000 + "]" * 3000, "invalid JSON: nested too deeply"),  # past both decoders' limits
        ("-Infinity", "invalid JSON: -Infinity is not allowed"),
        ('"a\x01b"', "invalid JSON: Invalid control character at at line 1 column 3"),
        ("", "invalid JSON: Expecting value at line 1 column 1"),
        ("\ufeff{}", "invalid JSON: Expecting value at line 1 column 1"),
    ],
)
def test_invalid_json_fails_with_the_stdlibs_message(text: str, message: str) -> None:
    with pytest.raises(DecodeError) as caught:
        parse_json(text, LIMITS)
    assert str(caught.value) == message


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_any_json_value_decodes_as_the_stdlib_does(value: object) -> None:
    text = json.dumps(value, ensure_ascii=False)
    assert same(parse_json(text, LIMITS), stdlib(text))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='{}[]",:0123456789.eE+-truefalsnul \\\n\ud800x', max_size=40))
def test_any_text_gives_the_stdlibs_answer(text: str) -> None:
    try:
        expected: object = stdlib(text)
    except (ValueError, RecursionError):
        with pytest.raises(DecodeError):
            parse_json(text, LIMITS)
        return
    assert same(parse_json(text, LIMITS), expected)
