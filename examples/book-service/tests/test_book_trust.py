"""Identity comes only from a valid X-Auth-Request-Jwt: every other request is 401 and changes nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jwt
import pytest
from book_service_kit import (
    ASSERTION,
    JwksServer,
    RunningService,
    ServiceFactory,
    SidecarKey,
    claims_for,
    hmac_jws,
    mint,
    raw_jws,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

EDITOR = {"sub": "bob", "roles": ["editor", "admin"]}
DUNE = {"title": "Dune", "author": "Frank Herbert", "year": 1965}

# Each builds a token for (key, method, path) that must be refused, and names the expected error.
Attack = Callable[[SidecarKey, str, str], str]


def signed(**changes: Any) -> Attack:
    """A correctly signed assertion with some claims changed (None removes a claim)."""

    def build(key: SidecarKey, method: str, path: str) -> str:
        claims = {**claims_for(method, path, **EDITOR), **changes}
        return mint(key, {name: value for name, value in claims.items() if value is not None})

    return build


def other_key(with_published_kid: bool) -> Attack:
    def build(key: SidecarKey, method: str, path: str) -> str:
        stranger = SidecarKey.generate()
        return mint(stranger, claims_for(method, path, **EDITOR), kid=key.kid if with_published_kid else None)

    return build


def tampered(key: SidecarKey, method: str, path: str) -> str:
    """Signed for a reader; the payload swapped for an admin's afterwards."""
    head, _, signature = mint(key, claims_for(method, path, sub="alice", roles=["reader"])).split(".")
    _, body, _ = mint(key, claims_for(method, path, **EDITOR)).split(".")
    return f"{head}.{body}.{signature}"


def unsigned(alg: str) -> Attack:
    def build(key: SidecarKey, method: str, path: str) -> str:
        return raw_jws({"alg": alg, "kid": key.kid, "typ": "JWT"}, claims_for(method, path, **EDITOR))

    return build


def hmac_with_public_key(encoding: str) -> Attack:
    """HS256 keyed with the sidecar's public key, which anyone can fetch: algorithm confusion."""

    def build(key: SidecarKey, method: str, path: str) -> str:
        public = key.private.public_key()
        secrets = {
            "pem": public.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            "der": public.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            "jwk": json.dumps(dict(key.jwk), separators=(",", ":")).encode(),
        }
        header = {"alg": "HS256", "kid": key.kid, "typ": "JWT"}
        return hmac_jws(header, claims_for(method, path, **EDITOR), secrets[encoding])

    return build


def with_header(**header: Any) -> Attack:
    def build(key: SidecarKey, method: str, path: str) -> str:
        return mint(key, claims_for(method, path, **EDITOR), **header)

    return build


def empty_signature(key: SidecarKey, method: str, path: str) -> str:
    head, body, _ = mint(key, claims_for(method, path, **EDITOR)).split(".")
    return f"{head}.{body}."


def es384(key: SidecarKey, method: str, path: str) -> str:
    stranger = ec.generate_private_key(ec.SECP384R1())
    return jwt.encode(
        claims_for(method, path, **EDITOR), stranger, algorithm="ES384", headers={"kid": key.kid}
    )


def for_other_request(method: str | None = None, path: str | None = None) -> Attack:
    def build(key: SidecarKey, real_method: str, real_path: str) -> str:
        return mint(key, claims_for(method or real_method, path or real_path, **EDITOR))

    return build


