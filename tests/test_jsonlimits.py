"""Bounded JSON decoding: any input gives a value or JSONRejected, never another exception; each limit
holds exactly at its edge; what is accepted is exactly what json itself would decode."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authcar.jsonlimits import DEPTH_CEILING, JSONLimits, JSONRejected, decode_json, decode_object

LIMITS = JSONLimits(max_bytes=64 * 1024, max_depth=8, max_members=16, max_string=64)
# Text no longer than every limit skips the scan (nothing in it can exceed them); these limits make
# nearly every input take the scan, so both ways are tried on each example.
SCANNED = JSONLimits(max_bytes=64 * 1024, max_depth=2, max_members=2, max_string=2)
SETTINGS = settings(deadline=None)


def reason(data: bytes | str, limits: JSONLimits = LIMITS) -> str:
    with pytest.raises(JSONRejected) as refused:
        decode_json(data, limits)
    return refused.value.reason


# --- properties ------------------------------------------------------------------------------

JSON_TEXT = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner, max_size=6),
    max_leaves=30,
).map(json.dumps)
# Text biased towards what a JSON parser finds interesting.
JSONISH = st.text(alphabet='[]{}",:\\ u0123456789.eE+-tfnlrasNIiy\x00\n\ud800é', max_size=200)


def accepted_or_rejected(data: bytes | str) -> None:
    for limits in (LIMITS, SCANNED):
        try:
            value = decode_json(data, limits)
        except JSONRejected:
            continue  # the one error type; any other exception fails the test
        # Accepted: exactly json's own reading of the same text, and within the limits.
        assert value == json.loads(data)
        assert depth(value) <= limits.max_depth
        assert widest(value) <= limits.max_members


@SETTINGS
@given(st.binary(max_size=512))
def test_arbitrary_bytes_give_a_value_or_the_one_error(data: bytes) -> None:
    accepted_or_rejected(data)


@SETTINGS
@given(st.text(max_size=512) | JSONISH | JSON_TEXT)
def test_arbitrary_text_gives_a_value_or_the_one_error(text: str) -> None:
    accepted_or_rejected(text)


@SETTINGS
@given(st.lists(st.sampled_from(["[", "{", '{"a":', "]", "}", ",", "0", '"x"', ":", " ", '"['])))
def test_bracket_soup_gives_a_value_or_the_one_error(pieces: list[str]) -> None:
    accepted_or_rejected("".join(pieces))


def nested(kinds: list[bool]) -> str:
    """Containers nested in this order (True: an array, False: an object's member)."""
    opening = "".join("[" if array else '{"k":' for array in kinds)
    closing = "".join("]" if array else "}" for array in reversed(kinds))
    return opening + "1" + closing


@SETTINGS
@given(st.lists(st.booleans(), max_size=40))
def test_the_depth_limit_is_exact(kinds: list[bool]) -> None:
    text = nested(kinds)
    for limits in (LIMITS, JSONLimits(max_bytes=1000, max_depth=LIMITS.max_depth, max_string=1)):
        if len(kinds) <= limits.max_depth:
            assert depth(decode_json(text, limits)) == len(kinds)
        else:
            assert reason(text, limits) == "too_deep"


def widest(value: Any) -> int:
    if isinstance(value, list | dict):
        items = value.values() if isinstance(value, dict) else value
        return max([len(value), *map(widest, items)])
    return 0


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    return 0


# --- each limit at its edge ------------------------------------------------------------------


@pytest.mark.parametrize("levels", [1_000, 5_000, 100_000])
@pytest.mark.parametrize("opening", ["[", '{"a":', '[{"a":'])
def test_deep_nesting_is_refused_without_recursion(levels: int, opening: str) -> None:
    limits = JSONLimits(max_bytes=10**7)
    assert reason(opening * levels, limits) == "too_deep"
    # Well-formed, too: the refusal does not depend on the text being broken.
    closing = opening.replace('{"a":', "}").replace("[", "]")[::-1]
    assert reason(opening * levels + "0" + closing * levels, limits) == "too_deep"


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps({"a": "[[[[[[[[[[[[{{{{{{{{{{{", "b": ["]]]]]]]]]]", '\\"[[[[']})
    assert decode_json(text, LIMITS)["b"][1] == '\\"[[[['


def test_members_per_container() -> None:
    assert decode_json(json.dumps(list(range(16))), LIMITS) == list(range(16))
    assert reason(json.dumps(list(range(17)))) == "too_many_members"
    assert reason(json.dumps({str(i): i for i in range(17)})) == "too_many_members"
    # Commas inside strings are not members.
    assert decode_json(json.dumps([",,,,,,,,,,,,,,,,,,,,,,"] * 16), LIMITS)[0].count(",") == 22
    # Each container counts its own members.
    assert len(decode_json(json.dumps([list(range(16))] * 16), LIMITS)) == 16


def test_string_length() -> None:
    assert decode_json(json.dumps("x" * 64), LIMITS) == "x" * 64
    assert reason(json.dumps("x" * 65)) == "string_too_long"
    assert reason(json.dumps({"x" * 65: 1})) == "string_too_long"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1" * 20, int("1" * 20)),
        ("-" + "9" * 20, -int("9" * 20)),
        ("1e308", 1e308),
        ("-1.5e-300", -1.5e-300),
        ("1" * 30 + ".5", float("1" * 30 + ".5")),
    ],
)
def test_numbers_within_the_limits(text: str, expected: float) -> None:
    assert decode_json(text, LIMITS) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1" * 21, "number_too_large"),
        (str(10**400), "number_too_large"),
        ("1" * 5000, "number_too_large"),  # beyond Python's own 4,300-digit guard too
        ("1e400", "number_too_large"),
        ("-1e400", "number_too_large"),
        ("1" * 400 + ".0", "number_too_large"),
        ("0." + "0" * 100 + "1", "number_too_large"),
        ("NaN", "not_a_number"),
        ("[Infinity]", "not_a_number"),
        ('{"exp": -Infinity}', "not_a_number"),
    ],
)
def test_numbers_beyond_the_limits(text: str, expected: str) -> None:
    assert reason(text) == expected


