"""Where a browser may be sent after login or logout: the open-redirect defence for `rd` and
post-logout targets.

A target is followed only when it is, written plainly, an absolute path on our host (`/books?p=2`)
or an absolute URL with our scheme on our origin or on a host in AUTHCAR_ALLOWED_REDIRECT_HOSTS;
anything else falls back to `/`. Rather than asking one URL parser what a target means (parsers
disagree: browsers read `\\` as `/`, drop tabs and newlines, map IDN and fullwidth dots, take
`https:evil` as a URL), the accepted forms are narrow enough that every parser reads them alike:
printable ASCII, no backslash, no userinfo, a host of letters, digits, dots and hyphens.
The path must also stay on our host once percent-decoded (up to MAX_DECODE_ROUNDS deep), NFKC-folded
and cleared of dot segments, so an application that decodes and redirects again (`/%2F%2Fevil`)
is not made an open redirect either.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote

from authcar.config.hosts import split_host_port, valid_port

FALLBACK = "/"
MAX_TARGET_BYTES = 2048  # longer targets are nobody's bookmark
MAX_DECODE_ROUNDS = 4  # `%25` nests: decode until stable; what is still encoded after this is refused
# Printable ASCII without space and backslash: what a raw target may contain.
PLAIN = re.compile(r"[!-\[\]-~]*")
ABSOLUTE = re.compile(
    r"(?P<scheme>https?)://(?P<host>[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?)(?::(?P<port>[0-9]{1,5}))?"
    r"(?P<rest>[/?#].*)?",
    re.IGNORECASE | re.DOTALL,
)
DEFAULT_PORTS = {"http": 80, "https": 443}
# Unicode categories refused once decoded: controls (CR, LF, NUL, tab), format (bidi, zero-width),
# line and paragraph separators.
REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


@dataclass(frozen=True)
class Origin:
    """A scheme, a lower-case ASCII host and a port: what an absolute target must name."""

    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, value: str, *, scheme: str) -> Origin:
        """`host` or `host:port` (an AUTHCAR_ALLOWED_REDIRECT_HOSTS entry, authcar/config/hosts.py's
        syntax) with our scheme; ValueError for anything else."""
        host, port = split_host_port(value)
        return cls(scheme, host, DEFAULT_PORTS[scheme] if port is None else port)


@dataclass(frozen=True)
class RedirectPolicy:
    """Our origin (AUTHCAR_OIDC_REDIRECT_URL's) and the other origins a target may name."""

    own: Origin
    allowed: frozenset[Origin] = frozenset()

    @classmethod
    def build(cls, own_url: str, allowed_hosts: Iterable[str] = ()) -> RedirectPolicy:
        own = absolute_origin(own_url)
        if own is None:
            raise ValueError(f"not an absolute http(s) URL: {own_url!r}")
        return cls(own, frozenset(Origin.parse(host, scheme=own.scheme) for host in allowed_hosts))

    def target(self, raw: str | None) -> str:
        """`raw` if a browser may be sent there, else `/`."""
        return raw if raw is not None and self.allows(raw) else FALLBACK

    def allows(self, raw: str) -> bool:
        if not raw or len(raw) > MAX_TARGET_BYTES or not PLAIN.fullmatch(raw):
            return False
        if raw.startswith("/"):
            return stays_on_host(raw)
        # Not a path: `https:evil`, `javascript:`, `data:`, `evil.example/x`, `?x`, `#x`... unless
        # an absolute URL on an origin we name.
        origin = absolute_origin(raw)
        if origin is None or (origin != self.own and origin not in self.allowed):
            return False
        rest = ABSOLUTE.fullmatch(raw)["rest"] or "/"  # type: ignore[index]
        return stays_on_host(rest if rest.startswith("/") else "/" + rest)


def absolute_origin(url: str) -> Origin | None:
    match = ABSOLUTE.fullmatch(url)
    if match is None or (match["port"] is not None and not valid_port(match["port"])):
        return None
    scheme = match["scheme"].lower()
    port = int(match["port"]) if match["port"] else DEFAULT_PORTS[scheme]
    return Origin(scheme, match["host"].lower(), port)


def stays_on_host(path: str) -> bool:
    """An absolute path that remains one, on the same host, at every depth of percent-decoding."""
    for _ in range(MAX_DECODE_ROUNDS):
        if not path_on_host(path):
            return False
        try:
            decoded = unquote(path, errors="strict")
        except UnicodeDecodeError:  # `%ff`: not UTF-8, so not a path anyone means
            return False
        if decoded == path:
            return True
        path = decoded
    return False


def path_on_host(path: str) -> bool:
    if any(unicodedata.category(char) in REFUSED_CATEGORIES for char in path):
        return False
    # As the laxest reader would take it: compatibility forms folded (fullwidth solidus U+FF0F), `\` as `/`.
    folded = unicodedata.normalize("NFKC", path).replace("\\", "/")
    head = re.split(r"[?#]", folded, maxsplit=1)[0]
    return folded.startswith("/") and not folded.startswith("//") and not resolved(head).startswith("//")


def resolved(path: str) -> str:
    """`path` without `.` and `..` segments (RFC 3986 section 5.2.4), empty segments kept."""
    segments: list[str] = []
    for segment in path.split("/")[1:]:
        if segment == "..":
            if segments:
                segments.pop()
        elif segment != ".":
            segments.append(segment)
    return "/" + "/".join(segments)
