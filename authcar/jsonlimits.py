"""Bounded JSON decoding for input from outside: tokens, provider answers, key sets, discovery.

Python's json module is a fine parser for small, flat documents, and a poor guard against hostile
ones: it parses by recursion (a few thousand nested brackets raise RecursionError), reads `1e400` as
infinity, accepts NaN and Infinity, keeps the last of repeated member names, and builds integers of
up to 4,300 digits that later overflow `float()`. So before json sees the text, one linear scan
checks its size, its nesting depth, the members of each object and array, and the length of each
string; json then parses text known to be shallow, with hooks that bound every number and refuse
the constants and repeated names. Every failure is one exception, `JSONRejected`, whose `reason`
is a stable code for logs and metrics.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

# Recursion in json's C scanner stays far below Python's limit at any depth we allow.
DEPTH_CEILING = 128

# A backslash and the character it escapes (json checks which escapes are valid).
ESCAPE = re.compile(r"\\.", re.DOTALL)
# Everything but the brackets and commas, once the strings are gone.
NOT_STRUCTURE = re.compile(r"[^\[\]{},]+")
# A `\uD800`-`\uDFFF` escape somewhere: only then can a decoded string hold a lone surrogate.
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class JSONRejected(ValueError):
    """The input is not acceptable JSON; `reason` says which limit or rule it broke."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason  # too_large | not_utf8 | not_json | too_deep | too_many_members
        # | string_too_long | number_too_large | not_a_number | repeated_name | invalid_string | not_an_object
        self.detail = detail


@dataclass(frozen=True, slots=True)
class JSONLimits:
    """What one kind of document may hold. Depth counts containers: `1` is depth 0, `[[]]` depth 2."""

    max_bytes: int
    max_depth: int = 32
    max_members: int = 1000  # in one object or one array
    max_string: int = 8192  # characters of one string or member name as sent (escapes as written)
    max_int_digits: int = 20  # a 64-bit integer, and every Unix time, fits
    max_number_chars: int = 40  # one non-integer number literal, sign and exponent included
    unique_names: bool = True  # repeated member names are refused (JOSE, RFC 7662, RFC 8259 SHOULD)
    # json's decoder with the hooks for these limits, built once (json.loads would build one per call).
    decoder: json.JSONDecoder = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 1 <= self.max_depth <= DEPTH_CEILING:
            raise ValueError(f"max_depth must be between 1 and {DEPTH_CEILING}")
        if min(self.max_bytes, self.max_members, self.max_string, self.max_int_digits) < 1:
            raise ValueError("JSON limits must be positive")
        numbers = NumberHooks(self)
        decoder = json.JSONDecoder(
            object_pairs_hook=unique_members if self.unique_names else None,
            parse_int=numbers.integer,
            parse_float=numbers.real,
            parse_constant=not_a_number,
        )
        object.__setattr__(self, "decoder", decoder)


def decode_json(data: bytes | str, limits: JSONLimits) -> Any:
    """The value in `data`, or JSONRejected. Bytes must be UTF-8 (RFC 8259 §8.1)."""
    if isinstance(data, str):
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError:
            raise JSONRejected("not_utf8", "the text holds unpaired surrogates") from None
    else:
        raw = data
    if len(raw) > limits.max_bytes:
        raise JSONRejected("too_large", f"larger than {limits.max_bytes} bytes")
    try:
        text = raw.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise JSONRejected("not_utf8", f"not UTF-8 (byte {exc.start})") from None
    scan(text, limits)
    try:
        value = limits.decoder.decode(text)
    except JSONRejected:
        raise
    except RecursionError:  # cannot happen below DEPTH_CEILING; never let it out if it does
        raise JSONRejected("too_deep", "nested too deeply") from None
    except ValueError as exc:
        raise JSONRejected("not_json", f"not JSON: {str(exc)[:100]}") from None
    if SURROGATE_ESCAPE.search(text) and has_lone_surrogate(value):
        raise JSONRejected("invalid_string", "a string holds an unpaired surrogate escape")
    return value


