"""One trusted issuer at run time: its token rules, its keys, its provider metadata, its claim map.

Discovery runs in the background: a sidecar whose provider is down at start keeps retrying and
refuses that issuer's tokens with `keys_unavailable` (401) meanwhile; it never lets them through.
Discovery is skipped entirely when a static JWKS file is the key source and nothing else (no
introspection) needs the provider's metadata, so an air-gapped deployment never calls out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from authcar.authn.jwt import IssuerPolicy
from authcar.authn.keys import KeySet, KeySetError, ProviderMetadata, discover
from authcar.claims import ClaimMapping
from authcar.config import IssuerSettings, Settings
from authcar.identity import Identity

log = logging.getLogger("authcar.authn")

DISCOVERY_RETRY_SECONDS = 5.0


class Issuer:
    """Built from complete `IssuerSettings` (see `Settings.all_issuers`)."""

    def __init__(
        self,
        config: IssuerSettings,
        settings: Settings,
        http: httpx.AsyncClient,
        *,
        on_fetch: Callable[[bool], None] | None = None,
        on_metadata: Callable[[Issuer], None] | None = None,
        login: bool = False,
    ) -> None:
        """`login`: browser login signs in at this issuer, so its provider metadata (authorization,
        token, end-session endpoints) is needed even when its keys come from elsewhere."""
        inherited = (config.algorithms, config.leeway, config.subject_claim, config.roles_claim)
        if any(value is None for value in inherited):
            raise ValueError("issuer settings must be resolved first (Settings.all_issuers)")
        if not config.audience and not config.allow_any_audience:
            # Config validation refuses this too; settings built in code must not skip the `aud` check.
            raise ValueError(f"issuer {config.issuer_url!r} has no audience and does not allow any")
        self.config = config
        self.url = config.issuer_url
        self.http = http
        self.refresh_interval = settings.oidc_jwks_refresh_interval
        self.cooldown = settings.oidc_jwks_cooldown
        self.on_fetch = on_fetch
        self.on_metadata = on_metadata
        self.login = login
        self.policy = IssuerPolicy(
            issuer=config.issuer_url,
            audiences=frozenset(config.audience),  # empty only with allow_any_audience
            algorithms=frozenset(config.algorithms or ()),
            leeway=config.leeway or 0.0,
            required_claims=tuple(config.required_claims or ("exp",)),
        )
        self.mapping = ClaimMapping(
            subject_claim=config.subject_claim or "sub", role_claims=config.roles_claim or ()
        )
        self.required_scopes = frozenset(config.required_scopes or ())
        self.metadata: ProviderMetadata | None = None
        self.discovery_error: str | None = None
        self.keyset: KeySet | None = None  # None until discovery names the JWKS
        if config.jwks_file is not None:
            self.keyset = self.new_keyset(static_file=config.jwks_file)
        elif config.jwks_url is not None:
            self.keyset = self.new_keyset(jwks_url=config.jwks_url)

    @property
    def introspects(self) -> bool:
        """Opaque tokens of this issuer are introspected: it has client credentials to do so."""
        return self.config.client_id is not None and self.config.client_secret is not None

    @property
    def needs_discovery(self) -> bool:
        return (
            self.keyset is None or self.login or (self.introspects and self.config.introspection_url is None)
        )

    def new_keyset(self, **source: Any) -> KeySet:
        return KeySet(
            self.http,
            refresh_interval=self.refresh_interval,
            unknown_kid_cooldown=self.cooldown,
            on_fetch=self.on_fetch,
            **source,
        )

    def identify(self, claims: Mapping[str, Any]) -> Identity:
        return self.mapping.identity(claims, self.url, "jwt")

    @property
    def settled(self) -> bool:
        """Start-up has an answer for this issuer: keys loaded, or a reason why not."""
        if self.discovery_error:
            return True
        keyset = self.keyset
        return keyset is not None and bool(keyset.loaded or keyset.last_error)

    async def keep_keys(self) -> None:
        """Discover (retrying until it works), then keep the key set fresh. Runs until cancelled."""
        while self.needs_discovery and self.metadata is None:
            try:
                metadata = await discover(self.http, self.url)
            except KeySetError as exc:
                self.discovery_error = str(exc)
                log.error("discovery_failed", extra={"issuer": self.url, "error": str(exc)})
                await asyncio.sleep(DISCOVERY_RETRY_SECONDS)
                continue
            if self.keyset is None and metadata.jwks_uri is None:
                self.discovery_error = "the discovery document names no jwks_uri"
                await asyncio.sleep(DISCOVERY_RETRY_SECONDS * 6)
                continue
            self.discovery_error = None
            self.metadata = metadata
            if self.keyset is None:
                assert metadata.jwks_uri is not None
                self.keyset = self.new_keyset(jwks_url=metadata.jwks_uri)
            if self.on_metadata is not None:
                self.on_metadata(self)
        if self.keyset is not None:
            await self.keyset.keep_fresh()

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
