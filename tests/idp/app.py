"""HTTP in front of the provider: the OIDC endpoints under the issuer, test control under /_idp/, and the
failure modes (down, slow, garbage, reset; faults.py's huge and nested) around the OIDC endpoints only."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.idp import oauth
from tests.idp.faults import DOCUMENT_MODES, fault_document
from tests.idp.oauth import OAuthError
from tests.idp.provider import ENDPOINTS, IdP
from tests.idp.signin import CANCEL_FIELD, USER_FIELD, sign_in_page

METHODS: Mapping[str, list[str]] = MappingProxyType(
    {
        "discovery": ["GET"],
        "jwks": ["GET"],
        "auth": ["GET", "POST"],  # POST: the sign-in page's form
        "token": ["POST"],
        "introspect": ["POST"],
        "revoke": ["POST"],
        "userinfo": ["GET", "POST"],
        "logout": ["GET", "POST"],
    }
)
NO_STORE = {"Cache-Control": "no-store"}  # token answers must not be cached (RFC 6749 section 5.1)
# What a misconfigured proxy in front of an IdP answers: a page, labelled as JSON.
GARBAGE = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
# Attributes the admin "configure" call may set.
CONFIGURABLE = frozenset(
    {
        "delay",
        "token_lifetime",
        "refresh_lifetime",
        "discovery_overrides",
        "introspection_auth_methods",
        "interactive",
        "reused_refresh_ends_session",
        "backchannel_on_logout",
    }
)


def configure(idp: IdP, **settings: Any) -> None:
    unknown = settings.keys() - CONFIGURABLE
    if unknown:
        raise ValueError(f"not configurable: {sorted(unknown)}")
    for name, value in settings.items():
        setattr(idp, name, value)


# The handle's API as JSON calls (`POST /_idp/<name>` with keyword arguments), for IdPClient.
ADMIN_CALLS: Mapping[str, Callable[..., Any]] = MappingProxyType(
    {
        "describe": IdP.describe,
        "mint": IdP.mint,
        "mint_opaque": IdP.mint_opaque,
        "revoke": IdP.revoke,
        "rotate": IdP.rotate,
        "retire": IdP.retire,
        "keys": lambda idp: idp.keys,
        "private_key": lambda idp, kid: idp.ring.find(kid).private_pem(),
        "register_client": lambda idp, client_id, secret, **options: asdict(
            idp.register_client(client_id, secret, **options)
        ),
        "login_as": IdP.login_as,
        "logout_token": IdP.logout_token,
        "backchannel_logout": IdP.backchannel_logout,
        "sessions_of": IdP.sessions_of,
        "set_mode": IdP.set_mode,
        "configure": configure,
        "reset_counters": IdP.reset_counters,
    }
)


def single_values(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Request parameters as a dict; a repeated one is an error (RFC 6749 section 3.1)."""
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params:
            raise OAuthError("invalid_request", f"parameter {name!r} repeated")
        params[name] = value
    return params


async def read_form(request: Request) -> dict[str, str]:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
    try:
        body = (await request.body()).decode()
    except UnicodeDecodeError:
        raise OAuthError("invalid_request", "the body is not UTF-8") from None
    return single_values(parse_qsl(body, keep_blank_values=True))


