"""The test identity provider itself, over real HTTP: what authcar's authentication tests will stand on."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import json
import re
import secrets
import signal
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from tests.idp import ENDPOINTS, IdP, idp_process, run_idp
from tests.idp.relying_party import relying_party

AUTH = ("authcar", "authcar-secret")
ALGS = ("RS256", "PS256", "ES256", "ES384", "EdDSA")
REDIRECT = "http://127.0.0.1:4180/oauth2/callback"


@pytest.fixture
async def idp() -> AsyncIterator[IdP]:
    async with run_idp() as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


def pick(mapping: dict[str, Any], *names: str) -> dict[str, Any]:
    return {name: mapping.get(name) for name in names}


def header_of(token: str, part: int = 0) -> dict[str, Any]:
    """The JOSE header (or, part=1, the claims) as written: pyjwt refuses to read past an unknown `crit`."""
    return dict(json.loads(base64.urlsafe_b64decode(token.split(".")[part] + "==")))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def verify(token: str, jwks: dict[str, Any], idp: IdP, **options: Any) -> dict[str, Any]:
    """What a relying party does: the key by kid from the JWKS, that key's algorithm only."""
    key = jwt.PyJWKSet.from_dict(jwks)[jwt.get_unverified_header(token)["kid"]]
    options.setdefault("audience", "api")
    return jwt.decode(token, key, algorithms=[key.algorithm_name], issuer=idp.issuer, **options)


async def fetch_jwks(http: httpx.AsyncClient, idp: IdP) -> dict[str, Any]:
    response = await http.get(idp.jwks_uri)
    assert response.status_code == 200
    return dict(response.json())


async def introspect(http: httpx.AsyncClient, idp: IdP, token: str) -> dict[str, Any]:
    response = await http.post(idp.introspection_endpoint, data={"token": token}, auth=AUTH)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def authorize(
    http: httpx.AsyncClient, idp: IdP, verifier: str, *, redirect_uri: str = REDIRECT, **params: str
) -> dict[str, str]:
    """Run the authorization endpoint (it signs the test user in by itself); the redirect's query."""
    query = {
        "response_type": "code",
        "client_id": "authcar",
        "redirect_uri": redirect_uri,
        "state": "state-1",
        "nonce": "nonce-1",
        "scope": "openid read",
        "code_challenge": b64url(hashlib.sha256(verifier.encode()).digest()),
        "code_challenge_method": "S256",
        **params,
    }
    response = await http.get(idp.authorization_endpoint, params=query)
    assert response.status_code == 302, response.text
    location = urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == redirect_uri
    return {name: values[0] for name, values in parse_qs(location.query).items()}


async def code_grant(
    http: httpx.AsyncClient, idp: IdP, code: str, verifier: str, redirect_uri: str = REDIRECT
) -> httpx.Response:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": redirect_uri,
    }
    return await http.post(idp.token_endpoint, data=form, auth=AUTH)


async def log_in(http: httpx.AsyncClient, idp: IdP) -> dict[str, Any]:
    verifier = secrets.token_urlsafe(48)
    answer = await authorize(http, idp, verifier)
    response = await code_grant(http, idp, answer["code"], verifier)
    assert response.status_code == 200, response.text
    return dict(response.json())


# -- discovery and keys


async def test_discovery_names_every_endpoint_under_the_issuer(idp: IdP, http: httpx.AsyncClient) -> None:
    assert idp.issuer == f"{idp.url}/realms/test"
    response = await http.get(f"{idp.issuer}/.well-known/openid-configuration")
    assert response.status_code == 200
    document = response.json()
    assert document["issuer"] == idp.issuer
    assert document["jwks_uri"] == idp.jwks_uri == idp.issuer + ENDPOINTS["jwks"]
    assert document["token_endpoint"] == idp.token_endpoint
    assert document["introspection_endpoint"] == idp.introspection_endpoint
    for name in (
        "authorization_endpoint",
        "end_session_endpoint",
        "userinfo_endpoint",
        "revocation_endpoint",
    ):
        assert document[name].startswith(idp.issuer + "/protocol/openid-connect/")
    assert document["response_types_supported"] == ["code"]
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert set(document["grant_types_supported"]) == {
        "authorization_code",
        "client_credentials",
        "refresh_token",
    }
    methods = ["client_secret_basic", "client_secret_post"]
    assert document["token_endpoint_auth_methods_supported"] == methods
    assert document["introspection_endpoint_auth_methods_supported"] == methods
    assert set(document["id_token_signing_alg_values_supported"]) == set(ALGS)

    idp.discovery_overrides["issuer"] = idp.issuer + "-evil"  # a lying document, for mix-up tests
    assert (await http.get(idp.endpoint("discovery"))).json()["issuer"] == idp.issuer + "-evil"


async def test_issuer_path_can_be_empty() -> None:
    async with run_idp(issuer_path="") as idp, httpx.AsyncClient() as http:
        assert idp.issuer == idp.url
        document = (await http.get(f"{idp.url}/.well-known/openid-configuration")).json()
        assert document["issuer"] == idp.url
        assert document["jwks_uri"] == f"{idp.url}/protocol/openid-connect/certs"


