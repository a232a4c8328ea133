"""Bearer tokens: a JWT is verified locally against its issuer's keys; anything else is an opaque
token, asked about by RFC 7662 introspection at the issuer that has client credentials to do so.

The answer to a bad token is an `Unauthorized` carrying RFC 6750 details: `invalid_token` with a
short description, never anything about keys. A valid token lacking a scope the issuer requires
is a 403 `insufficient_scope`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import httpx

from authcar.authn.introspection import Introspector
from authcar.authn.issuers import Issuer
from authcar.authn.jwt import JWTValidator, TokenDigestMemo, TokenRejected, VerifiedToken
from authcar.config import Settings
from authcar.errors import INVALID_TOKEN, InsufficientScope, Unauthorized
from authcar.identity import Identity
from authcar.observe import Metrics
from authcar.store import Store

log = logging.getLogger("authcar.authn")


class BearerAuthenticator:
    def __init__(
        self,
        issuers: Sequence[Issuer],
        settings: Settings,
        http: httpx.AsyncClient,
        store: Store,
        metrics: Metrics | None = None,
    ) -> None:
        self.issuers = {issuer.url: issuer for issuer in issuers}
        self.settings = settings
        self.http = http
        self.store = store
        self.metrics = metrics
        self.validator = JWTValidator(self.issuers, max_token_bytes=settings.max_token_bytes)
        # Opaque tokens carry no issuer: they go to the first issuer with client credentials.
        self.introspecting = next((issuer for issuer in issuers if issuer.introspects), None)
        self.introspector: Introspector | None = None
        if self.introspecting is not None and self.introspecting.config.introspection_url is not None:
            self.introspector = self.build_introspector(self.introspecting)
        # Only issuers that require scopes cost a check per request.
        self.required_scopes = {
            issuer.url: issuer.required_scopes for issuer in issuers if issuer.required_scopes
        }

    def on_metadata(self, issuer: Issuer) -> None:
        """Discovery finished for `issuer`: build its introspector if the endpoint came from there."""
        if issuer is self.introspecting and self.introspector is None:
            self.introspector = self.build_introspector(issuer)

    def build_introspector(self, issuer: Issuer) -> Introspector | None:
        metadata = issuer.metadata
        endpoint = issuer.config.introspection_url or (metadata.introspection_endpoint if metadata else None)
        if endpoint is None:
            log.error("introspection_unavailable", extra={"issuer": issuer.url, "error": "no endpoint"})
            return None
        settings = self.settings
        try:
            return Introspector(
                http=self.http,
                store=self.store,
                endpoint=endpoint,
                issuer=issuer.url,
                client_id=issuer.config.client_id or "",
                client_secret=issuer.config.client_secret or "",
                auth_methods=metadata.introspection_auth_methods if metadata else (),
                identify=lambda claims, url: issuer.mapping.identity(claims, url, "introspection"),
                audiences=frozenset(issuer.config.audience),
                max_token_bytes=settings.max_token_bytes,
                cache_ttl=settings.introspection_cache_ttl,
                negative_ttl=settings.introspection_negative_ttl,
                max_concurrency=settings.introspection_max_concurrency,
                leeway=issuer.policy.leeway,
                on_call=self.count_introspection,
            )
        except ValueError as exc:
            # E.g. the provider offers no client authentication we implement: opaque tokens get 401.
            log.error("introspection_unavailable", extra={"issuer": issuer.url, "error": str(exc)})
            return None

    async def close(self) -> None:
        if self.introspector is not None:
            await self.introspector.close()

    def count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.count_token(result)

    def count_introspection(self, result: str, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.introspection_duration.labels(result=result).observe(seconds)

    def cached(self, token: str, memo: TokenDigestMemo | None = None) -> tuple[Identity | None, bytes | None]:
        """A repeated JWT's identity straight from the verified-token cache, without a coroutine:
        the common case. On a miss, the cache key for `verify` (None when none was computed), so a
        first-seen token is hashed once; `verify` decides, and says why if it refuses."""
        if self.introspecting is not None and token.count(".") not in (2, 4):
            return None, None
        try:
            cache_key, verified = self.validator.lookup(token, memo)
        except TokenRejected:
            return None, None  # too large: `verify` refuses it with its reason
        return (None, cache_key) if verified is None else (self.accept(verified), cache_key)

    async def verify(self, token: str, cache_key: bytes | None = None) -> Identity:
        try:
            verified = await self.check(token, cache_key)
        except TokenRejected as rejected:
            self.count(rejected.reason)
            raise Unauthorized(
                rejected.description, code=rejected.reason, token_error=INVALID_TOKEN
            ) from None
        return self.accept(verified)

    def accept(self, verified: VerifiedToken) -> Identity:
        """The verified token's identity, if it carries the scopes its issuer requires (else 403)."""
        identity = verified.identity
        if self.required_scopes:
            required = self.required_scopes.get(identity.issuer)
            if required and not required <= identity.scopes:
                self.count("insufficient_scope")
                raise InsufficientScope(required)
        self.count("valid_cached" if verified.cached else "valid")
        return identity

    async def check(self, token: str, cache_key: bytes | None) -> VerifiedToken:
        if cache_key is not None:  # `cached` found a JWT the cache does not know
            return await self.validator.verify_new(token, cache_key)
        # Two dots: a JWS (three parts); four: a JWE, which the validator refuses by name.
        if self.introspecting is None or token.count(".") in (2, 4):
            return await self.validator.validate(token)
        if self.introspector is None:
            raise TokenRejected("introspection_unavailable", "the token cannot be verified now")
        return await self.introspector.verify(token)
