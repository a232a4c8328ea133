"""Browser sign-in for the DEVELOPMENT issuer (authcar/devissuer.py) of `authcar demo`. Never use it
for anything real: its sign-in page has no passwords, choosing a demo user IS signing in as them.

What it does keep to, so that the demo shows the real protocol: the authorization code flow with
PKCE S256 only (`plain` and a missing challenge are refused), redirect URIs and post-logout URIs
compared exactly against the registered ones (an unregistered one gets an error page, never a
redirect), codes used once and only within CODE_LIFETIME seconds (a reused code also ends the
refresh tokens it gave), refresh tokens rotated on every use, and every table bounded: at most
MAX_CODES codes and MAX_GRANTS refresh tokens, the oldest forgotten first.

This module holds the rules and the pages; devissuer.py serves them over HTTP.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from html import escape
from typing import Generic, TypeVar
from urllib.parse import urlencode, urlsplit, urlunsplit

CODE_LIFETIME = 60.0  # seconds from the sign-in page to the token request: a browser takes milliseconds
REFRESH_LIFETIME = 8 * 3600.0  # seconds a refresh token lasts unless it is used (and replaced) first
MAX_CODES = 256  # codes remembered at once (issued and not yet expired, used ones included)
MAX_GRANTS = 1024  # refresh tokens remembered at once
MAX_PARAMETER = 512  # characters of a state or nonce
CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")  # BASE64URL(SHA-256(verifier)), RFC 7636 section 4.2
VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")  # RFC 7636 section 4.1
PRINTABLE = re.compile(r"[\x20-\x7e]*")
LOGIN_SCOPES = ("openid", "profile", "email")
USER_FIELD = "user"
CANCEL_FIELD = "cancel"

V = TypeVar("V")


@dataclass(frozen=True)
class LoginClient:
    """A relying party allowed to sign people in (the demo's sidecar): exact redirect URIs only."""

    client_id: str
    secret: str
    redirect_uris: tuple[str, ...]
    post_logout_redirect_uris: tuple[str, ...] = ()

    def authenticates(self, secret: str | None) -> bool:
        return secret is not None and hmac.compare_digest(secret.encode(), self.secret.encode())


@dataclass(frozen=True)
class Person:
    """A demo user on the sign-in page: who they are and the one role their tokens carry."""

    subject: str
    role: str


@dataclass
class Code:
    client_id: str
    redirect_uri: str
    challenge: str
    subject: str
    scope: str
    nonce: str | None
    sid: str
    auth_time: int
    used: bool = False


@dataclass(frozen=True)
class RefreshGrant:
    client_id: str
    subject: str
    scope: str
    sid: str
    auth_time: int


class Refused(Exception):
    """An OAuth error (RFC 6749 section 5.2 / 4.1.2.1): `error` is the code, `description` for people."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status


class NotRedirectable(Exception):
    """An authorization request whose client or redirect URI is not registered: answered with a page,
    never sent anywhere (RFC 6749 section 4.1.2.1)."""


@dataclass
class Expiring(Generic[V]):
    """At most `limit` entries, each until its own deadline; when full, the oldest goes first."""

    limit: int
    clock: Callable[[], float] = time.monotonic
    entries: OrderedDict[str, tuple[float, V]] = field(default_factory=OrderedDict)

    def put(self, key: str, value: V, lifetime: float) -> None:
        self.prune()
        while len(self.entries) >= self.limit:
            self.entries.popitem(last=False)
        self.entries[key] = (self.clock() + lifetime, value)

    def get(self, key: str) -> V | None:
        entry = self.entries.get(key)
        if entry is None or entry[0] <= self.clock():
            return None
        return entry[1]

    def pop(self, key: str) -> V | None:
        value = self.get(key)
        self.entries.pop(key, None)
        return value

    def drop(self, keep: Callable[[V], bool]) -> None:
        for key in [key for key, (_, value) in self.entries.items() if not keep(value)]:
            del self.entries[key]

    def prune(self) -> None:
        now = self.clock()
        for key in [key for key, (deadline, _) in self.entries.items() if deadline <= now]:
            del self.entries[key]

    def __len__(self) -> int:
        self.prune()
        return len(self.entries)


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


def single(params: Mapping[str, list[str]]) -> dict[str, str]:
    """Each parameter once (RFC 6749 section 3.1: parameters must not be repeated)."""
    repeated = sorted(name for name, values in params.items() if len(values) > 1)
    if repeated:
        raise Refused("invalid_request", f"repeated parameter: {repeated[0]}")
    return {name: values[0] for name, values in params.items()}


@dataclass(frozen=True)
class AuthorizationRequest:
    client: LoginClient
    redirect_uri: str
    state: str | None
    scope: str
    nonce: str | None
    challenge: str

    def hidden_fields(self) -> dict[str, str]:
        """What the sign-in page posts back (the browser's to change: checked again on the post)."""
        fields = {
            "response_type": "code",
            "client_id": self.client.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": self.scope,
            "code_challenge": self.challenge,
            "code_challenge_method": "S256",
        }
        if self.state is not None:
            fields["state"] = self.state
        if self.nonce is not None:
            fields["nonce"] = self.nonce
        return fields


def registered_client(clients: Mapping[str, LoginClient], params: Mapping[str, str]) -> LoginClient:
    """The request's client, if its redirect_uri is one it registered; else NotRedirectable."""
    client = clients.get(params.get("client_id", ""))
    if client is None:
        raise NotRedirectable("unknown client_id")
    if params.get("redirect_uri") not in client.redirect_uris:
        raise NotRedirectable("redirect_uri is not registered for this client")
    return client


def check_authorization(
    clients: Mapping[str, LoginClient], params: Mapping[str, str]
) -> AuthorizationRequest:
    """An authorization request as the rules allow it; Refused (to be sent to the redirect URI with the
    state) or NotRedirectable (an error page) otherwise."""
    client = registered_client(clients, params)
    if params.get("response_type") != "code":
        raise Refused("unsupported_response_type", "only response_type=code is supported")
    scopes = params.get("scope", "").split()
    if "openid" not in scopes:
        raise Refused("invalid_scope", "scope must include openid")
    if unknown := [scope for scope in scopes if scope not in LOGIN_SCOPES]:
        raise Refused("invalid_scope", f"unknown scope: {unknown[0][:64]}")
    if params.get("code_challenge_method") != "S256":
        # RFC 7636 section 4.3: no method means plain, which protects nothing; S256 is required.
        raise Refused("invalid_request", "PKCE with code_challenge_method=S256 is required")
    challenge = params.get("code_challenge", "")
    if not CHALLENGE.fullmatch(challenge):
        raise Refused("invalid_request", "code_challenge must be 43 base64url characters (S256)")
    for name in ("state", "nonce"):
        value = params.get(name)
        if value is not None and (len(value) > MAX_PARAMETER or not PRINTABLE.fullmatch(value)):
            raise Refused("invalid_request", f"{name} is too long or not printable ASCII")
    return AuthorizationRequest(
        client=client,
        redirect_uri=params["redirect_uri"],
        state=params.get("state"),
        scope=" ".join(dict.fromkeys(scopes)),
        nonce=params.get("nonce"),
        challenge=challenge,
    )


def with_query(url: str, params: Mapping[str, str]) -> str:
    parts = urlsplit(url)
    query = "&".join(part for part in (parts.query, urlencode(params)) if part)
    return urlunsplit(parts._replace(query=query))


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass
class SignIns:
    """The issuer's memory of browser sign-ins: codes waiting for their token request, refresh
    tokens, and the sessions (sid) they belong to. Bounded and short-lived, in memory, per run."""

    clock: Callable[[], float] = time.monotonic
    codes: Expiring[Code] = field(init=False)
    grants: Expiring[RefreshGrant] = field(init=False)

    def __post_init__(self) -> None:
        self.codes = Expiring(MAX_CODES, self.clock)
        self.grants = Expiring(MAX_GRANTS, self.clock)

    def issue_code(self, request: AuthorizationRequest, person: Person) -> str:
        code = secrets.token_urlsafe(32)
        self.codes.put(
            code,
            Code(
                client_id=request.client.client_id,
                redirect_uri=request.redirect_uri,
                challenge=request.challenge,
                subject=person.subject,
                scope=request.scope,
                nonce=request.nonce,
                sid=secrets.token_urlsafe(16),
                auth_time=int(time.time()),
            ),
            CODE_LIFETIME,
        )
        return code

    def redeem(self, client: LoginClient, form: Mapping[str, str]) -> Code:
        """The code of an authorization_code token request, checked and used up."""
        code = self.codes.get(form.get("code", ""))
        if code is None:
            raise Refused("invalid_grant", "unknown or expired code")
        if code.used:
            # RFC 6749 section 4.1.2: a code used twice was stolen; what it gave ends too.
            self.end_session(code.sid)
            raise Refused("invalid_grant", "the code was already used")
        if code.client_id != client.client_id:
            raise Refused("invalid_grant", "the code was issued to another client")
        if form.get("redirect_uri") != code.redirect_uri:
            raise Refused("invalid_grant", "redirect_uri is not the one of the authorization request")
        verifier = form.get("code_verifier", "")
        if not VERIFIER.fullmatch(verifier) or not hmac.compare_digest(s256(verifier), code.challenge):
            raise Refused("invalid_grant", "code_verifier does not match the code_challenge")
        code.used = True
        return code

    def issue_refresh_token(self, grant: RefreshGrant) -> str:
        token = secrets.token_urlsafe(32)
        self.grants.put(token, grant, REFRESH_LIFETIME)
        return token

    def rotate(self, client: LoginClient, token: str) -> RefreshGrant:
        """The grant of a refresh token, which is used up (the answer carries its replacement)."""
        grant = self.grants.get(token)
        if grant is None or grant.client_id != client.client_id:
            raise Refused("invalid_grant", "unknown, expired or used refresh token")
        self.grants.pop(token)
        return grant

    def end_session(self, sid: str) -> None:
        self.grants.drop(lambda grant: grant.sid != sid)


# -- pages: self-contained (no scripts, no external assets), under a CSP that allows only their style

STYLE = (
    ":root{color-scheme:light dark;--fg:#1a1a1a;--bg:#fff;--muted:#555;--accent:#0b57d0;--on:#fff}"
    "@media (prefers-color-scheme:dark){:root{--fg:#eee;--bg:#161616;--muted:#bbb;--accent:#a8c7fa;"
    "--on:#0b1d3a}}"
    "body{margin:0;font:1rem/1.5 system-ui,sans-serif;color:var(--fg);background:var(--bg)}"
    "main{max-width:32rem;margin:3rem auto;padding:0 1.25rem}h1{font-size:1.5rem;margin:0 0 .5rem}"
    ".warn{border-left:4px solid #b3261e;padding:.25rem .75rem}ul{list-style:none;padding:0}"
    "li{margin:.5rem 0}button{font:inherit;padding:.5rem 1rem;border-radius:.375rem;cursor:pointer}"
    "li button{width:100%;text-align:left;color:var(--on);background:var(--accent);border:0}"
    "button:focus-visible{outline:3px solid var(--fg);outline-offset:2px}"
    ".role{color:var(--muted)}li button .role{color:inherit;opacity:.85}"
)
STYLE_HASH = "sha256-" + base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()


def page_headers(form_targets: Iterable[str] = ()) -> dict[str, str]:
    """`form_targets`: origins a form on the page may end up at (CSP form-action also covers where
    the form's answer redirects: the client's callback)."""
    form_action = " ".join(["'self'", *form_targets])
    return {
        "Content-Type": "text/html; charset=utf-8",
        "Cache-Control": "no-store",
        "Content-Security-Policy": (
            f"default-src 'none'; style-src '{STYLE_HASH}'; form-action {form_action};"
            " frame-ancestors 'none'; base-uri 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
    }


def document(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>"
        f"<body><main><h1>{escape(title)}</h1>{body}</main></body></html>"
    )


def sign_in_page(action: str, request: AuthorizationRequest, people: Iterable[Person]) -> str:
    hidden = "".join(
        f'<input type="hidden" name="{escape(name)}" value="{escape(value)}">'
        for name, value in request.hidden_fields().items()
    )
    buttons = "".join(
        f'<li><button type="submit" name="{USER_FIELD}" value="{escape(person.subject)}"'
        f' data-user="{escape(person.subject)}">Sign in as {escape(person.subject)}'
        f' <span class="role">({escape(person.role)})</span></button></li>'
        for person in people
    )
    body = (
        '<p class="warn"><strong>Development issuer of authcar demo.</strong> There are no passwords:'
        " choosing a user signs you in as them. Never use it for anything real.</p>"
        f"<p>{escape(request.client.client_id)} asks who you are. Choose a demo user:</p>"
        f'<form method="post" action="{escape(action)}">{hidden}'
        f'<ul aria-label="Demo users">{buttons}</ul>'
        f'<button type="submit" name="{CANCEL_FIELD}" value="1" id="cancel">Cancel</button></form>'
    )
    return document("Sign in to the authcar demo", body)


def message_page(title: str, message: str) -> str:
    return document(title, f"<p>{escape(message)}</p>")
