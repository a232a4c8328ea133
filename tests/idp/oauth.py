"""What the OAuth 2.0 / OIDC endpoints decide, given parsed requests: app.py parses, the IdP keeps state."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote_plus, urlencode, urlsplit, urlunsplit

from tests.idp.keys import b64url
from tests.idp.provider import Client, Code, Grant, IdP, Login, User

CODE_LIFETIME = 60
PKCE_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")  # RFC 7636 section 4.1


class OAuthError(Exception):
    """An error answer of the token, introspection, userinfo or logout endpoints (RFC 6749 section 5.2)."""

    def __init__(self, error: str, description: str = "", status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status


def checked_request(idp: IdP, params: Mapping[str, str]) -> str | None:
    """An authorization request's checks: raises when there is no registered redirect_uri to answer at,
    returns the error redirect for a bad request, None for one a user may sign in to."""
    client = idp.clients.get(params.get("client_id", ""))
    if client is None or not client.allows_redirect(params.get("redirect_uri", "")):
        # Never redirect to a URI we cannot vouch for (RFC 6749 section 4.1.2.1).
        raise OAuthError("invalid_request", "unknown client_id or unregistered redirect_uri")
    if params.get("response_type") != "code":
        return answer_url(idp, params, error="unsupported_response_type")
    if not params.get("code_challenge") or params.get("code_challenge_method") != "S256":
        return answer_url(
            idp, params, error="invalid_request", error_description="PKCE with S256 is required"
        )
    return None


def authorize(idp: IdP, params: Mapping[str, str], user: User | None) -> str:
    """The authorization endpoint once `user` signed in (None: refused to): where the browser goes next."""
    refused = checked_request(idp, params)
    if refused is not None:
        return refused
    if user is None:
        return answer_url(idp, params, error="access_denied", error_description="the user did not sign in")
    login = Login(
        idp.clients[params["client_id"]],
        user,
        params.get("scope") or "openid",
        sid=str(uuid.uuid4()),
        nonce=params.get("nonce"),
        auth_time=int(time.time()),
    )
    idp.logins[login.sid] = login
    code = secrets.token_urlsafe(32)
    idp.codes[code] = Code(
        login, params["redirect_uri"], params["code_challenge"], time.time() + CODE_LIFETIME
    )
    return answer_url(idp, params, code=code)


def answer_url(idp: IdP, params: Mapping[str, str], **answer: str) -> str:
    """The redirect_uri with the answer, the request's state and our issuer (RFC 9207)."""
    state = {"state": params["state"]} if "state" in params else {}
    return with_query(params["redirect_uri"], {**answer, **state, "iss": idp.issuer})


def token(idp: IdP, form: Mapping[str, str], authorization: str | None) -> dict[str, Any]:
    client = authenticate(idp, form, authorization, allow_public=True)
    opaque = form.get("format", "opaque" if client.opaque else "jwt") == "opaque"
    grant_type = form.get("grant_type")
    if grant_type == "client_credentials":
        if client.secret is None:
            raise OAuthError("unauthorized_client", "public clients cannot use client_credentials")
        account = f"service-account-{client.client_id}"
        user = User(account, account, None, client.roles)
        return issue(idp, client, user, form.get("scope") or client.scope, None, opaque=opaque)
    if grant_type == "authorization_code":
        login = redeem(idp, client, form)
    elif grant_type == "refresh_token":
        login = refresh(idp, client, form.get("refresh_token", ""))
    else:
        raise OAuthError("unsupported_grant_type", f"grant_type {grant_type!r}")
    return issue(idp, client, login.user, login.scope, login, opaque=opaque)


