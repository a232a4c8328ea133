"""The development issuer behind `authcar demo`: discovery, JWKS, the token endpoint, minted tokens."""

from __future__ import annotations

import ast
import base64
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import jwt
import pytest

import authcar.demo
import authcar.devissuer
from authcar.devissuer import DEMO_AUDIENCE, DEMO_CLIENTS, DEMO_SECRET, DevIssuer, serving
from tests.support.sidecar import start_sidecar
from tests.support.upstream_app import RunningUpstream

CLAIMS = {"iss", "sub", "aud", "exp", "iat", "nbf", "jti", "roles", "scope", "email", "preferred_username"}


@pytest.fixture
async def issuer() -> AsyncIterator[DevIssuer]:
    async with serving() as running:
        yield running


@pytest.fixture
async def http(issuer: DevIssuer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=issuer.url, timeout=5) as client:
        yield client


def verify(token: str, jwks: dict[str, object], issuer: str) -> dict[str, object]:
    [key] = jwks["keys"]  # type: ignore[misc]
    assert jwt.get_unverified_header(token)["kid"] == key["kid"]
    return jwt.decode(
        token, jwt.PyJWK(key).key, algorithms=[key["alg"]], audience=DEMO_AUDIENCE, issuer=issuer
    )


async def test_discovery_names_the_issuer_and_its_endpoints(
    issuer: DevIssuer, http: httpx.AsyncClient
) -> None:
    assert issuer.url.startswith("http://127.0.0.1:")  # localhost only, never a public interface
    document = (await http.get("/.well-known/openid-configuration")).json()
    assert document["issuer"] == issuer.url
    assert document["jwks_uri"] == f"{issuer.url}/jwks.json"
    assert document["token_endpoint"] == f"{issuer.url}/token"
    assert document["grant_types_supported"] == ["authorization_code", "refresh_token", "client_credentials"]
    assert document["id_token_signing_alg_values_supported"] == ["ES256"]
    # Browser sign-in (tests/test_devissuer_login.py): code + PKCE S256 only, logout, introspection.
    assert document["authorization_endpoint"] == f"{issuer.url}/authorize"
    assert document["end_session_endpoint"] == f"{issuer.url}/logout"
    assert document["introspection_endpoint"] == f"{issuer.url}/introspect"
    assert document["response_types_supported"] == ["code"]
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert document["authorization_response_iss_parameter_supported"] is True
    assert {"openid", "profile", "email"} <= set(document["scopes_supported"])


async def test_the_jwks_holds_one_public_key_with_a_kid(http: httpx.AsyncClient) -> None:
    [key] = (await http.get("/jwks.json")).json()["keys"]
    assert key["kid"].startswith("authcar-dev-")
    assert (key["kty"], key["crv"], key["alg"], key["use"]) == ("EC", "P-256", "ES256", "sig")
    assert "d" not in key  # public half only


@pytest.mark.parametrize("role", sorted(DEMO_CLIENTS))
async def test_minted_tokens_carry_every_claim_and_verify(
    issuer: DevIssuer, http: httpx.AsyncClient, role: str
) -> None:
    minted_from = int(time.time())
    token = issuer.mint(role)
    minted_by = time.time()
    claims = verify(token, (await http.get("/jwks.json")).json(), issuer.url)
    assert set(claims) >= CLAIMS
    client = DEMO_CLIENTS[role]
    assert claims["sub"] == client.subject == claims["preferred_username"]
    assert claims["roles"] == [role]
    assert claims["scope"] == client.scope
    assert claims["email"] == f"{client.subject}@example.com"
    assert claims["exp"] - claims["iat"] == 3600  # type: ignore[operator]
    assert claims["nbf"] == claims["iat"]
    assert minted_from <= claims["iat"] <= minted_by  # type: ignore[operator]
    assert issuer.mint(role) != token  # a fresh jti every time


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_the_token_endpoint_issues_client_credentials_tokens(
    issuer: DevIssuer, http: httpx.AsyncClient, method: str
) -> None:
    form = {"grant_type": "client_credentials"}
    if method == "client_secret_basic":
        answer = await http.post("/token", data=form, auth=("editor", DEMO_SECRET))
    else:
        answer = await http.post("/token", data={**form, "client_id": "editor", "client_secret": DEMO_SECRET})
    assert answer.status_code == 200, answer.text
    assert answer.headers["Cache-Control"] == "no-store"
    body = answer.json()
    assert (body["token_type"], body["expires_in"], body["scope"]) == (
        "Bearer",
        3600,
        "books:read books:write",
    )
    claims = verify(body["access_token"], (await http.get("/jwks.json")).json(), issuer.url)
    assert (claims["sub"], claims["roles"]) == ("bob", ["editor"])


@pytest.mark.parametrize(
    "auth",
    [
        ("reader", "wrong-secret"),
        ("nobody", DEMO_SECRET),
        None,
    ],
)
async def test_bad_client_credentials_are_refused(
    http: httpx.AsyncClient, auth: tuple[str, str] | None
) -> None:
    answer = await http.post("/token", data={"grant_type": "client_credentials"}, auth=auth)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"].startswith("Basic ")
    assert answer.json()["error"] == "invalid_client"


async def test_a_malformed_basic_header_is_refused(http: httpx.AsyncClient) -> None:
    garbage = "Basic " + base64.b64encode(b"no-colon-here").decode()
    answer = await http.post(
        "/token", data={"grant_type": "client_credentials"}, headers={"Authorization": garbage}
    )
    assert answer.status_code == 401


async def test_other_grants_and_methods_are_refused(http: httpx.AsyncClient) -> None:
    password = await http.post("/token", data={"grant_type": "password"}, auth=("admin", DEMO_SECRET))
    assert password.status_code == 400
    assert password.json()["error"] == "unsupported_grant_type"
    assert (await http.get("/token")).status_code == 405


async def test_each_issuer_has_its_own_key(issuer: DevIssuer) -> None:
    async with serving() as other:
        assert other.url != issuer.url
        assert other.kid != issuer.kid
        with pytest.raises(jwt.InvalidSignatureError):
            # Even under the other issuer's kid, this issuer's key does not verify its tokens.
            verify(
                other.mint("reader"), {"keys": [{**issuer.jwks()["keys"][0], "kid": other.kid}]}, other.url
            )


async def test_the_sidecar_accepts_minted_tokens_and_nothing_else(
    issuer: DevIssuer, upstream: RunningUpstream
) -> None:
    async with (
        start_sidecar(
            upstream.url, allow_anonymous=False, oidc_issuer_url=issuer.url, oidc_audience=DEMO_AUDIENCE
        ) as sidecar,
        httpx.AsyncClient(base_url=sidecar.url, timeout=5) as client,
    ):
        token = issuer.mint("admin")
        assert (await client.get("/echo", headers={"Authorization": f"Bearer {token}"})).status_code == 200
        assert (await client.get("/echo")).status_code == 401
        async with serving() as stranger:
            forged = stranger.mint("admin")  # right shape, wrong issuer and key
            assert (
                await client.get("/echo", headers={"Authorization": f"Bearer {forged}"})
            ).status_code == 401


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
    return names


def test_the_package_does_not_import_the_test_provider() -> None:
    # tests/ is not in the wheel: the shipped issuer and demo must stand alone.
    for module in (authcar.devissuer, authcar.demo):
        imported = imported_modules(Path(module.__file__ or ""))
        assert "__future__" in imported  # the walk found the imports
        assert not {name for name in imported if name.split(".")[0] == "tests"}, module.__name__
