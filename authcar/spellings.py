"""Every spelling under which an application may read a query parameter or cookie name as one of ours.

The sidecar owns a few names (the `access_token` query parameter, the token cookie; with the login
flow, its session cookies). Comparing them byte for byte is not enough: the application decodes and
folds names before it looks them up, so `access%5Ftoken` *is* `access_token` to it. A name the
sidecar does not recognise as its own while the application does lets a client hide a token from
the sidecar, or smuggle a second copy past it. So names are compared as the most lenient of the
common frameworks reads them, and any name that *some* of them would read as ours counts as a
spelling of ours.

A raw name is read every way below; if any reading's skeleton equals the protected name's, the
name is a spelling of it:

- percent-decoding with hex digits in any case (all frameworks), repeated up to three times
  (applications and proxies that decode twice), including IIS/ASP.NET's `%uXXXX`; a `%` that
  starts no valid escape is kept, as Python, PHP and Java do;
- the decoded bytes as UTF-8 with invalid bytes dropped (or replaced: the same skeleton), as
  Latin-1, and as UTF-8 with overlong forms accepted (`%C1%9F` is `_` to old lenient decoders);
- cut at the first NUL (PHP's names are C strings: `access_token%00x` is `access_token`);
- the part before the first `[` once leading brackets are dropped (PHP, Rack, qs: `access_token[]`
  and `access_token[x]` are arrays named `access_token`, Rack reads `[access_token]` as it);
- each `&`/`;`-separated piece of a decoded name (an application that decodes before it splits).

The skeleton of a reading is its NFKC form, case-folded (ASP.NET matches query and cookie names
case-insensitively; `ß` folds to `ss`, the Kelvin sign to `k`, dotless i to `i`), keeping only
ASCII letters and digits. Dropping every other character covers at once: `+` or `%20` as space
and leading or trailing whitespace (PHP trims leading spaces, others trim both), PHP turning `.`,
space and `[` into `_`, `-`/`_` confusion, and control characters.

This errs on the side of "ours": `AccessToken`, `access-token` or `access.token` count as spellings
of `access_token`. The cost is that a client cannot use such a name for anything else, which is
the point: the caller then learns to send the token in the Authorization header.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from urllib.parse import unquote_to_bytes

MAX_DECODES = 3  # percent-decoding rounds; a fourth layer of encoding is nobody's reading

_U_ESCAPE = re.compile(rb"%[uU]([0-9A-Fa-f]{4})")
# Overlong UTF-8 for ASCII: two bytes C0/C1 xx, three bytes E0 80-81 xx, four bytes F0 80 80-81 xx.
_OVERLONG = re.compile(rb"[\xc0\xc1][\x80-\xbf]|\xe0[\x80\x81][\x80-\xbf]|\xf0\x80[\x80\x81][\x80-\xbf]")
_NOT_ALNUM = bytes(b for b in range(256) if not chr(b).isascii() or not chr(b).isalnum())
_NOT_LOWER_ALNUM = re.compile(r"[^a-z0-9]+")
_NOT_KEPT = re.compile(r"[^a-z0-9\0&;=\[\]]+")
_ASCII_NOT_KEPT = bytes(b for b in range(128) if not re.fullmatch(rb"[A-Za-z0-9\0&;=\[\]]", bytes((b,))))
_MARKER_TABLE = str.maketrans("", "", "\0&;=[]")
_SPLITTERS = re.compile(r"[&;=]")
_PIECE_SEPARATORS = re.compile(r"[&;]")


class DisguisedName(ValueError):
    """A name that some application reads as a protected one, spelled otherwise."""


class ProtectedName:
    """A name the sidecar owns, and the test for whether a raw name is a spelling of it."""

    __slots__ = ("_needle", "name", "skeleton")

    def __init__(self, name: str) -> None:
        self.name = name
        self.skeleton = skeleton(name)
        self._needle = self.skeleton.encode("ascii")

    def might_be_in(self, raw: bytes) -> bool:
        """A first look at a whole query string or Cookie header: False means that no name in it
        can be a spelling. Each reading of a name is a run of letters of the same reading of the
        whole (names end at ASCII separators, which no escape, UTF-8 sequence or NFKC composition
        reaches across), so one pass over the whole rules out every name at once."""
        for layer in _decoded_layers(raw):
            if layer.isascii():
                if self._needle in layer.lower().translate(None, _NOT_ALNUM):
                    return True
                continue
            for text in _texts(layer):
                folded = unicodedata.normalize("NFKC", text.casefold()).casefold().replace("\u0131", "i")
                if self.skeleton in _NOT_LOWER_ALNUM.sub("", folded):
                    return True
        return False

    def is_spelled_by(self, raw_name: bytes) -> bool:
        """Could some application read `raw_name` (as it is on the wire) as this name?"""
        if b"%" not in raw_name and b"[" not in raw_name and raw_name.isascii():
            # Nothing to decode or cut: the one reading is the bytes themselves (the common case).
            return raw_name.lower().translate(None, _NOT_ALNUM) == self._needle
        return any(reading == self.skeleton for reading in readings(raw_name, self.skeleton))

    def cookie_values(self, cookie_headers: list[bytes]) -> list[bytes]:
        """The values of the cookies of exactly this name (RFC 6265: split on `;`, whitespace
        trimmed), in order; DisguisedName if any other spelling of it is among them, also one
        hidden after a `,` (RFC 2109 parsers split on it too)."""
        exact = self.name.encode("latin-1")
        values: list[bytes] = []
        for header in cookie_headers:
            if not self.might_be_in(header):
                continue
            for pair in header.split(b";"):
                name, eq, value = pair.partition(b"=")
                name = name.strip()
                if self.is_spelled_by(name):
                    if not eq or name != exact:
                        raise DisguisedName(f"a cookie name that applications read as {self.name!r}")
                    values.append(value.strip())
                for other in pair.split(b",")[1:]:
                    other_name, other_eq, _ = other.partition(b"=")
                    if other_eq and self.is_spelled_by(other_name.strip()):
                        raise DisguisedName(f"a {self.name!r} cookie after a ',' in the Cookie header")
        return values

    def __repr__(self) -> str:
        return f"ProtectedName({self.name!r})"


def skeleton(text: str) -> str:
    """What is left of a name once NFKC, case folding and every non-alphanumeric are applied."""
    return _folded(text).translate(_MARKER_TABLE)


def readings(raw_name: bytes, wanted: str = "") -> Iterator[str]:
    """The skeletons of the readings of a raw name (duplicates possible); with `wanted`, only of
    those readings that can equal it."""
    for layer in _decoded_layers(raw_name):
        for text in _texts(layer):
            # Folded once, keeping the characters that cut or split a name; every reading is then a
            # substring of the folded text without them, which rules most texts out at once.
            folded = _folded(text)
            if wanted not in folded.translate(_MARKER_TABLE):
                continue
            for whole in {folded, folded.partition("\0")[0]}:
                yield from _bases(whole)
                if _SPLITTERS.search(whole):
                    for piece in _PIECE_SEPARATORS.split(whole):
                        yield from _bases(piece.partition("=")[0])


def _folded(text: str) -> str:
    """NFKC and case folding, without the characters that are neither letters, digits nor `[]&;=` NUL."""
    if text.isascii():  # the common case, at bytes speed
        return text.encode("ascii").lower().translate(None, _ASCII_NOT_KEPT).decode("ascii")
    folded = unicodedata.normalize("NFKC", text.casefold()).casefold()
    return _NOT_KEPT.sub("", folded.replace("\u0131", "i"))  # dotless i upper-cases to I


def _bases(name: str) -> Iterator[str]:
    yield name.translate(_MARKER_TABLE)
    if "[" in name:
        yield name.lstrip("[]").partition("[")[0].translate(_MARKER_TABLE)


def _decoded_layers(raw: bytes) -> Iterator[bytes]:
    if b"%" not in raw:
        yield raw
        return
    for _ in range(MAX_DECODES):
        decoded = raw
        if b"%u" in decoded or b"%U" in decoded:
            decoded = _U_ESCAPE.sub(_unescape_u, decoded)
        decoded = unquote_to_bytes(decoded)  # a `%` that starts no escape stays
        yield decoded
        if decoded == raw or b"%" not in decoded:
            return
        raw = decoded


def _unescape_u(match: re.Match[bytes]) -> bytes:
    return chr(int(match[1], 16)).encode("utf-8", "surrogatepass")


def _texts(data: bytes) -> Iterator[str]:
    yield data.decode("utf-8", "ignore")
    if not data.isascii():
        yield data.decode("latin-1")
        if _OVERLONG.search(data):
            yield _OVERLONG.sub(_shorten, data).decode("utf-8", "ignore")


def _shorten(match: re.Match[bytes]) -> bytes:
    code = 0
    for byte in match[0]:
        code = (code << 6) | (byte & 0x3F)
    return bytes((code & 0x7F,))
