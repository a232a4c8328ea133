"""Signing keys for the test identity provider, and a JWS builder that signs whatever header it is given.

The builder is ours rather than `jwt.encode` because attack tests need headers pyjwt refuses to write
(a non-string `kid`, an `alg` that differs from the one actually used) and HMAC secrets pyjwt refuses
to use (a public key in PEM, DER, JWK or OpenSSH form). The signatures themselves are pyjwt's.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

Family = Literal["RSA", "P-256", "P-384", "Ed25519"]
KeyFormat = Literal["pem", "pkcs1", "der", "jwk", "openssh"]

# The algorithm each published key is announced with; one key per entry in the initial set.
PUBLISHED_ALGS = ("RS256", "PS256", "ES256", "ES384", "EdDSA")
FAMILIES: Mapping[str, Family] = MappingProxyType(
    {
        "RS256": "RSA",
        "RS384": "RSA",
        "RS512": "RSA",
        "PS256": "RSA",
        "PS384": "RSA",
        "PS512": "RSA",
        "ES256": "P-256",
        "ES384": "P-384",
        "EdDSA": "Ed25519",
    }
)
HMAC_HASHES = MappingProxyType({"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512})
# RFC 7638 thumbprint members, per key type.
THUMBPRINT_MEMBERS = MappingProxyType(
    {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}
)


def family_of(alg: str) -> Family:
    try:
        return FAMILIES[alg]
    except KeyError:
        raise ValueError(f"no asymmetric key family signs {alg!r}") from None


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def generate(family: Family) -> PrivateKeyTypes:
    if family == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if family == "P-256":
        return ec.generate_private_key(ec.SECP256R1())
    if family == "P-384":
        return ec.generate_private_key(ec.SECP384R1())
    return ed25519.Ed25519PrivateKey.generate()


@dataclass(frozen=True)
class SigningKey:
    """A private key, the algorithm it is published for, and its kid (the RFC 7638 thumbprint)."""

    kid: str
    alg: str
    private: PrivateKeyTypes

    @property
    def public(self) -> PublicKeyTypes:
        return self.private.public_key()  # type: ignore[union-attr]

    @property
    def family(self) -> Family:
        return family_of(self.alg)

    @property
    def jwk(self) -> dict[str, Any]:
        """The public JWK as the JWKS endpoint publishes it."""
        body = jwt.get_algorithm_by_name(self.alg).to_jwk(self.public, as_dict=True)
        return {"kid": self.kid, "use": "sig", "alg": self.alg, **body}

    def sign(self, signing_input: bytes, alg: str | None = None) -> bytes:
        algorithm = jwt.get_algorithm_by_name(alg or self.alg)
        return algorithm.sign(signing_input, algorithm.prepare_key(self.private))

    def public_bytes(self, fmt: KeyFormat) -> bytes:
        """The public key in an encoding an algorithm-confusion attacker would try as an HMAC secret."""
        if fmt == "jwk":
            return json.dumps(self.jwk, separators=(",", ":")).encode()  # as the JWKS endpoint serialises it
        encodings = {
            "pem": (serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
            "pkcs1": (serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
            "der": (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
            "openssh": (serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH),
        }
        return self.public.public_bytes(*encodings[fmt])

    def private_pem(self) -> str:
        return self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()


def thumbprint(jwk: Mapping[str, Any]) -> str:
    members = {name: jwk[name] for name in THUMBPRINT_MEMBERS[jwk["kty"]]}
    return b64url(
        hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode()).digest()
    )


def new_key(alg: str) -> SigningKey:
    private = generate(family_of(alg))
    body = jwt.get_algorithm_by_name(alg).to_jwk(private.public_key(), as_dict=True)  # type: ignore[union-attr]
    return SigningKey(kid=thumbprint(body), alg=alg, private=private)


@functools.cache
def initial_keys() -> tuple[tuple[SigningKey, ...], tuple[SigningKey, ...]]:
    """(published, unpublished) keys, generated once per process: RSA generation costs ~50 ms a key.

    Every provider started without fresh_keys shares these (immutable) keys; each keeps its own ring.
    Unpublished keys are one per family, for tokens whose kid the JWKS does not know.
    """
    return fresh_keys()


def fresh_keys() -> tuple[tuple[SigningKey, ...], tuple[SigningKey, ...]]:
    published = tuple(new_key(alg) for alg in PUBLISHED_ALGS)
    unpublished = tuple(new_key(alg) for alg in ("RS256", "ES256", "ES384", "EdDSA"))
    return published, unpublished


def jws(header: Mapping[str, Any], payload: Mapping[str, Any] | bytes, sign: Callable[[bytes], bytes]) -> str:
    """A JWS compact serialisation of exactly this header and payload, signed by `sign(signing_input)`."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload, separators=(",", ":")).encode()
    signing_input = f"{b64url(json.dumps(header, separators=(',', ':')).encode())}.{b64url(body)}"
    return f"{signing_input}.{b64url(sign(signing_input.encode('ascii')))}"


