"""From verified claims to an Identity: subject, roles and scopes, by configurable claim paths.

Shared by the stages that read claims (token validation and introspection, the identity headers) and
by `authcar policy test`, which builds identities the way the sidecar does; so it depends on none of
them, and `TokenRejected`, the refusal of a token or of its claims, is defined here.

Claim paths are dotted (`realm_access.roles`), but a claim whose own name contains dots (Auth0's
namespaced `https://example.com/roles`) is found by its full name first. Roles may be a list or a
space/comma-separated string. Every value that will later travel in a header is checked here: a
claim with control characters (CR/LF header smuggling) makes the whole token unacceptable.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from authcar.identity import Identity, IdentitySource

MAX_ROLES = 256
MAX_VALUE_LENGTH = 1024
UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f\u0080-\u009f\u2028\u2029]")
SEPARATORS = re.compile(r"[\s,]+")


class TokenRejected(Exception):
    """The token is not acceptable; `reason` is a stable code for logs and metrics."""

    def __init__(self, reason: str, description: str) -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted claim path, or None."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def checked(value: str, what: str) -> str:
    if len(value) > MAX_VALUE_LENGTH or UNPRINTABLE.search(value):
        raise TokenRejected("invalid_claim", f"the token's {what} holds characters that are not allowed")
    return value


def string_values(value: Any, what: str) -> list[str]:
    """Strings from a claim that may be a list of strings or one separated string."""
    if value is None:
        return []
    if isinstance(value, str):
        return [checked(v, what) for v in SEPARATORS.split(value) if v]
    if isinstance(value, Sequence):
        return [checked(v, what) for v in value if isinstance(v, str) and v]
    return []


@dataclass(frozen=True)
class ClaimMapping:
    subject_claim: str = "sub"
    role_claims: tuple[str, ...] = ("groups", "roles", "realm_access.roles")
    fallback_subject_claim: str = "client_id"  # opaque tokens of machine clients may carry no `sub`

    def identity(self, claims: Mapping[str, Any], issuer: str, source: IdentitySource) -> Identity:
        subject = claim_at(claims, self.subject_claim)
        if not isinstance(subject, str) or not subject:
            subject = claim_at(claims, self.fallback_subject_claim)
        if not isinstance(subject, str) or not subject:
            raise TokenRejected("missing_claim", f"the token has no {self.subject_claim!r} claim")
        roles: set[str] = set()
        for path in self.role_claims:
            roles.update(string_values(claim_at(claims, path), "roles"))
        if len(roles) > MAX_ROLES:
            raise TokenRejected("invalid_claim", "the token carries too many roles")
        scope = claims.get("scope")
        scopes = string_values(scope if isinstance(scope, str) else claims.get("scp"), "scope")
        return Identity(
            subject=checked(subject, "subject"),
            issuer=issuer,
            roles=frozenset(roles),
            scopes=frozenset(scopes),
            claims=MappingProxyType(dict(claims)),
            source=source,
        )
