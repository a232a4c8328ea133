"""Where a request's bearer token comes from: the Authorization header, a named cookie, or (only when
enabled) the `access_token` query parameter (RFC 6750 §2).

A request that offers its token in more than one way is refused (RFC 6750 §2: clients MUST NOT use
more than one method), except that an Authorization header wins over a cookie: cookies are sent by
the browser on its own, the header is what the client chose. The Basic scheme and friends are not
ours to judge: they count as no token.

Names are matched as the application will read them (authcar/spellings.py): percent-decoded,
case-folded, with PHP's `.`/space/`[` -> `_`, arrays (`access_token[]`), NUL cuts and the rest.
Exactly one spelling is the token's: the parameter whose name percent-decodes to `access_token`,
the cookie whose name is the configured one byte for byte. Any other spelling is refused
(`invalid_request`), whether or not query tokens are enabled: a name the sidecar would not read
as the token while the application does would hide a token from the sidecar, or smuggle a second
one past it. Query strings are split on `&` and `;` (Bottle, old Django, Rack, Go before 1.17);
cookie headers on `;` and `,` (RFC 2109 parsers). What is left of a query after removing a query
token is exactly what is forwarded.
"""

from __future__ import annotations

from typing import Literal, NamedTuple
from urllib.parse import unquote_plus

from authcar.errors import BadRequest, bearer_challenge
from authcar.spellings import DisguisedName, ProtectedName
from authcar.types import Headers

TokenSource = Literal["header", "cookie", "query"]
QUERY_PARAMETER = "access_token"
_QUERY_NAME = ProtectedName(QUERY_PARAMETER)


class InvalidTokenRequest(BadRequest):
    """RFC 6750 §3.1 invalid_request: 400 with a Bearer challenge naming the problem."""

    code = "invalid_request"

    def extra_headers(self) -> Headers:
        return bearer_challenge("invalid_request", self.description)


class FoundToken(NamedTuple):  # a tuple: one is built for every authenticated request
    token: str
    source: TokenSource
    # With a query token: the query string to forward, without the token (it must not reach logs).
    forward_query: bytes | None = None


class TokenSources:
    def __init__(self, *, cookie: str | None = None, allow_query: bool = False) -> None:
        self.cookie_name = ProtectedName(cookie) if cookie else None
        self.allow_query = allow_query

    def find(self, headers: Headers, query_string: bytes) -> FoundToken | None:
        authorization: bytes | None = None
        cookie_headers: list[bytes] = []
        for name, value in headers:
            if name == b"authorization":
                if authorization is not None:
                    raise InvalidTokenRequest("more than one Authorization header")
                authorization = value
            elif name == b"cookie" and self.cookie_name is not None:
                cookie_headers.append(value)

        found: FoundToken | None = None
        if authorization is not None:
            scheme, _, token = authorization.strip().partition(b" ")
            if scheme.lower() == b"bearer":
                found = FoundToken(token.strip().decode("latin-1"), "header")
        if cookie_headers:
            # Read even when the header wins, so that a disguised second token cookie is refused.
            from_cookie = self.from_cookies(cookie_headers)
            if found is None:
                found = from_cookie
        if query_string and _QUERY_NAME.might_be_in(query_string):
            from_query = self.from_query(query_string)
            if from_query is not None:
                if found is not None:
                    raise InvalidTokenRequest("the token was sent in more than one way")
                found = from_query
        return found

    def from_cookies(self, cookie_headers: list[bytes]) -> FoundToken | None:
        assert self.cookie_name is not None
        try:
            values = self.cookie_name.cookie_values(cookie_headers)
        except DisguisedName as exc:
            raise InvalidTokenRequest(f"{exc}; send the token cookie under its exact name") from None
        if len(values) > 1:
            # Two cookies of one name (e.g. one planted from a sibling subdomain): refuse to guess.
            raise InvalidTokenRequest("more than one token cookie")
        return FoundToken(values[0].strip(b'"').decode("latin-1"), "cookie") if values else None

    def from_query(self, query_string: bytes) -> FoundToken | None:
        # Split the raw bytes so every other parameter is forwarded exactly as the client sent it.
        tokens: list[str] = []
        disguised = False
        rest: list[bytes] = []
        for piece in query_string.split(b"&"):
            parts = piece.split(b";")
            if not any(_QUERY_NAME.is_spelled_by(part.partition(b"=")[0]) for part in parts):
                rest.append(piece)
                continue
            name, _, value = piece.partition(b"=")
            if len(parts) == 1 and unquote_plus(name.decode("latin-1")) == QUERY_PARAMETER:
                tokens.append(unquote_plus(value.decode("latin-1"), encoding="latin-1"))
            else:
                disguised = True
        if not tokens and not disguised:
            return None  # the letters appeared, but not as a parameter name (e.g. in a value)
        if not self.allow_query:
            raise InvalidTokenRequest(
                "tokens are not accepted in the query string; use the Authorization header"
            )
        if disguised:
            raise InvalidTokenRequest(
                "a query parameter name that applications read as access_token; "
                "send a query token as exactly access_token, or in the Authorization header"
            )
        if len(tokens) > 1:
            raise InvalidTokenRequest("more than one access_token parameter")
        return FoundToken(tokens[0], "query", b"&".join(rest))