def test_size_is_checked_before_anything_else() -> None:
    limits = JSONLimits(max_bytes=10)
    assert decode_json(b'"12345678"', limits) == "12345678"
    assert reason(b'"123456789"', limits) == "too_large"
    assert reason(b"[" * 11, limits) == "too_large"
    assert reason('"ééééé"', limits) == "too_large"  # bytes, not characters


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"a": 1, "a": 2}', "repeated_name"),
        (b'{"a": {"b": 1, "b": 1}}', "repeated_name"),
        (b'"\xff"', "not_utf8"),
        ('"\ud800"', "not_utf8"),
        (b'"\\ud800"', "invalid_string"),
        (b'{"\\udc00": 1}', "invalid_string"),
        (b'["\\ud83d"]', "invalid_string"),
        (b"\xef\xbb\xbf{}", "not_json"),  # a BOM
        (b'"a\x01"', "not_json"),
        (b"[1,]", "not_json"),
        (b"[] []", "not_json"),
        (b"]", "not_json"),
        (b'"unterminated', "not_json"),
        (b"", "not_json"),
        (b'"\\u12"', "not_json"),
    ],
)
def test_malformed_and_ambiguous_text(data: bytes | str, expected: str) -> None:
    assert reason(data) == expected


def test_valid_surrogate_pairs_and_escaped_backslashes_are_fine() -> None:
    assert decode_json(b'"\\ud83d\\ude00"', LIMITS) == "\U0001f600"
    assert decode_json(b'"\\\\ud800"', LIMITS) == "\\ud800"


def test_repeated_names_are_allowed_only_when_asked() -> None:
    lenient = JSONLimits(max_bytes=100, unique_names=False)
    assert decode_json(b'{"a": 1, "a": 2}', lenient) == {"a": 2}


def test_decode_object() -> None:
    assert decode_object(b' {"a": [1, {"b": null}]} ', LIMITS) == {"a": [1, {"b": None}]}
    for text in (b"[]", b"1", b'"x"', b"null"):
        with pytest.raises(JSONRejected) as refused:
            decode_object(text, LIMITS)
        assert refused.value.reason == "not_an_object"


def test_the_error_is_a_value_error_with_a_reason() -> None:
    with pytest.raises(ValueError, match="deeper than 8"):
        decode_json("[" * 9, LIMITS)


@pytest.mark.parametrize("depth_limit", [0, DEPTH_CEILING + 1])
def test_limits_are_validated(depth_limit: int) -> None:
    with pytest.raises(ValueError, match="max_depth"):
        JSONLimits(max_bytes=1, max_depth=depth_limit)


def test_the_ceiling_depth_decodes_even_deep_in_the_stack() -> None:
    limits = JSONLimits(max_bytes=10_000, max_depth=DEPTH_CEILING)
    text = "[" * DEPTH_CEILING + "]" * DEPTH_CEILING

    def at_depth(frames: int) -> Any:
        return decode_json(text, limits) if frames == 0 else at_depth(frames - 1)

    assert depth(at_depth(sys.getrecursionlimit() - DEPTH_CEILING - 300)) == DEPTH_CEILING