async def test_jwks_publishes_every_key_type_with_unique_kids(idp: IdP, http: httpx.AsyncClient) -> None:
    jwks = await fetch_jwks(http, idp)
    keys = jwks["keys"]
    assert {(key["kty"], key["alg"], key.get("crv")) for key in keys} == {
        ("RSA", "RS256", None),
        ("RSA", "PS256", None),
        ("EC", "ES256", "P-256"),
        ("EC", "ES384", "P-384"),
        ("OKP", "EdDSA", "Ed25519"),
    }
    assert len({key["kid"] for key in keys}) == len(keys)
    assert all(key["use"] == "sig" and "d" not in key for key in keys)  # public halves only
    assert idp.keys == jwks
    assert idp.jwks_fetches == 1  # reading idp.keys is not a fetch


@pytest.mark.parametrize("alg", ALGS)
async def test_minted_tokens_verify_with_the_published_key(
    idp: IdP, http: httpx.AsyncClient, alg: str
) -> None:
    token = idp.mint(alg=alg, sub="bob", roles=["admin", "reader"], groups=["/staff"], scope="read write")
    header = jwt.get_unverified_header(token)
    assert pick(header, "alg", "typ") == {"alg": alg, "typ": "JWT"}
    assert next(key for key in idp.keys["keys"] if key["kid"] == header["kid"])["alg"] == alg
    claims = verify(token, await fetch_jwks(http, idp), idp)
    assert pick(
        claims, "sub", "preferred_username", "email", "realm_access", "groups", "scope", "typ", "azp"
    ) == {
        "sub": "bob",
        "preferred_username": "bob",
        "email": "bob@example.com",
        "realm_access": {"roles": ["admin", "reader"]},
        "groups": ["/staff"],
        "scope": "read write",
        "typ": "Bearer",
        "azp": "authcar",
    }
    assert claims["exp"] - claims["iat"] == 300
    assert claims["nbf"] == claims["iat"]
    assert claims["jti"]


