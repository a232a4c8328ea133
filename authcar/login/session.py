"""What a browser session holds, as stored in SessionRecords (authcar/store/sessions.py) under the
random id in the session cookie: who signed in (the ID token's claims, with userinfo's where the
provider has it) and the provider's tokens, which never leave the sidecar toward the browser.

Stored as compact JSON, versioned, bounded: a provider that answers with enormous tokens or claims
cannot make one session an unbounded value in the shared store.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, replace
from typing import Any

VERSION = 1
MAX_SESSION_BYTES = 64 * 1024  # tokens and claims of real providers take a few KiB
SESSION_ID_BYTES = 32  # 256 random bits, as the login-state values
# Claims that are about the ID token itself, not about the person: not kept as the identity.
TOKEN_ONLY_CLAIMS = frozenset({"nonce", "at_hash", "c_hash", "s_hash"})


class SessionTooLarge(ValueError):
    """The provider's tokens and claims do not fit in a session."""


def new_session_id() -> str:
    return secrets.token_urlsafe(SESSION_ID_BYTES)


@dataclass(frozen=True)
class BrowserSession:
    subject: str
    issuer: str
    claims: dict[str, Any]  # the ID token's (less TOKEN_ONLY_CLAIMS), then userinfo's
    access_token: str
    refresh_token: str | None
    id_token: str  # for RP-initiated logout's id_token_hint, sent only to the provider itself
    obtained_at: float  # when the provider's token answer arrived
    expires_at: float | None  # obtained_at + expires_in; None when the provider did not say
    provider_sid: str | None  # the ID token's `sid`: what a back-channel logout names
    signed_in_at: float

    def refreshed(
        self, *, access_token: str, refresh_token: str | None, obtained_at: float, expires_at: float | None,
        claims: dict[str, Any] | None = None, id_token: str | None = None,
    ) -> BrowserSession:  # fmt: skip
        return replace(
            self,
            access_token=access_token,
            # RFC 6749 6: a provider that issues no new refresh token keeps the old one valid.
            refresh_token=refresh_token or self.refresh_token,
            obtained_at=obtained_at,
            expires_at=expires_at,
            claims=self.claims if claims is None else claims,
            id_token=id_token or self.id_token,
        )

    def to_bytes(self) -> bytes:
        data = json.dumps(
            {
                "v": VERSION,
                "sub": self.subject,
                "iss": self.issuer,
                "claims": self.claims,
                "at": self.access_token,
                "rt": self.refresh_token,
                "it": self.id_token,
                "ot": self.obtained_at,
                "exp": self.expires_at,
                "psid": self.provider_sid,
                "t0": self.signed_in_at,
            },
            separators=(",", ":"),
            ensure_ascii=True,
        ).encode("ascii")
        if len(data) > MAX_SESSION_BYTES:
            raise SessionTooLarge(f"the session would take {len(data)} bytes")
        return data

    @classmethod
    def from_bytes(cls, data: bytes) -> BrowserSession | None:
        """None for a record this version cannot read (written by a newer one, or damaged): the
        browser signs in again rather than being let in on a guess."""
        try:
            raw = json.loads(data)
            if not isinstance(raw, dict) or raw.get("v") != VERSION:
                return None
            session = cls(
                subject=raw["sub"],
                issuer=raw["iss"],
                claims=raw["claims"],
                access_token=raw["at"],
                refresh_token=raw["rt"],
                id_token=raw["it"],
                obtained_at=float(raw["ot"]),
                expires_at=None if raw["exp"] is None else float(raw["exp"]),
                provider_sid=raw["psid"],
                signed_in_at=float(raw["t0"]),
            )
        except (ValueError, KeyError, TypeError):
            return None
        strings = (session.subject, session.issuer, session.access_token, session.id_token)
        if not all(isinstance(value, str) for value in strings) or not isinstance(session.claims, dict):
            return None
        return session


def identity_claims(id_token_claims: dict[str, Any], userinfo: dict[str, Any] | None) -> dict[str, Any]:
    """The claims that describe the person: the ID token's, with userinfo's added (OIDC Core 5.3.2:
    userinfo's `sub` must be the ID token's, checked by the caller; the ID token's `iss`, `aud`,
    `exp`... are kept, userinfo cannot replace them)."""
    claims = {name: value for name, value in id_token_claims.items() if name not in TOKEN_ONLY_CLAIMS}
    for name, value in (userinfo or {}).items():
        claims.setdefault(name, value)
    return claims