def decode_object(data: bytes | str, limits: JSONLimits) -> dict[str, Any]:
    """A JSON object, or JSONRejected (`not_an_object` for any other JSON value)."""
    value = decode_json(data, limits)
    if not isinstance(value, dict):
        raise JSONRejected("not_an_object", "not a JSON object")
    return value


def scan(text: str, limits: JSONLimits) -> None:
    """Depth, members and string lengths, found without recursion and mostly without a Python loop.

    Every escape (`\\` and the character after it) is first replaced by two plain characters, so
    each remaining quote opens or closes a string: splitting on quotes separates the strings (their
    lengths as written) from the structure between them. Only when the structure holds more
    brackets than the depth allows, or more commas than one container may hold, are its brackets
    and commas walked one by one to find the real depth and counts. On text json accepts, strings
    begin and end where json sees them, so this is json's depth; on text it refuses, json stops at
    the first error, before any nesting this scan did not see.
    """
    if (
        len(text) <= limits.max_string
        and text.count("[") + text.count("{") <= limits.max_depth
        and text.count(",") < limits.max_members
    ):
        return  # the whole text is within every limit, so each part is (a small token, say)
    plain = ESCAPE.sub("..", text) if "\\" in text else text
    pieces = plain.split('"')
    if len(pieces) % 2 == 0:
        raise JSONRejected("not_json", "not JSON: an unterminated string")
    strings = pieces[1::2]
    if strings and max(map(len, strings)) > limits.max_string:
        raise JSONRejected("string_too_long", f"a string longer than {limits.max_string} characters")
    structure = NOT_STRUCTURE.sub("", "".join(pieces[0::2]))
    opened = structure.count("[") + structure.count("{")
    if opened > limits.max_depth or structure.count(",") >= limits.max_members:
        walk(structure, limits.max_depth, limits.max_members)


def walk(structure: str, max_depth: int, max_members: int) -> None:
    """The exact depth and members per container of text reduced to its brackets and commas."""
    commas: list[int] = []  # per open container: its commas so far (members - 1, once it has any)
    for char in structure:
        if char == ",":
            if commas:
                commas[-1] += 1
                if commas[-1] >= max_members:
                    raise JSONRejected("too_many_members", f"more than {max_members} members in a container")
        elif char == "[" or char == "{":
            if len(commas) >= max_depth:
                raise JSONRejected("too_deep", f"nested deeper than {max_depth} levels")
            commas.append(0)
        elif commas:
            commas.pop()
        else:
            raise JSONRejected("not_json", "not JSON: a bracket closes nothing")


class NumberHooks:
    """json's number hooks: a literal beyond the limits never becomes a Python number."""

    __slots__ = ("max_chars", "max_digits")

    def __init__(self, limits: JSONLimits) -> None:  # called while `limits` is being built
        self.max_digits = limits.max_int_digits
        self.max_chars = limits.max_number_chars

    def integer(self, literal: str) -> int:
        if len(literal) - literal.startswith("-") > self.max_digits:
            raise JSONRejected("number_too_large", f"an integer of more than {self.max_digits} digits")
        return int(literal)

    def real(self, literal: str) -> float:
        if len(literal) > self.max_chars:
            raise JSONRejected("number_too_large", f"a number longer than {self.max_chars} characters")
        value = float(literal)
        if not math.isfinite(value):
            raise JSONRejected("number_too_large", "a number beyond the range of a double")
        return value


def not_a_number(name: str) -> Any:
    raise JSONRejected("not_a_number", f"{name} is not a JSON number")


def unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose names are all different: `{"active": false, "active": true}` means nothing."""
    result = dict(pairs)
    if len(result) != len(pairs):
        raise JSONRejected("repeated_name", "an object names a member twice")
    return result


def has_lone_surrogate(value: Any) -> bool:
    """Whether any string or name in `value` holds half a surrogate pair (not encodable as UTF-8)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            strings = [item]
        elif isinstance(item, dict):
            strings = list(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
            continue
        else:
            continue
        for string in strings:
            try:
                string.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False
