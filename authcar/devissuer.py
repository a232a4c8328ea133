"""A DEVELOPMENT OpenID Connect issuer for `authcar demo`. Never use it for anything real.

It hands a signed access token to anyone who knows the shared demo secret, and its sign-in page signs
anyone in as any demo user without a password. It has no consent and no revocation endpoint, and
forgets its key and everything it issued on every start. It exists so the demo can show real
authentication without an identity provider to install: discovery, a JWKS with one fresh ES256 key,
a token endpoint for `client_credentials`, and, for the clients it is given (the demo's sidecar),
browser sign-in: the authorization code flow with PKCE S256, `refresh_token`, ID tokens (nonce, sid,
aud = the client id), RP-initiated logout, and RFC 7662 introspection of its own access tokens (a
sidecar with client credentials expects one). authcar/devlogin.py has the sign-in rules and pages.

Demo clients (client id = the role its tokens carry), all with the secret `demo-secret`:
    reader -> sub alice    editor -> sub bob    admin -> sub carol

    curl -s -u reader:demo-secret -d grant_type=client_credentials http://127.0.0.1:PORT/token

The sign-in page offers the same three people with the same roles. It listens on 127.0.0.1 only.
The test suite's full provider (tests/idp/) is a separate test tool.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote_plus

import jwt
from aiohttp import BasicAuth, web
from cryptography.hazmat.primitives.asymmetric import ec

from authcar.devlogin import (
    CANCEL_FIELD,
    LOGIN_SCOPES,
    USER_FIELD,
    AuthorizationRequest,
    Code,
    LoginClient,
    NotRedirectable,
    Person,
    RefreshGrant,
    Refused,
    SignIns,
    check_authorization,
    message_page,
    origin,
    page_headers,
    sign_in_page,
    single,
    with_query,
)
from authcar.server import bind

log = logging.getLogger("authcar.devissuer")

DEMO_AUDIENCE = "book-service"
DEMO_SECRET = "demo-secret"  # noqa: S105 - public on purpose: it is the demo's documented secret
TOKEN_LIFETIME = 3600  # seconds
ALGORITHM = "ES256"
NO_STORE = {"Cache-Control": "no-store"}
AUTH_METHODS = ("client_secret_basic", "client_secret_post")
CLAIMS_SUPPORTED = (
    *("iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "sid", "azp"),
    *("email", "preferred_username", "roles"),
)


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
# Who the sign-in page offers: the same people, each with the role of their demo client.
DEMO_PEOPLE: tuple[Person, ...] = tuple(Person(c.subject, c.role) for c in DEMO_CLIENTS.values())
ROLE_OF = MappingProxyType({person.subject: person.role for person in DEMO_PEOPLE})


class DevIssuer:
    """One run's issuer: its URL, its signing key, the browser sign-ins it remembers, and the aiohttp
    app that serves them. `login_clients`: the relying parties allowed to sign people in."""

    def __init__(
        self,
        url: str,
        *,
        audience: str = DEMO_AUDIENCE,
        secret: str = DEMO_SECRET,
        login_clients: Iterable[LoginClient] = (),
    ) -> None:
        self.url = url
        self.audience = audience
        self.secret = secret
        self.key = ec.generate_private_key(ec.SECP256R1())  # per run: tokens die with the process
        self.kid = f"authcar-dev-{secrets.token_hex(4)}"
        self.login_clients = MappingProxyType({client.client_id: client for client in login_clients})
        self.sign_ins = SignIns()

    @property
    def token_endpoint(self) -> str:
        return f"{self.url}/token"

    @property
    def authorization_endpoint(self) -> str:
        return f"{self.url}/authorize"

    @property
    def end_session_endpoint(self) -> str:
        return f"{self.url}/logout"

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.url,
            "jwks_uri": f"{self.url}/jwks.json",
            "authorization_endpoint": self.authorization_endpoint,
            "token_endpoint": self.token_endpoint,
            "end_session_endpoint": self.end_session_endpoint,
            "introspection_endpoint": f"{self.url}/introspect",
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "code_challenge_methods_supported": ["S256"],
            "subject_types_supported": ["public"],
            "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
            "introspection_endpoint_auth_methods_supported": list(AUTH_METHODS),
            "id_token_signing_alg_values_supported": [ALGORITHM],
            "scopes_supported": [
                *LOGIN_SCOPES,
                *sorted({s for c in DEMO_CLIENTS.values() for s in c.scope.split()}),
            ],
            "claims_supported": list(CLAIMS_SUPPORTED),
            "authorization_response_iss_parameter_supported": True,  # RFC 9207
        }

    def jwks(self) -> dict[str, Any]:
        public = jwt.get_algorithm_by_name(ALGORITHM).to_jwk(self.key.public_key(), as_dict=True)
        return {"keys": [{**public, "kid": self.kid, "use": "sig", "alg": ALGORITHM}]}

    def mint(
        self,
        role: str,
        *,
        lifetime: int = TOKEN_LIFETIME,
        client_id: str | None = None,
        sid: str | None = None,
    ) -> str:
        """A signed access token for the demo client `role` (RFC 9068 shape); `client_id` and `sid`
        when a login client got it for a person signed in as that role's user."""
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
            "client_id": client_id or client.role,
            "roles": [client.role],
            "scope": client.scope,
            "email": client.email,
            "preferred_username": client.subject,
        }
        if sid is not None:
            claims["sid"] = sid
        return jwt.encode(claims, self.key, algorithm=ALGORITHM, headers={"kid": self.kid, "typ": "at+jwt"})

    def id_token(self, client_id: str, subject: str, *, sid: str, auth_time: int, nonce: str | None) -> str:
        """An ID token (OIDC Core 2) for a person signed in at the page, for `client_id` only."""
        person = DEMO_CLIENTS[ROLE_OF[subject]]
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "sub": subject,
            "aud": client_id,
            "azp": client_id,
            "exp": now + TOKEN_LIFETIME,
            "iat": now,
            "auth_time": auth_time,
            "sid": sid,
            "email": person.email,
            "preferred_username": subject,
            "roles": [person.role],
        }
        if nonce is not None:
            claims["nonce"] = nonce
        return jwt.encode(claims, self.key, algorithm=ALGORITHM, headers={"kid": self.kid, "typ": "JWT"})

    # -- the token endpoint -----------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        client_id, secret = client_credentials(request.headers.get("Authorization"), form)
        login_client = self.login_clients.get(client_id or "")
        if login_client is not None:
            if not login_client.authenticates(secret):
                return oauth_error(401, "invalid_client", "unknown client or wrong secret")
            try:
                return self.login_token(login_client, text_fields(form))
            except Refused as refused:
                return oauth_error(refused.status, refused.error, refused.description)
        client = DEMO_CLIENTS.get(client_id or "")
        if client is None or secret is None or not hmac.compare_digest(secret.encode(), self.secret.encode()):
            return oauth_error(401, "invalid_client", "unknown client or wrong secret")
        grant_type = form.get("grant_type")
        if grant_type in ("authorization_code", "refresh_token"):
            return oauth_error(400, "unauthorized_client", "demo clients only have client_credentials")
        if grant_type != "client_credentials":
            return oauth_error(400, "unsupported_grant_type", "only client_credentials is supported")
        body = {
            "access_token": self.mint(client.role),
            "token_type": "Bearer",
            "expires_in": TOKEN_LIFETIME,
            "scope": client.scope,
        }
        return web.json_response(body, headers=NO_STORE)

    def login_token(self, client: LoginClient, form: Mapping[str, str]) -> web.Response:
        """authorization_code (with the PKCE verifier) and refresh_token, for a login client."""
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            code = self.sign_ins.redeem(client, form)
            return self.tokens(client, grant_of(code), nonce=code.nonce)
        if grant_type == "refresh_token":
            grant = self.sign_ins.rotate(client, form.get("refresh_token", ""))
            return self.tokens(client, grant, nonce=None)  # OIDC Core 12.2: no nonce after a refresh
        if grant_type == "client_credentials":
            return oauth_error(400, "unauthorized_client", "this client signs people in")
        return oauth_error(400, "unsupported_grant_type", "authorization_code or refresh_token")

    def tokens(self, client: LoginClient, grant: RefreshGrant, *, nonce: str | None) -> web.Response:
        role = ROLE_OF[grant.subject]
        body = {
            "access_token": self.mint(role, client_id=client.client_id, sid=grant.sid),
            "token_type": "Bearer",
            "expires_in": TOKEN_LIFETIME,
            "refresh_token": self.sign_ins.issue_refresh_token(grant),
            "id_token": self.id_token(
                client.client_id, grant.subject, sid=grant.sid, auth_time=grant.auth_time, nonce=nonce
            ),
            "scope": f"{grant.scope} {DEMO_CLIENTS[role].scope}",
        }
        return web.json_response(body, headers=NO_STORE)

    async def introspect(self, request: web.Request) -> web.Response:
        """RFC 7662 for the login clients: an access token this issuer signed and that is still
        valid is active; anything else (an ID token, another issuer's, garbage) is not."""
        form = await request.post()
        client_id, secret = client_credentials(request.headers.get("Authorization"), form)
        client = self.login_clients.get(client_id or "")
        if client is None or not client.authenticates(secret):
            return oauth_error(401, "invalid_client", "unknown client or wrong secret")
        token = form.get("token")
        try:
            if not isinstance(token, str) or jwt.get_unverified_header(token).get("typ") != "at+jwt":
                raise jwt.InvalidTokenError("not an access token")
            claims = jwt.decode(
                token, self.key.public_key(), algorithms=[ALGORITHM], issuer=self.url, audience=self.audience
            )
        except jwt.PyJWTError:
            return web.json_response({"active": False}, headers=NO_STORE)
        return web.json_response({**claims, "active": True, "token_type": "Bearer"}, headers=NO_STORE)

    # -- the authorization endpoint: the sign-in page ---------------------------------------------

    async def authorize(self, request: web.Request) -> web.Response:
        """GET shows the sign-in page for a valid request; POST is the page's answer."""
        if request.method == "POST":
            fields = await request.post()
            params = {name: [v for v in fields.getall(name) if isinstance(v, str)] for name in fields}
        else:
            params = {name: request.query.getall(name) for name in request.query}
        try:
            query = single(params)
        except Refused as refused:  # a repeated parameter: which redirect_uri counts is a guess
            return self.page(
                400, "Sign-in request refused", f"This sign-in request cannot be used: {refused}."
            )
        try:
            checked = check_authorization(self.login_clients, query)
        except NotRedirectable as error:
            return self.page(400, "Sign-in request refused", f"This sign-in request cannot be used: {error}.")
        except Refused as refused:
            return self.back(query["redirect_uri"], query.get("state"), refused.error, refused.description)
        if request.method == "GET":
            return web.Response(
                text=sign_in_page(self.authorization_endpoint, checked, DEMO_PEOPLE),
                headers=page_headers([origin(checked.redirect_uri)]),
            )
        return self.signed_in(checked, query)

    def signed_in(self, checked: AuthorizationRequest, form: Mapping[str, str]) -> web.Response:
        if CANCEL_FIELD in form or USER_FIELD not in form:
            return self.back(
                checked.redirect_uri, checked.state, "access_denied", "the sign-in was cancelled"
            )
        subject = form[USER_FIELD]
        if subject not in ROLE_OF:
            return self.page(400, "Sign-in request refused", "There is no such demo user.")
        person = Person(subject, ROLE_OF[subject])
        code = self.sign_ins.issue_code(checked, person)
        log.info("dev_sign_in", extra={"subject": subject, "client_id": checked.client.client_id})
        answer = {"code": code, "iss": self.url}
        if checked.state is not None:
            answer["state"] = checked.state
        return see_other(with_query(checked.redirect_uri, answer))

    def back(self, redirect_uri: str, state: str | None, error: str, description: str) -> web.Response:
        """An authorization error, sent to the (registered) redirect URI (RFC 6749 4.1.2.1)."""
        answer = {"error": error, "error_description": description, "iss": self.url}
        if state is not None:
            answer["state"] = state
        return see_other(with_query(redirect_uri, answer))

    # -- RP-initiated logout ----------------------------------------------------------------------

    async def logout(self, request: web.Request) -> web.Response:
        """OIDC RP-Initiated Logout 1.0: ends the session the ID token hint names, then back to the
        client's registered post_logout_redirect_uri (exactly), or a signed-out page."""
        params = {name: request.query.getall(name) for name in request.query}
        if request.method == "POST":
            fields = await request.post()
            params.update({name: [v for v in fields.getall(name) if isinstance(v, str)] for name in fields})
        try:
            query = single(params)
            client, sid = self.logout_request(query)
        except Refused as refused:
            return self.page(400, "Sign-out refused", refused.description)
        if sid is not None:
            self.sign_ins.end_session(sid)
            log.info("dev_sign_out", extra={"client_id": client.client_id if client else None})
        target = query.get("post_logout_redirect_uri")
        if target is None:
            return self.page(200, "Signed out", "You are signed out of the demo issuer.")
        extra = {"state": query["state"]} if "state" in query else {}
        return web.Response(status=302, headers={"Location": with_query(target, extra), **NO_STORE})

    def logout_request(self, query: Mapping[str, str]) -> tuple[LoginClient | None, str | None]:
        """(the client, the sid to end), checked before anything ends."""
        hint = query.get("id_token_hint")
        claims: dict[str, Any] | None = None
        if hint is not None:
            try:
                claims = jwt.decode(
                    hint,
                    self.key.public_key(),
                    algorithms=[ALGORITHM],
                    issuer=self.url,
                    options={"verify_aud": False, "verify_exp": False},  # an expired ID token is a fine hint
                )
            except jwt.PyJWTError:
                raise Refused("invalid_request", "id_token_hint is not an ID token of this issuer") from None
        hinted = claims.get("aud") if claims else None
        client_id = query.get("client_id", hinted if isinstance(hinted, str) else None)
        if claims is not None and client_id != hinted:
            raise Refused("invalid_request", "client_id is not the id_token_hint's audience")
        client = self.login_clients.get(client_id or "")
        target = query.get("post_logout_redirect_uri")
        if target is not None and (client is None or target not in client.post_logout_redirect_uris):
            raise Refused("invalid_request", "post_logout_redirect_uri is not registered for this client")
        sid = claims.get("sid") if claims else None
        return client, sid if isinstance(sid, str) else None

    def page(self, status: int, title: str, message: str) -> web.Response:
        return web.Response(status=status, text=message_page(title, message), headers=page_headers())

    def app(self) -> web.Application:
        async def discovery(request: web.Request) -> web.Response:
            return web.json_response(self.discovery())

        async def jwks(request: web.Request) -> web.Response:
            return web.json_response(self.jwks())

        app = web.Application(client_max_size=64 * 1024)
        app.router.add_get("/.well-known/openid-configuration", discovery)
        app.router.add_get("/jwks.json", jwks)
        app.router.add_post("/token", self.token)
        app.router.add_post("/introspect", self.introspect)
        app.router.add_route("GET", "/authorize", self.authorize)
        app.router.add_route("POST", "/authorize", self.authorize)
        app.router.add_route("GET", "/logout", self.logout)
        app.router.add_route("POST", "/logout", self.logout)
        return app


