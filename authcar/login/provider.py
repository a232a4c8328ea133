"""The login issuer as the browser login talks to it: its endpoints (from discovery), the token
endpoint through authlib's OAuth 2.0 client (code exchange with the PKCE verifier, refresh), userinfo,
and ID tokens checked by the same validator as every token, with the client id as the audience.

What the provider answers is bounded: compressed answers and those that announce more than 64 KiB
are refused before they are read, every call has a deadline, and a failure of any kind becomes
LoginFailed with a reason, never an exception the gate would have to guess about.
"""

from __future__ import annotations

import asyncio
import logging
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import authlib.deprecate  # noqa: F401  (installs authlib's warning filter before ours below)
import httpx

with warnings.catch_warnings():
    # authlib 1.9 prefers the `httpx2` package and warns once when it falls back to httpx, which is
    # what authcar (and its pinned range of authlib) uses throughout.
    warnings.simplefilter("ignore", DeprecationWarning)
    from authlib.integrations.httpx_client import AsyncOAuth2Client

from authcar.authn.issuers import Issuer
from authcar.authn.jwt import IssuerPolicy, JWTValidator
from authcar.authn.keys import KeySet, ProviderMetadata
from authcar.claims import TokenRejected
from authcar.identity import ANONYMOUS, Identity
from authcar.jsonlimits import JSONLimits, JSONRejected, decode_object

log = logging.getLogger("authcar.login")

CALL_DEADLINE = 10.0  # seconds for one token or userinfo call, answer read whole
MAX_ANSWER_BYTES = 64 * 1024  # a token answer of a real provider is a few KiB
PLAIN = {"Accept": "application/json", "Accept-Encoding": "identity"}
USERINFO_LIMITS = JSONLimits(max_bytes=MAX_ANSWER_BYTES)


class LoginFailed(Exception):
    """The provider did not finish the login or refresh. `reason`: a stable code; `refused`: the
    provider said no (invalid_grant...), rather than failing to answer."""

    def __init__(self, reason: str, description: str, *, refused: bool = False) -> None:
        super().__init__(f"{reason}: {description}")
        self.reason = reason
        self.description = description
        self.refused = refused


@dataclass(frozen=True)
class TokenAnswer:
    access_token: str
    refresh_token: str | None
    id_token: str | None
    obtained_at: float
    expires_at: float | None


ID_TOKEN_CLAIMS = ("exp", "iat", "sub")  # OIDC Core 2
# Back-Channel Logout 1.0 2.4: a logout token may name only a `sid` (no `sub`); `exp` the validator
# always requires, and `iat` must be recent (authcar/login/tokens.py).
LOGOUT_TOKEN_CLAIMS = ("iat",)


class IdTokenIssuer:
    """The login issuer seen by the validator for the tokens it issues to us (ID tokens, logout
    tokens): its keys and algorithms, but our client id as the only audience (OIDC Core 3.1.3.7)."""

    def __init__(
        self, issuer: Issuer, client_id: str, required_claims: tuple[str, ...] = ID_TOKEN_CLAIMS
    ) -> None:
        self.issuer = issuer
        base = issuer.policy
        self.policy = IssuerPolicy(
            issuer=base.issuer,
            audiences=frozenset({client_id}),
            algorithms=base.algorithms,
            leeway=base.leeway,
            required_claims=required_claims,
        )

    @property
    def keyset(self) -> KeySet | None:
        return self.issuer.keyset

    def identify(self, claims: Mapping[str, Any]) -> Identity:
        return self.issuer.mapping.identity(claims, self.issuer.url, "session")


class LogoutTokenIssuer(IdTokenIssuer):
    """The same, for logout tokens: they may name only a `sid`, and nobody is authenticated by one,
    so the validator is given no identity to derive."""

    def __init__(self, issuer: Issuer, client_id: str) -> None:
        super().__init__(issuer, client_id, LOGOUT_TOKEN_CLAIMS)

    def identify(self, claims: Mapping[str, Any]) -> Identity:
        return ANONYMOUS


async def refuse_unbounded(response: httpx.Response) -> None:
    """httpx response hook, before the body is read: a compressed answer (we asked for none) or one
    that announces more than MAX_ANSWER_BYTES is refused unread; CALL_DEADLINE bounds the rest."""
    encoding = response.headers.get("content-encoding", "").strip().lower()
    length = response.headers.get("content-length", "").strip()
    if encoding not in ("", "identity") or (
        length.isdigit() and (len(length) > 9 or int(length) > MAX_ANSWER_BYTES)
    ):
        await response.aclose()
        raise LoginFailed("provider_answer", "the provider's answer is compressed or too large")


