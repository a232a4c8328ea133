"""Bearer-token authentication through the running sidecar, against the real test identity provider.

Every attack class of ../shared/SECURITY.md "Tokens" is its own test: the client gets 401 with an
RFC 6750 challenge, and the upstream sees nothing.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.conftest import RunningSidecar, start_sidecar
from tests.idp import IdP, run_idp
from tests.upstream_app import RunningUpstream


@pytest.fixture
async def idp() -> AsyncIterator[IdP]:
    async with run_idp() as provider:
        yield provider


@pytest.fixture
async def guarded(upstream: RunningUpstream, idp: IdP) -> AsyncIterator[RunningSidecar]:
    async with start_sidecar(
        upstream.url,
        allow_anonymous=False,
        oidc_issuer_url=idp.issuer,
        oidc_audience=("api",),
        oidc_jwks_cooldown=30,
    ) as sidecar:
        yield sidecar


async def call(sidecar: RunningSidecar, token: str | None, path: str = "/books") -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with httpx.AsyncClient(base_url=sidecar.url, timeout=10) as client:
        return await client.get(path, headers=headers)


def assert_refused(response: httpx.Response, upstream: RunningUpstream, reason: str | None = None) -> None:
    assert response.status_code == 401, response.text
    body = response.json()
    assert set(body) == {"error", "error_description", "request_id"}
    if reason is not None:
        assert body["error"] == reason
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="authcar", error="invalid_token", error_description="')
    assert upstream.seen == []


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], sign: Any = None) -> str:
    """A token with exactly this header and payload; `sign(signing_input) -> bytes` or an empty signature."""
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    return head + "." + (b64(sign(head.encode())) if sign else "")


def claims_for(idp: IdP, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": idp.issuer, "sub": "mallory", "aud": "api", "exp": now + 300, "iat": now}
    claims.update(overrides)
    return claims


# --- the happy path ------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256", "EdDSA"])
async def test_a_valid_token_reaches_the_upstream(
    guarded: RunningSidecar, upstream: RunningUpstream, idp: IdP, alg: str
) -> None:
    response = await call(guarded, idp.mint(alg=alg))
    assert response.status_code == 200, response.text
    assert len(upstream.seen) == 1


async def test_the_scheme_is_case_insensitive(
    guarded: RunningSidecar, upstream: RunningUpstream, idp: IdP
) -> None:
    async with httpx.AsyncClient(base_url=guarded.url) as client:
        response = await client.get("/x", headers={"Authorization": "bEaReR " + idp.mint()})
    assert response.status_code == 200


async def test_an_algorithm_not_configured_is_refused(
    guarded: RunningSidecar, upstream: RunningUpstream, idp: IdP
) -> None:
    assert_refused(await call(guarded, idp.mint(alg="ES384")), upstream, "alg_not_allowed")


# --- no token ------------------------------------------------------------------------------


async def test_no_token_gets_a_challenge_without_an_error(
    guarded: RunningSidecar, upstream: RunningUpstream
) -> None:
    response = await call(guarded, None)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="authcar"'
    assert response.json()["error"] == "no_credentials"
    async with httpx.AsyncClient(base_url=guarded.url) as client:
        basic = await client.get("/x", headers={"Authorization": "Basic YWxpY2U6c2VjcmV0"})
    assert basic.status_code == 401
    assert basic.headers["www-authenticate"] == 'Bearer realm="authcar"'
    assert upstream.seen == []


async def test_two_authorization_headers_are_refused(
    guarded: RunningSidecar, upstream: RunningUpstream, idp: IdP
) -> None:
    async with httpx.AsyncClient(base_url=guarded.url) as client:
        response = await client.get(
            "/x", headers=[("Authorization", "Bearer " + idp.mint()), ("Authorization", "Bearer x.y.z")]
        )
    assert response.status_code == 400
    assert upstream.seen == []


# --- algorithm confusion and unsigned tokens -----------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("signature", ["", "c2lnbmF0dXJl"])
async def test_unsigned_tokens_are_refused(
    guarded: RunningSidecar, upstream: RunningUpstream, idp: IdP, alg: str, signature: str
) -> None:
    token = forge({"alg": alg, "typ": "JWT"}, claims_for(idp)) + signature
    assert_refused(await call(guarded, token), upstream)


def public_key_encodings(idp: IdP) -> dict[str, bytes]:
    kid = next(k["kid"] for k in idp.keys["keys"] if k["kty"] == "RSA")
    public = idp.private_key(kid).public_key()
    return {
        "pem": public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "pkcs1": public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
        "der": public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "openssh": public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH),
        "jwk": RSAAlgorithm.to_jwk(public).encode(),
        "kid": kid.encode(),
    }


@pytest.mark.parametrize("encoding", ["pem", "pkcs1", "der", "openssh", "jwk"])
@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
async def test_hmac_signed_with_the_public_key_is_refused(
    guarded: RunningSidecar, upstream: RunningUpstream, idp: IdP, encoding: str, alg: str
) -> None:
    secret = public_key_encodings(idp)[encoding]
    kid = public_key_encodings(idp)["kid"].decode()
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    token = forge(
        {"alg": alg, "kid": kid}, claims_for(idp), lambda data: hmac.new(secret, data, digest).digest()
    )
    assert_refused(await call(guarded, token), upstream)


async def test_an_rsa_algorithm_on_an_ec_key_is_refused(
    guarded: RunningSidecar, upstream: RunningUpstream, idp: IdP
) -> None:
    ec_kid = next(k["kid"] for k in idp.keys["keys"] if k["kty"] == "EC" and k.get("crv") == "P-256")
    token = idp.mint(alg="RS256", headers={"kid": ec_kid})
    assert_refused(await call(guarded, token), upstream)


# --- keys chosen by the token --------------------------------------------------------------


async def test_keys_named_by_the_token_are_never_fetched_or_used(
    guarded: RunningSidecar, upstream: RunningUpstream, idp: IdP
) -> None:
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    attacker_jwk = json.loads(RSAAlgorithm.to_jwk(attacker.public_key()))
    fetched: list[str] = []

    async def attacker_jwks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        fetched.append((await reader.readline()).decode())
        body = json.dumps({"keys": [{**attacker_jwk, "kid": "evil"}]}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        writer.close()

    server = await asyncio.start_server(attacker_jwks, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/jwks.json"
    try:
        for header in (
            {"alg": "RS256", "kid": "evil", "jku": url},
            {"alg": "RS256", "kid": "evil", "x5u": url},
            {"alg": "RS256", "kid": "evil", "jwk": {**attacker_jwk, "kid": "evil"}},
            {"alg": "RS256", "jwk": attacker_jwk},
            {"alg": "RS256", "kid": "evil", "x5c": ["MIIBfake"]},
        ):
            token = jwt.encode(claims_for(idp), attacker, algorithm="RS256", headers=header)
            assert_refused(await call(guarded, token), upstream)
    finally:
        server.close()
    assert fetched == []


@pytest.mark.parametrize(
    "kid", ["../../../../etc/passwd", "' OR '1'='1", "k" * 10_000, "\u0000", "../certs#", "%2e%2e/"]
)
async def test_kid_is_only_a_dictionary_key(
    guarded: RunningSidecar, upstream: RunningUpstream, idp: IdP, kid: str
) -> None:
    token = idp.mint(headers={"kid": kid})
    assert_refused(await call(guarded, token), upstream)


async def test_unknown_critical_headers_are_refused(
    guarded: RunningSidecar, upstream: RunningUpstream, idp: IdP
) -> None:
    token = idp.mint(headers={"crit": ["exp-ext"], "exp-ext": True})
    assert_refused(await call(guarded, token), upstream, "unsupported_critical_header")


# --- issuer, audience and time -------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["-evil", "/", "/../test", "x", " "])
async def test_the_issuer_is_compared_exactly(
    guarded: RunningSidecar, upstream: RunningUpstream, idp: IdP, suffix: str
) -> None:
    assert_refused(await call(guarded, idp.mint(iss=idp.issuer + suffix)), upstream, "wrong_issuer")
    assert_refused(await call(guarded, idp.mint(iss=idp.issuer[:-1])), upstream, "wrong_issuer")


async def test_the_audience_must_match(guarded: RunningSidecar, upstream: RunningUpstream, idp: IdP) -> None:
    assert_refused(await call(guarded, idp.mint(aud="other-api")), upstream, "wrong_audience")
    assert_refused(await call(guarded, idp.mint(claims={"aud": ["a", "b"]})), upstream, "wrong_audience")


async def test_time_claims_are_checked_with_bounded_leeway(
    guarded: RunningSidecar, upstream: RunningUpstream, idp: IdP
) -> None:
    now = int(time.time())
    assert_refused(await call(guarded, idp.mint(claims={"exp": now - 120})), upstream, "expired")
    assert_refused(await call(guarded, idp.mint(claims={"nbf": now + 300})), upstream, "not_yet_valid")
    assert_refused(await call(guarded, idp.mint(claims={"iat": now + 300})), upstream, "not_yet_valid")
    assert_refused(await call(guarded, idp.mint(claims={"exp": "tomorrow"})), upstream)
    within = await call(guarded, idp.mint(claims={"exp": now - 10}))  # inside the 30 s leeway
    assert within.status_code == 200


async def test_required_claims(guarded: RunningSidecar, upstream: RunningUpstream, idp: IdP) -> None:
    key = idp.private_key(next(k["kid"] for k in idp.keys["keys"] if k.get("alg") == "RS256"))
    kid = next(k["kid"] for k in idp.keys["keys"] if k.get("alg") == "RS256")
    no_exp = {k: v for k, v in claims_for(idp).items() if k != "exp"}
    token = jwt.encode(no_exp, key, algorithm="RS256", headers={"kid": kid})
    assert_refused(await call(guarded, token), upstream, "missing_claim")


# --- size and shape --------------------------------------------------------------------------


async def test_oversized_and_encrypted_tokens_are_refused_before_decoding(
    guarded: RunningSidecar, upstream: RunningUpstream, idp: IdP
) -> None:
    idp.reset_counters()
    huge = idp.mint(claims={"pad": "x" * 20_000})
    assert_refused(await call(guarded, huge), upstream, "too_large")
    assert_refused(await call(guarded, "eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d"), upstream, "jwe_not_supported")
    assert idp.jwks_fetches == 0


async def test_claims_that_would_smuggle_headers_are_refused(
    guarded: RunningSidecar, upstream: RunningUpstream, idp: IdP
) -> None:
    assert_refused(await call(guarded, idp.mint(sub="alice\r\nX-Auth-Request-User: admin")), upstream)
    assert_refused(await call(guarded, idp.mint(roles=("reader\nadmin",))), upstream)


# --- keys over time ------------------------------------------------------------------------


async def test_a_flood_of_unknown_kids_fetches_the_jwks_at_most_once(
    guarded: RunningSidecar, upstream: RunningUpstream, idp: IdP
) -> None:
    idp.reset_counters()
    tokens = [idp.mint(unpublished_key=True) for _ in range(40)]
    responses = await asyncio.gather(*(call(guarded, token) for token in tokens))
    assert all(r.status_code == 401 for r in responses)
    assert idp.jwks_fetches <= 1
    assert upstream.seen == []


async def test_rotation_new_key_works_on_first_use_and_old_tokens_while_published(
    upstream: RunningUpstream, idp: IdP
) -> None:
    async with start_sidecar(
        upstream.url,
        allow_anonymous=False,
        oidc_issuer_url=idp.issuer,
        oidc_audience=("api",),
        oidc_jwks_cooldown=0.5,
    ) as sidecar:
        old_token = idp.mint(alg="RS256")
        assert (await call(sidecar, old_token)).status_code == 200
        new_kid = idp.rotate("RS256")  # published right after the start-up fetch
        idp.reset_counters()
        assert (await call(sidecar, idp.mint(kid=new_kid))).status_code == 200
        assert idp.jwks_fetches == 1  # picked up on first use
        assert (await call(sidecar, old_token)).status_code == 200  # the old key is still published
        old_kid = jwt.get_unverified_header(old_token)["kid"]
        idp.retire(old_kid)
        await asyncio.sleep(0.6)  # past the cool-down: the next unknown kid refetches
        assert (await call(sidecar, idp.mint(unpublished_key=True))).status_code == 401
        refused = await call(sidecar, old_token)
        assert refused.status_code == 401  # the cached verification died with its key
        assert len(upstream.seen) == 3


async def test_cached_keys_keep_working_while_the_provider_is_down(
    guarded: RunningSidecar, upstream: RunningUpstream, idp: IdP
) -> None:
    token = idp.mint()
    assert (await call(guarded, token)).status_code == 200
    fresh = idp.mint(alg="ES256")
    idp.mode = "down"
    assert (await call(guarded, token)).status_code == 200
    assert (await call(guarded, fresh)).status_code == 200  # same published keys, already loaded
    unknown = await call(guarded, idp.mint(unpublished_key=True))
    assert unknown.status_code == 401  # not a 500, and no traceback
    assert unknown.json()["error"] == "unknown_key"


async def test_readiness_reports_the_keys(guarded: RunningSidecar, idp: IdP) -> None:
    async with httpx.AsyncClient() as client:
        ready = (await client.get(guarded.admin_url + "/readyz")).json()
    assert ready["checks"]["keys"]["ok"] is True
    assert ready["checks"]["keys"]["keys"] >= 4


async def test_a_provider_down_at_start_means_not_ready_and_401(upstream: RunningUpstream, idp: IdP) -> None:
    idp.mode = "down"
    async with start_sidecar(upstream.url, allow_anonymous=False, oidc_issuer_url=idp.issuer) as sidecar:
        async with httpx.AsyncClient() as client:
            ready = await client.get(sidecar.admin_url + "/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["keys"]["ok"] is False
        response = await call(sidecar, idp.mint())
        assert response.status_code == 401
    assert upstream.seen == []


async def test_metrics_count_validations_by_result_and_key_fetches(
    guarded: RunningSidecar, upstream: RunningUpstream, idp: IdP
) -> None:
    token = idp.mint()
    for _ in range(3):
        assert (await call(guarded, token)).status_code == 200
    assert (await call(guarded, idp.mint(aud="other"))).status_code == 401
    assert (await call(guarded, None)).status_code == 401
    async with httpx.AsyncClient() as client:
        text = (await client.get(guarded.admin_url + "/metrics")).text
    assert 'authcar_token_validations_total{result="valid"} 1.0' in text
    assert 'authcar_token_validations_total{result="valid_cached"} 2.0' in text
    assert 'authcar_token_validations_total{result="wrong_audience"} 1.0' in text
    assert 'authcar_token_validations_total{result="no_token"} 1.0' in text
    assert 'authcar_jwks_fetches_total{result="success"} 1.0' in text


# --- one keep-alive connection, several callers (the per-connection token memo) ---------------


async def test_tokens_alternating_on_one_connection_each_get_their_own_identity(
    guarded: RunningSidecar, upstream: RunningUpstream, idp: IdP
) -> None:
    """Behind a proxy one connection carries many callers: the memo of the last token must never
    hand one caller's identity to the next, nor accept a near-copy of a token it has seen."""
    alice, bob = idp.mint(sub="alice"), idp.mint(sub="bob")
    tampered = alice[:-2] + ("AA" if not alice.endswith("AA") else "BB")  # same length, bad signature
    async with httpx.AsyncClient(base_url=guarded.url, timeout=10) as client:
        answers = []
        for token in (alice, bob, alice, tampered, alice, bob):
            response = await client.get("/books", headers={"Authorization": f"Bearer {token}"})
            answers.append(response.status_code)
    assert answers == [200, 200, 200, 401, 200, 200]
    assert [seen.header("x-auth-request-user") for seen in upstream.seen] == [
        "alice",
        "bob",
        "alice",
        "alice",
        "bob",
    ]
