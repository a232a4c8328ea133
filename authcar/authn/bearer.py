"""Bearer-token authentication: find the token, validate it, map it to an Identity, or say why not.

The answer to a missing or bad token is an `Unauthorized` carrying RFC 6750 details: no `error`
attribute when no token was sent at all (§3.1), `invalid_token` with a short description when one
was, and never anything about keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import httpx

from authcar.authn.claims import ClaimMapping
from authcar.authn.jwt import IssuerPolicy, JWTValidator, TokenRejected
from authcar.authn.keys import KeySet, KeySetError, discover
from authcar.config import Settings
from authcar.errors import INVALID_TOKEN, BadRequest, Unauthorized
from authcar.identity import Identity
from authcar.observe import Metrics
from authcar.types import Headers

log = logging.getLogger("authcar.authn")


def bearer_token(headers: Headers) -> str | None:
    """The bearer token of the Authorization header (not yet checked); None when there is none."""
    found: bytes | None = None
    for name, value in headers:
        if name != b"authorization":
            continue
        if found is not None:
            raise BadRequest("more than one Authorization header", code="invalid_request")
        found = value
    if found is None:
        return None
    scheme, _, token = found.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None  # Basic and friends are not ours to judge: treated as no token
    return token.strip().decode("latin-1")


class BearerAuthenticator:
    """JWT bearer tokens from one issuer (several issuers arrive through the YAML configuration)."""

    def __init__(self, settings: Settings, http: httpx.AsyncClient, metrics: Metrics | None = None) -> None:
        assert settings.oidc_issuer_url is not None, "BearerAuthenticator needs an issuer"
        self.issuer = settings.oidc_issuer_url
        self.http = http
        self.metrics = metrics
        self.keyset: KeySet | None = None  # None until discovery names the JWKS
        if settings.oidc_jwks_file is not None:
            self.keyset = self.new_keyset(settings, static_file=settings.oidc_jwks_file)
        elif settings.oidc_jwks_url is not None:
            self.keyset = self.new_keyset(settings, jwks_url=settings.oidc_jwks_url)
        self.policy = IssuerPolicy(
            issuer=self.issuer,
            audiences=frozenset(settings.oidc_audience),
            algorithms=frozenset(settings.oidc_algorithms),
            leeway=settings.oidc_leeway,
        )
        self.settings = settings
        self.mapping = ClaimMapping(subject_claim=settings.subject_claim, role_claims=settings.roles_claim)
        self.validator: JWTValidator | None = None
        self.discovery_error: str | None = None
        self.tasks: list[asyncio.Task[None]] = []
        if self.keyset is not None:
            self.validator = self.build_validator(self.keyset)

    def new_keyset(self, settings: Settings, **source: Any) -> KeySet:
        return KeySet(
            self.http,
            refresh_interval=settings.oidc_jwks_refresh_interval,
            unknown_kid_cooldown=settings.oidc_jwks_cooldown,
            on_fetch=self.count_fetch,
            **source,
        )

    def count_fetch(self, ok: bool) -> None:
        if self.metrics is not None:
            self.metrics.jwks_fetches.labels(result="success" if ok else "failure").inc()

    def count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.count_token(result)

    def build_validator(self, keyset: KeySet) -> JWTValidator:
        return JWTValidator(
            {self.issuer: (self.policy, keyset)},
            lambda claims, issuer: self.mapping.identity(claims, issuer, "jwt"),
            max_token_bytes=self.settings.max_token_bytes,
        )

    async def start(self) -> None:
        """Load keys now if possible; keep trying (and refreshing) in the background either way."""
        self.tasks.append(asyncio.create_task(self.keep_keys(), name="authcar-jwks"))
        # Give the first fetch a moment, so a sidecar whose provider is up starts ready.
        for _ in range(50):
            if self.keyset is not None and (self.keyset.loaded or self.keyset.last_error):
                break
            if self.discovery_error:
                break
            await asyncio.sleep(0.02)

    async def keep_keys(self) -> None:
        while self.keyset is None:
            try:
                metadata = await discover(self.http, self.issuer)
            except KeySetError as exc:
                self.discovery_error = str(exc)
                log.error("discovery_failed", extra={"issuer": self.issuer, "error": str(exc)})
                await asyncio.sleep(5.0)
                continue
            if metadata.jwks_uri is None:
                self.discovery_error = "the discovery document names no jwks_uri"
                await asyncio.sleep(30.0)
                continue
            self.discovery_error = None
            self.keyset = self.new_keyset(self.settings, jwks_url=metadata.jwks_uri)
            self.validator = self.build_validator(self.keyset)
        await self.keyset.keep_fresh()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def authenticate(self, headers: Headers) -> Identity:
        token = bearer_token(headers)
        if token is None:
            self.count("no_token")
            raise Unauthorized("a bearer token is required", code="no_credentials")
        validator = self.validator
        if validator is None:
            # Keys not loaded yet (provider unreachable since start): deny, say why in logs only.
            self.count("keys_unavailable")
            raise Unauthorized(
                "the token cannot be verified now", code="keys_unavailable", token_error=INVALID_TOKEN
            )
        try:
            # One call: the verified-token cache answers a repeated token by its hash; anything else
            # is checked in full, starting with strict compact-JWS syntax (a subset of RFC 6750's
            # b64token, so nothing outside that alphabet ever gets further).
            verified = await validator.validate(token)
        except TokenRejected as rejected:
            self.count(rejected.reason)
            raise Unauthorized(
                rejected.description, code=rejected.reason, token_error=INVALID_TOKEN
            ) from None
        self.count("valid_cached" if verified.cached else "valid")
        return verified.identity

    def readiness(self) -> dict[str, Any]:
        keyset = self.keyset
        if keyset is None:
            return {"ok": False, "detail": self.discovery_error or "discovering the issuer"}
        if not keyset.loaded:
            return {"ok": False, "detail": keyset.last_error or "fetching keys"}
        check: dict[str, Any] = {"ok": True, "keys": len(keyset.keys)}
        if keyset.last_error:
            check["detail"] = f"last refresh failed, keeping {len(keyset.keys)} keys: {keyset.last_error}"
        return check