class LoginProvider:
    """One per process, for the one issuer with client credentials (Settings.login_issuer)."""

    def __init__(
        self,
        issuer: Issuer,
        *,
        client_id: str,
        client_secret: str,
        redirect_uri: str,
        scopes: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self.client_id = client_id
        self.redirect_uri = redirect_uri
        self.scopes = scopes
        self.clock = clock
        self.client_secret = client_secret
        self.id_tokens = JWTValidator({issuer.url: IdTokenIssuer(issuer, client_id)}, cache_size=256)
        self.logout_tokens = JWTValidator({issuer.url: LogoutTokenIssuer(issuer, client_id)}, cache_size=256)
        self.oauth: AsyncOAuth2Client | None = None  # built once the metadata names the auth method
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(5.0, connect=3.0),
            follow_redirects=False,
            headers={"User-Agent": "authcar", **PLAIN},
            event_hooks={"response": [refuse_unbounded]},
        )

    @property
    def metadata(self) -> ProviderMetadata | None:
        return self.issuer.metadata

    def endpoints(self) -> ProviderMetadata:
        metadata = self.metadata
        if metadata is None or metadata.authorization_endpoint is None or metadata.token_endpoint is None:
            raise LoginFailed("provider_unavailable", "the provider's login endpoints are not known yet")
        return metadata

    def oauth_client(self, metadata: ProviderMetadata) -> AsyncOAuth2Client:
        if self.oauth is None:
            methods = metadata.token_auth_methods
            # RFC 8414 2: without a list, client_secret_basic is the default.
            method = (
                "client_secret_post"
                if methods and "client_secret_basic" not in methods
                else "client_secret_basic"
            )
            self.oauth = AsyncOAuth2Client(
                client_id=self.client_id,
                client_secret=self.client_secret,
                token_endpoint_auth_method=method,
                redirect_uri=self.redirect_uri,
                timeout=httpx.Timeout(5.0, connect=3.0),
                follow_redirects=False,
                headers={"User-Agent": "authcar", **PLAIN},
                event_hooks={"response": [refuse_unbounded]},
            )
        return self.oauth

    async def exchange_code(self, code: str, code_verifier: str) -> TokenAnswer:
        metadata = self.endpoints()
        client = self.oauth_client(metadata)
        return await self.token_call(
            client.fetch_token(
                metadata.token_endpoint,
                grant_type="authorization_code",
                code=code,
                redirect_uri=self.redirect_uri,
                code_verifier=code_verifier,
            )
        )

    async def refresh(self, refresh_token: str) -> TokenAnswer:
        metadata = self.endpoints()
        client = self.oauth_client(metadata)
        return await self.token_call(
            client.refresh_token(metadata.token_endpoint, refresh_token=refresh_token)
        )

    async def token_call(self, call: Any) -> TokenAnswer:
        try:
            async with asyncio.timeout(CALL_DEADLINE):
                answer = await call
        except LoginFailed:
            raise
        except TimeoutError:
            raise LoginFailed("provider_timeout", "the token endpoint did not answer in time") from None
        except httpx.HTTPError as exc:
            raise LoginFailed("provider_unavailable", f"the token endpoint: {type(exc).__name__}") from None
        except Exception as exc:
            # authlib's OAuthError (the provider's `error`), or an answer that is not a token answer.
            error = getattr(exc, "error", None)
            if isinstance(error, str):
                raise LoginFailed(
                    "provider_refused", f"the provider answered {error[:64]!r}", refused=True
                ) from None
            raise LoginFailed(
                "provider_answer", f"the token endpoint's answer: {type(exc).__name__}"
            ) from None
        return self.token_answer(answer)

    def token_answer(self, answer: Mapping[str, Any]) -> TokenAnswer:
        now = self.clock()
        access_token = answer.get("access_token")
        token_type = answer.get("token_type")
        if not isinstance(access_token, str) or not access_token:
            raise LoginFailed("provider_answer", "the token answer has no access_token")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise LoginFailed("provider_answer", "the token answer is not a bearer token")
        refresh_token = answer.get("refresh_token")
        id_token = answer.get("id_token")
        expires_in = answer.get("expires_in")
        if isinstance(expires_in, str) and expires_in.isdigit():  # some providers send a string
            expires_in = int(expires_in)
        expires_at = None
        if type(expires_in) in (int, float) and 0 < expires_in < 10**9:
            expires_at = now + float(expires_in)
        return TokenAnswer(
            access_token=access_token,
            refresh_token=refresh_token if isinstance(refresh_token, str) and refresh_token else None,
            id_token=id_token if isinstance(id_token, str) and id_token else None,
            obtained_at=now,
            expires_at=expires_at,
        )

    async def verified_id_token(self, id_token: str) -> dict[str, Any]:
        """Signature, exact issuer, audience = our client id, expiry: the validator's checks."""
        try:
            verified = await self.id_tokens.validate(id_token)
        except TokenRejected as exc:
            raise LoginFailed(f"id_token_{exc.reason}", exc.description) from None
        return dict(verified.claims)

    async def verified_logout_token(self, logout_token: str) -> dict[str, Any]:
        """Signature, exact issuer, audience = our client id, expiry; TokenRejected else.
        What makes it a logout token (and not an ID token) is checked by check_logout_token."""
        verified = await self.logout_tokens.validate(logout_token)
        return dict(verified.claims)

    async def userinfo(self, access_token: str, subject: str) -> dict[str, Any] | None:
        """The provider's userinfo, when it has an endpoint; None when it fails (the ID token's claims
        are enough to sign in). A userinfo of another subject is refused (OIDC Core 5.3.2)."""
        metadata = self.metadata
        if metadata is None or metadata.userinfo_endpoint is None:
            return None
        try:
            async with asyncio.timeout(CALL_DEADLINE):
                response = await self.http.get(
                    metadata.userinfo_endpoint, headers={"Authorization": f"Bearer {access_token}"}
                )
            if response.status_code != 200:
                log.warning("userinfo_failed", extra={"status": response.status_code})
                return None
            claims = decode_object(response.content, USERINFO_LIMITS)
        except (LoginFailed, TimeoutError, httpx.HTTPError, JSONRejected) as exc:
            log.warning("userinfo_failed", extra={"error": type(exc).__name__})
            return None
        if claims.get("sub") != subject:
            raise LoginFailed("userinfo_subject", "the provider's userinfo is about another subject")
        return claims

    async def close(self) -> None:
        await self.http.aclose()
        if self.oauth is not None:
            await self.oauth.aclose()
