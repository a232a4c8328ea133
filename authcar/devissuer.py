"""A DEVELOPMENT OpenID Connect issuer for `authcar demo`. Never use it for anything real.

It hands a signed access token to anyone who knows the shared demo secret, has no users, no login,
no consent and no revocation, and forgets its key on every start. It exists so the demo can show real
authentication without an identity provider to install: discovery, a JWKS with one fresh ES256 key,
and a token endpoint for the `client_credentials` grant.

Demo clients (client id = the role its tokens carry), all with the secret `demo-secret`:
    reader -> sub alice    editor -> sub bob    admin -> sub carol

    curl -s -u reader:demo-secret -d grant_type=client_credentials http://127.0.0.1:PORT/token

It listens on 127.0.0.1 only. The test suite's full provider (tests/idp/) is a separate test tool.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote_plus

import jwt
from aiohttp import BasicAuth, web
from cryptography.hazmat.primitives.asymmetric import ec

from authcar.server import bind

log = logging.getLogger("authcar.devissuer")

DEMO_AUDIENCE = "book-service"
DEMO_SECRET = "demo-secret"  # noqa: S105 - public on purpose: it is the demo's documented secret
TOKEN_LIFETIME = 3600  # seconds
ALGORITHM = "ES256"


@dataclass(frozen=True)
class DemoClient:
    role: str  # also the client id
    subject: str
    scope: str

    @property
    def email(self) -> str:
        return f"{self.subject}@example.com"


DEMO_CLIENTS: Mapping[str, DemoClient] = MappingProxyType(
    {
        "reader": DemoClient("reader", "alice", "books:read"),
        "editor": DemoClient("editor", "bob", "books:read books:write"),
        "admin": DemoClient("admin", "carol", "books:read books:write books:delete"),
    }
)


class DevIssuer:
    """One run's issuer: its URL, its signing key, and the aiohttp app that serves them."""

    def __init__(self, url: str, *, audience: str = DEMO_AUDIENCE, secret: str = DEMO_SECRET) -> None:
        self.url = url
        self.audience = audience
        self.secret = secret
        self.key = ec.generate_private_key(ec.SECP256R1())  # per run: tokens die with the process
        self.kid = f"authcar-dev-{secrets.token_hex(4)}"

    @property
    def token_endpoint(self) -> str:
        return f"{self.url}/token"

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.url,
            "jwks_uri": f"{self.url}/jwks.json",
            "token_endpoint": self.token_endpoint,
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "id_token_signing_alg_values_supported": [ALGORITHM],
            "scopes_supported": sorted({s for c in DEMO_CLIENTS.values() for s in c.scope.split()}),
        }

    def jwks(self) -> dict[str, Any]:
        public = jwt.get_algorithm_by_name(ALGORITHM).to_jwk(self.key.public_key(), as_dict=True)
        return {"keys": [{**public, "kid": self.kid, "use": "sig", "alg": ALGORITHM}]}

    def mint(self, role: str, *, lifetime: int = TOKEN_LIFETIME) -> str:
        """A signed access token for the demo client `role` (RFC 9068 shape)."""
        client = DEMO_CLIENTS[role]
        now = int(time.time())
        claims = {
            "iss": self.url,
            "sub": client.subject,
            "aud": self.audience,
            "exp": now + lifetime,
            "iat": now,
            "nbf": now,
            "jti": secrets.token_urlsafe(16),
            "client_id": client.role,
            "roles": [client.role],
            "scope": client.scope,
            "email": client.email,
            "preferred_username": client.subject,
        }
        return jwt.encode(claims, self.key, algorithm=ALGORITHM, headers={"kid": self.kid, "typ": "at+jwt"})

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        client_id, secret = client_credentials(request.headers.get("Authorization"), form)
        client = DEMO_CLIENTS.get(client_id or "")
        if client is None or secret is None or not hmac.compare_digest(secret.encode(), self.secret.encode()):
            return oauth_error(401, "invalid_client", "unknown client or wrong secret")
        if form.get("grant_type") != "client_credentials":
            return oauth_error(400, "unsupported_grant_type", "only client_credentials is supported")
        body = {
            "access_token": self.mint(client.role),
            "token_type": "Bearer",
            "expires_in": TOKEN_LIFETIME,
            "scope": client.scope,
        }
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    def app(self) -> web.Application:
        async def discovery(request: web.Request) -> web.Response:
            return web.json_response(self.discovery())

        async def jwks(request: web.Request) -> web.Response:
            return web.json_response(self.jwks())

        app = web.Application(client_max_size=64 * 1024)
        app.router.add_get("/.well-known/openid-configuration", discovery)
        app.router.add_get("/jwks.json", jwks)
        app.router.add_post("/token", self.token)
        return app


def client_credentials(authorization: str | None, form: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(client id, secret) from HTTP Basic (client_secret_basic) or the form (client_secret_post)."""
    if authorization:
        try:
            basic = BasicAuth.decode(authorization)
        except ValueError:
            return None, None
        # RFC 6749 §2.3.1: both parts are form-urlencoded before Basic encoding.
        return unquote_plus(basic.login), unquote_plus(basic.password)
    client_id, secret = form.get("client_id"), form.get("client_secret")
    return (
        client_id if isinstance(client_id, str) else None,
        secret if isinstance(secret, str) else None,
    )


def oauth_error(status: int, error: str, description: str) -> web.Response:
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="authcar-dev-issuer"'  # RFC 6749 §5.2
    return web.json_response(
        {"error": error, "error_description": description}, status=status, headers=headers
    )


@contextlib.asynccontextmanager
async def serving(port: int = 0) -> AsyncIterator[DevIssuer]:
    """Serve a fresh issuer on 127.0.0.1:`port` (0: any free port) in the running event loop."""
    sock = bind("127.0.0.1", port)  # bound first, so the issuer URL knows its real port
    issuer = DevIssuer(f"http://127.0.0.1:{sock.getsockname()[1]}")
    runner = web.AppRunner(issuer.app(), access_log=None, handle_signals=False)
    try:
        await runner.setup()
        await web.SockSite(runner, sock).start()
        log.warning(
            "DEVELOPMENT issuer started: it signs tokens for anyone with the demo secret; never use it in "
            "production",
            extra={"issuer": issuer.url},
        )
        yield issuer
    finally:
        await runner.cleanup()
        sock.close()
