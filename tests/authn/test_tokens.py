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
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from jwt.algorithms import RSAAlgorithm

from authcar.authn.jwt import IssuerPolicy, JWTValidator, TokenRejected
from authcar.authn.keys import MAX_DOCUMENT_BYTES, MAX_KEYS, KeySet, KeySetError, ProviderMetadata, parse_jwks
from tests.authn.test_jwt import ISSUER, KEY, StaticIssuer
from tests.idp import IdP, run_idp
from tests.support.sidecar import RunningSidecar, start_sidecar
from tests.support.upstream_app import RunningUpstream


@pytest.fixture
async def idp() -> AsyncIterator[IdP]:
    async with run_idp() as provider:
        yield provider


def guarding(
    upstream: RunningUpstream, idp: IdP, **overrides: Any
) -> AbstractAsyncContextManager[RunningSidecar]:
    """A sidecar that requires the provider's tokens for audience `api`."""
    options: dict[str, Any] = {"oidc_jwks_cooldown": 30, **overrides}
    return start_sidecar(
        upstream.url, allow_anonymous=False, oidc_issuer_url=idp.issuer, oidc_audience=("api",), **options
    )


@pytest.fixture
async def guarded(upstream: RunningUpstream, idp: IdP) -> AsyncIterator[RunningSidecar]:
    async with guarding(upstream, idp) as sidecar:
        yield sidecar


async def call(sidecar: RunningSidecar, token: str | None, path: str = "/books") -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with httpx.AsyncClient(base_url=sidecar.url, timeout=10) as client:
        return await client.get(path, headers=headers)


def assert_refused(
    response: httpx.Response, upstream: RunningUpstream, reason: str | None = None, *, forwarded: int = 0
) -> None:
    """401 with the RFC 6750 challenge, and nothing more reached the upstream than the `forwarded`
    requests before it."""
    assert response.status_code == 401, response.text
    body = response.json()
    assert set(body) == {"error", "error_description", "request_id"}
    if reason is not None:
        assert body["error"] == reason
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="authcar", error="invalid_token", error_description="')
    assert len(upstream.seen) == forwarded


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
    async with start_sidecar(
        upstream.url, allow_anonymous=False, oidc_issuer_url=idp.issuer, oidc_audience=("api",)
    ) as sidecar:
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


# --- what the decoder refuses (authcar/jsonlimits.py): 401, never a 5xx, nothing upstream ----------


def signed(idp: IdP, payload: bytes, header: bytes | None = None) -> str:
    """A token whose payload is exactly these JSON bytes, validly signed by the provider's RS256 key:
    refused only for what its JSON holds."""
    key = idp.ring.signer("RS256")
    head = b64(header if header is not None else json.dumps({"alg": "RS256", "kid": key.kid}).encode())
    signing_input = head + "." + b64(payload)
    return signing_input + "." + b64(key.sign(signing_input.encode(), "RS256"))


def payload_with(idp: IdP, *, repeat: bool = False, **raw: str) -> bytes:
    """The provider's usual claims, with members whose JSON text is given as written (in place of
    the usual ones of that name, or after them with `repeat`)."""
    claims = {name: value for name, value in claims_for(idp).items() if repeat or name not in raw}
    text = json.dumps(claims)[:-1]
    return (text + "".join(f', "{name}": {value}' for name, value in raw.items()) + "}").encode()


def assert_undecodable(response: httpx.Response, upstream: RunningUpstream, why: str) -> None:
    assert_refused(response, upstream, "malformed")
    assert response.json()["error_description"].endswith(f"is not an acceptable JSON object ({why})")


# Thousands of levels (Python's json recurses once per level), each within the 16 KiB token limit.
NESTED = {
    "arrays": "[" * 5000 + "]" * 5000,
    "objects": '{"":' * 2000 + "1" + "}" * 2000,
    "unclosed": "[" * 10000,
    "mixed": '[{"":' * 1400 + "1" + "}]" * 1400,
}


