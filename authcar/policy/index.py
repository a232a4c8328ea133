"""Which rules can match a path: a trie over path segments, so a decision never scans every rule.

Each rule's path pattern is read once (Casbin's own regular expression for keyMatch2/3/4 and
regexMatch, the prefix for keyMatch, the literal for `r.obj == p.obj`) as a sequence of segments,
each a literal or a parameter (`[^/]+`, i.e. `:id` or `{id}`), followed by one of:

    TERMINAL  the pattern ends there (`$`): the path has exactly these segments
    REST      the pattern goes on with `/.*$`, or stops after a `/` (keyMatch's `/books/*`,
              regexMatch's `^/books/`): the path has these segments and then a `/`
    PARTIAL   anything else: the path has these segments, and the rule must be evaluated

Walking a path down the trie (literal child and parameter child) collects exactly the rules whose
TERMINAL or REST shape fits, which is their function's verdict when the function has no other
condition ("exact"), plus every PARTIAL rule on the way. Rules whose pattern does not start with a
literal `/` sit at the root as PARTIAL: candidates for every path.

A collected entry is `rule_number << 1 | exact`; sorting entries sorts by policy order.

A path containing a newline bypasses the trie (every rule is a candidate, none exact): Python's `$`
also matches before a final newline, which segment comparison does not model. The gate never
forwards such a path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

from authcar.compat import sre_constants as sre
from authcar.compat import sre_parser as sre_parse
from authcar.policy.functions import PATTERN_FUNCTIONS
from authcar.policy.regex import PLAIN_PATH_REGEX

PARAMETER = None  # a segment matching any non-empty run of characters other than `/`
Segment = str | None
_SLASH = ord("/")
_STARTS = frozenset({sre.AT_BEGINNING, sre.AT_BEGINNING_STRING})
_ENDS = frozenset({sre.AT_END, sre.AT_END_STRING})
_REPEATS = frozenset({sre.MAX_REPEAT, sre.MIN_REPEAT})


class Shape(Enum):
    TERMINAL = "terminal"
    REST = "rest"
    PARTIAL = "partial"


@dataclass(frozen=True, slots=True)
class Placement:
    segments: tuple[Segment, ...]
    shape: Shape


ANYWHERE = Placement((), Shape.PARTIAL)


def placement(function: str, pattern: str) -> Placement:
    """Where a rule whose path conjunct is `function(r.obj, pattern)` sits in the trie."""
    if function == "==":
        return _literal_placement(pattern)
    if function == "keyMatch":
        star = pattern.find("*")
        if star == -1:
            return _literal_placement(pattern)
        prefix = pattern[:star]
        if not prefix.startswith("/"):
            return ANYWHERE
        parts = prefix[1:].split("/")
        return Placement(tuple(parts[:-1]), Shape.REST if prefix.endswith("/") else Shape.PARTIAL)
    to_regex = PATTERN_FUNCTIONS[function].regex_for_index
    if to_regex is None:
        return ANYWHERE
    return regex_placement(to_regex(pattern))


def _literal_placement(value: str) -> Placement:
    if not value.startswith("/"):
        return ANYWHERE
    return Placement(tuple(value[1:].split("/")), Shape.TERMINAL)


def regex_placement(regex: str) -> Placement:
    """Read a regex (as `re.match` uses it) as literal and parameter segments."""
    if PLAIN_PATH_REGEX.fullmatch(regex):
        return _plain_placement(regex)
    return parsed_placement(regex)


def parsed_placement(regex: str) -> Placement:
    """regex_placement for any regex, from Python's own parse of it."""
    try:
        parsed = sre_parse.parse(regex)
    except (re.error, RecursionError, OverflowError):
        return ANYWHERE
    if parsed.state.flags & ~re.UNICODE:
        return ANYWHERE
    items = list(parsed)
    position = 0
    while position < len(items) and items[position][0] is sre.AT and items[position][1] in _STARTS:
        position += 1
    if position == len(items) or items[position] != (sre.LITERAL, _SLASH):
        return ANYWHERE
    segments: list[Segment] = []
    text: list[str] = []
    parameter = False
    for index in range(position + 1, len(items)):
        op, value = items[index]
        only_ends_follow = all(item[0] is sre.AT and item[1] in _ENDS for item in items[index + 1 :])
        if op is sre.LITERAL and value == _SLASH:
            segments.append(PARAMETER if parameter else "".join(text))
            text, parameter = [], False
        elif op is sre.LITERAL and not parameter:
            text.append(chr(value))
        elif op is sre.AT and value in _ENDS and only_ends_follow:
            segments.append(PARAMETER if parameter else "".join(text))
            return Placement(tuple(segments), Shape.TERMINAL)
        elif not text and not parameter and _is_parameter(op, value):
            parameter = True
        elif not text and not parameter and only_ends_follow and _is_anything(op, value):
            return Placement(tuple(segments), Shape.REST)
        else:
            return Placement(tuple(segments), Shape.PARTIAL)
    # No `$`: re.match accepts whatever follows the pattern.
    if not text and not parameter:
        return Placement(tuple(segments), Shape.REST)
    return Placement(tuple(segments), Shape.PARTIAL)


