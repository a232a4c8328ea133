"""The claim checks an ID token and a logout token need beyond any token's: what the JWT validator
(authcar/authn/jwt.py: size, signature, exact issuer, `aud`, `exp`/`iat`/`nbf` with leeway) does not
know, because it is about this login or this kind of token.

ID token (OpenID Connect Core 1.0, 3.1.3.7): `aud` names our client, several audiences need
`azp` = our client, the `nonce` is this attempt's, the subject is a bounded string.

Logout token (OpenID Connect Back-Channel Logout 1.0, 2.6): the back-channel event is there (its
value a JSON object), there is no `nonce` (so an ID token is never mistaken for one), `jti` and
`iat` are present, `iat` is recent, and it names a `sid`, a `sub` or both. That the `jti` was not
seen before is the caller's to check, in the shared store.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
MAX_CLAIM_CHARS = 255  # sub, sid, jti: identifiers, not documents (they become hashed store keys)
LOGOUT_TOKEN_MAX_AGE = 120.0  # seconds: a logout token is delivered at once, not replayed later


class LoginTokenRejected(Exception):
    """The token cannot finish a login or end a session; `reason` is a stable code for logs."""

    def __init__(self, reason: str, description: str) -> None:
        super().__init__(f"{reason}: {description}")
        self.reason = reason
        self.description = description


@dataclass(frozen=True)
class LogoutRequest:
    """What a valid logout token asks: end the sessions of `sid` and/or `sub` at that issuer."""

    jti: str
    sid: str | None
    sub: str | None
    issued_at: float


def identifier(claims: Mapping[str, Any], name: str, *, required: bool) -> str | None:
    value = claims.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_CLAIM_CHARS or not value.isprintable():
        raise LoginTokenRejected("malformed", f"the {name!r} claim is missing or not a short string")
    return value


def audiences(claims: Mapping[str, Any]) -> list[str]:
    audience = claims.get("aud")
    listed = [audience] if isinstance(audience, str) else audience
    if not isinstance(listed, list) or not listed or not all(isinstance(a, str) for a in listed):
        raise LoginTokenRejected("wrong_audience", "the token has no audience")
    return listed


def check_id_token(claims: Mapping[str, Any], *, client_id: str, nonce: str) -> str:
    """The checks of an ID token for this login attempt; its subject."""
    listed = audiences(claims)
    if client_id not in listed:
        raise LoginTokenRejected("wrong_audience", "the ID token is not for this client")
    azp = claims.get("azp")
    if (len(listed) > 1 or azp is not None) and azp != client_id:
        raise LoginTokenRejected("wrong_audience", "the ID token was issued to another party (azp)")
    given = claims.get("nonce")
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(), nonce.encode()):
        raise LoginTokenRejected("wrong_nonce", "the ID token is not for this login attempt")
    sub = identifier(claims, "sub", required=True)
    assert sub is not None
    return sub


def check_logout_token(
    claims: Mapping[str, Any],
    *,
    client_id: str,
    now: float,
    leeway: float,
    max_age: float = LOGOUT_TOKEN_MAX_AGE,
) -> LogoutRequest:
    """The checks of a logout token (after the validator's); what it asks to end."""
    if client_id not in audiences(claims):
        raise LoginTokenRejected("wrong_audience", "the logout token is not for this client")
    events = claims.get("events")
    if not isinstance(events, Mapping) or not isinstance(events.get(BACKCHANNEL_LOGOUT_EVENT), Mapping):
        raise LoginTokenRejected("not_a_logout_token", "the back-channel logout event is missing")
    if "nonce" in claims:
        raise LoginTokenRejected("not_a_logout_token", "a logout token carries no nonce")
    jti = identifier(claims, "jti", required=True)
    assert jti is not None
    iat = claims.get("iat")
    if type(iat) not in (int, float) or iat != iat:  # a JSON number (not a bool, not NaN)
        raise LoginTokenRejected("malformed", "the 'iat' claim is missing or not a number")
    if iat > now + leeway or now - iat > max_age + leeway:
        raise LoginTokenRejected("stale", "the logout token was not issued just now")
    sid = identifier(claims, "sid", required=False)
    sub = identifier(claims, "sub", required=False)
    if sid is None and sub is None:
        raise LoginTokenRejected("malformed", "the logout token names neither a sid nor a sub")
    return LogoutRequest(jti, sid, sub, float(iat))