@pytest.mark.parametrize("shape", sorted(NESTED))
@pytest.mark.parametrize("where", ["header", "payload"])
async def test_deeply_nested_json_is_refused(
    guarded: RunningSidecar, upstream: RunningUpstream, idp: IdP, shape: str, where: str
) -> None:
    deep = NESTED[shape]
    if where == "header":
        kid = idp.ring.signer("RS256").kid
        token = signed(idp, payload_with(idp), f'{{"alg": "RS256", "kid": "{kid}", "x": {deep}}}'.encode())
        unsigned = b64(f'{{"alg": "none", "x": {deep}}}'.encode()) + "." + b64(payload_with(idp))
    else:
        token = signed(idp, payload_with(idp, x=deep))
        unsigned = b64(b'{"alg":"none"}') + "." + b64(payload_with(idp, x=deep))
    unsigned += ".c2ln"  # a signature of sorts: the decoder is reached before anything checks it
    for attempt in (token, unsigned):
        assert len(attempt) <= 16384
        assert_undecodable(await call(guarded, attempt), upstream, "too_deep")


@pytest.mark.parametrize(
    ("claim", "text", "why"),
    [
        ("exp", str(10**400), "number_too_large"),
        ("exp", "1e400", "number_too_large"),
        ("exp", "-1e400", "number_too_large"),
        ("iat", str(-(10**400)), "number_too_large"),
        ("nbf", "1" * 25, "number_too_large"),
        ("exp", "NaN", "not_a_number"),
        ("iat", "Infinity", "not_a_number"),
        ("level", str(10**400), "number_too_large"),  # any claim: it may become a header or operand
        ("level", "1e999", "number_too_large"),
        ("ratio", "0." + "0" * 60 + "1", "number_too_large"),
        ("sub", json.dumps("x" * 9000), "string_too_long"),
        ("groups", json.dumps([0] * 1001), "too_many_members"),
        ("sub", '"\\ud800"', "invalid_string"),  # half a surrogate pair: not UTF-8 for anyone
    ],
)
async def test_claims_beyond_the_decoder_limits_are_refused(
    guarded: RunningSidecar, upstream: RunningUpstream, idp: IdP, claim: str, text: str, why: str
) -> None:
    token = signed(idp, payload_with(idp, **{claim: text}))
    assert_undecodable(await call(guarded, token), upstream, why)
    # The same token without the odd claim is fine: the refusal is about that claim alone.
    assert (await call(guarded, signed(idp, payload_with(idp)))).status_code == 200


async def test_repeated_claim_names_are_refused(
    guarded: RunningSidecar, upstream: RunningUpstream, idp: IdP
) -> None:
    # Which `sub` is meant? A parser that keeps the first and one that keeps the last disagree.
    token = signed(idp, payload_with(idp, repeat=True, sub='"admin"'))
    assert_undecodable(await call(guarded, token), upstream, "repeated_name")
    kid = idp.ring.signer("RS256").kid
    header = f'{{"alg": "RS256", "kid": "{kid}", "alg": "none"}}'.encode()
    assert_undecodable(await call(guarded, signed(idp, payload_with(idp), header)), upstream, "repeated_name")


async def test_numbers_within_the_limits_still_work(
    guarded: RunningSidecar, upstream: RunningUpstream, idp: IdP
) -> None:
    now = int(time.time())
    token = signed(idp, payload_with(idp, exp=f"{now + 300}.5", level=str(2**63), ratio="1e-300"))
    response = await call(guarded, token)
    assert response.status_code == 200, response.text
    assert len(upstream.seen) == 1


async def test_a_flood_of_undecodable_tokens_logs_no_traceback(
    guarded: RunningSidecar, upstream: RunningUpstream, idp: IdP, caplog: pytest.LogCaptureFixture
) -> None:
    tokens = [signed(idp, payload_with(idp, exp=str(10 ** (400 + i)))) for i in range(20)]
    tokens += [b64(b'{"alg":"none","x":' + b"[" * (3000 + i) + b"]}") + ".e30.c2ln" for i in range(20)]
    with caplog.at_level("INFO"):
        responses = await asyncio.gather(*(call(guarded, token) for token in tokens))
    assert {response.status_code for response in responses} == {401}
    assert [record for record in caplog.records if record.exc_info] == []
    assert [record for record in caplog.records if record.levelname in ("ERROR", "CRITICAL")] == []
    assert upstream.seen == []


class BrokenIssuer:
    """An issuer whose claim mapping has a bug: it raises something no check expects."""

    def __init__(self, policy: IssuerPolicy, keyset: KeySet) -> None:
        self.policy = policy
        self.keyset = keyset

    def identify(self, claims: Any) -> Any:
        raise ZeroDivisionError("a bug in the claim mapping")


