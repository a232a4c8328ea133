"""Where a request's bearer token comes from: the Authorization header, a named cookie, or (only when
enabled) the `access_token` query parameter (RFC 6750 §2).

A request that offers its token in more than one way is refused (RFC 6750 §2: clients MUST NOT use
more than one method), except that an Authorization header wins over a cookie: cookies are sent by
the browser on its own, the header is what the client chose. The Basic scheme and friends are not
ours to judge: they count as no token.
"""

from __future__ import annotations

from typing import Literal, NamedTuple
from urllib.parse import unquote_plus

from authcar.errors import BadRequest, bearer_challenge
from authcar.types import Headers

TokenSource = Literal["header", "cookie", "query"]
QUERY_PARAMETER = b"access_token"


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
        self.cookie = cookie.encode("latin-1") if cookie else None
        self.allow_query = allow_query

    def find(self, headers: Headers, query_string: bytes) -> FoundToken | None:
        authorization: bytes | None = None
        cookie_headers: list[bytes] = []
        for name, value in headers:
            if name == b"authorization":
                if authorization is not None:
                    raise InvalidTokenRequest("more than one Authorization header")
                authorization = value
            elif name == b"cookie" and self.cookie is not None:
                cookie_headers.append(value)

        found: FoundToken | None = None
        if authorization is not None:
            scheme, _, token = authorization.strip().partition(b" ")
            if scheme.lower() == b"bearer":
                found = FoundToken(token.strip().decode("latin-1"), "header")
        if found is None and cookie_headers:
            found = self.from_cookies(cookie_headers)
        if query_string and QUERY_PARAMETER in query_string:
            from_query = self.from_query(query_string)
            if from_query is not None:
                if found is not None:
                    raise InvalidTokenRequest("the token was sent in more than one way")
                found = from_query
        return found

    def from_cookies(self, cookie_headers: list[bytes]) -> FoundToken | None:
        assert self.cookie is not None
        values: list[bytes] = []
        for header in cookie_headers:
            for pair in header.split(b";"):
                name, eq, value = pair.strip().partition(b"=")
                if eq and name == self.cookie:
                    values.append(value.strip().strip(b'"'))
        if len(values) > 1:
            # Two cookies of one name (e.g. one planted from a sibling subdomain): refuse to guess.
            raise InvalidTokenRequest("more than one token cookie")
        return FoundToken(values[0].decode("latin-1"), "cookie") if values else None

    def from_query(self, query_string: bytes) -> FoundToken | None:
        # Split the raw bytes so every other parameter is forwarded exactly as the client sent it.
        pieces = query_string.split(b"&")
        tokens: list[str] = []
        rest: list[bytes] = []
        for piece in pieces:
            name, _, value = piece.partition(b"=")
            if unquote_plus(name.decode("latin-1")) == "access_token":
                tokens.append(unquote_plus(value.decode("latin-1"), encoding="latin-1"))
            else:
                rest.append(piece)
        if not tokens:
            return None  # the bytes appeared, but not as a parameter name (e.g. in a value)
        if not self.allow_query:
            raise InvalidTokenRequest(
                "tokens are not accepted in the query string; use the Authorization header"
            )
        if len(tokens) > 1:
            raise InvalidTokenRequest("more than one access_token parameter")
        return FoundToken(tokens[0], "query", b"&".join(rest))
