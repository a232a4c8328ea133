"""The signed upstream assertion (X-Auth-Request-Jwt) and the key that signs it.

The application behind the sidecar cannot tell a header the sidecar set from one that slipped past
it; a signature it can check can. Every forwarded request carries a short-lived ES256 JWT that names
the caller and binds the request's method and path, and `/.well-known/authcar/jwks.json` publishes
the public key (`jwks()`), its `kid` the RFC 7638 thumbprint so a key always has the same id.

The key comes from AUTHCAR_ASSERTION_KEY_FILE, or is generated at start: with several workers the
supervisor generates it once and hands the PEM to each worker in memory (`generated_pem`).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from authcar.identity import Identity

if TYPE_CHECKING:
    from authcar.config import Settings

ASSERTION_ISSUER = "authcar"
ALGORITHM = "ES256"
# Token claims copied into the assertion when the identity has them as non-empty strings.
ASSERTED_CLAIMS = ("email", "preferred_username")
COORDINATE_BYTES = 32  # P-256


class AssertionKeyError(ValueError):
    """The configured signing key cannot sign ES256 assertions."""


def b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def new_private_key_pem() -> bytes:
    """A fresh P-256 key as unencrypted PKCS#8 PEM: what the supervisor hands to its workers."""
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_private_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    """An unencrypted EC P-256 private key from PEM (PKCS#8 or SEC 1), or AssertionKeyError."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise AssertionKeyError("the key is encrypted; give an unencrypted PEM key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise AssertionKeyError("not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise AssertionKeyError("not an EC P-256 private key (ES256 needs P-256)")
    return key


def load_private_key_file(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise AssertionKeyError(f"cannot read {path}: {exc.strerror}") from None
    return load_private_key(pem)


def public_jwk(public_key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The key as a JWK for the JWKS document, with its RFC 7638 thumbprint as `kid`."""
    numbers = public_key.public_numbers()
    x = b64url(numbers.x.to_bytes(COORDINATE_BYTES, "big")).decode("ascii")
    y = b64url(numbers.y.to_bytes(COORDINATE_BYTES, "big")).decode("ascii")
    kid = thumbprint(x, y)
    return {"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "alg": ALGORITHM, "use": "sig"}


def thumbprint(x: str, y: str) -> str:
    """RFC 7638: SHA-256 over the required members in lexicographic order, no whitespace."""
    canonical = json.dumps({"crv": "P-256", "kty": "EC", "x": x, "y": y}, separators=(",", ":"))
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest()).decode("ascii")


def asserted_value(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    return value if isinstance(value, str) and value else None


class AssertionSigner:
    """Signs assertions with one key; stateless apart from the key (callers cache what it mints)."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey, *, audience: str, lifetime: float) -> None:
        self.private_key = private_key
        self.audience = audience
        self.lifetime = round(lifetime)
        self.jwk = public_jwk(private_key.public_key())
        self.kid = self.jwk["kid"]
        header = {"alg": ALGORITHM, "typ": "JWT", "kid": self.kid}
        self.encoded_header = b64url(json.dumps(header, separators=(",", ":")).encode("ascii"))
        # pyjwt's ES256: ECDSA over SHA-256, DER turned into the raw r || s of RFC 7518 §3.4. Called
        # directly: jwt.encode rebuilds and re-checks this fixed header on every call, ~6 µs of a
        # ~40 µs signature (docs/decisions.md, 13).
        self.algorithm = jwt.get_algorithm_by_name(ALGORITHM)

    @classmethod
    def from_settings(cls, settings: Settings, generated_pem: bytes | None = None) -> AssertionSigner:
        """The configured key file, else the supervisor's generated key, else a new key."""
        if settings.assertion_key_file is not None:
            key = load_private_key_file(settings.assertion_key_file)
        elif generated_pem is not None:
            key = load_private_key(generated_pem)
        else:
            key = ec.generate_private_key(ec.SECP256R1())
        return cls(key, audience=settings.assertion_audience, lifetime=settings.assertion_lifetime)

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return {"keys": [dict(self.jwk)]}

    def jwks_json(self) -> bytes:
        return json.dumps(self.jwks(), separators=(",", ":")).encode("ascii")

    def claims(self, identity: Identity, method: str, path: str, now: float) -> dict[str, Any]:
        issued = int(now)
        claims: dict[str, Any] = {"iss": ASSERTION_ISSUER, "aud": self.audience}
        anonymous = identity.is_anonymous
        if not anonymous:
            claims["sub"] = identity.subject
        claims["roles"] = sorted(identity.roles)
        claims["src"] = identity.source
        if identity.issuer:
            claims["idp"] = identity.issuer
        claims["method"] = method
        claims["path"] = path
        for name in () if anonymous else ASSERTED_CLAIMS:
            value = asserted_value(identity.claims, name)
            if value is not None:
                claims[name] = value
        claims["iat"] = issued
        claims["exp"] = issued + self.lifetime
        return claims

    def assertion(self, identity: Identity, method: str, path: str, now: float) -> bytes:
        """A compact JWS (ASCII bytes, ready for a header value); signs every time it is called."""
        return self.sign(self.claims(identity, method, path, now))

    def sign(self, claims: Mapping[str, Any]) -> bytes:
        payload = json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        signing_input = self.encoded_header + b"." + b64url(payload)
        return signing_input + b"." + b64url(self.algorithm.sign(signing_input, self.private_key))