async def test_an_unexpected_error_denies_and_logs_one_traceback_per_interval(
    idp: IdP, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(idp.keys))
    keyset = KeySet(None, static_file=path)
    await keyset.refresh()
    policy = IssuerPolicy(issuer=idp.issuer, audiences=frozenset({"api"}), algorithms=frozenset({"RS256"}))
    validator = JWTValidator({idp.issuer: BrokenIssuer(policy, keyset)})
    with caplog.at_level(logging.ERROR, logger="authcar.authn"):
        for _ in range(5):
            with pytest.raises(TokenRejected) as refused:
                await validator.validate(idp.mint())
            assert refused.value.reason == "verification_failed"
    assert [record.exc_info is not None for record in caplog.records] == [True]
    assert caplog.records[0].getMessage() == "token_verification_error"


# --- what the provider publishes: refused documents keep the last good keys -------------------------


async def until(condition: Callable[[], bool | Awaitable[bool]], within: float = 20.0) -> None:
    """Wait for the condition; `within` is a generous upper bound, never a speed requirement."""
    deadline = time.monotonic() + within
    while True:
        outcome = condition()
        if outcome if isinstance(outcome, bool) else await outcome:
            return
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def keys_ready(sidecar: RunningSidecar) -> bool:
    """Ready, with every key set loaded and its last refresh a success."""
    ready = await admin_get(sidecar, "/readyz")
    return ready.status_code == 200 and "detail" not in ready.json()["checks"]["keys"]


def jwks_with(idp: IdP, *extra: dict[str, Any]) -> dict[str, Any]:
    return {"keys": [*idp.keys["keys"], *extra]}


def rsa_jwk(kid: str, bits: int) -> dict[str, Any]:
    """The public JWK of an RSA key of this size (a public key needs no private half to exist)."""
    n = secrets.randbits(bits) | 1 | (1 << (bits - 1))
    jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(rsa.RSAPublicNumbers(65537, n).public_key()))
    return {**jwk, "kid": kid, "alg": "RS256", "use": "sig"}


BAD_JWKS: dict[str, Callable[[IdP], bytes]] = {
    "nested": lambda idp: b'{"keys": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    "unclosed": lambda idp: b"[" * 100_000,
    "garbage": lambda idp: b"\x00\xff<html>502 Bad Gateway</html>",
    "not_utf8": lambda idp: json.dumps(idp.keys).encode("utf-16"),
    "huge_integer": lambda idp: json.dumps(jwks_with(idp))[:-1].encode() + b', "n": ' + b"9" * 5000 + b"}",
    "infinity": lambda idp: json.dumps(jwks_with(idp, {"kty": "RSA", "kid": "x", "e": 1e400})).encode(),
    "repeated_keys_member": lambda idp: b'{"keys": [], ' + json.dumps(idp.keys).encode()[1:],
    "oversized": lambda idp: json.dumps(jwks_with(idp, {"kid": "pad", "x5c": ["A" * 60_000] * 10})).encode(),
    "not_an_object": lambda idp: json.dumps(idp.keys["keys"]).encode(),
    "too_many_keys": lambda idp: json.dumps(
        jwks_with(idp, *({**idp.keys["keys"][0], "kid": f"copy-{i}"} for i in range(MAX_KEYS)))
    ).encode(),
}


@pytest.fixture
async def refreshing(upstream: RunningUpstream, idp: IdP) -> AsyncIterator[RunningSidecar]:
    """A sidecar that refetches the JWKS every 0.2 s."""
    async with guarding(upstream, idp, oidc_jwks_refresh_interval=0.2, oidc_jwks_cooldown=0.2) as sidecar:
        yield sidecar