class Endpoints:
    """One handler per ENDPOINTS name, plus the admin calls."""

    def __init__(self, idp: IdP) -> None:
        self.idp = idp

    async def discovery(self, request: Request) -> Response:
        return JSONResponse(self.idp.discovery())

    async def jwks(self, request: Request) -> Response:
        return JSONResponse(self.idp.keys)

    async def auth(self, request: Request) -> Response:
        if request.method == "POST":
            return self.signed_in(await read_form(request))
        params = single_values(request.query_params.multi_items())
        if not self.idp.interactive:
            return RedirectResponse(oauth.authorize(self.idp, params, self.idp.user), 302)
        refused = oauth.checked_request(self.idp, params)
        if refused is not None:
            return RedirectResponse(refused, 302)
        page = sign_in_page(
            self.idp.authorization_endpoint, params, self.idp.users.values(), params["client_id"]
        )
        return HTMLResponse(page, headers=NO_STORE)

    def signed_in(self, form: dict[str, str]) -> Response:
        """The sign-in page's answer: the chosen user, or none (Cancel) for access_denied."""
        chosen = form.pop(USER_FIELD, None)
        form.pop(CANCEL_FIELD, None)
        user = None if chosen is None else self.idp.users.get(chosen)
        if chosen is not None and user is None:
            raise OAuthError("invalid_request", "no such user")
        # 303: the browser follows with a GET, not a re-POST of the form to the client.
        return RedirectResponse(oauth.authorize(self.idp, form, user), 303)

    async def token(self, request: Request) -> Response:
        answer = oauth.token(self.idp, await read_form(request), request.headers.get("authorization"))
        return JSONResponse(answer, headers=NO_STORE)

    async def introspect(self, request: Request) -> Response:
        answer = oauth.introspect(self.idp, await read_form(request), request.headers.get("authorization"))
        return JSONResponse(answer, headers=NO_STORE)

    async def revoke(self, request: Request) -> Response:
        oauth.revoke_request(self.idp, await read_form(request), request.headers.get("authorization"))
        return Response(status_code=200)

    async def userinfo(self, request: Request) -> Response:
        return JSONResponse(oauth.userinfo(self.idp, request.headers.get("authorization")), headers=NO_STORE)

    async def logout(self, request: Request) -> Response:
        params = single_values(request.query_params.multi_items())
        if request.method == "POST":
            params.update(await read_form(request))
        target, sid = oauth.logout(self.idp, params)
        login = self.idp.logins.get(sid) if sid is not None else None
        if self.idp.backchannel_on_logout and login is not None and login.client.backchannel_logout_uri:
            await self.idp.backchannel_logout(
                login.client.client_id, sid=login.sid, sub=login.user.sub, end_session=False
            )
        return PlainTextResponse("logged out") if target is None else RedirectResponse(target, 302)

    async def admin(self, request: Request) -> Response:
        call = ADMIN_CALLS.get(request.path_params["call"])
        if call is None:
            return JSONResponse({"error": "unknown_call", "calls": sorted(ADMIN_CALLS)}, 404)
        try:
            body = await request.body()
            result = call(self.idp, **(json.loads(body) if body else {}))
            if inspect.isawaitable(result):  # backchannel_logout waits for the client's answer
                result = await result
        except (TypeError, ValueError, LookupError) as exc:  # bad arguments, unknown kid or mode
            return JSONResponse(
                {"error": "bad_call", "error_description": f"{type(exc).__name__}: {exc}"}, 400
            )
        return JSONResponse(result)


async def oauth_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OAuthError)
    headers = {}
    if exc.status == 401:
        challenge = 'Bearer error="invalid_token"' if exc.error == "invalid_token" else 'Basic realm="idp"'
        headers["WWW-Authenticate"] = challenge
    body = {"error": exc.error, "error_description": exc.description}
    return JSONResponse(body, exc.status, headers={**headers, **NO_STORE})


class Modes:
    """Counts each OIDC request by endpoint name (and the most answered at once), then fails it as the
    provider's mode says.

    Admin calls pass untouched: a provider that is "down" must still take the call that brings it back.
    """

    def __init__(self, app: ASGIApp, idp: IdP) -> None:
        self.app = app
        self.idp = idp
        self.names = {idp.issuer_path + path: name for name, path in ENDPOINTS.items()}
        self.closing = asyncio.Event()

    def close(self) -> None:
        self.closing.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = self.names.get(scope["path"]) if scope["type"] == "http" else None
        if name is None:
            await self.app(scope, receive, send)
            return
        self.idp.counts[name] += 1
        in_flight, peak = self.idp.in_flight, self.idp.peak_in_flight
        in_flight[name] += 1
        peak[name] = max(peak[name], in_flight[name])
        try:
            await self.answer(name, scope, receive, send)
        finally:
            in_flight[name] -= 1

    async def answer(self, name: str, scope: Scope, receive: Receive, send: Send) -> None:
        raw = self.idp.raw_answers.get(name)
        if raw is not None:
            await Response(raw, 200, media_type="application/json")(scope, receive, send)
            return
        mode = self.idp.mode_for(name)
        if mode == "slow":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closing.wait(), timeout=self.idp.delay)
                mode = "reset"  # the server is stopping: do not hold it up
        if mode == "down":
            body = {"error": "temporarily_unavailable", "error_description": "the provider is down"}
            await JSONResponse(body, 503)(scope, receive, send)
            return
        elif mode == "garbage":
            await Response(GARBAGE, 200, media_type="application/json")(scope, receive, send)
            return
        elif mode == "reset":
            scope["extensions"]["idp.reset"]()  # set by server.ResettableProtocol
            return
        elif mode in DOCUMENT_MODES:
            document = fault_document(mode, self.idp, name)
            await Response(document, 200, media_type="application/json")(scope, receive, send)
            return
        await self.app(scope, receive, send)


def build_app(idp: IdP) -> Modes:
    endpoints = Endpoints(idp)
    routes = [
        Route(idp.issuer_path + path, getattr(endpoints, name), methods=METHODS[name])
        for name, path in ENDPOINTS.items()
    ]
    routes.append(Route("/_idp/{call}", endpoints.admin, methods=["POST"]))
    return Modes(Starlette(routes=routes, exception_handlers={OAuthError: oauth_error}), idp)
