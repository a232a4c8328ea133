"""Who is calling, as the sidecar asserts it in X-Auth-Request-Jwt, and nothing else.

The assertion is an ES256 JWT signed by the sidecar: `iss` "authcar", `aud` ours, `exp`/`iat`, and
the `method` and `path` of the one request it was minted for, so it cannot be replayed against
another endpoint. `sub` is absent for anonymous callers; `roles` is a list of strings.
`RequireAssertion` refuses every request without a valid one (401) before routing, except the probe.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import jwt

from book_service.errors import error_response
from book_service.keys import AssertionKeys, KeyNotFound

log = logging.getLogger("book_service.trust")

ASSERTION_HEADER = b"x-auth-request-jwt"
ISSUER = "authcar"
ALGORITHM = "ES256"
# Checked before any decoding: a real assertion is well under 2 KiB.
MAX_ASSERTION_BYTES = 8192
# A thumbprint is 43 base64url characters; anything else is not a kid the sidecar made.
KID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")
# JOSE header parameters that change how the token is processed; we implement none of them.
REFUSED_HEADER_PARAMETERS = frozenset({"crit", "b64", "zip", "enc"})
REQUIRED_CLAIMS = ("iss", "aud", "exp", "iat", "method", "path")
# Paths served without an assertion (GET/HEAD only): the probe the kubelet calls directly.
UNASSERTED_PATHS = frozenset({"/healthz"})
CALLER_SCOPE_KEY = "book_service.caller"


class AssertionRejected(Exception):
    def __init__(self, code: str, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


@dataclass(frozen=True, slots=True)
class Caller:
    """The asserted identity; `subject` is None for a caller the sidecar let through anonymously."""

    subject: str | None
    roles: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def is_anonymous(self) -> bool:
        return self.subject is None

    def has_role(self, role: str) -> bool:
        return role in self.roles


class AssertionVerifier:
    def __init__(self, keys: AssertionKeys, *, audience: str, leeway: float) -> None:
        self.keys = keys
        self.audience = audience
        self.leeway = leeway

    async def verify(self, token: str, method: str, path: str) -> Caller:
        """The caller the token asserts for this method and path, or AssertionRejected."""
        if len(token) > MAX_ASSERTION_BYTES:
            raise AssertionRejected("malformed", "the assertion is too large")
        if token.count(".") != 2:
            raise AssertionRejected("malformed", "the assertion is not a signed JWT")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AssertionRejected("malformed", "the assertion's header is unreadable") from None
        # Exact match, before any key is looked up: no "none", no HMAC, no other curve.
        if header.get("alg") != ALGORITHM:
            raise AssertionRejected("alg_not_allowed", f"only {ALGORITHM} assertions are accepted")
        if REFUSED_HEADER_PARAMETERS.intersection(header):
            raise AssertionRejected("malformed", "the assertion uses an unsupported JOSE extension")
        kid = header.get("kid")
        if not isinstance(kid, str) or not KID_PATTERN.fullmatch(kid):
            raise AssertionRejected("malformed", "the assertion has no usable key id")
        try:
            key = await self.keys.key_for(kid)
        except KeyNotFound as error:
            raise AssertionRejected(error.code, error.description) from None
        claims = self.decode(token, key)
        # The assertion was minted for one request; it proves nothing about any other.
        if claims["method"] != method:
            raise AssertionRejected("method_mismatch", "the assertion was issued for another method")
        if claims["path"] != path:
            raise AssertionRejected("path_mismatch", "the assertion was issued for another path")
        return caller_from(claims)

    def decode(self, token: str, key: Any) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=ISSUER,
                leeway=self.leeway,
                options={"require": list(REQUIRED_CLAIMS), "strict_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise AssertionRejected("expired", "the assertion has expired") from None
        except jwt.InvalidAudienceError:
            raise AssertionRejected("wrong_audience", "the assertion is for another audience") from None
        except jwt.InvalidIssuerError:
            raise AssertionRejected("wrong_issuer", "the assertion was not issued by authcar") from None
        except jwt.InvalidSignatureError:
            raise AssertionRejected("bad_signature", "the assertion's signature does not verify") from None
        except jwt.ImmatureSignatureError:
            raise AssertionRejected("not_yet_valid", "the assertion is not valid yet") from None
        except jwt.MissingRequiredClaimError as error:
            raise AssertionRejected("missing_claim", f"the assertion has no {error.claim!r} claim") from None
        except jwt.InvalidTokenError:
            raise AssertionRejected("malformed", "the assertion is not a valid JWT") from None
        # pyjwt compares these already; an exact comparison here costs nothing and survives upgrades.
        if claims["iss"] != ISSUER:
            raise AssertionRejected("wrong_issuer", "the assertion was not issued by authcar")
        if not isinstance(claims["method"], str) or not isinstance(claims["path"], str):
            raise AssertionRejected("malformed", "the assertion's method and path must be strings")
        return claims


def caller_from(claims: Mapping[str, Any]) -> Caller:
    subject = claims.get("sub")
    if subject is not None and (not isinstance(subject, str) or not subject):
        raise AssertionRejected("malformed", "the assertion's subject must be a non-empty string")
    roles = claims.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
        raise AssertionRejected("malformed", "the assertion's roles must be a list of strings")
    return Caller(subject=subject, roles=frozenset(roles), claims=MappingProxyType(dict(claims)))


def request_path(scope: Mapping[str, Any]) -> str:
    """The path exactly as the sidecar forwarded (and asserted) it: undecoded, without the query."""
    raw_path: bytes | None = scope.get("raw_path")
    if raw_path is None:
        return str(scope["path"])
    return raw_path.partition(b"?")[0].decode("latin-1")


def caller_of(scope: Mapping[str, Any]) -> Caller:
    return scope[CALLER_SCOPE_KEY]


class RequireAssertion:
    """ASGI middleware: a verified Caller in the scope, or 401 before the request is routed."""

    def __init__(self, app: Any, verifier: AssertionVerifier) -> None:
        self.app = app
        self.verifier = verifier

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            # lifespan passes; the service has no WebSocket endpoints, so any other scope is refused.
            if scope["type"] == "lifespan":
                await self.app(scope, receive, send)
            elif scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        method, path = scope["method"], request_path(scope)
        if method in ("GET", "HEAD") and path in UNASSERTED_PATHS:
            await self.app(scope, receive, send)
            return
        tokens = [value for name, value in scope["headers"] if name == ASSERTION_HEADER]
        try:
            if not tokens:
                raise AssertionRejected("missing_assertion", "the request carries no X-Auth-Request-Jwt")
            if len(tokens) > 1:
                raise AssertionRejected("malformed", "the request carries more than one X-Auth-Request-Jwt")
            caller = await self.verifier.verify(tokens[0].decode("latin-1"), method, path)
        except AssertionRejected as rejected:
            log.warning("request refused: %s %r: %s (%s)", method, path, rejected.description, rejected.code)
            response = error_response(scope, 401, rejected.code, rejected.description)
            await response(scope, receive, send)
            return
        await self.app({**scope, CALLER_SCOPE_KEY: caller}, receive, send)