async def admin_get(sidecar: RunningSidecar, path: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(sidecar.admin_url + path)


@pytest.mark.parametrize("name", sorted(BAD_JWKS))
async def test_a_refused_jwks_keeps_the_last_good_keys(
    refreshing: RunningSidecar,
    upstream: RunningUpstream,
    idp: IdP,
    caplog: pytest.LogCaptureFixture,
    name: str,
) -> None:
    assert (await call(refreshing, idp.mint())).status_code == 200
    new_kid = idp.rotate("RS256")  # published only in the documents that are refused below
    document = BAD_JWKS[name](idp)
    idp.raw_answers["jwks"] = document
    with caplog.at_level(logging.INFO, logger="authcar"):
        fetched = idp.jwks_fetches
        await until(lambda: idp.jwks_fetches >= fetched + 3)
        # Tokens of the keys loaded before keep working; the key only the refused document names does not.
        fresh = await call(refreshing, idp.mint(alg="ES256"))
        assert fresh.status_code == 200, fresh.text
        unknown = await call(refreshing, idp.mint(kid=new_kid))
        assert_refused(unknown, upstream, "unknown_key", forwarded=2)
        ready = await admin_get(refreshing, "/readyz")
    assert ready.status_code == 200
    assert "last refresh failed" in ready.json()["checks"]["keys"]["detail"]
    metrics = (await admin_get(refreshing, "/metrics")).text
    assert 'authcar_jwks_fetches_total{result="failure"}' in metrics
    failures = [record for record in caplog.records if record.getMessage() == "jwks_fetch_failed"]
    assert failures, "every refused fetch is logged"
    assert len(failures) <= idp.jwks_fetches - fetched  # once per fetch, not per request
    assert [record for record in caplog.records if record.exc_info] == []
    # The provider recovers: the same process picks the new key up, without a restart.
    idp.raw_answers.clear()
    await until(lambda: keys_ready(refreshing))
    assert (await call(refreshing, idp.mint(kid=new_kid))).status_code == 200


async def test_keys_out_of_bounds_are_skipped_and_the_rest_are_used(
    refreshing: RunningSidecar, upstream: RunningUpstream, idp: IdP, caplog: pytest.LogCaptureFixture
) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    weak_jwk = {**json.loads(RSAAlgorithm.to_jwk(weak.public_key())), "kid": "weak", "alg": "RS256"}
    with caplog.at_level(logging.WARNING, logger="authcar.keys"):
        idp.raw_answers["jwks"] = json.dumps(jwks_with(idp, weak_jwk, rsa_jwk("huge", 9000))).encode()
        fetched = idp.jwks_fetches
        await until(lambda: idp.jwks_fetches >= fetched + 2)
    signing_input = b64(b'{"alg":"RS256","kid":"weak"}') + "." + b64(json.dumps(claims_for(idp)).encode())
    signature = RSAAlgorithm(RSAAlgorithm.SHA256).sign(signing_input.encode(), weak)
    token = signing_input + "." + b64(signature)
    assert_refused(await call(refreshing, token), upstream, "unknown_key")
    assert (await call(refreshing, idp.mint())).status_code == 200  # the document itself was used
    skipped = [record for record in caplog.records if record.getMessage() == "jwks_keys_skipped"]
    assert skipped
    assert skipped[0].kids == ["weak", "huge"]  # type: ignore[attr-defined]


def test_parse_jwks_bounds() -> None:
    good = rsa_jwk("good", 2048)
    assert set(parse_jwks({"keys": [good, rsa_jwk("small", 2047), rsa_jwk("large", 8193)]})) == {"good"}
    assert set(
        parse_jwks({"keys": [good, {**rsa_jwk("big-e", 2048), "e": b64((2**256 + 1).to_bytes(33, "big"))}]})
    ) == {"good"}
    assert set(parse_jwks({"keys": [rsa_jwk("top", 8192)]})) == {"top"}
    with pytest.raises(KeySetError, match="more than 100"):
        parse_jwks({"keys": [good] * (MAX_KEYS + 1)})
    for broken in (
        {"kty": "RSA", "n": 5, "e": "AQAB"},
        {"kty": "RSA", "n": ["x"], "e": {}},
        {"kty": "EC", "crv": "P-256"},
    ):
        assert parse_jwks({"keys": [good, {**broken, "kid": "broken"}]}).keys() == {"good"}


async def test_a_refused_discovery_document_means_not_ready_and_401_then_recovers(
    upstream: RunningUpstream, idp: IdP, caplog: pytest.LogCaptureFixture
) -> None:
    for document in (b"[" * 50_000, b'{"issuer": "' + idp.issuer.encode() + b'", "jwks_uri": 1e999}'):
        idp.raw_answers["discovery"] = document
        with caplog.at_level(logging.INFO, logger="authcar"):
            async with guarding(upstream, idp) as sidecar:
                await until(lambda: idp.counts["discovery"] >= 1)
                response = await call(sidecar, idp.mint())
                assert_refused(response, upstream, "keys_unavailable")
                ready = await admin_get(sidecar, "/readyz")
                assert ready.status_code == 503
                assert "acceptable JSON" in ready.json()["checks"]["keys"]["detail"]
                idp.raw_answers.clear()  # the provider recovers; discovery is retried every 5 s
                await until(lambda: keys_ready(sidecar))
                assert (await call(sidecar, idp.mint())).status_code == 200
        assert [record for record in caplog.records if record.exc_info] == []
        upstream.seen.clear()
        idp.reset_counters()


# --- property: whatever a validly signed token's JSON holds, the answer is a verdict, never a bug ------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10,
)
ANY_NUMBER = JSON_VALUES | st.integers(min_value=-(10**30), max_value=10**30)
# Mostly plausible values for the claims that decide (so that examples get past the early checks
# into the claim checks and the identity), and anything at all in the rest.
CLAIMS = st.fixed_dictionaries(
    {
        "iss": st.just(ISSUER),
        "aud": st.just("api") | st.just(["api", "other"]) | JSON_VALUES,
        "exp": st.integers(min_value=int(time.time()) + 60, max_value=2**40) | ANY_NUMBER,
        "iat": st.integers(min_value=0, max_value=int(time.time())) | ANY_NUMBER,
        "sub": st.text(min_size=1, max_size=12) | JSON_VALUES,
    },
    optional={name: ANY_NUMBER for name in ("nbf", "jti", "groups", "roles", "scope", "scp", "realm_access")},
)