ATTACKS: dict[str, tuple[Attack, str]] = {
    "tampered payload": (tampered, "bad_signature"),
    "signed by another key, its own kid": (other_key(with_published_kid=False), "unknown_key"),
    "signed by another key, the published kid": (other_key(with_published_kid=True), "bad_signature"),
    "empty signature": (empty_signature, "bad_signature"),
    "wrong audience": (signed(aud="another-app"), "wrong_audience"),
    "audience list without ours": (signed(aud=["a", "b"]), "wrong_audience"),
    "wrong issuer": (signed(iss="evil"), "wrong_issuer"),
    "issuer containing ours": (signed(iss="authcar.evil"), "wrong_issuer"),
    "issuer inside ours": (signed(iss="auth"), "wrong_issuer"),
    "expired": (signed(exp=int(time.time()) - 3600), "expired"),
    "issued in the future": (signed(iat=int(time.time()) + 3600), "not_yet_valid"),
    "no exp": (signed(exp=None), "missing_claim"),
    "no aud": (signed(aud=None), "missing_claim"),
    "no method": (signed(method=None), "missing_claim"),
    "no path": (signed(path=None), "missing_claim"),
    "minted for POST": (for_other_request(method="POST"), "method_mismatch"),
    "minted for another path": (for_other_request(path="/books"), "path_mismatch"),
    "minted for the path with a query": (for_other_request(path="/books/1?x=1"), "path_mismatch"),
    "alg none": (unsigned("none"), "alg_not_allowed"),
    "alg None": (unsigned("None"), "alg_not_allowed"),
    "alg NONE": (unsigned("NONE"), "alg_not_allowed"),
    "HS256 keyed with the PEM public key": (hmac_with_public_key("pem"), "alg_not_allowed"),
    "HS256 keyed with the DER public key": (hmac_with_public_key("der"), "alg_not_allowed"),
    "HS256 keyed with the JWK": (hmac_with_public_key("jwk"), "alg_not_allowed"),
    "ES384 with our kid": (es384, "alg_not_allowed"),
    "crit header": (with_header(crit=["exp"]), "malformed"),
    "kid that is a path": (with_header(kid="../../etc/passwd"), "malformed"),
    "kid that is a number": (lambda k, m, p: raw_jws({"alg": "ES256", "kid": 7}, {}), "malformed"),
    "no kid": (lambda k, m, p: raw_jws({"alg": "ES256"}, claims_for(m, p), b"x" * 64), "malformed"),
    "roles not a list": (signed(roles="admin"), "malformed"),
    "empty subject": (signed(sub=""), "malformed"),
    "subject not a string": (signed(sub=42), "malformed"),
    "not a JWT": (lambda k, m, p: "not-a-jwt", "malformed"),
    "five parts (JWE)": (lambda k, m, p: "a.b.c.d.e", "malformed"),
    "oversized": (lambda k, m, p: mint(k, {**claims_for(m, p, **EDITOR), "pad": "x" * 9000}), "malformed"),
}


@pytest.fixture
def book(service: RunningService) -> int:
    answer = service.call("POST", "/books", json_body=DUNE, sub="bob", roles=("editor",))
    assert answer.status_code == 201
    return int(answer.json()["id"])


@pytest.mark.parametrize("attack", ATTACKS.values(), ids=ATTACKS.keys())
def test_refused_assertions_are_401_and_change_nothing(
    service: RunningService, book: int, attack: tuple[Attack, str]
) -> None:
    build, error = attack
    before = service.snapshot()
    path = f"/books/{book}"
    for method, body in [("DELETE", None), ("PATCH", {"title": "Owned"}), ("GET", None)]:
        token = build(service.key, method, path)
        answer = service.http.request(method, path, json=body, headers={ASSERTION: token})
        assert answer.status_code == 401, (method, answer.text)
        assert answer.json()["error"] == error
        assert "request_id" in answer.json()
    assert service.snapshot() == before


def test_no_assertion_is_401(service: RunningService, book: int) -> None:
    before = service.snapshot()
    for method in ("GET", "POST", "DELETE"):
        answer = service.http.request(method, f"/books/{book}" if method != "POST" else "/books", json=DUNE)
        assert answer.status_code == 401
        assert answer.json()["error"] == "missing_assertion"
    # Unknown paths too: nothing is routed, not even to a 404, without an assertion.
    assert service.http.get("/nowhere").status_code == 401
    assert service.snapshot() == before


def test_two_assertions_are_401(service: RunningService, book: int) -> None:
    token = mint(service.key, claims_for("DELETE", f"/books/{book}", **EDITOR))
    before = service.snapshot()
    answer = service.http.delete(f"/books/{book}", headers=[(ASSERTION, token), (ASSERTION, token)])
    assert answer.status_code == 401
    assert service.snapshot() == before


def test_the_path_asserted_is_the_path_without_query(service: RunningService) -> None:
    answer = service.call("GET", "/books?limit=1")
    assert answer.status_code == 200


def test_healthz_lookalikes_need_an_assertion(service: RunningService) -> None:
    for path in ("/healthz/", "//healthz", "/healthz/../books", "/HEALTHZ"):
        assert service.http.get(path).status_code == 401, path
    assert service.http.post("/healthz").status_code == 401


def test_unknown_kid_refetches_the_keys_once_rotated(start_service: ServiceFactory) -> None:
    first, second = SidecarKey.generate(), SidecarKey.generate()
    with (
        JwksServer([first]).running() as jwks,
        start_service(first, jwks_url=jwks.url, jwks_cooldown=0) as service,
    ):
        assert jwks.fetch_count() == 0  # lazily: nothing before the first request
        assert service.call("GET", "/books").status_code == 200
        assert jwks.fetch_count() == 1
        assert service.call("GET", "/books").status_code == 200
        assert jwks.fetch_count() == 1  # known kid: no fetch

        jwks.publish(first, second)
        token = mint(second, claims_for("GET", "/books"))
        assert service.call("GET", "/books", assertion=token).status_code == 200
        assert jwks.fetch_count() == 2
        assert service.call("GET", "/books").status_code == 200  # the old key still works


