"""authcar checks registered claims itself (jwt.decode would re-parse every token slowly): a
differential test shows it accepts exactly what pyjwt's `jwt.decode` accepts, plus our own rule
that time claims are JSON numbers."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jwt.algorithms import RSAAlgorithm

from authcar.authn.jwt import IssuerPolicy, JWTValidator, TokenRejected
from authcar.authn.keys import KeySet
from authcar.claims import ClaimMapping

ISSUER = "https://issuer.example/realm"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
NOW = int(time.time())
MISSING = object()


class StaticIssuer:
    def __init__(self, policy: IssuerPolicy, keyset: KeySet) -> None:
        self.policy = policy
        self.keyset = keyset
        self.mapping = ClaimMapping()

    def identify(self, claims: Any) -> Any:
        return self.mapping.identity(claims, ISSUER, "jwt")


@pytest.fixture(scope="module")
def validator(tmp_path_factory: pytest.TempPathFactory) -> JWTValidator:
    jwk = RSAAlgorithm.to_jwk(KEY.public_key(), as_dict=True)
    jwk.update(kid="k1", alg="RS256")
    path: Path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    keyset = KeySet(None, static_file=path)
    asyncio.run(keyset.refresh())
    policy = IssuerPolicy(
        issuer=ISSUER,
        audiences=frozenset({"api"}),
        algorithms=frozenset({"RS256"}),
        leeway=30.0,
        required_claims=("exp", "iat"),
    )
    return JWTValidator({ISSUER: StaticIssuer(policy, keyset)}, cache_size=0)


def pyjwt_accepts(token: str) -> bool:
    try:
        claims = jwt.decode(
            token,
            KEY.public_key(),
            algorithms=["RS256"],
            audience=["api"],
            issuer=ISSUER,
            leeway=30.0,
            options={"require": ["exp", "iat"], "strict_aud": False},
        )
    except jwt.PyJWTError:
        return False
    # authcar's own addition: time claims must be JSON numbers (pyjwt takes int("123")).
    return all(
        not isinstance(claims.get(n), bool) and isinstance(claims.get(n, 0), int | float)
        for n in ("exp", "iat", "nbf")
    )


def authcar_accepts(validator: JWTValidator, token: str) -> bool:
    try:
        asyncio.run(validator.validate(token))
    except TokenRejected:
        return False
    return True


times = st.one_of(
    st.just(MISSING),
    st.integers(min_value=-4000, max_value=4000).map(lambda d: NOW + d),
    st.floats(min_value=-100, max_value=100).map(lambda d: NOW + d),
    st.sampled_from([None, True, "123", str(NOW + 600), [NOW], 0, float("inf"), float("nan"), 10**30]),
)
audiences = st.sampled_from([MISSING, "api", ["api", "x"], ["x"], "x", [1, "api"], "", [], {"api": 1}, None])
strings = st.sampled_from([MISSING, "alice", 7, None, ["alice"]])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(exp=times, iat=times, nbf=times, aud=audiences, sub=strings, jti=strings)
def test_claims_are_judged_as_pyjwt_judges_them(  # type: ignore[no-untyped-def]
    validator, exp, iat, nbf, aud, sub, jti
) -> None:
    claims = {"iss": ISSUER, "exp": exp, "iat": iat, "nbf": nbf, "aud": aud, "sub": sub, "jti": jti}
    claims = {k: v for k, v in claims.items() if v is not MISSING}
    if not isinstance(claims.get("sub"), str):
        claims["preferred_username"] = "x"  # identity mapping needs a subject; keep sub's type test
    token = jwt.encode(claims, KEY, algorithm="RS256", headers={"kid": "k1"})
    expected = pyjwt_accepts(token)
    if expected and not isinstance(claims.get("sub"), str):
        expected = False  # no subject: authcar's identity mapping refuses (missing_claim)
    assert authcar_accepts(validator, token) == expected, claims


def test_a_non_canonical_signature_encoding_is_refused(validator: JWTValidator) -> None:
    token = jwt.encode(
        {"iss": ISSUER, "exp": int(time.time()) + 60, "iat": int(time.time()), "aud": "api", "sub": "a"},
        KEY,
        algorithm="RS256",
        headers={"kid": "k1"},
    )
    assert authcar_accepts(validator, token)
    head, _, signature = token.rpartition(".")
    # The last character of a 342-char RS256 signature carries 4 unused bits: flip one of them.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(signature[-1])
    twin = head + "." + signature[:-1] + alphabet[last ^ 1]
    with pytest.raises(TokenRejected) as refused:
        asyncio.run(validator.validate(twin))
    assert refused.value.reason in ("malformed", "bad_signature")
