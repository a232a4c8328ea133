"""The signed upstream assertion (X-Auth-Request-Jwt): its key, its JWKS, its claims.

Signing and loading are checked against pyjwt, an independent verifier; the JWKS endpoint through
the running sidecar; one key across workers through a real `authcar run` with two worker processes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import httpx
import jwt
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from authcar.assertion import (
    ASSERTION_ISSUER,
    AssertionKeyError,
    AssertionSigner,
    load_private_key,
    new_private_key_pem,
)
from authcar.config import Settings
from authcar.identity import ANONYMOUS, Identity
from tests.support.process import SidecarProcess, start_sidecar_process
from tests.support.sidecar import start_sidecar
from tests.support.upstream_app import RunningUpstream

ALICE = Identity(
    subject="alice",
    issuer="https://idp.example/realms/test",
    roles=frozenset({"reader", "editor"}),
    scopes=frozenset({"read"}),
    claims=MappingProxyType(
        {"sub": "alice", "email": "alice@example.com", "preferred_username": "alice", "scope": "read"}
    ),
    source="jwt",
)


def signer(**overrides: Any) -> AssertionSigner:
    return AssertionSigner.from_settings(replace(Settings(), **overrides))


def verify(token: bytes | str, jwks: dict[str, Any], audience: str = "upstream") -> dict[str, Any]:
    """Verify as an application would: the key named by `kid` in the JWKS, ES256 only."""
    kid = jwt.get_unverified_header(token)["kid"]
    key = jwt.PyJWKSet.from_dict(jwks)[kid]
    return jwt.decode(
        token,
        key,
        algorithms=["ES256"],
        audience=audience,
        issuer=ASSERTION_ISSUER,
        options={"require": ["exp", "iat", "iss", "aud"]},
    )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def write_pem(path: Path, key: Any, encryption: Any = None) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            encryption or serialization.NoEncryption(),
        )
    )
    return path


# --- the assertion --------------------------------------------------------------------------


def test_an_assertion_verifies_with_the_jwks_and_carries_the_agreed_claims() -> None:
    now = time.time()
    signing = signer(assertion_audience="books", assertion_lifetime=90)
    token = signing.assertion(ALICE, "POST", "/books/42", now)
    claims = verify(token, signing.jwks(), audience="books")
    assert claims == {
        "iss": "authcar",
        "aud": "books",
        "sub": "alice",
        "roles": ["editor", "reader"],
        "src": "jwt",
        "idp": "https://idp.example/realms/test",
        "method": "POST",
        "path": "/books/42",
        "email": "alice@example.com",
        "preferred_username": "alice",
        "iat": int(now),
        "exp": int(now) + 90,
    }


def test_the_header_names_es256_and_the_key_by_its_rfc7638_thumbprint() -> None:
    signing = signer()
    token = signing.assertion(ALICE, "GET", "/", time.time())
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "ES256", "typ": "JWT", "kid": signing.kid}
    (jwk,) = signing.jwks()["keys"]
    assert set(jwk) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("EC", "P-256", "ES256", "sig")
    # RFC 7638 §3: the required members, sorted, no whitespace, SHA-256, base64url.
    canonical = f'{{"crv":"P-256","kty":"EC","x":"{jwk["x"]}","y":"{jwk["y"]}"}}'
    assert jwk["kid"] == b64url(hashlib.sha256(canonical.encode()).digest())
    numbers = signing.private_key.public_key().public_numbers()
    assert jwk["x"] == b64url(numbers.x.to_bytes(32, "big"))
    assert jwk["y"] == b64url(numbers.y.to_bytes(32, "big"))
    # Raw r || s, 64 bytes (RFC 7518 §3.4), not DER.
    assert len(base64.urlsafe_b64decode(token.split(b".")[2] + b"==")) == 64


def verify_with_cryptography(token: bytes, jwks: dict[str, Any]) -> dict[str, Any]:
    """A second verifier that shares no code with pyjwt's JOSE layer: RFC 7515 by hand over
    cryptography's ECDSA, with the key rebuilt from the JWK's coordinates."""
    head, payload, signature = token.split(b".")
    header = json.loads(base64.urlsafe_b64decode(head + b"=="))
    (jwk,) = [key for key in jwks["keys"] if key["kid"] == header["kid"]]
    public_key = ec.EllipticCurvePublicNumbers(
        int.from_bytes(base64.urlsafe_b64decode(jwk["x"] + "=="), "big"),
        int.from_bytes(base64.urlsafe_b64decode(jwk["y"] + "=="), "big"),
        ec.SECP256R1(),
    ).public_key()
    raw = base64.urlsafe_b64decode(signature + b"==")
    assert len(raw) == 64  # RFC 7518 §3.4: r and s, 32 bytes each, whatever their value
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public_key.verify(der, head + b"." + payload, ec.ECDSA(hashes.SHA256()))
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + b"=="))
    return claims


def test_assertions_verify_with_pyjwt_and_with_cryptography_alone_even_with_short_coordinates() -> None:
    """r or s below 2**248 (about one signature in 128) must still be sent as 32 bytes, left-padded:
    a signer that dropped the leading zero would fail here, and only for those signatures."""
    signing = signer()
    jwks = signing.jwks()
    short = 0
    for attempt in range(4000):  # P(no short coordinate in 4000 signatures) ~ 1e-14
        token = signing.assertion(ALICE, "GET", f"/books/{attempt}", time.time())
        raw = base64.urlsafe_b64decode(token.split(b".")[2] + b"==")
        if raw[0] != 0 and raw[32] != 0 and attempt >= 20:
            continue
        short += raw[0] == 0 or raw[32] == 0
        assert verify(token, jwks)["path"] == f"/books/{attempt}"
        assert verify_with_cryptography(token, jwks) == verify(token, jwks)
        if short >= 2:
            break
    assert short >= 2


def test_the_independent_verifier_refuses_a_tampered_or_der_encoded_signature() -> None:
    """The second verifier above can fail: a changed payload and a DER signature are refused."""
    signing = signer()
    token = signing.assertion(ALICE, "GET", "/books/1", time.time())
    head, payload, signature = token.split(b".")
    forged = head + b"." + b64url(b'{"sub":"mallory"}').encode() + b"." + signature
    with pytest.raises(InvalidSignature):
        verify_with_cryptography(forged, signing.jwks())
    raw = base64.urlsafe_b64decode(signature + b"==")
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    with pytest.raises(AssertionError):
        verify_with_cryptography(head + b"." + payload + b"." + b64url(der).encode(), signing.jwks())
    with pytest.raises(jwt.InvalidSignatureError):
        verify(head + b"." + payload + b"." + b64url(der).encode(), signing.jwks())


def test_an_anonymous_assertion_has_no_subject_and_says_so() -> None:
    signing = signer()
    claims = verify(signing.assertion(ANONYMOUS, "GET", "/public/x", time.time()), signing.jwks())
    assert "sub" not in claims
    assert "idp" not in claims
    assert "email" not in claims
    assert claims["src"] == "anonymous"
    assert claims["roles"] == []
    assert (claims["method"], claims["path"]) == ("GET", "/public/x")


def test_claims_that_are_not_strings_are_left_out() -> None:
    odd = replace(ALICE, claims=MappingProxyType({"email": ["a@x", "b@x"], "preferred_username": ""}))
    signing = signer()
    claims = verify(signing.assertion(odd, "GET", "/", time.time()), signing.jwks())
    assert "email" not in claims
    assert "preferred_username" not in claims


def test_non_ascii_values_travel_as_utf8_json() -> None:
    jose = replace(ALICE, subject="José", claims=MappingProxyType({"preferred_username": "josé"}))
    signing = signer()
    token = signing.assertion(jose, "GET", "/caf%C3%A9", time.time())
    token.decode("ascii")  # a header value: base64url only
    claims = verify(token, signing.jwks())
    assert (claims["sub"], claims["preferred_username"], claims["path"]) == ("José", "josé", "/caf%C3%A9")


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda c: {**c, "path": "/admin"}, id="path"),
        pytest.param(lambda c: {**c, "method": "DELETE"}, id="method"),
        pytest.param(lambda c: {**c, "sub": "mallory"}, id="subject"),
        pytest.param(lambda c: {**c, "roles": ["admin"]}, id="roles"),
    ],
)
def test_changing_any_bound_claim_breaks_the_signature(tamper: Callable[[dict[str, Any]], Any]) -> None:
    signing = signer()
    head, payload, signature = signing.assertion(ALICE, "GET", "/books/1", time.time()).split(b".")
    claims = json.loads(base64.urlsafe_b64decode(payload + b"=="))
    forged = head + b"." + b64url(json.dumps(tamper(claims)).encode()).encode() + b"." + signature
    with pytest.raises(jwt.InvalidSignatureError):
        verify(forged, signing.jwks())


def test_an_expired_assertion_is_refused_by_a_verifier() -> None:
    signing = signer(assertion_lifetime=5)
    token = signing.assertion(ALICE, "GET", "/", time.time() - 6)
    with pytest.raises(jwt.ExpiredSignatureError):
        verify(token, signing.jwks())


# --- the key --------------------------------------------------------------------------------


def test_a_configured_key_file_is_the_signing_key(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path = write_pem(tmp_path / "assertion.pem", key)
    from_file = signer(assertion_key_file=path)
    again = signer(assertion_key_file=path)
    assert from_file.kid == again.kid
    token = AssertionSigner(key, audience="upstream", lifetime=60).assertion(ALICE, "GET", "/", time.time())
    assert verify(token, from_file.jwks())["sub"] == "alice"


def test_a_sec1_ec_private_key_file_is_accepted(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert pem.startswith(b"-----BEGIN EC PRIVATE KEY-----")
    (tmp_path / "sec1.pem").write_bytes(pem)
    assert (
        signer(assertion_key_file=tmp_path / "sec1.pem").kid
        == AssertionSigner(key, audience="upstream", lifetime=60).kid
    )


def test_the_generated_key_is_used_unless_a_file_is_configured(tmp_path: Path) -> None:
    settings = Settings()
    pem = new_private_key_pem()
    first = AssertionSigner.from_settings(settings, generated_pem=pem)
    second = AssertionSigner.from_settings(settings, generated_pem=pem)
    assert first.kid == second.kid  # two workers given the same PEM publish one key
    assert AssertionSigner.from_settings(settings).kid != first.kid  # no PEM, no file: a new key
    path = write_pem(tmp_path / "k.pem", ec.generate_private_key(ec.SECP256R1()))
    with_file = AssertionSigner.from_settings(replace(settings, assertion_key_file=path), generated_pem=pem)
    assert with_file.kid != first.kid  # the operator's file wins


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), id="rsa"),
        pytest.param(lambda: ec.generate_private_key(ec.SECP384R1()), id="p384"),
        pytest.param(lambda: ec.generate_private_key(ec.SECP256K1()), id="secp256k1"),
        pytest.param(lambda: ed25519.Ed25519PrivateKey.generate(), id="ed25519"),
    ],
)
def test_keys_that_cannot_sign_es256_are_refused(tmp_path: Path, make: Callable[[], Any]) -> None:
    path = write_pem(tmp_path / "key.pem", make())
    with pytest.raises(AssertionKeyError, match="P-256"):
        signer(assertion_key_file=path)


def test_an_encrypted_key_is_refused_with_a_reason(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path = write_pem(tmp_path / "key.pem", key, serialization.BestAvailableEncryption(b"secret"))
    with pytest.raises(AssertionKeyError, match="encrypted"):
        signer(assertion_key_file=path)


@pytest.mark.parametrize(
    "content",
    [b"", b"not a key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"],
    ids=["empty", "text", "broken-pem"],
)
def test_garbage_is_refused(content: bytes) -> None:
    with pytest.raises(AssertionKeyError):
        load_private_key(content)


def test_a_missing_key_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AssertionKeyError, match="cannot read"):
        signer(assertion_key_file=tmp_path / "absent.pem")


# --- served by the sidecar ------------------------------------------------------------------


async def test_the_jwks_is_served_without_authentication_and_verifies_forwarded_assertions(
    upstream: RunningUpstream,
) -> None:
    async with (
        start_sidecar(upstream.url, allow_anonymous=True) as sidecar,
        httpx.AsyncClient(base_url=sidecar.url, timeout=10) as client,
    ):
        response = await client.get("/.well-known/authcar/jwks.json")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.headers["cache-control"] == "public, max-age=300"
        assert response.headers["x-request-id"]
        jwks = response.json()
        assert [k["kid"] for k in jwks["keys"]] == [sidecar.service.sidecar.assertion_signer.kid]
        assert "d" not in jwks["keys"][0]  # never the private part
        assert (await client.post("/.well-known/authcar/jwks.json")).status_code == 404
        assert (await client.get("/x")).status_code == 200
    assert upstream.paths() == ["/x"]  # the JWKS never came from, nor went to, the application
    (seen,) = upstream.seen
    (token,) = seen.all("x-auth-request-jwt")
    assert verify(token, jwks)["path"] == "/x"


def kid_of(sidecar: SidecarProcess) -> str:
    response = httpx.get(sidecar.url + "/.well-known/authcar/jwks.json", headers={"Connection": "close"})
    (key,) = response.json()["keys"]
    return str(key["kid"])


def listening_pids(sidecar: SidecarProcess, count: int, timeout: float = 20) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [int(str(e["pid"])) for e in sidecar.events() if e.get("event") == "listening"]
        if len(pids) >= count:
            return pids
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} workers listening:\n{sidecar.log_path.read_text()}")


async def test_every_worker_signs_with_the_one_generated_key(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    sidecar = start_sidecar_process(
        tmp_path,
        {"AUTHCAR_UPSTREAM": upstream.url, "AUTHCAR_ALLOW_ANONYMOUS": "true", "AUTHCAR_WORKERS": "2"},
    )
    try:
        first, second = listening_pids(sidecar, 2)
        kids = {await asyncio.to_thread(kid_of, sidecar) for _ in range(6)}
        # With one worker killed, the other answers alone; then the replacement answers alone.
        os.kill(first, signal.SIGKILL)
        kids.add(await asyncio.to_thread(kid_of, sidecar))
        replacement = listening_pids(sidecar, 3)[-1]
        assert replacement not in (first, second)
        os.kill(second, signal.SIGKILL)
        kids.add(await asyncio.to_thread(kid_of, sidecar))
        assert len(kids) == 1
        jwks = (await asyncio.to_thread(httpx.get, sidecar.url + "/.well-known/authcar/jwks.json")).json()
        assert {key["kid"] for key in jwks["keys"]} == kids
        async with httpx.AsyncClient(base_url=sidecar.url, timeout=10) as client:
            for index in range(4):
                response = await client.get(f"/n/{index}", headers={"Connection": "close"})
                assert response.status_code == 200
        assert [verify(s.header("x-auth-request-jwt") or "", jwks)["path"] for s in upstream.seen] == [
            f"/n/{index}" for index in range(4)
        ]
        listening_pids(sidecar, 4)  # the second replacement is up before the supervisor is stopped
        sidecar.signal(signal.SIGTERM)
        assert await asyncio.to_thread(sidecar.wait) == 0
    finally:
        sidecar.stop()
