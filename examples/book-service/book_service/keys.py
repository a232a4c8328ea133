"""The sidecar's assertion-signing keys, fetched from its JWKS endpoint when they are needed.

Nothing is fetched at start: the sidecar may come up after the application. A kid we do not know
triggers a fetch, at most once per cool-down (a failed fetch is retried after a shorter pause), so a
flood of made-up kids costs at most one request to the sidecar per cool-down. Keys older than
`max_age` are refetched on the next request, so a key the sidecar dropped stops being accepted; if
that refetch fails, the keys we have stay in use.

Only EC P-256 keys are kept, each under its RFC 7638 thumbprint: a kid is trusted only as the hash of
the key it names, never as a name the JWKS chose.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

log = logging.getLogger("book_service.keys")

MAX_JWKS_BYTES = 256 * 1024
FETCH_TIMEOUT = 2.0
# After a failed fetch (sidecar not up yet, restarting) try again soon, not after the full cool-down.
RETRY_AFTER_FAILURE = 1.0


class KeyNotFound(Exception):
    """No usable key for a kid; `code` says whether the kid is unknown or no keys could be fetched."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


class AssertionKeys:
    def __init__(
        self,
        jwks_url: str,
        *,
        cooldown: float,
        max_age: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.jwks_url = jwks_url
        self.cooldown = cooldown
        self.max_age = max_age
        self.clock = clock
        self.fetches = 0  # attempts, for logs and tests
        self._keys: Mapping[str, ec.EllipticCurvePublicKey] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._last_attempt_failed = False
        self._lock = asyncio.Lock()
        self._client: httpx.AsyncClient | None = None

    async def key_for(self, kid: str) -> ec.EllipticCurvePublicKey:
        if self._needs_fetch(kid):
            async with self._lock:
                # Whoever waited on the lock sees the fetch that just happened and skips its own.
                if self._needs_fetch(kid):
                    await self._fetch()
        key = self._keys.get(kid)
        if key is not None:
            return key
        if self._fetched_at is None:
            raise KeyNotFound("keys_unavailable", "the sidecar's assertion keys could not be fetched")
        raise KeyNotFound("unknown_key", "the assertion is signed with a key the sidecar does not publish")

    def _needs_fetch(self, kid: str) -> bool:
        now = self.clock()
        stale = self._fetched_at is None or now - self._fetched_at >= self.max_age
        if kid in self._keys and not stale:
            return False
        if self._attempted_at is None:
            return True
        if self._last_attempt_failed:
            pause = min(self.cooldown, RETRY_AFTER_FAILURE)
        else:
            # Stale keys are refetched at once (that happens once per max_age); an unknown kid waits.
            pause = 0.0 if stale else self.cooldown
        return now - self._attempted_at >= pause

    async def _fetch(self) -> None:
        self._attempted_at = self.clock()
        self.fetches += 1
        try:
            document = await self._download()
            keys = parse_jwks(document)
        except (httpx.HTTPError, ValueError) as error:
            self._last_attempt_failed = True
            log.warning("assertion keys not fetched from %s: %s", self.jwks_url, error)
            return
        self._keys = keys
        self._fetched_at = self.clock()
        self._last_attempt_failed = False
        log.info("assertion keys fetched from %s: %s", self.jwks_url, ", ".join(sorted(keys)))

    async def _download(self) -> Any:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=FETCH_TIMEOUT, follow_redirects=False)
        headers = {"Accept": "application/json"}
        async with self._client.stream("GET", self.jwks_url, headers=headers) as answer:
            if answer.status_code != 200:
                raise ValueError(f"status {answer.status_code}")
            body = bytearray()
            async for chunk in answer.aiter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError(f"JWKS larger than {MAX_JWKS_BYTES} bytes")
        return json.loads(body)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def parse_jwks(document: Any) -> dict[str, ec.EllipticCurvePublicKey]:
    """The usable P-256 signing keys of a JWKS, by thumbprint; ValueError if there are none."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document")
    keys: dict[str, ec.EllipticCurvePublicKey] = {}
    for jwk in document["keys"]:
        try:
            kid, key = p256_key(jwk)
        except (ValueError, TypeError, KeyError) as error:
            log.debug("JWKS entry skipped: %s", error)
            continue
        keys[kid] = key
    if not keys:
        raise ValueError("the JWKS has no EC P-256 signing key")
    return keys


def p256_key(jwk: Any) -> tuple[str, ec.EllipticCurvePublicKey]:
    if not isinstance(jwk, dict) or jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
        raise ValueError("not an EC P-256 key")
    if jwk.get("use", "sig") != "sig" or jwk.get("alg", "ES256") != "ES256" or "d" in jwk:
        raise ValueError("not a public ES256 signing key")
    kid = thumbprint(jwk)
    if "kid" in jwk and jwk["kid"] != kid:
        raise ValueError(f"kid {jwk['kid']!r} is not the key's RFC 7638 thumbprint")
    # Decoding checks that the point is on the curve.
    key = ECAlgorithm.from_jwk(jwk)
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("not an EC P-256 public key")
    return kid, key


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638: SHA-256 of the required members, sorted, without whitespace, base64url."""
    members = {name: jwk[name] for name in ("crv", "kty", "x", "y")}
    if not all(isinstance(value, str) for value in members.values()):
        raise ValueError("EC key members must be strings")
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()
