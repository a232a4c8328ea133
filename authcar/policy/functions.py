"""Casbin's matcher functions, prepared once per pattern instead of rebuilt on every call.

Each function here gives the same answer as its namesake in `casbin.util.builtin_operators` (the
same transformation of the pattern, then the same comparison), but the pattern, which is almost
always a policy field or a literal, is turned into a matcher when the policy is compiled. Regular
expressions go through `authcar.policy.regex`, so none of them can take unbounded time.

`keyGet`, `keyGet2` and `keyGet3` are available as if registered with `add_function`: pycasbin
defines them but does not put them in its default function map.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from casbin.util.builtin_operators import (
    KEY_MATCH2_PATTERN,
    KEY_MATCH3_PATTERN,
    KEY_MATCH4_PATTERN,
    KEY_MATCH5_PATTERN,
)
from wcmatch import glob

from authcar.policy.regex import PatternError, compile_regex

# Brace expansions a glob may produce (wcmatch allows 1,000); each one is matched in turn.
GLOB_PATTERN_LIMIT = 64
_STAR_RUN = re.compile(r"\*+")

Prepared = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class PatternFunction:
    """A matcher function whose second argument is a pattern."""

    name: str
    arity: int
    prepare: Callable[[str], Prepared]  # pattern -> callable taking the other arguments
    # The regular expression Casbin builds from a pattern, for the path index; None: not indexable.
    regex_for_index: Callable[[str], str] | None = None
    # True if the index's verdict on a path is the function's own answer (no extra conditions).
    index_is_exact: bool = False


def key_match(key2: str) -> Prepared:
    star = key2.find("*")
    if star == -1:
        return lambda key1: key1 == key2
    prefix = key2[:star]

    def matches(key1: Any) -> Any:
        if len(key1) > star:
            return key1[:star] == prefix
        return key1 == prefix

    return matches


def key_match2_regex(key2: str) -> str:
    key2 = key2.replace("/*", "/.*")
    key2 = KEY_MATCH2_PATTERN.sub(r"\g<1>[^\/]+\g<2>", key2, 0)
    if key2 == "*":
        key2 = "(.*)"
    return "^" + key2 + "$"


def key_match3_regex(key2: str) -> str:
    key2 = key2.replace("/*", "/.*")
    key2 = KEY_MATCH3_PATTERN.sub(r"\g<1>[^\/]+\g<2>", key2, 0)
    return "^" + key2 + "$"


def _key_match4_parts(key2: str) -> tuple[str, list[str]]:
    tokens: list[str] = []

    def token(found: re.Match[str]) -> str:
        tokens.append(found.group(1))
        return "([^/]+)"

    key2 = KEY_MATCH4_PATTERN.sub(token, key2.replace("/*", "/.*"))
    return "^" + key2 + "$", tokens


def key_match4_regex(key2: str) -> str:
    return _key_match4_parts(key2)[0]


def key_match5_regex(key2: str) -> str:
    key2 = key2.replace("/*", "/.*")
    return "^" + KEY_MATCH5_PATTERN.sub(r"[^/]+", key2, 0) + "$"


def _regex_matcher(to_regex: Callable[[str], str]) -> Callable[[str], Prepared]:
    def prepare(key2: str) -> Prepared:
        return compile_regex(to_regex(key2)).matches

    return prepare


def key_match4(key2: str) -> Prepared:
    regex, tokens = _key_match4_parts(key2)
    compiled = compile_regex(regex)

    def matches(key1: Any) -> bool:
        values = compiled.groups(key1)
        if values is None:
            return False
        if len(tokens) != len(values):
            raise ValueError("KeyMatch4: number of tokens is not equal to number of values")
        # A name used twice must have matched the same text both times.
        seen: dict[str, Any] = {}
        return all(seen.setdefault(name, value) == value for name, value in zip(tokens, values, strict=True))

    return matches


def key_match5(key2: str) -> Prepared:
    matches = compile_regex(key_match5_regex(key2)).matches

    def without_query(key1: Any) -> bool:
        query = key1.find("?")
        return matches(key1 if query == -1 else key1[:query])

    return without_query


def regex_match(key2: str) -> Prepared:
    return compile_regex(key2).matches


def glob_pattern(pattern: str) -> str:
    """The pattern pycasbin's glob_match hands to wcmatch."""
    if pattern.startswith("*/"):
        pattern = pattern[1:]
    parts = ["**" if part == "**" else re.sub(r"\*{2,}", "*", part) for part in pattern.split("/")]
    result = "/".join(parts)
    if result.endswith("/**"):
        result = "{" + result[:-3] + "," + result + "}"
    return result


