"""Signing keys of an identity provider: OIDC discovery, the JWKS cache, and when to fetch again.

Rules that keep the key set trustworthy and the provider safe from us:
- A key only ever verifies the algorithms its type allows (RSA: RS*/PS*, EC: the curve's ES*, OKP:
  EdDSA); a published `alg` narrows that further. Symmetric (`oct`) keys are never accepted, so
  no HMAC algorithm can ever be checked against public key material (algorithm confusion).
- Keys come only from the configured JWKS (discovered or set, or a static file); nothing a token
  says (`jku`, `x5u`, `jwk`, `x5c`) is ever fetched or used. A `kid` is only a dictionary key.
- An unknown `kid` triggers at most one fetch per cool-down, shared by every request waiting for
  it (single flight), so a flood of random kids cannot turn into a flood of JWKS requests.
- A failed fetch keeps the last good keys: a provider outage does not log everyone out.
- What the provider sends is bounded before it is used: at most 512 KiB read (never decompressed,
  within a deadline; see authcar.authn.fetch), JSON within authcar.jsonlimits, at most 100 keys,
  RSA moduli of 2048 to 8192 bits with a FIPS-sized exponent. A document outside these limits is a
  failed fetch (logged once, counted in `authcar_jwks_fetches_total{result="failure"}`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt import PyJWK

from authcar.authn.fetch import UnreadableAnswer, get_bounded
from authcar.jose import EC_ALGORITHMS, RSA_ALGORITHMS
from authcar.jsonlimits import JSONLimits, JSONRejected, decode_object

log = logging.getLogger("authcar.keys")

MAX_KEYS = 100
MAX_KID_LENGTH = 256
MAX_DOCUMENT_BYTES = 512 * 1024
# x5c certificates are the longest strings a JWKS holds (a few KiB of base64 each).
DOCUMENT_LIMITS = JSONLimits(max_bytes=MAX_DOCUMENT_BYTES, max_string=64 * 1024)
FETCH_DEADLINE = 10.0  # seconds for a whole discovery or JWKS answer
# RSA verification costs grow with the modulus and the exponent: below 2048 bits a key is weak,
# above 8192 bits each token would cost a hundred times a normal check; FIPS 186-5 caps e at 2**256.
RSA_BITS = range(2048, 8193)
MAX_RSA_EXPONENT = 2**256


class KeySetError(Exception):
    """The provider's discovery document or JWKS could not be fetched or used."""


@dataclass(frozen=True, slots=True)
class VerificationKey:
    kid: str
    key: Any  # a cryptography public key object
    algorithms: frozenset[str]  # the only algorithms this key may verify


def key_algorithms(jwk: Mapping[str, Any]) -> frozenset[str]:
    """Algorithms a JWK may verify, from its key type (and its published `alg`, if any)."""
    kty = jwk.get("kty")
    if kty == "RSA":
        allowed = RSA_ALGORITHMS
    elif kty == "EC":
        curve_alg = EC_ALGORITHMS.get(str(jwk.get("crv")))
        allowed = frozenset({curve_alg}) if curve_alg else frozenset()
    elif kty == "OKP" and jwk.get("crv") in ("Ed25519", "Ed448"):
        allowed = frozenset({"EdDSA"})
    else:
        return frozenset()  # `oct` (shared secrets) and anything unknown: never
    published = jwk.get("alg")
    if published is not None:
        return allowed & {published} if isinstance(published, str) else frozenset()
    return allowed


