"""Regular expressions from policies, matched in bounded time.

Casbin matches `regexMatch` and the `keyMatch2`-`keyMatch5` / `keyGet2`-`keyGet3` patterns with
Python's backtracking `re`, where a rule such as `^(a+)+$` can take minutes on a long path. Each
pattern here runs on one of two engines:

- Python `re` (Casbin's own semantics, and about six times faster to call) when the pattern's
  structure makes backtracking linear: every repetition is of a single character class and is
  followed either by the end of the pattern (`$`, `\\Z`, or nothing) or by a literal character the
  class cannot match, so a repetition can only stop at one place; alternations choose by their
  first character. `^/tenants/[^/]+/books/[^/]+$`, `^(GET|HEAD)$` and `^/books/[0-9]+$` are such.
- RE2 (`google-re2`, linear time by construction) for everything else. A pattern RE2 cannot
  compile (backreferences, lookaround) is refused, and so is one whose meaning differs between the
  two engines in a way we can detect (POSIX classes such as `[[:digit:]]`). Known differences that
  remain for RE2 patterns: `\\d`, `\\w`, `\\s` and `\\b` are ASCII-only, and `$` does not match
  before a final newline.

Both engines are called with `match` semantics (anchored at the start only), as Casbin's are.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

import re2

# re2's compile wrapper costs more than the match itself; the bound pybind object is called directly.
from authcar.compat import re2_binding as _RE2_MODULE
from authcar.compat import sre_constants as sre
from authcar.compat import sre_parser as sre_parse

_ANCHOR_START = _RE2_MODULE.RE2.Anchor.ANCHOR_START
_NO_MATCH = (-1, -1)

_SINGLE_CHARACTER = frozenset({sre.LITERAL, sre.NOT_LITERAL, sre.ANY, sre.IN})
_REPEATS = frozenset({sre.MAX_REPEAT, sre.MIN_REPEAT})
_END_ANCHORS = frozenset({sre.AT_END, sre.AT_END_STRING})
_POSIX_CLASS = re.compile(r"\[:\^?[a-z]+:\]")
_CATEGORY_TESTS = {
    sre.CATEGORY_DIGIT: re.compile(r"\d"),
    sre.CATEGORY_NOT_DIGIT: re.compile(r"\D"),
    sre.CATEGORY_SPACE: re.compile(r"\s"),
    sre.CATEGORY_NOT_SPACE: re.compile(r"\S"),
    sre.CATEGORY_WORD: re.compile(r"\w"),
    sre.CATEGORY_NOT_WORD: re.compile(r"\W"),
}


class PatternError(ValueError):
    """A pattern that cannot be matched safely and faithfully."""


class Regex(Protocol):
    pattern: str
    engine: str  # "re" or "re2"

    def matches(self, text: str) -> bool: ...

    def groups(self, text: str) -> tuple[str | None, ...] | None: ...


class PythonRegex:
    __slots__ = ("_compiled", "engine", "pattern")

    def __init__(self, pattern: str, compiled: re.Pattern[str] | None) -> None:
        self.pattern = pattern
        self.engine = "re"
        # None: compiled on first use (plain path patterns, valid by construction, which the path
        # index usually answers without them). Two threads may both compile it: same result.
        self._compiled = compiled

    def _regex(self) -> re.Pattern[str]:
        if self._compiled is None:
            self._compiled = re.compile(self.pattern)
        return self._compiled

    def matches(self, text: str) -> bool:
        return (self._compiled or self._regex()).match(text) is not None

    def groups(self, text: str) -> tuple[str | None, ...] | None:
        found = (self._compiled or self._regex()).match(text)
        return None if found is None else found.groups()


class Re2Regex:
    __slots__ = ("_capturing", "_plain", "engine", "pattern")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.engine = "re2"
        encoded = pattern.encode()
        self._plain = _re2_object(encoded, capture=False)
        self._capturing = _re2_object(encoded, capture=True)

    def matches(self, text: str) -> bool:
        data = text.encode()
        return self._plain.Match(_ANCHOR_START, data, 0, len(data))[0] != _NO_MATCH

    def groups(self, text: str) -> tuple[str | None, ...] | None:
        data = text.encode()
        spans = self._capturing.Match(_ANCHOR_START, data, 0, len(data))
        if spans[0] == _NO_MATCH:
            return None
        return tuple(None if span == _NO_MATCH else data[span[0] : span[1]].decode() for span in spans[1:])


def _re2_object(encoded: bytes, *, capture: bool) -> Any:
    options = re2.Options()
    options.log_errors = False
    options.never_capture = not capture
    compiled = _RE2_MODULE.RE2(encoded, options)
    if not compiled.ok():
        raise PatternError(f"RE2 cannot compile it ({compiled.error().decode(errors='replace')})")
    return compiled


# `^/literal/[^\/]+/literal$` and `^/literal/.*$`: what keyMatch2 and keyMatch3 make of plain
# patterns. Linear by inspection (each `[^\/]+` is followed by `/` or `$`); spares a second parse.
PLAIN_PATH_REGEX = re.compile(r"\^(?:/(?:[^.^$*+?{}\[\]\\|()/\n]*|\[\^\\/\]\+))*(?:/\.\*)?\$")


def compile_regex(pattern: str) -> PythonRegex | Re2Regex:
    """The pattern on the engine that keeps its matching time linear; PatternError if neither can."""
    if PLAIN_PATH_REGEX.fullmatch(pattern):
        return PythonRegex(pattern, None)
    if _POSIX_CLASS.search(pattern):
        # RE2 reads `[[:digit:]]` as a POSIX class; Python's re (so Casbin) as the characters `[:digt`
        # followed by `]`. Whatever was meant, one engine would do something else.
        raise PatternError("`[:name:]` means a POSIX class to RE2 and a set of characters to Python's re")
    try:
        compiled = re.compile(pattern)
        parsed = sre_parse.parse(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise PatternError(f"not a valid regular expression ({exc})") from None
    if is_linear(parsed):
        return PythonRegex(pattern, compiled)
    try:
        return Re2Regex(pattern)
    except PatternError as exc:
        raise PatternError(
            f"it could backtrack without bound with Python's re, and {exc}; "
            "backreferences, lookaround, \\Z and (?x) are not available"
        ) from None


def is_linear(parsed: Any) -> bool:
    """True if Python's backtracking matcher needs time linear in the text for this pattern."""
    if parsed.state.flags & ~re.UNICODE:
        return False  # (?i), (?s), (?x)...: keep the analysis to the plain case
    atoms = _flatten(list(parsed))
    if atoms is None:
        return False
    for position, (op, value) in enumerate(atoms):
        if op not in _REPEATS:
            continue
        low, high, body = value
        if low == high:
            continue  # a fixed count leaves nothing to try again
        rest = atoms[position + 1 :]
        if all(item[0] is sre.AT and item[1] in _END_ANCHORS for item in rest):
            continue
        follower_op, follower_value = rest[0]
        if follower_op is sre.LITERAL and not char_matches(body, chr(follower_value)):
            continue
        return False
    return True


