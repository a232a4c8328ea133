"""Browser login, put together: the `/oauth2/` endpoints (start, callback, sign_out, userinfo,
backchannel_logout) and the session a browser request is authenticated by.

    start       rd checked by the redirect policy -> a login attempt sealed into its own cookie ->
                302 to the provider's authorization endpoint (code, PKCE S256, state, nonce)
    callback    the attempt's cookie opened and used once (every replica) -> code exchanged with
                the verifier -> ID token checked (signature, issuer, audience, expiry, nonce) ->
                a NEW session id (never one the browser brought: no fixation) -> back to rd
    a request   the session cookie -> the record in the store (idle renewed) -> refreshed when
                due, once across replicas -> the Identity, through the same policy and headers
    sign_out    the record ended in the store, the cookie cleared -> the provider's end_session
                endpoint (id_token_hint, our registered post-logout URL), else a signed-out page
    backchannel_logout  the provider's logout token -> every session of its sid / sub ended, on
                every replica (backchannel.py)

Sessions fail closed: a store that does not answer is 503, never a session assumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from authcar.background import cancel_and_wait
from authcar.claims import TokenRejected
from authcar.errors import (
    BadGateway,
    GatewayError,
    ServiceUnavailable,
    Unauthorized,
    error_response,
)
from authcar.identity import Identity
from authcar.login.backchannel import BackChannelLogout
from authcar.login.callback import CallbackRefused, parse_callback
from authcar.login.cookies import SidecarCookies
from authcar.login.navigation import is_page_load, return_to
from authcar.login.pages import PAGE_HEADERS, continue_page, error_page, signed_out_page
from authcar.login.provider import LoginFailed, LoginProvider, TokenAnswer
from authcar.login.redirects import RedirectPolicy
from authcar.login.refresh import refresh_due
from authcar.login.request import authorization_url
from authcar.login.session import BrowserSession, SessionTooLarge, identity_claims, new_session_id
from authcar.login.state import LoginStateError, LoginStateSealer, cookie_name
from authcar.login.tokens import LoginTokenRejected, check_id_token
from authcar.loglimit import LogLimiter
from authcar.store import Store, StoreUnavailable
from authcar.store.sessions import SessionRecords, digest
from authcar.types import Headers, Scope

log = logging.getLogger("authcar.login")

# Longer than a refresh takes at most (the token call and userinfo, CALL_DEADLINE each), so no other
# replica spends the rotated refresh token meanwhile; a crashed holder frees it.
REFRESH_LOCK_SECONDS = 25.0
REFRESH_WAIT_SECONDS = 5.0  # a replica waiting for another's refresh of an expired token
REFRESH_POLL_SECONDS = 0.1
Endpoint = Callable[[Request], Awaitable[Response]]
SESSION_TOKEN_SLOT = "authcar.session_access_token"  # noqa: S105 (a scope key, not a secret); scope key: the session's token, for the app
ACCESS_TOKEN_HEADER = b"x-auth-request-access-token"
SIGN_IN_CODES = frozenset({"no_credentials", "session_ended"})
MAX_PENDING_LOGINS = 5  # login-state cookies a browser keeps (tabs signing in at once)
SIGN_IN_HEADER = b"x-auth-request-sign-in"  # forward-auth: where the gateway sends the browser


class SignInRedirect(GatewayError):
    """A person's page load without a session: 302 to /oauth2/start, to come back after signing in."""

    status = 302
    code = "sign_in_required"
    description = "sign in to continue"

    def __init__(self, location: str) -> None:
        super().__init__()
        self.location = location

    def extra_headers(self) -> Headers:
        return [(b"location", self.location.encode("ascii")), (b"cache-control", b"no-store")]


class SignInElsewhere(Unauthorized):
    """A forward-auth request about a person's page load without a session: the gateway gets the
    401 (it reads only the status) with the sign-in URL to redirect the browser to (nginx:
    `auth_request_set` + `error_page 401`)."""

    def __init__(self, error: Unauthorized, location: str) -> None:
        super().__init__(error.description, code=error.code, token_error=error.token_error)
        self.location = location

    def extra_headers(self) -> Headers:
        return [*super().extra_headers(), (SIGN_IN_HEADER, self.location.encode("ascii"))]


