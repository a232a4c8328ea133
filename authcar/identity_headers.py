"""The identity headers the application receives for a caller (stage 5, "inject").

For an authenticated caller: X-Auth-Request-User (the subject), one header per configured claim
(`AUTHCAR_CLAIM_HEADERS`, `Header=claim.path`), X-Auth-Request-Groups (roles, sorted, comma-separated)
and X-Auth-Request-Jwt (the signed assertion, authcar/assertion.py). An anonymous caller (a public
path) gets only the assertion, without `sub` and with `src: "anonymous"`.

The client's copies of all of these were removed while framing (headers.HeaderRules); these are
appended after that, so not even the client's `Connection` header can name them away.

A value is refused, never folded or cleaned up: control characters (CR/LF and the rest), other
non-printable characters, leading or trailing spaces (the application's parser would trim them and
see another name than the one vouched for), or more than MAX_VALUE_BYTES. Non-ASCII printable text
is sent as UTF-8.

Signing costs tens of µs, so the finished header list is cached per (identity values, method, path)
and reused while its assertion has more than half of its lifetime left.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from authcar.assertion import ASSERTED_CLAIMS, AssertionSigner, asserted_value
from authcar.claim_headers import ASSERTION_HEADER, GROUPS_HEADER, USER_HEADER, parse_claim_headers
from authcar.claims import claim_at
from authcar.errors import Forbidden
from authcar.identity import Identity

if TYPE_CHECKING:
    from authcar.config import Settings

MAX_VALUE_BYTES = 8192
DEFAULT_CACHE_SIZE = 4096

Headers = list[tuple[bytes, bytes]]


def header_text(value: Any) -> str | None:
    """A claim value as header text; None leaves the header out (absent, empty, or an object)."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        items = [header_text(item) for item in value if not isinstance(item, list | tuple | dict)]
        return ",".join(item for item in items if item is not None) or None
    return None


def invalid_value() -> Forbidden:
    # The value itself stays out of the answer: error bodies never carry identity data.
    return Forbidden(
        "the caller's identity holds a value that cannot be sent to the application",
        code="invalid_identity_value",
    )


def header_value(text: str) -> bytes:
    """The bytes of a header value the application will read exactly as vouched for, or Forbidden."""
    if not text.isprintable() or text[0] == " " or text[-1] == " ":
        raise invalid_value()
    encoded = text.encode("utf-8")
    if len(encoded) > MAX_VALUE_BYTES:
        raise invalid_value()
    return encoded


class IdentityHeaders:
    """Builds the identity headers for each forwarded request; one per process, built at startup."""

    def __init__(
        self, settings: Settings, signer: AssertionSigner, *, cache_size: int = DEFAULT_CACHE_SIZE
    ) -> None:
        self.signer = signer
        self.claim_headers = parse_claim_headers(settings.claim_headers)
        # The claims the headers and the assertion are made of, looked up once per request.
        self.claim_names = (*(header.claim for header in self.claim_headers), *ASSERTED_CLAIMS)
        self.dotted_names = any("." in name for name in self.claim_names)
        self.reuse_for = signer.lifetime / 2
        self.cache_size = cache_size
        # key -> (minted at, reuse until, headers), oldest first for eviction.
        self.cache: OrderedDict[tuple[Any, ...], tuple[float, float, tuple[tuple[bytes, bytes], ...]]]
        self.cache = OrderedDict()

    @property
    def header_names(self) -> tuple[str, ...]:
        """The configured claim headers, for HeaderRules to strip from what clients send."""
        return tuple(header.name.decode("ascii") for header in self.claim_headers)

    def headers_for(self, identity: Identity, method: str, path: str, now: float | None = None) -> Headers:
        """The headers to append to the forwarded request; Forbidden for a value that cannot be sent.

        `path` is the normalised path that is forwarded (without the query).
        """
        if now is None:
            now = time.time()
        # The key holds everything the headers are made of except the assertion's iat/exp.
        if identity.source == "anonymous":
            key: tuple[Any, ...] = (identity.issuer, identity.roles, method, path)
        else:
            claims = identity.claims
            if self.dotted_names:
                values = [claim_at(claims, name) for name in self.claim_names]
            else:
                values = [claims.get(name) for name in self.claim_names]
            key = (
                identity.subject,
                identity.source,
                identity.issuer,
                identity.roles,
                method,
                path,
                # Strings as they are (the common case, and cheap); anything else as its header text.
                *[value if type(value) is str else (header_text(value),) for value in values],
            )
        cached = self.cache.get(key)
        if cached is not None and cached[0] <= now < cached[1]:
            return list(cached[2])
        headers = self.build(identity, method, path, now)
        self.remember(key, now, headers)
        return headers

    def build(self, identity: Identity, method: str, path: str, now: float) -> Headers:
        headers: Headers = []
        if not identity.is_anonymous:
            claims = identity.claims
            headers.append((USER_HEADER, header_value(identity.subject)))
            for header in self.claim_headers:
                text = header_text(claim_at(claims, header.claim))
                if text is not None:
                    headers.append((header.name, header_value(text)))
            if identity.roles:
                roles = sorted(identity.roles)
                for role in roles:
                    header_value(role)  # each on its own: the joined list could hide an edge space
                headers.append((GROUPS_HEADER, header_value(",".join(roles))))
            for name in ASSERTED_CLAIMS:
                value = asserted_value(claims, name)
                if value is not None:
                    header_value(value)  # the assertion vouches only for what could be a header value
        headers.append((ASSERTION_HEADER, self.signer.assertion(identity, method, path, now)))
        return headers

    def remember(self, key: tuple[Any, ...], now: float, headers: Headers) -> None:
        cache = self.cache
        cache.pop(key, None)
        while len(cache) >= self.cache_size:
            cache.popitem(last=False)
        cache[key] = (now, now + self.reuse_for, tuple(headers))