def _flatten(items: list[tuple[Any, Any]]) -> list[tuple[Any, Any]] | None:
    """Groups inlined; None if the pattern has a construct outside the analysed subset."""
    atoms: list[tuple[Any, Any]] = []
    for op, value in items:
        if op is sre.SUBPATTERN:
            _group, add_flags, del_flags, body = value
            inner = _flatten(list(body))
            if add_flags or del_flags or inner is None:
                return None
            atoms.extend(inner)
        elif op in _SINGLE_CHARACTER or op is sre.AT:
            atoms.append((op, value))
        elif op in _REPEATS:
            low, high, body = value
            inner = _flatten(list(body))
            if inner is None or len(inner) != 1 or inner[0][0] not in _SINGLE_CHARACTER:
                return None
            atoms.append((op, (low, high, inner[0])))
        elif op is sre.BRANCH:
            if not _deterministic_branch(value[1]):
                return None
            atoms.append((op, value))
        else:
            return None  # backreferences, lookaround, atomic groups, conditionals
    return atoms


def _deterministic_branch(alternatives: list[Any]) -> bool:
    """Alternatives of single characters only, told apart by a distinct literal first character."""
    firsts = set()
    for alternative in alternatives:
        inner = _flatten(list(alternative))
        if not inner or any(op not in _SINGLE_CHARACTER for op, _ in inner):
            return False
        first_op, first_value = inner[0]
        if first_op is not sre.LITERAL or first_value in firsts:
            return False
        firsts.add(first_value)
    return True


def char_matches(item: tuple[Any, Any], char: str) -> bool:
    """Whether a single-character pattern item matches `char` (True when unsure)."""
    op, value = item
    if op is sre.LITERAL:
        return chr(value) == char
    if op is sre.NOT_LITERAL:
        return chr(value) != char
    if op is sre.ANY:
        return char != "\n"
    if op is sre.IN:
        negate = bool(value) and value[0][0] is sre.NEGATE
        found = False
        for member_op, member in value[1:] if negate else value:
            if member_op is sre.LITERAL:
                found = chr(member) == char
            elif member_op is sre.RANGE:
                found = member[0] <= ord(char) <= member[1]
            elif member_op is sre.CATEGORY and member in _CATEGORY_TESTS:
                found = _CATEGORY_TESTS[member].match(char) is not None
            else:
                return True
            if found:
                break
        return found != negate
    return True