def sign_jws(header: Mapping[str, Any], payload: Mapping[str, Any] | bytes, key: SigningKey, alg: str) -> str:
    """Signed by `key` with `alg`, whatever `header` claims."""
    return jws(header, payload, lambda signing_input: key.sign(signing_input, alg))


def hmac_jws(
    header: Mapping[str, Any], payload: Mapping[str, Any] | bytes, secret: bytes, alg: str = "HS256"
) -> str:
    """An HS* token with any secret (pyjwt refuses asymmetric key material as an HMAC secret)."""
    return jws(
        header, payload, lambda signing_input: hmac.new(secret, signing_input, HMAC_HASHES[alg]).digest()
    )


def unsigned_jws(header: Mapping[str, Any], payload: Mapping[str, Any] | bytes) -> str:
    """An empty signature: what `alg: none` tokens carry."""
    return jws(header, payload, lambda signing_input: b"")


class KeyRing:
    """One provider's keys: published (the JWKS, oldest first), retired, and never published."""

    def __init__(self, *, fresh: bool = False) -> None:
        published, unpublished = fresh_keys() if fresh else initial_keys()
        self.published: list[SigningKey] = list(published)
        self.retired: list[SigningKey] = []
        self.unpublished: dict[Family, SigningKey] = {key.family: key for key in unpublished}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.jwk for key in self.published]}

    def find(self, kid: str) -> SigningKey:
        for key in (*self.published, *self.retired, *self.unpublished.values()):
            if key.kid == kid:
                return key
        raise KeyError(f"no key with kid {kid!r}")

    def verifying_key(self, kid: object) -> SigningKey | None:
        """The published key a token's kid names, if any (what a relying party can verify with)."""
        return next((key for key in self.published if key.kid == kid), None)

    def signer(self, alg: str, *, kid: str | None = None, unpublished: bool = False) -> SigningKey:
        """The key to sign `alg` with: the one named, the unpublished one of its family, or the newest
        published for `alg` (else for its family, so an RS384 token can carry an RS256 key's kid)."""
        if kid is not None:
            return self.find(kid)
        family = family_of(alg)
        if unpublished:
            return self.unpublished[family]
        for match in (lambda key: key.alg == alg, lambda key: key.family == family):
            found = [key for key in self.published if match(key)]
            if found:
                return found[-1]
        raise LookupError(f"no published key can sign {alg}; rotate(alg={alg!r}) publishes one")

    def rotate(self, alg: str) -> SigningKey:
        key = new_key(alg)
        self.published.append(key)
        return key

    def retire(self, kid: str) -> None:
        key = self.verifying_key(kid)
        if key is None:
            raise KeyError(f"no published key with kid {kid!r}")
        self.published.remove(key)
        self.retired.append(key)