def glob_match(pattern: str) -> Prepared:
    # wcmatch translates to Python regexes with lookarounds (so not RE2). One `*` per segment and
    # one `**` keep backtracking linear: a segment's star cannot cross `/`, and only a globstar can.
    segments = (pattern[1:] if pattern.startswith("*/") else pattern).split("/")
    if sum(segment == "**" for segment in segments) > 1:
        raise PatternError("more than one `**` (its matching time could grow with the square of the path)")
    if any(segment != "**" and len(_STAR_RUN.findall(segment)) > 1 for segment in segments):
        raise PatternError("more than one `*` in a segment (its matching time could grow without bound)")
    try:
        matcher = glob.compile(
            glob_pattern(pattern), flags=glob.GLOBSTAR | glob.BRACE, limit=GLOB_PATTERN_LIMIT
        )
    except Exception as exc:
        raise PatternError(f"not a valid glob ({exc})") from None
    return matcher.match


def ip_match(ip2: str) -> Prepared:
    try:
        network: Any = ipaddress.ip_network(ip2, strict=False)
    except ValueError:
        network = None

    def matches(ip1: Any) -> bool:
        address = ipaddress.ip_address(ip1)
        if network is None:
            return address == ip2
        return address in network

    return matches


def key_get(key2: str) -> Prepared:
    star = key2.find("*")
    prefix = key2[:star]

    def get(key1: Any) -> Any:
        if star == -1:
            return ""
        if len(key1) > star and key1[:star] == prefix:
            return key1[star:]
        return ""

    return get


def key_get2(key2: str) -> Prepared:
    key2 = key2.replace("/*", "/.*")
    names = [key[1:] for key in re.findall(":[^/]+", key2)]
    key2 = KEY_MATCH2_PATTERN.sub(r"\g<1>([^\/]+)\g<2>", key2, 0)
    if key2 == "*":
        key2 = "(.*)"
    return _group_getter(compile_regex("^" + key2 + "$"), names)


def key_get3(key2: str) -> Prepared:
    key2 = key2.replace("/*", "/.*")
    names = [key[1:-1] for key in re.findall(r"{[^/]+?}", key2)]
    key2 = KEY_MATCH3_PATTERN.sub(r"\g<1>([^/]+?)\g<2>", key2, 0)
    if key2 == "*":
        key2 = "(.*)"
    return _group_getter(compile_regex("^" + key2 + "$"), names)


def _group_getter(compiled: Any, names: list[str]) -> Prepared:
    def get(key1: Any, path_var: Any) -> Any:
        values = compiled.groups(key1)
        if values is None:
            return ""
        for position, name in enumerate(names):
            if path_var == name:
                return values[position]
        return ""

    return get


PATTERN_FUNCTIONS: dict[str, PatternFunction] = {
    function.name: function
    for function in (
        PatternFunction("keyMatch", 2, key_match, index_is_exact=True),
        PatternFunction("keyMatch2", 2, _regex_matcher(key_match2_regex), key_match2_regex, True),
        PatternFunction("keyMatch3", 2, _regex_matcher(key_match3_regex), key_match3_regex, True),
        # The index places keyMatch4 rules, but the repeated-name check still needs the function.
        PatternFunction("keyMatch4", 2, key_match4, key_match4_regex, False),
        PatternFunction("keyMatch5", 2, key_match5),
        PatternFunction("regexMatch", 2, regex_match, lambda pattern: pattern, True),
        PatternFunction("globMatch", 2, glob_match),
        PatternFunction("ipMatch", 2, ip_match),
        PatternFunction("keyGet", 2, key_get),
        PatternFunction("keyGet2", 3, key_get2),
        PatternFunction("keyGet3", 3, key_get3),
    )
}
