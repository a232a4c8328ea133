"""Who is calling: the authentication stage of the gate, as one ordered chain.

    1. public path or CORS preflight   anonymous, whatever else the request carries
    2. a bearer token                  header, cookie, or query (when enabled): valid, or 401/403
    3. a browser session               the session cookie (AUTHCAR_LOGIN), its record in the store
    4. a verified client certificate   when AUTHCAR_TLS_CLIENT_CERT_IDENTITY is on
    5. AUTHCAR_ALLOW_ANONYMOUS         anonymous (development)
    6. otherwise                       401 without an `error` attribute (RFC 6750 §3.1)

A token that is present decides the outcome: a bad token is never "no token", so a client cannot
fall back to its certificate or to anonymous access by sending garbage.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

import httpx

from authcar.authn.bearer import BearerAuthenticator
from authcar.authn.certificate import certificate_identity, certificate_of
from authcar.authn.issuers import Issuer
from authcar.authn.jwt import connection_memo
from authcar.authn.sources import TokenSources
from authcar.background import cancel_and_wait
from authcar.config import Settings
from authcar.errors import INVALID_TOKEN, Unauthorized
from authcar.extensions import connection_state
from authcar.identity import ANONYMOUS, Identity
from authcar.observe import Metrics
from authcar.paths import PublicPaths, parse_public_paths
from authcar.store import Store
from authcar.types import Scope

log = logging.getLogger("authcar.authn")

# Start-up waits this long for the first key fetch, so a sidecar whose provider is up starts ready.
FIRST_FETCH_WAIT = 1.0


class SessionSource(Protocol):
    """authcar.login.flow.BrowserLogin: the identity of the request's browser session, or None."""

    async def identify(self, scope: Scope) -> Identity | None: ...


class Authentication:
    def __init__(
        self, settings: Settings, http: httpx.AsyncClient, store: Store, metrics: Metrics | None = None
    ) -> None:
        self.metrics = metrics
        self.public = PublicPaths(parse_public_paths(settings.public_paths))
        self.has_public_paths = bool(self.public)
        self.cors_preflight = settings.public_cors_preflight
        self.sources = TokenSources(cookie=settings.token_cookie, allow_query=settings.allow_query_token)
        login_issuer = settings.login_issuer() if settings.login else None
        self.issuers = [
            Issuer(
                config,
                settings,
                http,
                on_fetch=self.count_fetch,
                on_metadata=self.on_metadata,
                login=login_issuer is not None and config.issuer_url == login_issuer.issuer_url,
            )
            for config in settings.all_issuers()
        ]
        self.login_issuer = next((issuer for issuer in self.issuers if issuer.login), None)
        # Browser sessions (authcar/login/flow.py), set once login is built on this issuer.
        self.sessions: SessionSource | None = None
        self.bearer = (
            BearerAuthenticator(self.issuers, settings, http, store, metrics) if self.issuers else None
        )
        self.certificates = settings.tls_client_cert_identity
        self.allow_anonymous = settings.allow_anonymous
        self.tasks: list[asyncio.Task[None]] = []

    def count_fetch(self, ok: bool) -> None:
        if self.metrics is not None:
            self.metrics.jwks_fetches.labels(result="success" if ok else "failure").inc()

    def on_metadata(self, issuer: Issuer) -> None:
        if self.bearer is not None:
            self.bearer.on_metadata(issuer)

    async def start(self) -> None:
        for issuer in self.issuers:
            self.tasks.append(asyncio.create_task(issuer.keep_keys(), name=f"authcar-keys-{issuer.url}"))
        for _ in range(int(FIRST_FETCH_WAIT / 0.02)):
            if all(issuer.settled for issuer in self.issuers):
                break
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        await cancel_and_wait(self.tasks)
        if self.bearer is not None:
            await self.bearer.close()

    async def authenticate(self, scope: Scope, path: str) -> Identity:
        """`path` is the normalised path, the one that will be forwarded. May rewrite the scope's
        query string (a query token is never forwarded)."""
        if self.has_public_paths and self.public.matches(scope.get("method", "GET"), path):
            return ANONYMOUS
        if self.cors_preflight and is_cors_preflight(scope):
            return ANONYMOUS
        found = self.sources.find(scope["headers"], scope.get("query_string", b""))
        if found is not None:
            if self.bearer is None:
                raise Unauthorized(
                    "bearer tokens are not accepted here", code="no_issuer", token_error=INVALID_TOKEN
                )
            memo = connection_memo(connection_state(scope))
            identity, cache_key = self.bearer.cached(found.token, memo)
            if identity is None:
                identity = await self.bearer.verify(found.token, cache_key)
            if found.forward_query is not None:
                scope["query_string"] = found.forward_query
            return identity
        if self.sessions is not None:
            identity = await self.sessions.identify(scope)
            if identity is not None:
                return identity
        if self.certificates:
            certificate = certificate_of(scope)
            if certificate is not None:
                identity = certificate_identity(certificate)
                if identity is None:
                    raise Unauthorized("the client certificate names no subject", code="unusable_certificate")
                return identity
        if self.allow_anonymous:
            return ANONYMOUS
        if self.metrics is not None:
            self.metrics.count_token("no_token")
        raise Unauthorized("a bearer token is required", code="no_credentials")

    def readiness(self) -> dict[str, Any] | None:
        """The `keys` check of /readyz: every issuer's keys loaded (None: no issuer configured)."""
        if not self.issuers:
            return None
        checks = {issuer.url: issuer.readiness() for issuer in self.issuers}
        bearer = self.bearer
        introspecting = bearer.introspecting if bearer is not None else None
        if introspecting is not None and bearer is not None and bearer.introspector is None:
            url = introspecting.url
            if introspecting.metadata is None and introspecting.config.introspection_url is None:
                checks[url] = {**checks[url], "ok": False, "introspection": "discovering the endpoint"}
            else:
                # Discovery named no endpoint (or none we can call): a provider without RFC 7662 is
                # still one to sign in at and verify JWTs of; only its opaque tokens are refused.
                checks[url] = {**checks[url], "introspection": "unavailable: opaque tokens get 401"}
        if len(checks) == 1:
            return next(iter(checks.values()))
        return {"ok": all(check["ok"] for check in checks.values()), "issuers": checks}


def is_cors_preflight(scope: Scope) -> bool:
    if scope.get("method") != "OPTIONS":
        return False
    names = {name for name, _ in scope["headers"]}
    return b"origin" in names and b"access-control-request-method" in names
