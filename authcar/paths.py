"""One definition of "the path": normalised once, then both authorized and forwarded byte for byte.

`normalise_path` takes ASGI `scope["raw_path"]` (not percent-decoded, no query string) and returns
an ASCII `str`. Policies and public-path rules match that string, and the upstream receives exactly
its bytes, so the sidecar and the application can never disagree about which resource was asked
for. Input whose meaning depends on who parses it is rejected, never guessed at:

- the path starts with `/` (origin-form);
- raw bytes are printable ASCII other than `#`, `?`, `\\` and `;`;
- every `%` is followed by two hex digits, and the encoded bytes of a segment are valid UTF-8
  (strictly: overlong forms such as `%C0%AE` are refused);
- encodings of unreserved characters (ALPHA DIGIT `-._~`) are decoded, all other encodings are
  kept with uppercase hex (`%c3%a9` -> `%C3%A9`);
- no encoded `/` or `\\`, no encoded control character (C0, DEL, C1), no `;` raw or encoded,
  no `%25` followed by two hex digits (double encoding);
- no `.` or `..` segment (after decoding, so `%2e%2E` counts); they are rejected, not resolved;
- no encoded character that an application may read as ASCII (see "Unicode" below);
- repeated slashes are merged (`//a///b` -> `/a/b`); a trailing slash is kept.

Rejections are `BadRequest` (400) with one of these stable codes:

    bad_request_target        the path does not start with `/`
    invalid_path_character    control, space, DEL, non-ASCII, `#`, `?` or `\\` in the raw path
    invalid_percent_encoding  `%` without two hex digits, or encoded bytes that are not UTF-8
    encoded_slash             `%2F` or `%5C`
    encoded_control           an encoded control character (`%00`-`%1F`, `%7F`, `%C2%80`-`%C2%9F`)
    path_parameter            `;` or `%3B`
    double_encoding           `%25` followed by two hex digits
    dot_segment               a `.` or `..` segment, raw or encoded, or an encoded look-alike of `.`
    unicode_lookalike         an encoded character that an application may read as other ASCII
    (and `encoded_slash` for look-alikes of `/` and `\\`, `encoded_control` for invisible ones)

Unicode: some applications normalise a path before they route it (NFKC or NFKD, case-insensitive
matching, ASCII folding, Windows "best fit" code pages), and would read `%EF%BC%8E%EF%BC%8E`
(fullwidth full stops, U+FF0E) as `..`, `%E2%88%95` (division slash) as `/`, or fullwidth `admin`
as `admin`. So every encoded non-ASCII character is vetted, as a class rather than a list:

- its NFKC form (NFKD holds the same ASCII) contains `/` or `\\`, or it is one of the slash
  look-alikes that ASCII folding or best-fit code pages map (division and fraction slash, set
  minus, solidus operators, box diagonals, yen and won signs) -> encoded_slash;
- its NFKC form contains `.` (one and two dot leaders, fullwidth and small full stops, ellipsis,
  digit full stops) -> dot_segment;
- its NFKC form, or its one-character upper or lower case, contains any other ASCII character
  (fullwidth letters, ligatures, superscripts, long s -> `S`, Kelvin sign -> `k`) -> unicode_lookalike;
- it is invisible: a format character (soft hyphen, zero-width space, bidi controls, BOM, tags),
  a Hangul filler or the combining grapheme joiner -> encoded_control; the zero-width joiner and
  non-joiner are allowed between non-ASCII characters (Persian, Indic scripts, emoji) only;

and a segment that, without its combining marks and with the ideographic full stops that IDNA and
ASCII folding map to `.`, reads `.` or `..` is a dot_segment.
Non-ASCII text otherwise passes: `caf%C3%A9`, CJK, emoji, decomposed accents (`e%CC%81`).

Public paths (`AUTHCAR_PUBLIC_PATHS`) are rules on that normalised path and the method only; the
query string never takes part.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from authcar.errors import BadRequest

# Raw bytes that pass through unchanged: printable ASCII except those that end the path (`#`, `?`),
# separate segments on some servers (`\`), or start path parameters (`;`). `%` is vetted separately.
_RAW_ALLOWED = bytes(range(0x21, 0x7F)).translate(None, b"#?\\;")

_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
# Encoded bytes whose decoded form would change how the path splits or reads, by reason code.
_REJECTED_BYTES = {
    0x2F: ("the path contains an encoded slash", "encoded_slash"),
    0x5C: ("the path contains an encoded backslash", "encoded_slash"),
    0x3B: ("the path contains an encoded ';' (path parameters)", "path_parameter"),
    **{b: ("the path contains an encoded control character", "encoded_control") for b in range(0x20)},
    0x7F: ("the path contains an encoded control character", "encoded_control"),
}


def _hex_table() -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """Every two-hex-digit spelling (any case) -> its normalised form, or why it is rejected."""
    decoded: dict[str, str] = {}
    rejected: dict[str, tuple[str, str]] = {}
    for byte in range(256):
        upper = f"{byte:02X}"
        spellings = {a + b for a in {upper[0], upper[0].lower()} for b in {upper[1], upper[1].lower()}}
        for spelling in spellings:
            if byte in _REJECTED_BYTES:
                rejected[spelling] = _REJECTED_BYTES[byte]
            else:
                decoded[spelling] = chr(byte) if chr(byte) in _UNRESERVED else "%" + upper
    return decoded, rejected


_DECODED, _REJECTED = _hex_table()
# Look-alikes of `/` and `\` that NFKC leaves alone but ASCII folding (unidecode, ICU transliterators)
# or Windows best-fit code pages map: `¥` and `₩` are the backslash of code pages 932 and 949.
_SLASH_LOOKALIKES = frozenset("\u2044\u2215\u2216\u29f5\u29f8\u29f9\u2571\u2572\u27cb\u27cd\u00a5\u20a9")
# The ideographic full stops, which IDNA (UTS #46) and ASCII folding read as `.`, but which end
# every Japanese and Chinese sentence: refused only when a segment is made of them (a dot segment).
# Characters that merely look like a dot (the Arabic-Indic zero) are no one's `.` and pass.
_DOT_LIKE = frozenset("\u3002\uff61\ufe12")
# What a segment that reads as a dot segment must contain: `.` or one of those, percent-encoded.
_DOT_SEGMENT_PARTS = re.compile(r"\.|%E3%80%82|%EF%BD%A1|%EF%B8%92")
# Invisible characters outside the format category (Cf): the combining grapheme joiner, Hangul
# fillers, Mongolian variation selectors. The zero-width (non-)joiners are Cf, but Persian, Indic
# scripts and emoji need them: they are allowed between two non-ASCII characters.
_INVISIBLE = frozenset("\u034f\u115f\u1160\u3164\uffa0\u180b\u180c\u180d\u180f")
_JOINERS = frozenset("\u200c\u200d")
# The characters whose one-character upper or lower case is ASCII (tests/test_paths.py enumerates
# them): case-insensitive applications match them as ASCII. `İ` lower-cases to `i` and a combining
# dot. (`ß` upper-cases to `SS`, which no matcher compares as one character.)
_CASE_TO_ASCII = frozenset("\u0130\u0131\u017f\u212a")
_SLASHES = frozenset("/\\")
_ASCII = re.compile("[\x00-\x7f]")

# Runs of encoded non-ASCII bytes (the table has uppercased them); an ASCII byte, raw or encoded,
# cannot sit inside a UTF-8 sequence, so each run must be valid UTF-8 on its own.
_NON_ASCII_RUN = re.compile(r"(?:%[89A-F][0-9A-F])+")
# U+0080-U+009F in UTF-8; `C2` is never a continuation byte, so this cannot match mid-character.
_C1_CONTROL = re.compile(r"%C2%[89]")
# After one decode this would leave `%XX`, which a second decode turns into another character.
_DOUBLE = re.compile(r"%25[0-9A-Fa-f]{2}")
# The common case, one pass: `/`-separated segments of bytes that pass unchanged, no empty segment,
# no segment starting with `.` (conservative: `/.well-known` takes the slow path, still correct).
_PLAIN = re.compile(rb"/(?:[^/.\x00-\x20\x7f-\xff#%;?\\][^/\x00-\x20\x7f-\xff#%;?\\]*+/?)*+")


def normalise_path(raw_path: bytes) -> str:
    """The path to authorize and forward; raises BadRequest when the path is ambiguous."""
    if _PLAIN.fullmatch(raw_path):
        return raw_path.decode("ascii")
    return _normalise_slow(raw_path)


def _normalise_slow(raw_path: bytes) -> str:
    if raw_path[:1] != b"/":
        raise BadRequest("the request target must be a path starting with '/'", code="bad_request_target")
    bad = raw_path.translate(None, _RAW_ALLOWED)
    if bad:
        raise _raw_byte_error(bad[0])
    parts = raw_path.decode("ascii").split("/")
    segments: list[str] = []
    for segment in parts[1:]:
        if not segment:
            continue  # repeated or trailing slash
        if "%" in segment:
            segment = _decode_segment(segment)
        if segment == "." or segment == "..":
            raise BadRequest("the path contains a '.' or '..' segment", code="dot_segment")
        segments.append(segment)
    path = "/" + "/".join(segments)
    if segments and not parts[-1]:
        path += "/"
    return path


def _raw_byte_error(byte: int) -> BadRequest:
    if byte == 0x3B:
        return BadRequest("the path contains ';' (path parameters)", code="path_parameter")
    what = {0x23: "'#' (a fragment)", 0x3F: "'?'", 0x5C: "a backslash"}.get(
        byte, "a control character, space or non-ASCII byte"
    )
    return BadRequest(f"the path contains {what}", code="invalid_path_character")


def _decode_segment(segment: str) -> str:
    pieces = segment.split("%")
    out = [pieces[0]]
    for piece in pieces[1:]:
        pair = piece[:2]
        replacement = _DECODED.get(pair)
        if replacement is None:
            if pair in _REJECTED:
                description, code = _REJECTED[pair]
                raise BadRequest(description, code=code)
            raise BadRequest("'%' must be followed by two hex digits", code="invalid_percent_encoding")
        out.append(replacement)
        out.append(piece[2:])
    decoded = "".join(out)
    for run in _NON_ASCII_RUN.findall(decoded):
        try:
            # Strict UTF-8 also refuses overlong forms such as `%C0%AE` ('.') and `%C0%AF` ('/'),
            # and leaves one reading of the bytes, whatever the application decodes them with.
            text = bytes.fromhex(run.replace("%", "")).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(
                "percent-encoded bytes must be valid UTF-8", code="invalid_percent_encoding"
            ) from None
        if "%C2%" in run and _C1_CONTROL.search(run):
            raise BadRequest("the path contains an encoded control character", code="encoded_control")
        _vet_characters(text)
    if (
        _DOT_SEGMENT_PARTS.search(decoded)
        and _NON_ASCII_RUN.search(decoded)
        and _reads_as_dot_segment(decoded)
    ):
        raise BadRequest(
            "the path contains a segment that reads as '.' or '..' once normalised", code="dot_segment"
        )
    # Checked after decoding: `%25%32%65` only becomes `%252e` once `%32%65` is decoded.
    if "%25" in decoded and _DOUBLE.search(decoded):
        raise BadRequest("the path is percent-encoded twice", code="double_encoding")
    return decoded


def _vet_characters(text: str) -> None:
    """Refuse a character of a run of encoded non-ASCII text that an application may read as ASCII,
    or that is invisible."""
    last = len(text) - 1
    # Most text is in NFKC form (which holds no compatibility character), no case mapping of it
    # yields ASCII and it has no slash look-alike: then only the category is left to check.
    plain = (
        unicodedata.is_normalized("NFKC", text)
        and _SLASH_LOOKALIKES.isdisjoint(text)
        and _CASE_TO_ASCII.isdisjoint(text)
    )
    for index, char in enumerate(text):
        if not plain:
            _vet_compatibility(char)
        if char in _JOINERS:
            invisible = index == 0 or index == last  # next to ASCII or at the segment's edge
        else:
            invisible = char in _INVISIBLE or unicodedata.category(char) == "Cf"
        if invisible:
            raise BadRequest(
                f"the path contains an encoded invisible character (U+{ord(char):04X})",
                code="encoded_control",
            )


def _vet_compatibility(char: str) -> None:
    compatible = unicodedata.normalize("NFKC", char)
    if char in _SLASH_LOOKALIKES or not _SLASHES.isdisjoint(compatible):
        raise BadRequest(
            f"the path contains an encoded look-alike of '/' or '\\' (U+{ord(char):04X})",
            code="encoded_slash",
        )
    if "." in compatible:
        raise BadRequest(
            f"the path contains an encoded look-alike of '.' (U+{ord(char):04X})", code="dot_segment"
        )
    if _has_ascii(compatible) or char in _CASE_TO_ASCII:
        raise BadRequest(
            f"the path contains an encoded character that may be read as ASCII (U+{ord(char):04X})",
            code="unicode_lookalike",
        )


def _has_ascii(text: str) -> bool:
    return _ASCII.search(text) is not None


def _reads_as_dot_segment(decoded: str) -> bool:
    """Without combining marks, and with the dot-like characters as `.`, is the segment a dot segment?"""
    text = unicodedata.normalize("NFKD", unquote(decoded, errors="strict"))
    skeleton = "".join(
        "." if char in _DOT_LIKE else char for char in text if not unicodedata.category(char).startswith("M")
    )
    return skeleton in (".", "..")


# Public paths ------------------------------------------------------------------------------------

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@dataclass(frozen=True)
class PublicPathRule:
    """Requests served without authentication.

    `methods` is None for any method; a rule naming GET also holds HEAD (a HEAD is a GET without
    the body). `pattern` is a normalised path; when `prefix` is true it ends in `/` and the rule
    holds that directory and everything below it (written `/docs/*`).
    """

    methods: frozenset[str] | None
    pattern: str
    prefix: bool


def parse_public_paths(entries: Sequence[str]) -> tuple[PublicPathRule, ...]:
    """Rules from entries such as `GET /healthz`, `GET|HEAD /status`, `/docs/*`; ValueError if bad."""
    return tuple(parse_public_path(entry) for entry in entries)


def parse_public_path(entry: str) -> PublicPathRule:
    parts = entry.split()
    if not parts or len(parts) > 2:
        raise ValueError(f"public path {entry!r}: expected '[METHOD[|METHOD...]] /path' or '/prefix/*'")
    methods = _parse_methods(entry, parts[0]) if len(parts) == 2 else None
    pattern = parts[-1]
    prefix = pattern.endswith("/*")
    path = pattern[:-1] if prefix else pattern
    if "*" in path:
        raise ValueError(f"public path {entry!r}: '*' is only allowed as a final '/*' (a prefix)")
    if not path.startswith("/"):
        raise ValueError(f"public path {entry!r}: the path must start with '/'")
    if path == "/" and prefix:
        raise ValueError(
            f"public path {entry!r}: '/*' would make every path public; use AUTHCAR_ALLOW_ANONYMOUS for that"
        )
    try:
        normalised = normalise_path(path.encode("ascii"))
    except UnicodeEncodeError:
        raise ValueError(
            f"public path {entry!r}: the path must be ASCII (percent-encode other characters as UTF-8)"
        ) from None
    except BadRequest as exc:
        raise ValueError(
            f"public path {entry!r}: the path is not in normalised form ({exc.description}), "
            "so no request could match it"
        ) from None
    # Rules match the normalised path, so a pattern in any other form could never match.
    if normalised != path:
        suggestion = normalised + ("*" if prefix else "")
        raise ValueError(f"public path {entry!r}: the path is not in normalised form; write {suggestion!r}")
    return PublicPathRule(methods, path, prefix)


def _parse_methods(entry: str, text: str) -> frozenset[str]:
    methods = set(text.split("|"))
    unknown = methods - METHODS
    if unknown:
        raise ValueError(
            f"public path {entry!r}: unknown method(s) {', '.join(map(repr, sorted(unknown)))}; "
            f"use uppercase names from {', '.join(sorted(METHODS))}, or none for any method"
        )
    if "GET" in methods:
        methods.add("HEAD")
    return frozenset(methods)


class PublicPaths:
    """Which (method, normalised path) pairs skip authentication."""

    __slots__ = ("_exact", "_prefixes", "rules")

    def __init__(self, rules: Iterable[PublicPathRule] = ()) -> None:
        self.rules = tuple(rules)
        exact: dict[str, frozenset[str] | None] = {}
        prefixes: list[tuple[str, frozenset[str] | None]] = []
        for rule in self.rules:
            if rule.prefix:
                prefixes.append((rule.pattern, rule.methods))
            elif rule.pattern in exact:
                exact[rule.pattern] = _union(exact[rule.pattern], rule.methods)
            else:
                exact[rule.pattern] = rule.methods
        self._exact = exact
        self._prefixes = tuple(prefixes)

    @classmethod
    def from_entries(cls, entries: Sequence[str]) -> PublicPaths:
        return cls(parse_public_paths(entries))

    def matches(self, method: str, normalised_path: str) -> bool:
        """True if the request is public; `normalised_path` must come from `normalise_path`."""
        if normalised_path in self._exact:
            methods = self._exact[normalised_path]
            if methods is None or method in methods:
                return True
        for prefix, methods in self._prefixes:
            if normalised_path.startswith(prefix) and (methods is None or method in methods):
                return True
        return False

    def __bool__(self) -> bool:
        return bool(self.rules)

    def __repr__(self) -> str:
        return f"PublicPaths({self.rules!r})"


def _union(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
    return None if a is None or b is None else a | b