def redeem(idp: IdP, client: Client, form: Mapping[str, str]) -> Login:
    code = idp.codes.get(form.get("code", ""))
    if code is None or code.login.client.client_id != client.client_id or code.expires_at < time.time():
        raise OAuthError("invalid_grant", "unknown or expired code")
    if code.used:
        # A replayed code revokes what it issued (RFC 6749 section 4.1.2).
        idp.end_session(code.login.sid)
        raise OAuthError("invalid_grant", "code already used")
    code.used = True  # spent by any attempt, so a verifier cannot be guessed at
    if form.get("redirect_uri") != code.redirect_uri:
        raise OAuthError("invalid_grant", "redirect_uri differs from the authorization request's")
    verifier = form.get("code_verifier", "")
    challenge = b64url(hashlib.sha256(verifier.encode()).digest())
    if not PKCE_VERIFIER.fullmatch(verifier) or not hmac.compare_digest(challenge, code.challenge):
        raise OAuthError("invalid_grant", "PKCE verification failed")
    return code.login


def refresh(idp: IdP, client: Client, token: str) -> Login:
    grant = idp.grants.get(token)
    if grant is not None and grant.login is not None and grant.rotated and idp.reused_refresh_ends_session:
        idp.end_session(grant.login.sid)
    if grant is None or grant.login is None or idp.inspect(token) is None:
        raise OAuthError("invalid_grant", "unknown, expired or revoked refresh token")
    if grant.login.client.client_id != client.client_id:
        raise OAuthError("invalid_grant", "refresh token issued to another client")
    grant.revoked = grant.rotated = True  # rotation: each refresh token works once
    idp.refreshes[grant.login.sid] += 1
    return grant.login


def issue(
    idp: IdP, client: Client, user: User, scope: str, login: Login | None, *, opaque: bool
) -> dict[str, Any]:
    claims = idp.claims_for(
        user, aud=client.audience, scope=scope, azp=client.client_id, expires_in=idp.token_lifetime
    )
    if login is None:
        # Service-account tokens name their client, as Keycloak's do.
        claims["client_id"] = client.client_id
    else:
        claims["sid"] = login.sid
    access = idp.store(Grant(claims)) if opaque else idp.sign(claims, client.alg)
    answer: dict[str, Any] = {
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": idp.token_lifetime,
        "scope": scope,
    }
    if login is not None:
        refresh_claims = {**claims, "typ": "Refresh", "aud": idp.issuer, "jti": str(uuid.uuid4())}
        refresh_claims["exp"] = refresh_claims["iat"] + idp.refresh_lifetime
        answer["refresh_token"] = idp.store(Grant(refresh_claims, login))
        answer["refresh_expires_in"] = idp.refresh_lifetime
        if "openid" in scope.split():
            answer["id_token"] = id_token(idp, login, access)
    return answer