def parse_jwks(document: Any) -> dict[str, VerificationKey]:
    """The usable signing keys of a JWKS document, by kid. Unusable entries are skipped (and named in
    one log line), not fatal; a document that is not a JWKS, or holds more than MAX_KEYS entries,
    is refused whole."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeySetError("the JWKS is not an object with a 'keys' list")
    if len(document["keys"]) > MAX_KEYS:
        raise KeySetError(f"the JWKS holds {len(document['keys'])} keys, more than {MAX_KEYS}")
    keys: dict[str, VerificationKey] = {}
    skipped: list[str] = []
    for jwk in document["keys"]:
        if not isinstance(jwk, dict):
            continue
        if jwk.get("use", "sig") != "sig":
            continue  # encryption keys
        kid = jwk.get("kid", "")
        if not isinstance(kid, str) or len(kid) > MAX_KID_LENGTH or kid in keys:
            continue
        algorithms = key_algorithms(jwk)
        if not algorithms:
            continue
        key = public_key(jwk, algorithms)
        if key is None:
            skipped.append(kid[:64])
            continue
        keys[kid] = VerificationKey(kid=kid, key=key, algorithms=algorithms)
    if skipped:
        log.warning("jwks_keys_skipped", extra={"kids": skipped, "reason": "unusable or out of bounds"})
    return keys


def public_key(jwk: Mapping[str, Any], algorithms: frozenset[str]) -> Any:
    """The public key of one JWK, or None when it cannot be used (malformed, private, out of bounds)."""
    try:
        key = PyJWK(dict(jwk), algorithm=min(algorithms)).key
    except Exception:  # whatever a hostile JWK makes the library raise, the key is unusable
        return None
    if hasattr(key, "private_bytes"):
        return None  # a private key published by mistake: use nothing from it
    if isinstance(key, rsa.RSAPublicKey) and (
        key.key_size not in RSA_BITS or key.public_numbers().e >= MAX_RSA_EXPONENT
    ):
        return None
    return key


@dataclass(frozen=True)
class ProviderMetadata:
    """The parts of an OIDC discovery document authcar uses."""

    issuer: str
    jwks_uri: str | None
    introspection_endpoint: str | None
    token_endpoint: str | None
    authorization_endpoint: str | None
    end_session_endpoint: str | None
    introspection_auth_methods: tuple[str, ...]
    userinfo_endpoint: str | None = None
    token_auth_methods: tuple[str, ...] = ()
    # RFC 9207: the provider names itself in every authorization response (`iss`), so a response
    # without it is refused (a mix-up attack would strip it).
    sends_iss: bool = False

    @classmethod
    def from_document(cls, document: Any, expected_issuer: str) -> ProviderMetadata:
        if not isinstance(document, dict):
            raise KeySetError("the discovery document is not a JSON object")
        issuer = document.get("issuer")
        # OpenID Connect Discovery §4.3: the issuer must be exactly the one we asked about, or a
        # provider (or whoever answers in its place) could vouch for another issuer's tokens.
        if issuer != expected_issuer:
            raise KeySetError(
                f"the discovery document names issuer {str(issuer)[:200]!r}, not {expected_issuer!r}"
            )

        def url(name: str) -> str | None:
            value = document.get(name)
            return value if isinstance(value, str) and value.startswith(("https://", "http://")) else None

        methods = document.get("introspection_endpoint_auth_methods_supported") or document.get(
            "token_endpoint_auth_methods_supported"
        )
        if not isinstance(methods, list):
            methods = []
        return cls(
            issuer=issuer,
            jwks_uri=url("jwks_uri"),
            introspection_endpoint=url("introspection_endpoint"),
            token_endpoint=url("token_endpoint"),
            authorization_endpoint=url("authorization_endpoint"),
            end_session_endpoint=url("end_session_endpoint"),
            introspection_auth_methods=tuple(m for m in methods if isinstance(m, str)),
            userinfo_endpoint=url("userinfo_endpoint"),
            token_auth_methods=strings(document.get("token_endpoint_auth_methods_supported")),
            sends_iss=document.get("authorization_response_iss_parameter_supported") is True,
        )


def strings(value: Any) -> tuple[str, ...]:
    return tuple(item for item in value if isinstance(item, str)) if isinstance(value, list) else ()


def document_from(data: bytes, source: str) -> dict[str, Any]:
    try:
        return decode_object(data, DOCUMENT_LIMITS)
    except JSONRejected as exc:
        raise KeySetError(f"{source} did not send an acceptable JSON object ({exc.reason}: {exc})") from None


async def fetch_json(http: httpx.AsyncClient, url: str) -> dict[str, Any]:
    """A provider document: bounded in bytes, time and shape; KeySetError for anything else."""
    try:
        data = await get_bounded(http, url, MAX_DOCUMENT_BYTES, FETCH_DEADLINE)
    except UnreadableAnswer as exc:
        raise KeySetError(str(exc)) from None
    return document_from(data, url)


async def discover(http: httpx.AsyncClient, issuer: str) -> ProviderMetadata:
    document = await fetch_json(http, issuer.rstrip("/") + "/.well-known/openid-configuration")
    return ProviderMetadata.from_document(document, issuer)


class KeySet:
    """One issuer's verification keys, kept fresh.

    `get()` is the synchronous fast path. `find()` also handles a kid we have not seen: it waits for
    the fetch already under way, or starts one unless an unknown kid already did within the cool-down.
    """

    def __init__(
        self,
        http: httpx.AsyncClient | None,
        *,
        jwks_url: str | None = None,
        static_file: Path | None = None,
        refresh_interval: float = 300.0,
        unknown_kid_cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        on_fetch: Callable[[bool], None] | None = None,
    ) -> None:
        if (jwks_url is None) == (static_file is None):
            raise ValueError("a KeySet needs exactly one of jwks_url and static_file")
        self.http = http
        self.jwks_url = jwks_url
        self.static_file = static_file
        self.refresh_interval = refresh_interval
        self.cooldown = unknown_kid_cooldown
        self.clock = clock
        self.on_fetch = on_fetch or (lambda ok: None)
        self.keys: dict[str, VerificationKey] = {}
        self.version = 0  # bumped whenever the set of keys changes (verified-token caches check it)
        self.last_attempt = float("-inf")
        self.last_kid_fetch = float("-inf")
        self.last_success = float("-inf")
        self.last_error: str | None = None
        self.fetches = 0
        self.inflight: asyncio.Future[None] | None = None

    @property
    def loaded(self) -> bool:
        return bool(self.keys)

    def get(self, kid: str) -> VerificationKey | None:
        return self.keys.get(kid)

    async def find(self, kid: str) -> VerificationKey | None:
        key = self.keys.get(kid)
        if key is not None:
            return key
        if self.inflight is not None:
            await asyncio.shield(self.inflight)
        elif self.clock() - self.last_kid_fetch >= self.cooldown:
            # Only fetches that unknown kids caused count against the cool-down: a key published
            # right after the scheduled fetch is picked up on its first use, and a flood of random
            # kids still costs at most one fetch per cool-down.
            self.last_kid_fetch = self.clock()
            await self.refresh()
        return self.keys.get(kid)

    async def refresh(self) -> None:
        """Fetch the keys now (single flight); a failure keeps the last good keys."""
        if self.inflight is not None:
            await asyncio.shield(self.inflight)
            return
        self.inflight = asyncio.get_running_loop().create_future()
        self.last_attempt = self.clock()
        try:
            keys = await self.fetch()
        except Exception as exc:
            # Anything but KeySetError is a bug; either way the last good keys stay, and the task
            # that keeps them fresh lives on. One line per fetch, and fetches are rate-limited.
            self.last_error = str(exc) if isinstance(exc, KeySetError) else f"{type(exc).__name__}: {exc}"
            self.on_fetch(False)
            log.error(
                "jwks_fetch_failed",
                extra={"error": self.last_error[:500], "keys_kept": len(self.keys)},
                exc_info=not isinstance(exc, KeySetError),
            )
        else:
            self.last_error = None
            self.last_success = self.clock()
            self.on_fetch(True)
            if keys.keys() != self.keys.keys() or any(keys[k].key != self.keys[k].key for k in keys):
                self.version += 1
                log.info("jwks_updated", extra={"kids": sorted(keys)[:20], "version": self.version})
            self.keys = keys
        finally:
            self.inflight.set_result(None)
            self.inflight = None

    async def fetch(self) -> dict[str, VerificationKey]:
        self.fetches += 1
        if self.static_file is not None:
            try:
                with self.static_file.open("rb") as handle:
                    data = handle.read(MAX_DOCUMENT_BYTES + 1)
            except OSError as exc:
                raise KeySetError(f"cannot read {self.static_file}: {exc.strerror or exc}") from None
            document = document_from(data, str(self.static_file))
        else:
            if self.http is None or self.jwks_url is None:
                raise KeySetError("no JWKS URL or HTTP client configured")
            document = await fetch_json(self.http, self.jwks_url)
        keys = parse_jwks(document)
        if not keys:
            raise KeySetError("the JWKS holds no usable signing key")
        return keys

    async def keep_fresh(self) -> None:
        """Background task: refetch every refresh_interval, sooner while the keys are missing."""
        while True:
            await self.refresh()
            await asyncio.sleep(self.refresh_interval if self.loaded else min(5.0, self.refresh_interval))
