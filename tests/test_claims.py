"""Mapping verified claims to an Identity."""

from __future__ import annotations

import pytest

from authcar.claims import ClaimMapping, TokenRejected, claim_at

KEYCLOAK = {
    "sub": "f3a1",
    "preferred_username": "alice",
    "realm_access": {"roles": ["reader", "editor"]},
    "groups": ["/staff"],
    "scope": "openid books:read",
}


def test_keycloak_shaped_claims() -> None:
    identity = ClaimMapping().identity(KEYCLOAK, "https://idp/realms/test", "jwt")
    assert identity.subject == "f3a1"
    assert identity.roles == {"reader", "editor", "/staff"}
    assert identity.scopes == {"openid", "books:read"}
    assert identity.issuer == "https://idp/realms/test"
    assert identity.source == "jwt"
    with pytest.raises(TypeError):
        identity.claims["sub"] = "mallory"  # type: ignore[index]


def test_namespaced_claims_with_dots_and_string_roles() -> None:
    claims = {"sub": "auth0|1", "https://books.example/roles": "admin, editor", "scp": ["a", "b"]}
    mapping = ClaimMapping(role_claims=("https://books.example/roles",))
    identity = mapping.identity(claims, "iss", "jwt")
    assert identity.roles == {"admin", "editor"}
    assert identity.scopes == {"a", "b"}
    assert claim_at({"a": {"b": {"c": 1}}}, "a.b.c") == 1
    assert claim_at({"a": [1]}, "a.b") is None


def test_subject_claim_is_configurable_with_a_fallback_for_machine_clients() -> None:
    assert ClaimMapping(subject_claim="preferred_username").identity(KEYCLOAK, "i", "jwt").subject == "alice"
    assert ClaimMapping().identity({"client_id": "billing"}, "i", "introspection").subject == "billing"
    with pytest.raises(TokenRejected) as missing:
        ClaimMapping().identity({"scope": "x"}, "i", "jwt")
    assert missing.value.reason == "missing_claim"


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "alice\r\nX-Auth-Request-User: admin"},
        {"sub": "alice", "roles": ["reader\nadmin"]},
        {"sub": "alice", "groups": ["ok", "bad\x00"]},
        {"sub": "alice\u2028"},
        {"sub": "a" * 5000},
        {"sub": "alice", "roles": [f"r{i}" for i in range(300)]},
    ],
)
def test_values_that_could_smuggle_headers_make_the_token_unacceptable(claims: dict[str, object]) -> None:
    with pytest.raises(TokenRejected) as rejected:
        ClaimMapping().identity(claims, "i", "jwt")
    assert rejected.value.reason == "invalid_claim"


def test_non_string_roles_are_ignored_not_stringified() -> None:
    identity = ClaimMapping().identity({"sub": "a", "roles": ["ok", 1, None, {"x": 1}]}, "i", "jwt")
    assert identity.roles == {"ok"}