def id_token(idp: IdP, login: Login, access_token: str) -> str:
    now = int(time.time())
    alg = login.client.alg
    digest = hashlib.sha512 if alg == "EdDSA" else getattr(hashlib, f"sha{alg[-3:]}")
    claims = {
        "iss": idp.issuer,
        "sub": login.user.sub,
        "aud": login.client.client_id,
        "exp": now + idp.token_lifetime,
        "iat": now,
        "auth_time": login.auth_time,
        "nonce": login.nonce,
        "azp": login.client.client_id,
        "sid": login.sid,
        "at_hash": b64url(digest(access_token.encode()).digest()[: digest().digest_size // 2]),
        "typ": "ID",
        "email": login.user.email,
        "preferred_username": login.user.username,
    }
    return idp.sign({name: value for name, value in claims.items() if value is not None}, alg)


def authenticate(
    idp: IdP,
    form: Mapping[str, str],
    authorization: str | None,
    *,
    allow_public: bool,
    methods: Sequence[str] = ("client_secret_basic", "client_secret_post"),
) -> Client:
    """client_secret_basic or client_secret_post (exactly one, among `methods`); public clients only
    where allowed."""
    basic = basic_credentials(authorization)
    if basic is not None and "client_secret" in form:
        raise OAuthError("invalid_request", "more than one client authentication method")
    used = "client_secret_basic" if basic is not None else "client_secret_post"
    if (basic is not None or "client_secret" in form) and used not in methods:
        raise OAuthError("invalid_client", f"{used} is not accepted here", 401)
    client_id, secret = basic if basic is not None else (form.get("client_id"), form.get("client_secret"))
    client = idp.clients.get(client_id or "")
    if client is None:
        raise OAuthError("invalid_client", "unknown client", 401)
    if client.secret is None:
        if secret is not None or not allow_public:
            raise OAuthError("invalid_client", "public clients cannot authenticate here", 401)
        return client
    if secret is None or not hmac.compare_digest(secret.encode(), client.secret.encode()):
        raise OAuthError("invalid_client", "bad client credentials", 401)
    return client


def introspect(idp: IdP, form: Mapping[str, str], authorization: str | None) -> dict[str, Any]:
    authenticate(idp, form, authorization, allow_public=False, methods=idp.introspection_auth_methods)
    if not form.get("token"):
        raise OAuthError("invalid_request", "token is required")
    claims = idp.inspect(form["token"])
    if claims is None:
        return {"active": False}
    return {
        "active": True,
        **claims,
        "client_id": claims.get("client_id", claims.get("azp")),
        "username": claims.get("preferred_username"),
        "token_type": claims.get("typ", "Bearer"),
    }


def revoke_request(idp: IdP, form: Mapping[str, str], authorization: str | None) -> None:
    authenticate(idp, form, authorization, allow_public=False)
    idp.revoke(form.get("token", ""))


def userinfo(idp: IdP, authorization: str | None) -> dict[str, Any]:
    scheme, _, token = (authorization or "").partition(" ")
    claims = idp.inspect(token.strip()) if scheme.lower() == "bearer" else None
    if claims is None or claims.get("typ") != "Bearer":
        raise OAuthError("invalid_token", "the access token is not active", 401)
    names = ("sub", "email", "preferred_username", "groups", "realm_access")
    return {name: claims[name] for name in names if name in claims}


def logout(idp: IdP, params: Mapping[str, str]) -> tuple[str | None, str | None]:
    """RP-initiated logout: end the session id_token_hint names. The URL to send the browser back to,
    if one was asked for (only one the hinted or named client registered), and the sid that ended."""
    hint = params.get("id_token_hint")
    claims = idp.verify(hint) if hint else None  # an expired ID token is still a fine hint
    if hint and (claims is None or claims.get("typ") != "ID"):
        raise OAuthError("invalid_request", "id_token_hint is not an ID token of this provider")
    hinted = str(claims["aud"]) if claims else None
    if hinted and params.get("client_id", hinted) != hinted:
        raise OAuthError("invalid_request", "client_id is not the id_token_hint's audience")
    redirect = params.get("post_logout_redirect_uri")
    client = idp.clients.get(hinted or params.get("client_id", ""))
    if redirect is not None and (client is None or not client.allows_post_logout_redirect(redirect)):
        # Checked before anything ends: a refused request changes nothing.
        raise OAuthError("invalid_request", "post_logout_redirect_uri is not registered")
    sid = claims.get("sid") if claims else None
    if isinstance(sid, str):
        idp.end_session(sid)
    else:
        sid = None
    if redirect is None:
        return None, sid
    return with_query(redirect, {"state": params["state"]} if "state" in params else {}), sid


def with_query(url: str, params: Mapping[str, str]) -> str:
    parts = urlsplit(url)
    query = "&".join(part for part in (parts.query, urlencode(params)) if part)
    return urlunsplit(parts._replace(query=query))


def basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    """(client_id, secret) from HTTP Basic, form-decoded as RFC 6749 section 2.3.1 requires."""
    scheme, _, encoded = (authorization or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise OAuthError("invalid_client", "malformed Basic credentials", 401) from None
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        raise OAuthError("invalid_client", "malformed Basic credentials", 401)
    return unquote_plus(client_id), unquote_plus(secret)