@pytest.fixture(scope="module")
def property_validator(tmp_path_factory: pytest.TempPathFactory) -> JWTValidator:
    jwk = {**RSAAlgorithm.to_jwk(KEY.public_key(), as_dict=True), "kid": "k1", "alg": "RS256"}
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    keyset = KeySet(None, static_file=path)
    asyncio.run(keyset.refresh())
    policy = IssuerPolicy(issuer=ISSUER, audiences=frozenset({"api"}), algorithms=frozenset({"RS256"}))
    return JWTValidator({ISSUER: StaticIssuer(policy, keyset)}, cache_size=0)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    claims=CLAIMS,
    extra_header=st.dictionaries(st.text(max_size=5), JSON_VALUES, max_size=3),
    nest=st.just(0) | st.integers(min_value=1, max_value=40) | st.integers(min_value=41, max_value=3000),
)
def test_any_signed_claims_get_a_verdict_never_an_error(
    property_validator: JWTValidator, claims: dict[str, Any], extra_header: dict[str, Any], nest: int
) -> None:
    header = {**extra_header, "alg": "RS256", "kid": "k1"}
    payload = json.dumps(claims).encode()
    if nest:  # `claims` always holds `iss`, so a member can follow
        payload = payload[:-1] + b', "deep": ' + b"[" * nest + b"]" * nest + b"}"
    signing_input = b64(json.dumps(header).encode()) + "." + b64(payload)
    signature = RSAAlgorithm(RSAAlgorithm.SHA256).sign(signing_input.encode(), KEY)
    outcome = asyncio.run(verdict(property_validator, signing_input + "." + b64(signature)))
    assert outcome != "verification_failed"  # a reason from a check, never the net that catches bugs
    event(outcome)
    if outcome == "valid":
        assert nest <= 32


async def verdict(validator: JWTValidator, token: str) -> str:
    try:
        await validator.validate(token)
    except TokenRejected as refused:
        return refused.reason
    return "valid"


async def test_a_static_jwks_file_replaced_by_a_broken_one_keeps_the_last_good_keys(
    idp: IdP, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(idp.keys))
    keyset = KeySet(None, static_file=path)
    await keyset.refresh()
    good = dict(keyset.keys)
    for broken in (b"[" * 100_000, json.dumps(idp.keys).encode() + b" " * MAX_DOCUMENT_BYTES, b"\xff"):
        path.write_bytes(broken)
        with caplog.at_level(logging.ERROR, logger="authcar.keys"):
            await keyset.refresh()
        assert keyset.keys == good
        assert keyset.last_error is not None
        assert "acceptable JSON object" in keyset.last_error
    assert [bool(record.exc_info) for record in caplog.records] == [False] * 3  # once each, no traceback


@pytest.mark.parametrize(
    "methods", [5, {"client_secret_basic": 1}, "client_secret_basic", [1, None, ["x"]], 1e308]
)
def test_discovery_members_of_the_wrong_type_are_ignored(methods: object) -> None:
    document = {
        "issuer": ISSUER,
        "jwks_uri": ["https://x"],
        "introspection_endpoint": 7,
        "introspection_endpoint_auth_methods_supported": methods,
    }
    metadata = ProviderMetadata.from_document(document, ISSUER)
    assert (metadata.jwks_uri, metadata.introspection_endpoint) == (None, None)
    assert metadata.introspection_auth_methods == ()