def test_a_key_dropped_by_the_sidecar_stops_working(start_service: ServiceFactory) -> None:
    first, second = SidecarKey.generate(), SidecarKey.generate()
    with (
        JwksServer([first]).running() as jwks,
        start_service(first, jwks_url=jwks.url, jwks_max_age=0.3) as service,
    ):
        assert service.call("GET", "/books").status_code == 200
        jwks.publish(second)
        time.sleep(0.35)
        answer = service.call("GET", "/books")
        assert answer.status_code == 401
        assert answer.json()["error"] == "unknown_key"


def test_a_flood_of_unknown_kids_fetches_once_per_cooldown(start_service: ServiceFactory) -> None:
    with (
        JwksServer([SidecarKey.generate()]).running() as jwks,
        start_service(jwks_url=jwks.url, jwks_cooldown=60) as service,
    ):

        def stranger_call(_: int) -> int:
            token = mint(SidecarKey.generate(), claims_for("GET", "/books"))
            return service.call("GET", "/books", assertion=token).status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(stranger_call, range(40)))
        assert statuses == [401] * 40
        assert jwks.fetch_count() == 1


def test_the_sidecar_may_start_after_the_app(start_service: ServiceFactory) -> None:
    with JwksServer([SidecarKey.generate()]).running() as jwks:
        jwks.available = False
        key = jwks.keys[0]
        with start_service(key, jwks_url=jwks.url, jwks_cooldown=0.2) as service:
            answer = service.call("GET", "/books")
            assert answer.status_code == 401
            assert answer.json()["error"] == "keys_unavailable"
            jwks.available = True
            time.sleep(0.25)
            assert service.call("GET", "/books").status_code == 200


def test_an_unreachable_jwks_is_401_not_500(start_service: ServiceFactory) -> None:
    with start_service(jwks_url="http://127.0.0.1:9/nothing-listens-here") as service:
        answer = service.call("GET", "/books")
        assert answer.status_code == 401
        assert answer.json()["error"] == "keys_unavailable"


def test_keys_whose_kid_is_not_their_thumbprint_are_ignored(start_service: ServiceFactory) -> None:
    key, chosen = SidecarKey.generate(), "chosen-by-the-jwks"
    misnamed = SidecarKey(private=key.private, kid=chosen, jwk={**key.jwk, "kid": chosen})
    with JwksServer([misnamed]).running() as jwks, start_service(key, jwks_url=jwks.url) as service:
        for kid in (chosen, key.kid):
            answer = service.call("GET", "/books", assertion=mint(key, claims_for("GET", "/books"), kid=kid))
            assert answer.status_code == 401
            # The JWKS held no key we could trust: as if it could not be fetched.
            assert answer.json()["error"] == "keys_unavailable"


def test_the_audience_is_configurable(start_service: ServiceFactory, jwks: JwksServer) -> None:
    with start_service(jwks_url=jwks.url, assertion_audience="books") as service:
        assert service.call("GET", "/books").status_code == 401
        token = mint(service.key, claims_for("GET", "/books", aud="books"))
        assert service.call("GET", "/books", assertion=token).status_code == 200


def test_assertions_minted_by_authcar_itself_are_accepted(start_service: ServiceFactory) -> None:
    """The two sides of the contract agree: authcar's signer and JWKS, this service's verifier."""
    assertion = pytest.importorskip("authcar.assertion")
    identity = pytest.importorskip("authcar.identity")
    signer = assertion.AssertionSigner(
        ec.generate_private_key(ec.SECP256R1()), audience="upstream", lifetime=60
    )
    key = SidecarKey(private=signer.private_key, kid=signer.kid, jwk=signer.jwks()["keys"][0])
    carol = identity.Identity(subject="carol", roles=frozenset({"admin"}), source="jwt", issuer="https://idp")

    def as_sidecar(who: Any, method: str, path: str) -> str:
        return bytes(signer.assertion(who, method, path, time.time())).decode("ascii")

    with JwksServer([key]).running() as jwks, start_service(key, jwks_url=jwks.url) as service:
        created = service.call(
            "POST", "/books", json_body=DUNE, assertion=as_sidecar(carol, "POST", "/books")
        )
        assert created.status_code == 201
        assert created.json()["created_by"] == "carol"
        audit = service.call("GET", "/audit", assertion=as_sidecar(carol, "GET", "/audit"))
        assert audit.status_code == 200
        assert audit.json()["entries"][0]["subject"] == "carol"

        anonymous = identity.ANONYMOUS
        assert (
            service.call("GET", "/books", assertion=as_sidecar(anonymous, "GET", "/books")).status_code == 200
        )
        refused = service.call(
            "POST", "/books", json_body=DUNE, assertion=as_sidecar(anonymous, "POST", "/books")
        )
        assert refused.status_code == 401
        assert refused.json()["error"] == "subject_required"