def _plain_placement(regex: str) -> Placement:
    body = regex[2:-1]  # without `^/` and `$`
    if body == ".*":
        return Placement((), Shape.REST)
    rest = body.endswith("/.*")
    if rest:
        body = body[:-3]
    # `[^\/]+` holds a slash: swap it for a newline (never in a plain literal) before splitting.
    parts = body.replace(r"[^\/]+", "\n").split("/")
    segments = tuple(PARAMETER if part == "\n" else part for part in parts)
    return Placement(segments, Shape.REST if rest else Shape.TERMINAL)


def _unwrap(op: Any, value: Any) -> tuple[Any, Any]:
    """A capture group around one item is that item (keyGet and keyMatch4 patterns use them)."""
    while op is sre.SUBPATTERN:
        _group, add_flags, del_flags, body = value
        if add_flags or del_flags or len(body) != 1:
            return op, value
        op, value = body[0]
    return op, value


def _is_parameter(op: Any, value: Any) -> bool:
    op, value = _unwrap(op, value)
    if op not in _REPEATS or value[0] != 1 or value[1] != sre.MAXREPEAT or len(value[2]) != 1:
        return False
    item = value[2][0]
    return item == (sre.NOT_LITERAL, _SLASH) or item == (sre.IN, [(sre.NEGATE, None), (sre.LITERAL, _SLASH)])


def _is_anything(op: Any, value: Any) -> bool:
    op, value = _unwrap(op, value)
    return (
        op in _REPEATS and value[0] == 0 and value[1] == sre.MAXREPEAT and list(value[2]) == [(sre.ANY, None)]
    )


class PathNode:
    __slots__ = ("children", "parameter", "partial", "rest", "terminal")

    def __init__(self) -> None:
        self.children: dict[str, PathNode] = {}
        self.parameter: PathNode | None = None
        self.terminal: list[int] = []
        self.rest: list[int] = []
        self.partial: list[int] = []


class PathIndex:
    """One trie; the engine keeps one per subject (or role) the policy names."""

    __slots__ = ("depth", "entries", "root")

    def __init__(self) -> None:
        self.root = PathNode()
        self.depth = 0
        self.entries: list[int] = []  # every rule, none exact: for paths the trie cannot judge

    def add(self, rule: int, where: Placement, exact: bool) -> None:
        node = self.root
        for segment in where.segments:
            if segment is PARAMETER:
                if node.parameter is None:
                    node.parameter = PathNode()
                node = node.parameter
            else:
                node = node.children.setdefault(segment, PathNode())
        self.depth = max(self.depth, len(where.segments))
        entry = rule << 1 | (exact and where.shape is not Shape.PARTIAL)
        {Shape.TERMINAL: node.terminal, Shape.REST: node.rest, Shape.PARTIAL: node.partial}[
            where.shape
        ].append(entry)
        self.entries.append(rule << 1)

    def collect(self, path: str, out: list[int]) -> None:
        """Append the entries of every rule this path can match (unsorted)."""
        root = self.root
        if "\n" in path:
            out.extend(self.entries)
            return
        out.extend(root.partial)
        if not path.startswith("/"):
            return
        # Segments beyond the trie's depth are never compared: they stay in the last element.
        segments = path[1:].split("/", self.depth)
        count = len(segments)
        stack = [(root, 0)]
        while stack:
            node, depth = stack.pop()
            if depth:
                out.extend(node.partial)
            if depth == count:
                out.extend(node.terminal)
                continue
            out.extend(node.rest)
            segment = segments[depth]
            child = node.children.get(segment)
            if child is not None:
                stack.append((child, depth + 1))
            if segment and node.parameter is not None:
                stack.append((node.parameter, depth + 1))