@dataclass(frozen=True)
class LoginOptions:
    reserved_prefix: str
    redirect_url: str  # AUTHCAR_OIDC_REDIRECT_URL
    post_logout_redirect_url: str | None
    idle: float
    max_age: float
    pass_access_token: bool


class BrowserLogin:
    def __init__(
        self,
        provider: LoginProvider,
        store: Store,
        *,
        cookies: SidecarCookies,
        sealer: LoginStateSealer,
        redirects: RedirectPolicy,
        options: LoginOptions,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.provider = provider
        self.store = store
        self.cookies = cookies
        self.sealer = sealer
        self.redirects = redirects
        self.options = options
        self.clock = clock
        self.records = SessionRecords(store, idle=options.idle, max_age=options.max_age)
        self.backchannel = BackChannelLogout(provider, self.records, store, clock=clock)
        self.start_path = options.reserved_prefix + "start"
        self.sign_out_path = options.reserved_prefix + "sign_out"
        # Refreshes under way in this process, by session digest: concurrent requests share one.
        self.refreshing: dict[str, asyncio.Task[BrowserSession | None]] = {}
        self.quiet = LogLimiter()

    async def close(self) -> None:
        await cancel_and_wait(list(self.refreshing.values()))
        await self.provider.close()

    def routes(self) -> list[Route]:
        prefix = self.options.reserved_prefix
        return [
            Route(prefix + "start", self.guarded(self.start), methods=["GET"]),
            Route(prefix + "callback", self.guarded(self.callback), methods=["GET"]),
            Route(prefix + "sign_out", self.guarded(self.sign_out), methods=["GET", "POST"]),
            Route(prefix + "userinfo", self.guarded(self.userinfo, api=True), methods=["GET"]),
            Route(
                prefix + "backchannel_logout",
                self.guarded(self.backchannel.endpoint, api=True),
                methods=["POST"],
            ),
        ]

    def guarded(self, endpoint: Endpoint, *, api: bool = False) -> Endpoint:
        """The endpoint, with every failure answered: an error of ours as itself (JSON for the `api`
        endpoints that programs call, a page for the browser's), a bug as a 502, never a traceback."""

        async def answer(request: Request) -> Response:
            request_id = request.headers.get("x-request-id", "")
            try:
                return await endpoint(request)
            except GatewayError as error:
                if api:
                    return error_response(error, request_id)
                return self.page_error(
                    request, error.status, "Sign-in is unavailable right now. Try again shortly."
                )
            except Exception:
                if (suppressed := self.quiet("login_endpoint")) is not None:
                    log.exception(
                        "login_endpoint_error", extra={"suppressed": suppressed, "request_id": request_id}
                    )
                if api:
                    return error_response(BadGateway("the request could not be completed"), request_id)
                return self.page_error(request, 502, "Sign-in could not be completed.")

        return answer

    # -- a request's session -------------------------------------------------------------------

    def session_id(self, headers: Headers) -> str | None:
        return self.cookies.session_id([value for name, value in headers if name == b"cookie"])

    async def identify(self, scope: Scope) -> Identity | None:
        """The identity of the request's session; None without one (or once it ended)."""
        session_id = self.session_id(scope["headers"])
        if session_id is None:
            return None
        if scope["type"] == "websocket" and not self.same_origin(scope["headers"]):
            # A page on another site can open a WebSocket here, and with SameSite=None the browser
            # sends our cookie along (cross-site WebSocket hijacking): only our own pages' may.
            return None
        session = await self.load(session_id)
        if session is None:
            return None
        session = await self.current(session_id, session)
        if session is None:
            return None
        try:
            identity = self.provider.issuer.mapping.identity(session.claims, session.issuer, "session")
        except TokenRejected:
            return None  # claims the policy cannot read: as if there were no session (nor its token)
        if self.options.pass_access_token:
            scope[SESSION_TOKEN_SLOT] = session.access_token
        return identity

    def same_origin(self, headers: Headers) -> bool:
        """The handshake's Origin is ours or an AUTHCAR_ALLOWED_REDIRECT_HOSTS origin; a client
        that sends none is no browser page."""
        origins = [value for name, value in headers if name == b"origin"]
        if not origins:
            return True
        if len(origins) != 1:
            return False
        origin = origins[0].decode("latin-1")
        return "/" not in origin.partition("://")[2] and self.redirects.allows(origin + "/")

    async def load(self, session_id: str) -> BrowserSession | None:
        try:
            data = await self.records.load(session_id)
        except StoreUnavailable:
            raise ServiceUnavailable(
                "the session cannot be checked now", code="session_store_unavailable"
            ) from None
        return None if data is None else BrowserSession.from_bytes(data)

    async def current(self, session_id: str, session: BrowserSession) -> BrowserSession | None:
        """The session with a fresh access token: refreshed when due, once per session in this
        process (concurrent requests wait for the same refresh) and across replicas (a lock in the
        store). None when the refresh ended the session."""
        if session.refresh_token is None or session.expires_at is None:
            return session
        if not refresh_due(session.obtained_at, session.expires_at, self.clock()):
            return session
        key = digest(session_id)
        task = self.refreshing.get(key)
        if task is None:
            task = asyncio.create_task(self.refresh(session_id, session), name="authcar-session-refresh")
            self.refreshing[key] = task
            task.add_done_callback(lambda _: self.refreshing.pop(key, None))
        # Shielded: a client that leaves does not cancel the refresh the others wait for.
        return await asyncio.shield(task)

    async def refresh(self, session_id: str, session: BrowserSession) -> BrowserSession | None:
        lock = "session-refresh:" + digest(session_id)
        try:
            if not await self.store.set_if_absent(lock, b"", REFRESH_LOCK_SECONDS):
                return await self.refreshed_elsewhere(session_id, session)
            try:
                # Another replica may have refreshed between our read and our lock.
                latest = await self.load(session_id)
                if latest is None or latest.obtained_at > session.obtained_at:
                    return latest
                return await self.refresh_now(session_id, latest)
            finally:
                await self.store.delete(lock)
        except StoreUnavailable:
            raise ServiceUnavailable(
                "the session cannot be checked now", code="session_store_unavailable"
            ) from None

    async def refreshed_elsewhere(self, session_id: str, session: BrowserSession) -> BrowserSession | None:
        """Another replica holds the refresh lock: a token that is still valid is used meanwhile; an
        expired one waits (bounded) for the other's result."""
        assert session.expires_at is not None
        deadline = self.clock() + REFRESH_WAIT_SECONDS
        if self.clock() < session.expires_at:
            return session
        while self.clock() < deadline:
            await asyncio.sleep(REFRESH_POLL_SECONDS)
            latest = await self.load(session_id)
            if latest is None or latest.obtained_at > session.obtained_at:
                return latest
        return session  # the other replica did not finish: its lock expires, a later request retries

    async def refresh_now(self, session_id: str, session: BrowserSession) -> BrowserSession | None:
        assert session.refresh_token is not None
        try:
            answer = await self.provider.refresh(session.refresh_token)
            claims, id_token = await self.refreshed_claims(session, answer)
        except LoginFailed as exc:
            if exc.refused or exc.reason.startswith(("id_token_", "userinfo_")):
                # The provider ended the grant (or answered with another person's token): the
                # session ends with it, the browser signs in again.
                log.info("session_refresh_refused", extra={"reason": exc.reason, "subject": session.subject})
                await self.records.end(session_id)
                return None
            # The provider cannot be reached: the session stays as it is and a later request retries.
            log.warning("session_refresh_failed", extra={"reason": exc.reason, "subject": session.subject})
            return session
        updated = session.refreshed(
            access_token=answer.access_token,
            refresh_token=answer.refresh_token,
            obtained_at=answer.obtained_at,
            expires_at=answer.expires_at,
            claims=claims,
            id_token=id_token,
        )
        try:
            still_live = await self.records.replace(
                session_id, session.subject, updated.to_bytes(), max_age=self.remaining(updated)
            )
        except SessionTooLarge:
            await self.records.end(session_id)
            return None
        return updated if still_live else None  # signed out while the provider answered

    async def refreshed_claims(
        self, session: BrowserSession, answer: TokenAnswer
    ) -> tuple[dict[str, Any] | None, str | None]:
        """A new ID token from a refresh replaces the claims (roles may have changed), if it is about
        the same person (OIDC Core 12.2), with userinfo's asked anew as at sign-in: many providers
        say the groups only there, and the ID token alone would take them away. Without a new ID
        token, or when userinfo does not answer, the claims stay as they were."""
        if answer.id_token is None:
            return None, None
        claims = await self.provider.verified_id_token(answer.id_token)
        if claims.get("sub") != session.subject:
            raise LoginFailed("id_token_subject", "the refreshed ID token is about another subject")
        userinfo = await self.provider.userinfo(answer.access_token, session.subject)
        metadata = self.provider.metadata
        if userinfo is None and metadata is not None and metadata.userinfo_endpoint is not None:
            return None, answer.id_token
        return identity_claims(claims, userinfo), answer.id_token

    def remaining(self, session: BrowserSession) -> float:
        return max(1.0, session.signed_in_at + self.options.max_age - self.clock())

    def session_headers(self, scope: Scope) -> Headers:
        """X-Auth-Request-Access-Token for the application (AUTHCAR_PASS_ACCESS_TOKEN), when the
        request was authenticated by a session; a client's own header of that name was stripped."""
        token = scope.get(SESSION_TOKEN_SLOT)
        return [(ACCESS_TOKEN_HEADER, token.encode("latin-1"))] if isinstance(token, str) else []

    def without_own_cookies(self, headers: Headers) -> Headers:
        """The request's headers with the sidecar's cookies taken out of every Cookie header."""
        if not any(name == b"cookie" for name, _ in headers):
            return headers
        kept = [(name, value) for name, value in headers if name != b"cookie"]
        cookies = self.cookies.without_ours(value for name, value in headers if name == b"cookie")
        return [*kept, *((b"cookie", value) for value in cookies)]

    def challenge(self, scope: Scope, error: GatewayError) -> GatewayError:
        """What to answer a request the policy wants a caller for: a page load is sent to sign in;
        an API call (fetch, XHR, a program) keeps its 401."""
        if not isinstance(error, Unauthorized) or error.code not in SIGN_IN_CODES:
            return error
        if not is_page_load(scope.get("method", "GET"), scope["headers"]):
            return error
        target = return_to(scope.get("raw_path") or b"/", scope.get("query_string", b""))
        return SignInRedirect(f"{self.start_path}?{urlencode({'rd': target})}")

    def forward_auth_challenge(self, decided: Scope, described_url: str, error: GatewayError) -> GatewayError:
        """The same for a gateway's forward-auth request (`decided` is the request it describes, with
        the client's own headers): the 401 stays, with the sign-in URL beside it. The return-to is the
        described URL when the redirect policy allows its host, else its path."""
        if not isinstance(error, Unauthorized) or error.code not in SIGN_IN_CODES:
            return error
        if not is_page_load(decided.get("method", "GET"), decided["headers"]):
            return error
        target = return_to(decided.get("raw_path") or b"/", decided.get("query_string", b""))
        if described_url != target and self.redirects.allows(described_url):
            target = described_url
        return SignInElsewhere(error, f"{self.start_path}?{urlencode({'rd': target})}")

    # -- endpoints --------------------------------------------------------------------------------

    async def start(self, request: Request) -> Response:
        params = single_params(request.scope.get("query_string", b""))
        target = self.redirects.target(params.get("rd") if params is not None else None)
        try:
            metadata = self.provider.endpoints()
        except LoginFailed:
            return self.page_error(request, 503, "The sign-in service cannot be reached. Try again shortly.")
        # Each unfinished sign-in leaves its cookie for its lifetime; a page (or a site linking
        # here) that starts many would fill the Cookie header until every request is 431. Past a
        # few, the old attempts are forgotten: such a tab starts again.
        stale = self.cookies.login_names(
            value for name, value in request.scope["headers"] if name == b"cookie"
        )
        forget = (
            [self.cookies.clear_cookie(name) for name in stale] if len(stale) >= MAX_PENDING_LOGINS else []
        )
        attempt = self.sealer.begin(target)
        location = authorization_url(
            metadata.authorization_endpoint or "",
            client_id=self.provider.client_id,
            redirect_uri=self.provider.redirect_uri,
            scopes=self.provider.scopes,
            attempt=attempt,
        )
        name = cookie_name(self.cookies.session_name, attempt.state)
        cookie = self.cookies.set_cookie(name, self.sealer.seal(attempt), max_age=int(self.sealer.lifetime))
        return redirect(location, cookies=[*forget, cookie])

    async def callback(self, request: Request) -> Response:
        query = request.scope.get("query_string", b"").decode("latin-1")
        metadata = self.provider.metadata
        issuer = self.provider.issuer.url
        try:
            answer = parse_callback(
                query, issuer=issuer, issuer_sends_iss=bool(metadata and metadata.sends_iss)
            )
        except CallbackRefused as exc:
            log.warning("login_refused", extra={"reason": exc.reason})
            return self.page_error(request, exc.status, "This sign-in link is not valid. Start again.")
        state_cookie = cookie_name(self.cookies.session_name, answer.state)
        clear_state = self.cookies.clear_cookie(state_cookie)
        try:
            attempt = self.sealer.open(request.cookies.get(state_cookie), answer.state)
            await self.sealer.use_once(attempt, self.store)
        except LoginStateError as exc:
            log.warning("login_refused", extra={"reason": f"state_{exc.reason}"})
            return self.page_error(
                request, 403, "This sign-in was not started here, or has expired.", cookies=[clear_state]
            )
        except StoreUnavailable:
            return self.page_error(request, 503, "Sign-in is unavailable right now. Try again shortly.")
        if answer.code is None:
            log.info("login_refused", extra={"reason": "provider_error", "error": answer.error})
            message = (
                "Sign-in was cancelled."
                if answer.error == "access_denied"
                else "The sign-in service refused."
            )
            return self.page_error(request, 403, message, cookies=[clear_state])
        try:
            session = await self.sign_in(answer.code, attempt.code_verifier, attempt.nonce)
        except LoginFailed as exc:
            log.warning("login_failed", extra={"reason": exc.reason})
            status = 403 if exc.refused or exc.reason.startswith(("id_token_", "userinfo_")) else 502
            return self.page_error(request, status, "Sign-in could not be completed.", cookies=[clear_state])
        session_id = new_session_id()
        old = self.session_id(request.scope["headers"])
        try:
            if old is not None:
                await self.records.end(old)  # the browser's earlier session does not live on beside
            await self.records.create(
                session_id, session.subject, session.to_bytes(), provider_sid=session.provider_sid
            )
        except StoreUnavailable:
            return self.page_error(request, 503, "Sign-in is unavailable right now. Try again shortly.")
        except SessionTooLarge:
            return self.page_error(request, 502, "Sign-in could not be completed.", cookies=[clear_state])
        log.info("login", extra={"subject": session.subject})
        session_cookie = self.cookies.set_cookie(self.cookies.session_name, session_id)
        if self.cookies.samesite == "Strict":
            return html(200, continue_page(attempt.return_to), cookies=[clear_state, session_cookie])
        return redirect(attempt.return_to, cookies=[clear_state, session_cookie])

    async def sign_in(self, code: str, verifier: str, nonce: str) -> BrowserSession:
        answer = await self.provider.exchange_code(code, verifier)
        if answer.id_token is None:
            raise LoginFailed("id_token_missing", "the provider's answer has no ID token")
        claims = await self.provider.verified_id_token(answer.id_token)
        try:
            subject = check_id_token(claims, client_id=self.provider.client_id, nonce=nonce)
        except LoginTokenRejected as exc:
            raise LoginFailed(f"id_token_{exc.reason}", exc.description) from None
        userinfo = await self.provider.userinfo(answer.access_token, subject)
        sid = claims.get("sid")
        now = self.clock()
        return BrowserSession(
            subject=subject,
            issuer=self.provider.issuer.url,
            claims=identity_claims(claims, userinfo),
            access_token=answer.access_token,
            refresh_token=answer.refresh_token,
            id_token=answer.id_token,
            obtained_at=answer.obtained_at,
            expires_at=answer.expires_at,
            provider_sid=sid if isinstance(sid, str) and 0 < len(sid) <= 255 else None,
            signed_in_at=now,
        )

    async def sign_out(self, request: Request) -> Response:
        params = single_params(request.scope.get("query_string", b"")) or {}
        session_id = self.session_id(request.scope["headers"])
        session = None
        if session_id is not None:
            try:
                session = await self.load(session_id)
                await self.records.end(session_id)
            except (ServiceUnavailable, StoreUnavailable):
                # Fail closed: the browser must not believe it signed out while the session lives.
                return self.page_error(
                    request, 503, "Signing out is unavailable right now. Try again shortly."
                )
            log.info("logout", extra={"subject": session.subject if session else ""})
        clear = self.cookies.clear_cookie(self.cookies.session_name)
        metadata = self.provider.metadata
        end_session = metadata.end_session_endpoint if metadata is not None else None
        if session is not None and end_session is not None:
            query = {"id_token_hint": session.id_token, "client_id": self.provider.client_id}
            if self.options.post_logout_redirect_url is not None:
                query["post_logout_redirect_uri"] = self.options.post_logout_redirect_url
            separator = "&" if "?" in end_session else "?"
            return redirect(f"{end_session}{separator}{urlencode(query)}", cookies=[clear])
        rd = params.get("rd")
        if rd is not None and self.redirects.allows(rd):
            return redirect(rd, cookies=[clear])
        return html(200, signed_out_page(self.start_path), cookies=[clear])

    async def userinfo(self, request: Request) -> Response:
        session_id = self.session_id(request.scope["headers"])
        session = await self.load(session_id) if session_id is not None else None
        request_id = request.headers.get("x-request-id", "")
        identity = None
        if session is not None:
            # As for a request: a session the policy cannot read is none.
            with contextlib.suppress(TokenRejected):
                identity = self.provider.issuer.mapping.identity(session.claims, session.issuer, "session")
        if session is None or identity is None:
            return error_response(Unauthorized("no session", code="no_session"), request_id)
        claims = session.claims
        body = {
            "sub": session.subject,
            "iss": session.issuer,
            **{name: claims[name] for name in USERINFO_CLAIMS if name in claims},
            "groups": sorted(identity.roles),
        }
        return Response(
            json_bytes(body),
            200,
            {"content-type": "application/json", "cache-control": "no-store"},
        )

    def page_error(
        self, request: Request, status: int, message: str, *, cookies: list[bytes] | None = None
    ) -> Response:
        body = error_page(status, message, request_id=request.headers.get("x-request-id", ""), retry_path="/")
        return html(status, body, cookies=cookies or [])


USERINFO_CLAIMS = ("email", "email_verified", "name", "preferred_username", "given_name", "family_name")


def single_params(query_string: bytes) -> dict[str, str] | None:
    """The query's parameters, or None when one is repeated (which one counts is then a guess)."""
    params: dict[str, str] = {}
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name in params:
            return None
        params[name] = value
    return params


def redirect(location: str, *, cookies: list[bytes]) -> Response:
    response = Response(
        status_code=302, headers={"cache-control": "no-store", "referrer-policy": "no-referrer"}
    )
    response.headers["location"] = location
    for cookie in cookies:
        response.raw_headers.append((b"set-cookie", cookie))
    return response


def html(status: int, body: bytes, *, cookies: list[bytes]) -> Response:
    response = Response(body, status)
    response.raw_headers[:] = [
        (name, value) for name, value in response.raw_headers if name != b"content-type"
    ] + list(PAGE_HEADERS)
    for cookie in cookies:
        response.raw_headers.append((b"set-cookie", cookie))
    return response


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