def grant_of(code: Code) -> RefreshGrant:
    return RefreshGrant(code.client_id, code.subject, code.scope, code.sid, code.auth_time)


def text_fields(form: Any) -> dict[str, str]:
    """A form's (aiohttp MultiDict) text fields, each once: RFC 6749 section 3.2 forbids repeats."""
    return single({name: [v for v in form.getall(name) if isinstance(v, str)] for name in form})


def see_other(location: str) -> web.Response:
    # 303: the browser follows with a GET, never a re-POST of the sign-in form to the client.
    return web.Response(
        status=303, headers={"Location": location, "Referrer-Policy": "no-referrer", **NO_STORE}
    )


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
    headers = dict(NO_STORE)
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="authcar-dev-issuer"'  # RFC 6749 §5.2
    return web.json_response(
        {"error": error, "error_description": description}, status=status, headers=headers
    )


@contextlib.asynccontextmanager
async def serving(port: int = 0, *, login_clients: Iterable[LoginClient] = ()) -> AsyncIterator[DevIssuer]:
    """Serve a fresh issuer on 127.0.0.1:`port` (0: any free port) in the running event loop;
    `login_clients` may sign people in at its sign-in page."""
    sock = bind("127.0.0.1", port)  # bound first, so the issuer URL knows its real port
    issuer = DevIssuer(f"http://127.0.0.1:{sock.getsockname()[1]}", login_clients=login_clients)
    runner = web.AppRunner(issuer.app(), access_log=None, handle_signals=False)
    try:
        await runner.setup()
        await web.SockSite(runner, sock).start()
        log.warning(
            "DEVELOPMENT issuer started: it signs tokens for anyone with the demo secret and signs anyone"
            " in as any demo user; never use it in production",
            extra={"issuer": issuer.url},
        )
        yield issuer
    finally:
        await runner.cleanup()
        sock.close()