async def test_mint_bends_claims_and_headers_for_attack_tests(idp: IdP, http: httpx.AsyncClient) -> None:
    jwks = await fetch_jwks(http, idp)
    token = idp.mint({"extra": 1}, headers={"crit": ["exp-ext"], "jku": "http://evil/jwks"}, omit=["exp"])
    assert pick(header_of(token), "crit", "jku") == {"crit": ["exp-ext"], "jku": "http://evil/jwks"}
    assert pick(header_of(token, part=1), "extra", "exp") == {"extra": 1, "exp": None}
    with pytest.raises(jwt.InvalidTokenError, match="Unsupported critical extension"):
        verify(token, jwks, idp)

    evil = idp.mint(iss=idp.issuer + "-evil")  # issuer-as-substring bugs
    with pytest.raises(jwt.InvalidIssuerError):
        verify(evil, jwks, idp)

    assert "kid" not in header_of(idp.mint(omit_headers=["kid"]))
    assert header_of(idp.mint(headers={"kid": 7}))["kid"] == 7  # pyjwt.encode would refuse to write this
    # The header may lie about the algorithm: the signature is still made with `alg`.
    liar = idp.mint(headers={"alg": "ES256"})
    assert header_of(liar)["alg"] == "ES256"
    signing_input, _, signature = liar.rpartition(".")
    rs256 = jwt.get_algorithm_by_name("RS256")
    public = idp.private_key(header_of(liar)["kid"]).public_key()
    assert rs256.verify(signing_input.encode(), public, base64.urlsafe_b64decode(signature + "=="))
    unsigned = idp.mint(alg="none", headers={"alg": "NoNe"})
    assert unsigned.endswith(".")
    assert header_of(unsigned)["alg"] == "NoNe"

    # Algorithm confusion: HS256 keyed with the RS256 public key, as PEM and as the JWK published.
    rsa_key = next(key for key in jwks["keys"] if key["alg"] == "RS256")
    pem = (
        idp.private_key(rsa_key["kid"])
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for fmt, secret in (("pem", pem), ("jwk", json.dumps(rsa_key, separators=(",", ":")).encode())):
        forged = idp.mint(alg="HS256", hmac_key_format=fmt)
        signing_input, _, signature = forged.rpartition(".")
        assert header_of(forged) == {"alg": "HS256", "typ": "JWT", "kid": rsa_key["kid"]}
        assert signature == b64url(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())


async def test_rotation_publishes_a_new_kid_and_keeps_the_old_until_retired(
    idp: IdP, http: httpx.AsyncClient
) -> None:
    old_token = idp.mint()
    old_kid = header_of(old_token)["kid"]
    new_kid = idp.rotate("RS256")
    assert new_kid != old_kid
    jwks = await fetch_jwks(http, idp)
    assert {old_kid, new_kid} <= {key["kid"] for key in jwks["keys"]}
    new_token = idp.mint()
    assert header_of(new_token)["kid"] == new_kid  # the newest key signs
    verify(old_token, jwks, idp)
    verify(new_token, jwks, idp)

    idp.retire(old_kid)
    kids = {key["kid"] for key in (await fetch_jwks(http, idp))["keys"]}
    assert new_kid in kids
    assert old_kid not in kids
    assert (await introspect(http, idp, old_token)) == {"active": False}
    assert (
        header_of(idp.mint(kid=old_kid))["kid"] == old_kid
    )  # a retired key still signs, for stale-key tests
    assert idp.jwks_fetches == 2


async def test_unpublished_keys_have_kids_absent_from_the_jwks(idp: IdP, http: httpx.AsyncClient) -> None:
    kids = {key["kid"] for key in (await fetch_jwks(http, idp))["keys"]}
    for alg in ALGS:
        token = idp.mint(alg=alg, unpublished_key=True)
        kid = header_of(token)["kid"]
        assert kid not in kids
        # A real signature, by a key no relying party can know.
        public = idp.private_key(kid).public_key()
        assert jwt.decode(token, public, algorithms=[alg], audience="api")["sub"] == "alice"
        assert (await introspect(http, idp, token)) == {"active": False}


async def test_fresh_keys_are_not_shared() -> None:
    async with run_idp() as shared, run_idp(fresh_keys=True) as fresh:
        assert not {key["kid"] for key in shared.keys["keys"]} & {key["kid"] for key in fresh.keys["keys"]}


# -- token endpoint


async def test_client_credentials_with_basic_and_post_auth(idp: IdP, http: httpx.AsyncClient) -> None:
    jwks = await fetch_jwks(http, idp)
    basic = await http.post(idp.token_endpoint, data={"grant_type": "client_credentials"}, auth=AUTH)
    form = {"grant_type": "client_credentials", "client_id": "authcar", "client_secret": "authcar-secret"}
    post = await http.post(idp.token_endpoint, data={**form, "scope": "read write"})
    for response, scope in ((basic, "read"), (post, "read write")):
        assert response.status_code == 200, response.text
        assert response.headers["cache-control"] == "no-store"
        answer = response.json()
        assert pick(answer, "token_type", "expires_in", "scope", "refresh_token") == {
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": scope,
            "refresh_token": None,
        }
        claims = verify(answer["access_token"], jwks, idp)
        assert pick(claims, "sub", "client_id") == {"sub": "service-account-authcar", "client_id": "authcar"}
    assert idp.token_requests == 2


async def test_bad_client_authentication_is_refused(idp: IdP, http: httpx.AsyncClient) -> None:
    grant = {"grant_type": "client_credentials"}
    wrong = await http.post(idp.token_endpoint, data=grant, auth=("authcar", "wrong"))
    assert (wrong.status_code, wrong.json()["error"]) == (401, "invalid_client")
    assert wrong.headers["www-authenticate"].startswith("Basic")
    for form, auth in (
        ({**grant, "client_id": "authcar", "client_secret": "wrong"}, None),
        ({**grant, "client_id": "nobody", "client_secret": "x"}, None),
        (grant, None),
    ):
        assert (await http.post(idp.token_endpoint, data=form, auth=auth)).status_code == 401
    both = await http.post(idp.token_endpoint, data={**grant, "client_secret": "authcar-secret"}, auth=AUTH)
    assert (both.status_code, both.json()["error"]) == (400, "invalid_request")
    assert (await http.post(idp.token_endpoint, json=grant, auth=AUTH)).status_code == 400  # form bodies only
    unknown = await http.post(idp.token_endpoint, data={"grant_type": "password"}, auth=AUTH)
    assert unknown.json()["error"] == "unsupported_grant_type"


async def test_opaque_tokens_per_client_or_per_request(idp: IdP, http: httpx.AsyncClient) -> None:
    legacy = ("legacy", "legacy-secret")
    idp.register_client(*legacy, opaque=True, roles=["batch"])
    grant = {"grant_type": "client_credentials"}
    opaque = (await http.post(idp.token_endpoint, data=grant, auth=legacy)).json()["access_token"]
    assert "." not in opaque
    answer = await introspect(http, idp, opaque)
    assert pick(answer, "active", "client_id", "realm_access") == {
        "active": True,
        "client_id": "legacy",
        "realm_access": {"roles": ["batch"]},
    }
    asked = await http.post(idp.token_endpoint, data={**grant, "format": "opaque"}, auth=AUTH)
    assert "." not in asked.json()["access_token"]
    jwt_anyway = await http.post(idp.token_endpoint, data={**grant, "format": "jwt"}, auth=legacy)
    assert jwt_anyway.json()["access_token"].count(".") == 2


async def test_authorization_code_with_pkce(idp: IdP, http: httpx.AsyncClient) -> None:
    idp.login_as("u-123", username="carol", email="carol@example.com", roles=["editor"], groups=["/team"])
    verifier = secrets.token_urlsafe(48)
    answer = await authorize(http, idp, verifier)
    assert pick(answer, "state", "iss") == {"state": "state-1", "iss": idp.issuer}
    response = await code_grant(http, idp, answer["code"], verifier)
    assert response.status_code == 200, response.text
    tokens = response.json()
    assert set(tokens) >= {"access_token", "id_token", "refresh_token", "expires_in"}
    jwks = await fetch_jwks(http, idp)
    access = verify(tokens["access_token"], jwks, idp)
    assert pick(access, "sub", "preferred_username", "realm_access", "groups", "scope") == {
        "sub": "u-123",
        "preferred_username": "carol",
        "realm_access": {"roles": ["editor"]},
        "groups": ["/team"],
        "scope": "openid read",
    }
    id_token = verify(tokens["id_token"], jwks, idp, audience="authcar")
    assert pick(id_token, "nonce", "azp", "sid") == {
        "nonce": "nonce-1",
        "azp": "authcar",
        "sid": access["sid"],
    }
    assert id_token["at_hash"] == b64url(hashlib.sha256(tokens["access_token"].encode()).digest()[:16])


async def test_wrong_code_verifier_is_refused_and_codes_are_single_use(
    idp: IdP, http: httpx.AsyncClient
) -> None:
    verifier = secrets.token_urlsafe(48)
    code = (await authorize(http, idp, verifier))["code"]
    wrong = await code_grant(http, idp, code, secrets.token_urlsafe(48))
    assert (wrong.status_code, wrong.json()["error"]) == (400, "invalid_grant")
    assert (await code_grant(http, idp, code, verifier)).status_code == 400  # spent by the failed attempt

    code = (await authorize(http, idp, verifier))["code"]
    first = await code_grant(http, idp, code, verifier)
    assert first.status_code == 200
    replay = await code_grant(http, idp, code, verifier)
    assert (replay.status_code, replay.json()["error"]) == (400, "invalid_grant")
    # A replayed code revokes what it issued.
    assert (await introspect(http, idp, first.json()["access_token"])) == {"active": False}

    code = (await authorize(http, idp, verifier))["code"]
    other_redirect = await code_grant(http, idp, code, verifier, redirect_uri="http://127.0.0.1:4180/other")
    assert other_redirect.status_code == 400


async def test_authorization_endpoint_refusals(idp: IdP, http: httpx.AsyncClient) -> None:
    evil = await http.get(
        idp.authorization_endpoint,
        params={"response_type": "code", "client_id": "authcar", "redirect_uri": "https://evil.example/cb"},
    )
    assert evil.status_code == 400  # no redirect to an unregistered URI
    no_pkce = await authorize(http, idp, "x", code_challenge="", code_challenge_method="")
    assert pick(no_pkce, "error", "code") == {"error": "invalid_request", "code": None}
    plain = await authorize(http, idp, "x", code_challenge_method="plain")
    assert plain["error"] == "invalid_request"
    idp.login_as(None)
    denied = await authorize(http, idp, "x")
    assert pick(denied, "error", "state", "iss", "code") == {
        "error": "access_denied",
        "state": "state-1",
        "iss": idp.issuer,
        "code": None,
    }


async def test_refresh_token_grant_rotates_the_refresh_token(idp: IdP, http: httpx.AsyncClient) -> None:
    tokens = await log_in(http, idp)
    form = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    refreshed = await http.post(idp.token_endpoint, data=form, auth=AUTH)
    assert refreshed.status_code == 200, refreshed.text
    renewed = refreshed.json()
    assert renewed["access_token"] != tokens["access_token"]
    assert renewed["refresh_token"] != tokens["refresh_token"]
    assert "id_token" in renewed
    verify(renewed["access_token"], await fetch_jwks(http, idp), idp)
    again = await http.post(idp.token_endpoint, data=form, auth=AUTH)
    assert (again.status_code, again.json()["error"]) == (400, "invalid_grant")

    idp.register_client("other", "other-secret")
    stolen = {"grant_type": "refresh_token", "refresh_token": renewed["refresh_token"]}
    assert (
        await http.post(idp.token_endpoint, data=stolen, auth=("other", "other-secret"))
    ).status_code == 400


# -- introspection, revocation, userinfo, logout


async def test_introspection_answers_for_opaque_tokens_and_issued_jwts(
    idp: IdP, http: httpx.AsyncClient
) -> None:
    opaque = idp.mint_opaque(sub="dave", roles=["reader", "auditor"], groups=["/ops"], scope="read")
    answer = await introspect(http, idp, opaque)
    names = ("active", "sub", "client_id", "scope", "iss", "aud", "username", "realm_access", "groups")
    assert pick(answer, *names) == {
        "active": True,
        "sub": "dave",
        "client_id": "authcar",
        "scope": "read",
        "iss": idp.issuer,
        "aud": "api",
        "username": "dave",
        "realm_access": {"roles": ["reader", "auditor"]},
        "groups": ["/ops"],
    }
    assert answer["exp"] > answer["iat"]

    signed = await introspect(http, idp, idp.mint(sub="erin", alg="ES384"))
    assert pick(signed, "active", "sub", "token_type") == {
        "active": True,
        "sub": "erin",
        "token_type": "Bearer",
    }
    assert idp.introspections == 2


@pytest.mark.parametrize(
    "case", ["unknown", "revoked", "revoked_jwt", "expired", "expired_jwt", "inactive", "not_yet", "foreign"]
)
async def test_introspection_reports_inactive_tokens(idp: IdP, http: httpx.AsyncClient, case: str) -> None:
    tokens = {
        "unknown": lambda: "no-such-token",
        "revoked": lambda: idp.mint_opaque(),
        "revoked_jwt": lambda: idp.mint(),
        "expired": lambda: idp.mint_opaque(expires_in=-5),
        "expired_jwt": lambda: idp.mint(expires_in=-5),
        "inactive": lambda: idp.mint_opaque(active=False),
        "not_yet": lambda: idp.mint(nbf=int(time.time()) + 60),
        "foreign": lambda: idp.mint(iss=idp.issuer + "-evil"),
    }
    token = tokens[case]()
    if case.startswith("revoked"):
        assert (await introspect(http, idp, token))["active"] is True
        revoked = await http.post(idp.endpoint("revoke"), data={"token": token}, auth=AUTH)
        assert revoked.status_code == 200
    assert (await introspect(http, idp, token)) == {"active": False}


async def test_introspection_requires_client_authentication(idp: IdP, http: httpx.AsyncClient) -> None:
    token = idp.mint_opaque()
    for auth in (None, ("authcar", "wrong"), ("nobody", "x")):
        response = await http.post(idp.introspection_endpoint, data={"token": token}, auth=auth)
        assert (response.status_code, response.json()["error"]) == (401, "invalid_client")
    posted = {"token": token, "client_id": "authcar", "client_secret": "authcar-secret"}
    assert (await http.post(idp.introspection_endpoint, data=posted)).json()["active"] is True
    idp.revoke(token)  # the handle revokes too
    assert (await introspect(http, idp, token)) == {"active": False}
    assert idp.introspections == 5


async def test_userinfo_needs_an_active_access_token(idp: IdP, http: httpx.AsyncClient) -> None:
    tokens = await log_in(http, idp)
    info = await http.get(
        idp.userinfo_endpoint, headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert info.status_code == 200
    assert pick(info.json(), "sub", "email") == {"sub": "alice", "email": "alice@example.com"}
    for authorization in (None, f"Bearer {tokens['refresh_token']}", "Bearer nope"):
        headers = {"Authorization": authorization} if authorization else {}
        refused = await http.get(idp.userinfo_endpoint, headers=headers)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")


async def test_logout_ends_the_session_and_redirects(idp: IdP, http: httpx.AsyncClient) -> None:
    tokens = await log_in(http, idp)
    back = "http://127.0.0.1:4180/signed-out"
    params = {"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": back, "state": "bye"}
    response = await http.get(idp.end_session_endpoint, params=params)
    assert (response.status_code, response.headers["location"]) == (302, f"{back}?state=bye")
    for token in (tokens["access_token"], tokens["refresh_token"]):
        assert (await introspect(http, idp, token)) == {"active": False}
    refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    assert (await http.post(idp.token_endpoint, data=refresh, auth=AUTH)).status_code == 400

    elsewhere = {"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": "https://evil.example/"}
    assert (await http.get(idp.end_session_endpoint, params=elsewhere)).status_code == 400


async def test_logout_checks_the_hint_and_the_registered_post_logout_uris(
    idp: IdP, http: httpx.AsyncClient
) -> None:
    idp.register_client("authcar", "authcar-secret", post_logout_redirect_uris=["http://127.0.0.1:4180/bye"])
    tokens = await log_in(http, idp)
    sid = verify(tokens["id_token"], await fetch_jwks(http, idp), idp, audience="authcar")["sid"]
    refused = {
        "an access token as the hint": {"id_token_hint": tokens["access_token"]},
        "a forged hint": {"id_token_hint": idp.mint({"typ": "ID"}, unpublished_key=True)},
        "another client's hint": {"id_token_hint": tokens["id_token"], "client_id": "other"},
        # a login redirect URI is not a post-logout one once post-logout URIs are registered
        "a login redirect URI": {"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": REDIRECT},
        "no client to check against": {"post_logout_redirect_uri": "http://127.0.0.1:4180/bye"},
    }
    for case, params in refused.items():
        response = await http.get(idp.end_session_endpoint, params=params)
        assert (response.status_code, response.json()["error"]) == (400, "invalid_request"), case
    assert sid not in idp.ended_sessions  # a refused logout ends nothing
    assert (await introspect(http, idp, tokens["access_token"]))["active"] is True

    params = {"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": "http://127.0.0.1:4180/bye"}
    response = await http.post(idp.end_session_endpoint, data=params)
    assert (response.status_code, response.headers["location"]) == (302, "http://127.0.0.1:4180/bye")
    assert sid in idp.ended_sessions
    plain = await http.get(idp.end_session_endpoint)  # no hint, no redirect: a page, as Keycloak's
    assert (plain.status_code, plain.text) == (200, "logged out")


async def test_short_access_token_lifetimes_and_refresh_after_expiry(
    idp: IdP, http: httpx.AsyncClient
) -> None:
    idp.token_lifetime = 1
    tokens = await log_in(http, idp)
    assert tokens["expires_in"] == 1
    claims = verify(tokens["access_token"], await fetch_jwks(http, idp), idp, options={"verify_exp": False})
    assert claims["exp"] - claims["iat"] == 1
    deadline = time.monotonic() + 10
    while (await introspect(http, idp, tokens["access_token"]))["active"]:
        assert time.monotonic() < deadline, "a 1 s access token stayed active for 10 s"
        await asyncio.sleep(0.2)
    form = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    refreshed = await http.post(idp.token_endpoint, data=form, auth=AUTH)
    assert refreshed.status_code == 200, refreshed.text
    assert (await introspect(http, idp, refreshed.json()["access_token"]))["active"] is True
    idp.end_session(claims["sid"])  # an ended session refreshes no more
    again = {"grant_type": "refresh_token", "refresh_token": refreshed.json()["refresh_token"]}
    assert (await http.post(idp.token_endpoint, data=again, auth=AUTH)).status_code == 400


async def test_a_reused_refresh_token_can_end_the_session(idp: IdP, http: httpx.AsyncClient) -> None:
    """What makes "refresh once per session, across replicas" testable: a relying party that refreshes
    twice with one token loses the session, as with Keycloak's refresh token revocation."""
    idp.reused_refresh_ends_session = True
    tokens = await log_in(http, idp)
    sid = verify(tokens["id_token"], await fetch_jwks(http, idp), idp, audience="authcar")["sid"]
    form = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    first, second = await asyncio.gather(
        http.post(idp.token_endpoint, data=form, auth=AUTH),
        http.post(idp.token_endpoint, data=form, auth=AUTH),
    )
    assert sorted([first.status_code, second.status_code]) == [200, 400]
    assert idp.refreshes[sid] == 1
    renewed = (first if first.status_code == 200 else second).json()
    assert (await introspect(http, idp, renewed["access_token"])) == {"active": False}
    again = {"grant_type": "refresh_token", "refresh_token": renewed["refresh_token"]}
    assert (await http.post(idp.token_endpoint, data=again, auth=AUTH)).status_code == 400


async def test_rp_initiated_logout_can_send_a_backchannel_logout_too(
    idp: IdP, http: httpx.AsyncClient
) -> None:
    with relying_party() as rp:
        idp.register_client("authcar", "authcar-secret", backchannel_logout_uri=rp.url("/backchannel"))
        tokens = await log_in(http, idp)
        hint = {"id_token_hint": tokens["id_token"]}
        assert (await http.get(idp.end_session_endpoint, params=hint)).status_code == 200
        assert rp.logout_tokens == []  # off unless asked for
        idp.backchannel_on_logout = True
        tokens = await log_in(http, idp)
        assert (
            await http.get(idp.end_session_endpoint, params={"id_token_hint": tokens["id_token"]})
        ).status_code == 200
        [delivered] = rp.logout_tokens
        sid = verify(tokens["id_token"], await fetch_jwks(http, idp), idp, audience="authcar")["sid"]
        assert (header_of(delivered, 1)["sid"], header_of(delivered, 1)["sub"]) == (sid, "alice")


# -- the sign-in page


def sign_in_query(verifier: str, **params: str) -> dict[str, str]:
    return {
        "response_type": "code",
        "client_id": "authcar",
        "redirect_uri": REDIRECT,
        "state": 'state-<1>&"',
        "nonce": "nonce-1",
        "scope": "openid email",
        "code_challenge": b64url(hashlib.sha256(verifier.encode()).digest()),
        "code_challenge_method": "S256",
        **params,
    }


def hidden_fields(page: str) -> dict[str, str]:
    fields = re.findall(r'<input type="hidden" name="([^"]*)" value="([^"]*)">', page)
    return {html.unescape(name): html.unescape(value) for name, value in fields}


async def test_interactive_sign_in_page_lists_the_users_and_its_form_completes_the_flow(
    idp: IdP, http: httpx.AsyncClient
) -> None:
    idp.interactive = True
    verifier = secrets.token_urlsafe(48)
    page = await http.get(idp.authorization_endpoint, params=sign_in_query(verifier))
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert re.findall(r'data-user="(\w+)"', page.text) == ["alice", "bob", "carol"]
    assert "<1>" not in page.text  # the request is escaped into the page, never markup
    form = hidden_fields(page.text)
    assert form == sign_in_query(verifier)
    assert f'action="{idp.authorization_endpoint}"' in page.text

    chosen = await http.post(idp.authorization_endpoint, data={**form, "user": "bob"})
    assert chosen.status_code == 303  # the browser follows with a GET
    location = urlsplit(chosen.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT
    answer = dict(parse_qsl(location.query))
    assert pick(answer, "state", "iss") == {"state": form["state"], "iss": idp.issuer}
    tokens = (await code_grant(http, idp, answer["code"], verifier)).json()
    jwks = await fetch_jwks(http, idp)
    id_token = verify(tokens["id_token"], jwks, idp, audience="authcar")
    assert pick(id_token, "sub", "nonce", "email") == {
        "sub": "bob",
        "nonce": "nonce-1",
        "email": "bob@example.com",
    }
    assert verify(tokens["access_token"], jwks, idp)["realm_access"] == {"roles": ["editor"]}
    assert idp.sessions_of("bob") == [id_token["sid"]]


async def test_sign_in_page_refusals(idp: IdP, http: httpx.AsyncClient) -> None:
    idp.interactive = True
    verifier = secrets.token_urlsafe(48)
    form = sign_in_query(verifier)
    # Requests that cannot be signed in to get no page: an error back to the client, or none at all.
    plain = await http.get(idp.authorization_endpoint, params={**form, "code_challenge_method": "plain"})
    assert plain.status_code == 302
    assert dict(parse_qsl(urlsplit(plain.headers["location"]).query))["error"] == "invalid_request"
    evil = await http.get(
        idp.authorization_endpoint, params={**form, "redirect_uri": "https://evil.example/"}
    )
    assert evil.status_code == 400
    # The form is checked again: its hidden fields are the browser's to change.
    forged = await http.post(
        idp.authorization_endpoint, data={**form, "redirect_uri": "https://evil.example/", "user": "alice"}
    )
    assert forged.status_code == 400
    unknown = await http.post(idp.authorization_endpoint, data={**form, "user": "mallory"})
    assert (unknown.status_code, unknown.json()["error"]) == (400, "invalid_request")
    cancelled = await http.post(idp.authorization_endpoint, data={**form, "cancel": "1"})
    assert cancelled.status_code == 303
    answer = dict(parse_qsl(urlsplit(cancelled.headers["location"]).query))
    assert pick(answer, "error", "state", "code") == {
        "error": "access_denied",
        "state": form["state"],
        "code": None,
    }
    # PKCE still binds the code to the verifier the page's request was made with.
    chosen = await http.post(idp.authorization_endpoint, data={**form, "user": "alice"})
    code = dict(parse_qsl(urlsplit(chosen.headers["location"]).query))["code"]
    assert (await code_grant(http, idp, code, secrets.token_urlsafe(48))).status_code == 400
    assert idp.codes[code].used


# -- back-channel logout


def logout_claims(token: str, jwks: dict[str, Any], idp: IdP) -> dict[str, Any]:
    key = jwt.PyJWKSet.from_dict(jwks)[jwt.get_unverified_header(token)["kid"]]
    return jwt.decode(token, key, algorithms=[key.algorithm_name], issuer=idp.issuer, audience="authcar")


async def test_backchannel_logout_posts_a_logout_token_to_the_client(
    idp: IdP, http: httpx.AsyncClient
) -> None:
    with relying_party() as rp:
        idp.register_client("authcar", "authcar-secret", backchannel_logout_uri=rp.url("/backchannel"))
        tokens = await log_in(http, idp)
        jwks = await fetch_jwks(http, idp)
        sid = verify(tokens["id_token"], jwks, idp, audience="authcar")["sid"]
        answer = await idp.backchannel_logout(sid=sid)
        assert answer["status"] == 200
        assert rp.logout_tokens == [answer["logout_token"]]
        assert jwt.get_unverified_header(answer["logout_token"])["typ"] == "logout+jwt"
        claims = logout_claims(answer["logout_token"], jwks, idp)
        assert claims["events"] == {"http://schemas.openid.net/event/backchannel-logout": {}}
        assert claims["sid"] == sid
        assert not {"sub", "nonce"} & claims.keys()
        assert {"iat", "exp", "jti"} <= claims.keys()
        assert (await introspect(http, idp, tokens["access_token"])) == {"active": False}  # ended here too

        by_sub = await idp.backchannel_logout(sub="alice", end_session=False)
        second = logout_claims(by_sub["logout_token"], jwks, idp)
        assert (second["sub"], "sid" in second) == ("alice", False)
        assert second["jti"] != claims["jti"]

        rp.backchannel_status = 400
        assert (await idp.backchannel_logout(sid="x"))["status"] == 400
        assert [status for _, status in idp.backchannel_deliveries] == [200, 200, 400]
    unreachable = await idp.backchannel_logout(sid="x")
    assert unreachable["status"] is None
    with pytest.raises(ValueError, match="a sid, a sub or both"):
        idp.logout_token()


@pytest.mark.parametrize(
    ("variant", "bend", "broken"),
    [
        ("with a nonce", {"claims": {"nonce": "n"}}, lambda c, h, kids: "nonce" in c),
        ("no events", {"omit": ["events"]}, lambda c, h, kids: "events" not in c),
        ("another event", {"claims": {"events": {"urn:x": {}}}}, lambda c, h, kids: "urn:x" in c["events"]),
        ("no jti", {"omit": ["jti"]}, lambda c, h, kids: "jti" not in c),
        ("no iat", {"omit": ["iat"]}, lambda c, h, kids: "iat" not in c),
        ("stale", {"claims": {"iat": 1_000_000_000}}, lambda c, h, kids: c["iat"] == 1_000_000_000),
        ("other audience", {"claims": {"aud": "other"}}, lambda c, h, kids: c["aud"] == "other"),
        (
            "other issuer",
            {"claims": {"iss": "https://evil.example"}},
            lambda c, h, kids: c["iss"] == "https://evil.example",
        ),
        ("unsigned", {"alg": "none"}, lambda c, h, kids: h["alg"] == "none"),
        ("HS256 confusion", {"alg": "HS256"}, lambda c, h, kids: h["alg"] == "HS256"),
        ("unknown key", {"unpublished_key": True}, lambda c, h, kids: h["kid"] not in kids),
        (
            "no sid nor sub",
            {"claims": {"sid": None}, "omit": ["sid"]},
            lambda c, h, kids: not {"sid", "sub"} & c.keys(),
        ),
    ],
)
async def test_malformed_logout_token_variants(
    idp: IdP, variant: str, bend: dict[str, Any], broken: Any
) -> None:
    token = idp.logout_token(sid="s-1", **bend)
    header, claims = header_of(token), header_of(token, 1)
    assert broken(claims, header, {key["kid"] for key in idp.keys["keys"]}), variant
    if variant in ("unsigned", "HS256 confusion", "unknown key"):
        assert idp.verify(token) is None  # a relying party must refuse it too
    elif variant != "other issuer":
        assert idp.verify(token) is not None  # well signed: only the claims are wrong


async def test_admin_api_delivers_backchannel_logout_for_a_provider_in_its_own_process() -> None:
    with relying_party() as rp, idp_process() as running:
        running.client.register_client(
            "authcar", "authcar-secret", backchannel_logout_uri=rp.url("/backchannel")
        )
        answer = running.client.backchannel_logout(sub="alice", claims={"nonce": "bad"})
        assert answer["status"] == 200
        assert header_of(rp.logout_tokens[0], 1)["nonce"] == "bad"
        assert running.client.backchannel_deliveries == [(rp.url("/backchannel"), 200)]
        running.client.configure(interactive=True, reused_refresh_ends_session=True)
        assert running.client.call("describe")["interactive"] is True
        assert running.client.refreshes("no-such-sid") == 0


# -- failure modes


async def test_down_mode_fails_every_endpoint_but_admin(idp: IdP, http: httpx.AsyncClient) -> None:
    idp.mode = "down"
    for name in ENDPOINTS:
        method = "POST" if name in ("token", "introspect", "revoke") else "GET"
        assert (await http.request(method, idp.endpoint(name))).status_code == 503, name
    assert (await http.post(f"{idp.url}/_idp/describe")).json()["mode"] == "down"
    counts = (idp.jwks_fetches, idp.token_requests, idp.introspections)
    assert counts == (1, 1, 1)  # failed requests count too
    idp.reset_counters()
    assert idp.jwks_fetches == 0

    idp.set_mode("down", ["jwks"])  # only the JWKS
    assert (await http.get(idp.endpoint("discovery"))).status_code == 200
    assert (await http.get(idp.jwks_uri)).status_code == 503
    idp.mode = "normal"
    assert (await http.get(idp.jwks_uri)).status_code == 200


async def test_slow_mode_delays_answers(idp: IdP, http: httpx.AsyncClient) -> None:
    idp.set_mode("slow", delay=0.3)
    started = time.monotonic()
    assert (await http.get(idp.jwks_uri)).status_code == 200
    assert time.monotonic() - started >= 0.3
    with pytest.raises(httpx.ReadTimeout):
        await http.get(idp.jwks_uri, timeout=0.1)
    assert idp.jwks_fetches == 2


async def test_garbage_mode_answers_200_with_a_body_that_is_not_json(
    idp: IdP, http: httpx.AsyncClient
) -> None:
    idp.mode = "garbage"
    response = await http.get(idp.jwks_uri)
    assert (response.status_code, response.headers["content-type"]) == (200, "application/json")
    with pytest.raises(json.JSONDecodeError):
        response.json()
    assert (await http.post(idp.introspection_endpoint, data={"token": "x"}, auth=AUTH)).status_code == 200
    assert (idp.jwks_fetches, idp.introspections) == (1, 1)


async def test_reset_mode_drops_the_connection_unanswered(idp: IdP, http: httpx.AsyncClient) -> None:
    idp.mode = "reset"
    for _ in range(2):
        with pytest.raises(httpx.TransportError):
            await http.get(idp.jwks_uri)
    assert idp.jwks_fetches == 2
    idp.mode = "normal"
    assert (await http.get(idp.jwks_uri)).status_code == 200


# -- as its own process


def test_subprocess_prints_its_line_and_is_driven_by_idp_client() -> None:
    with idp_process(issuer_path="/realms/demo") as running:
        client = running.client
        assert running.url.startswith("http://127.0.0.1:")
        assert client.issuer == f"{running.url}/realms/demo"
        token = client.mint(roles=["admin"], alg="ES256")
        key = jwt.PyJWKSet.from_dict(httpx.get(client.jwks_uri).json())[header_of(token)["kid"]]
        claims = jwt.decode(token, key, algorithms=["ES256"], audience="api", issuer=client.issuer)
        assert claims["realm_access"] == {"roles": ["admin"]}

        new_kid = client.rotate("EdDSA")
        assert new_kid in {key["kid"] for key in httpx.get(client.jwks_uri).json()["keys"]}
        assert client.jwks_fetches == 2
        signed = client.mint(alg="EdDSA")
        assert jwt.decode(
            signed, client.private_key(new_kid).public_key(), algorithms=["EdDSA"], audience="api"
        )

        client.mode = "down"
        assert httpx.get(client.jwks_uri).status_code == 503
        client.mode = "normal"
        opaque = client.mint_opaque(sub="svc")
        answer = httpx.post(client.introspection_endpoint, data={"token": opaque}, auth=AUTH).json()
        assert pick(answer, "active", "sub") == {"active": True, "sub": "svc"}
        assert client.introspections == 1

        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(timeout=10) == 0
