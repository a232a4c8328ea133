"""The test identity provider's state, Keycloak-shaped; oauth.py decides requests, app.py serves them.

One `IdP` object holds everything: keys, clients, the user the login page signs in, issued codes and
opaque tokens, revocations, counters and the failure mode. Tests drive it directly in-process, or
through its admin endpoints (client.py) when it runs as its own process.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, get_args

import jwt
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from tests.idp.backchannel import deliver_logout_token
from tests.idp.keys import HMAC_HASHES, KeyFormat, KeyRing, hmac_jws, sign_jws, unsigned_jws

Mode = Literal["normal", "down", "slow", "garbage", "reset", "huge", "nested"]  # faults.py: the last two
MODES: tuple[str, ...] = get_args(Mode)
# Endpoint name -> path under the issuer (Keycloak's layout). Names are what counters and modes use.
ENDPOINTS: Mapping[str, str] = MappingProxyType(
    {
        "discovery": "/.well-known/openid-configuration",
        "jwks": "/protocol/openid-connect/certs",
        "auth": "/protocol/openid-connect/auth",
        "token": "/protocol/openid-connect/token",
        "introspect": "/protocol/openid-connect/token/introspect",
        "revoke": "/protocol/openid-connect/revoke",
        "userinfo": "/protocol/openid-connect/userinfo",
        "logout": "/protocol/openid-connect/logout",
    }
)
CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]


@dataclass
class Client:
    client_id: str
    secret: str | None  # None: a public client, identified by client_id and protected by PKCE only
    opaque: bool = False  # its access tokens are opaque (introspection only) unless it asks format=jwt
    redirect_uris: tuple[str, ...] = ("http://127.0.0.1:*", "http://localhost:*")  # see registered()
    audience: str = "api"
    scope: str = "read"  # granted to client_credentials requests that name none
    roles: tuple[str, ...] = ()  # realm roles of its service account
    alg: str = "RS256"  # signs its access and ID tokens
    # Where RP-initiated logout may send the browser back to; None: wherever a login may (redirect_uris).
    post_logout_redirect_uris: tuple[str, ...] | None = None
    backchannel_logout_uri: str | None = None  # OIDC Back-Channel Logout 1.0: where logout tokens go

    def allows_redirect(self, uri: str) -> bool:
        return registered(uri, self.redirect_uris)

    def allows_post_logout_redirect(self, uri: str) -> bool:
        known = (
            self.redirect_uris if self.post_logout_redirect_uris is None else self.post_logout_redirect_uris
        )
        return registered(uri, known)


def registered(uri: str, known: Iterable[str]) -> bool:
    # Keycloak's rule: exact match, or a prefix match when the registered URI ends in "*".
    return any(uri == entry or (entry.endswith("*") and uri.startswith(entry[:-1])) for entry in known)


@dataclass(frozen=True)
class User:
    sub: str = "alice"
    username: str = "alice"
    email: str | None = "alice@example.com"
    roles: tuple[str, ...] = ("reader",)
    groups: tuple[str, ...] = ()


# Who the sign-in page offers, as in `authcar demo` (authcar/devissuer.py).
DEFAULT_USERS: tuple[User, ...] = (
    User("alice", "alice", "alice@example.com", ("reader",)),
    User("bob", "bob", "bob@example.com", ("editor",)),
    User("carol", "carol", "carol@example.com", ("admin",)),
)
BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"


@dataclass(frozen=True)
class Login:
    """One completed authorization: who signed in to which client, for what, in which session."""

    client: Client
    user: User
    scope: str
    sid: str
    nonce: str | None
    auth_time: int


@dataclass
class Code:
    login: Login
    redirect_uri: str
    challenge: str
    expires_at: float
    used: bool = False


@dataclass
class Grant:
    """What an opaque token stands for: the claims introspection reports; refresh tokens keep their login."""

    claims: dict[str, Any]
    login: Login | None = None
    revoked: bool = False
    rotated: bool = False  # a refresh token that was used (and so replaced)


@dataclass(repr=False)
class IdP:
    """The provider and the handle tests hold. `url` is the origin it listens on."""

    url: str
    issuer_path: str = "/realms/test"
    fresh_keys: bool = False  # generate keys for this provider instead of sharing the process-wide set
    token_lifetime: int = 300
    refresh_lifetime: int = 1800
    delay: float = 1.0  # seconds every answer waits in "slow" mode
    user: User | None = field(default_factory=User)  # who the login page signs in; None refuses logins
    # interactive: the authorization endpoint shows a sign-in page listing `users` (a browser picks one)
    # instead of signing `user` in by itself.
    interactive: bool = False
    # A rotated refresh token used again ends its session (OAuth 2.0 Security BCP 4.14.2), so a relying
    # party that refreshes twice with one token, say from two replicas at once, loses the session.
    reused_refresh_ends_session: bool = False
    # RP-initiated logout also sends a back-channel logout to the client, as Keycloak does.
    backchannel_on_logout: bool = False
    refreshes: Counter[str] = field(default_factory=Counter)  # successful refresh grants, by sid
    users: dict[str, User] = field(default_factory=lambda: {user.sub: user for user in DEFAULT_USERS})
    clients: dict[str, Client] = field(default_factory=dict)
    discovery_overrides: dict[str, Any] = field(default_factory=dict)  # to serve a lying discovery document
    # Endpoint name -> the exact bytes it answers (200, labelled JSON) instead of its real answer.
    raw_answers: dict[str, bytes] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)  # requests per endpoint name, in every mode
    in_flight: Counter[str] = field(default_factory=Counter)  # requests being answered now, per endpoint
    peak_in_flight: Counter[str] = field(default_factory=Counter)  # most ever answered at once, per endpoint
    # What discovery advertises for introspection, and all the introspection endpoint accepts.
    introspection_auth_methods: list[str] = field(default_factory=lambda: list(CLIENT_AUTH_METHODS))
    codes: dict[str, Code] = field(default_factory=dict)
    grants: dict[str, Grant] = field(default_factory=dict)  # opaque access tokens and refresh tokens
    revoked_jtis: set[str] = field(default_factory=set)
    ended_sessions: set[str] = field(default_factory=set)
    logins: dict[str, Login] = field(default_factory=dict)  # by sid: every session the provider started
    # What back-channel logout deliveries answered: (uri, HTTP status or None when unreachable).
    backchannel_deliveries: list[tuple[str, int | None]] = field(default_factory=list)
    mode_endpoints: frozenset[str] = frozenset(ENDPOINTS)
    _mode: Mode = field(default="normal", init=False)
    ring: KeyRing = field(init=False)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        self.issuer_path = self.issuer_path.rstrip("/")
        self.ring = KeyRing(fresh=self.fresh_keys)
        self.register_client("authcar", "authcar-secret")

    # -- where things are

    @property
    def issuer(self) -> str:
        return self.url + self.issuer_path

    def endpoint(self, name: str) -> str:
        return self.issuer + ENDPOINTS[name]

    @property
    def jwks_uri(self) -> str:
        return self.endpoint("jwks")

    @property
    def token_endpoint(self) -> str:
        return self.endpoint("token")

    @property
    def introspection_endpoint(self) -> str:
        return self.endpoint("introspect")

    @property
    def authorization_endpoint(self) -> str:
        return self.endpoint("auth")

    @property
    def end_session_endpoint(self) -> str:
        return self.endpoint("logout")

    @property
    def userinfo_endpoint(self) -> str:
        return self.endpoint("userinfo")

    def discovery(self) -> dict[str, Any]:
        algs = list(dict.fromkeys(key.alg for key in self.ring.published))
        document = {
            "issuer": self.issuer,
            "authorization_endpoint": self.authorization_endpoint,
            "token_endpoint": self.token_endpoint,
            "introspection_endpoint": self.introspection_endpoint,
            "userinfo_endpoint": self.userinfo_endpoint,
            "end_session_endpoint": self.end_session_endpoint,
            "revocation_endpoint": self.endpoint("revoke"),
            "jwks_uri": self.jwks_uri,
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
            "subject_types_supported": ["public"],
            "scopes_supported": ["openid", "profile", "email", "read", "write"],
            "id_token_signing_alg_values_supported": algs,
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
            "introspection_endpoint_auth_methods_supported": list(self.introspection_auth_methods),
            "revocation_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
            "authorization_response_iss_parameter_supported": True,
        }
        return {**document, **self.discovery_overrides}

    # -- test control

    @property
    def mode(self) -> Mode:
        return self._mode

    @mode.setter
    def mode(self, mode: Mode) -> None:
        self.set_mode(mode)

    def set_mode(self, mode: Mode, endpoints: Iterable[str] = (), *, delay: float | None = None) -> None:
        """Fail every endpoint, or only the named ones (keys of ENDPOINTS), in `mode`."""
        names = frozenset(endpoints) or frozenset(ENDPOINTS)
        if mode not in MODES or not names <= ENDPOINTS.keys():
            raise ValueError(f"mode must be one of {MODES} and endpoints among {sorted(ENDPOINTS)}")
        self._mode, self.mode_endpoints = mode, names
        if delay is not None:
            self.delay = delay

    def mode_for(self, endpoint: str) -> Mode:
        return self._mode if endpoint in self.mode_endpoints else "normal"

    @property
    def jwks_fetches(self) -> int:
        return self.counts["jwks"]

    @property
    def introspections(self) -> int:
        return self.counts["introspect"]

    @property
    def token_requests(self) -> int:
        return self.counts["token"]

    @property
    def peak_introspections(self) -> int:
        """The most introspection requests the provider was answering at the same time."""
        return self.peak_in_flight["introspect"]

    def reset_counters(self) -> None:
        self.counts.clear()
        self.peak_in_flight.clear()  # not in_flight: requests under way still finish

    def register_client(
        self,
        client_id: str,
        secret: str | None,
        *,
        opaque: bool = False,
        redirect_uris: Sequence[str] | None = None,
        audience: str = "api",
        scope: str = "read",
        roles: Sequence[str] = (),
        alg: str = "RS256",
        post_logout_redirect_uris: Sequence[str] | None = None,
        backchannel_logout_uri: str | None = None,
    ) -> Client:
        client = Client(
            client_id,
            secret,
            opaque,
            audience=audience,
            scope=scope,
            roles=tuple(roles),
            alg=alg,
            backchannel_logout_uri=backchannel_logout_uri,
        )
        if redirect_uris is not None:
            client.redirect_uris = tuple(redirect_uris)
        if post_logout_redirect_uris is not None:
            client.post_logout_redirect_uris = tuple(post_logout_redirect_uris)
        self.clients[client_id] = client
        return client

    def login_as(
        self,
        sub: str | None,
        *,
        username: str | None = None,
        email: str | None = None,
        roles: Sequence[str] = ("reader",),
        groups: Sequence[str] = (),
    ) -> None:
        """The user the authorization endpoint signs in from now on; None makes it answer access_denied."""
        self.user = None if sub is None else User(sub, username or sub, email, tuple(roles), tuple(groups))

    def describe(self) -> dict[str, Any]:
        """Where everything is and the live control state (what IdPClient reads)."""
        names = (
            "issuer",
            "jwks_uri",
            "token_endpoint",
            "introspection_endpoint",
            "authorization_endpoint",
            "end_session_endpoint",
            "userinfo_endpoint",
        )
        return {
            "url": self.url,
            **{name: getattr(self, name) for name in names},
            "mode": self.mode,
            "mode_endpoints": sorted(self.mode_endpoints),
            "delay": self.delay,
            "counts": dict(self.counts),
            "peak_in_flight": dict(self.peak_in_flight),
            "interactive": self.interactive,
            "refreshes": dict(self.refreshes),
            "backchannel_deliveries": [list(delivery) for delivery in self.backchannel_deliveries],
        }

    # -- keys

    @property
    def keys(self) -> dict[str, Any]:
        """The published JWKS (reading it here is not a fetch)."""
        return self.ring.jwks()

    def private_key(self, kid: str) -> PrivateKeyTypes:
        return self.ring.find(kid).private

    def rotate(self, alg: str = "RS256") -> str:
        """Publish a new key for `alg` and return its kid; mint() and grants use it from now on."""
        return self.ring.rotate(alg).kid

    def retire(self, kid: str) -> None:
        self.ring.retire(kid)

    # -- tokens for tests

    def mint(
        self,
        claims: Mapping[str, Any] | None = None,
        *,
        sub: str = "alice",
        aud: str | Sequence[str] | None = "api",
        scope: str = "read",
        roles: Sequence[str] = ("reader",),
        groups: Sequence[str] = (),
        expires_in: int = 300,
        alg: str = "RS256",
        kid: str | None = None,
        headers: Mapping[str, Any] | None = None,
        iss: str | None = None,
        nbf: int | None = None,
        iat: int | None = None,
        unpublished_key: bool = False,
        omit: Iterable[str] = (),
        omit_headers: Iterable[str] = (),
        hmac_key_format: KeyFormat = "pem",
    ) -> str:
        """A JWT as this provider issues them, bent as a test needs.

        `claims` are merged over the defaults and `omit` drops claims; `headers` are merged over the JOSE
        header (alg, typ, kid) and `omit_headers` drops parameters. The signature always uses `alg`,
        whatever the header says. alg "none" signs nothing; HS256/384/512 forge the algorithm-confusion
        attack: the HMAC secret is the public key of the RS256 key (or `kid`) in `hmac_key_format`.
        """
        user = User(sub, sub, f"{sub}@example.com", tuple(roles), tuple(groups))
        body = self.claims_for(user, aud=aud, scope=scope, azp="authcar", expires_in=expires_in)
        body.update(
            {name: value for name, value in (("iss", iss), ("iat", iat), ("nbf", nbf)) if value is not None}
        )
        return self.sign_bent(
            bent(body, claims, omit),
            alg=alg,
            kid=kid,
            headers=headers,
            omit_headers=omit_headers,
            unpublished_key=unpublished_key,
            hmac_key_format=hmac_key_format,
        )

    def sign_bent(
        self,
        body: Mapping[str, Any],
        *,
        alg: str = "RS256",
        typ: str = "JWT",
        kid: str | None = None,
        headers: Mapping[str, Any] | None = None,
        omit_headers: Iterable[str] = (),
        unpublished_key: bool = False,
        hmac_key_format: KeyFormat = "pem",
    ) -> str:
        """`body` signed as mint() describes: `alg` whatever the header says, none and HS* forgeries."""
        key = None
        if alg.lower() != "none":  # HS* tokens carry, and are keyed with, an RSA public key
            key = self.ring.signer(
                "RS256" if alg in HMAC_HASHES else alg, kid=kid, unpublished=unpublished_key
            )
        header: dict[str, Any] = {
            "alg": alg,
            "typ": typ,
            **({"kid": key.kid} if key else {}),
            **(headers or {}),
        }
        for name in omit_headers:
            header.pop(name, None)
        if key is None:
            return unsigned_jws(header, body)
        if alg in HMAC_HASHES:
            return hmac_jws(header, body, key.public_bytes(hmac_key_format), alg)
        return sign_jws(header, body, key, alg)

    def mint_opaque(
        self,
        claims: Mapping[str, Any] | None = None,
        *,
        sub: str = "alice",
        client_id: str = "authcar",
        aud: str | Sequence[str] | None = "api",
        scope: str = "read",
        roles: Sequence[str] = ("reader",),
        groups: Sequence[str] = (),
        expires_in: int = 300,
        active: bool = True,
        omit: Iterable[str] = (),
    ) -> str:
        """An opaque access token; introspection reports the claims mint() would have signed.

        `claims` are merged over the defaults (even `active`, to serve a malformed answer) and `omit`
        drops claims.
        """
        user = User(sub, sub, f"{sub}@example.com", tuple(roles), tuple(groups))
        body = self.claims_for(user, aud=aud, scope=scope, azp=client_id, expires_in=expires_in)
        return self.store(Grant(bent(body, claims, omit), revoked=not active))

    def revoke(self, token: str) -> None:
        """Introspection answers inactive for this token from now on (unknown ones are ignored, RFC 7009)."""
        grant = self.grants.get(token)
        if grant is not None:
            grant.revoked = True
            return
        try:
            jti = jwt.decode(token, options={"verify_signature": False}).get("jti")
        except jwt.PyJWTError:
            return
        if isinstance(jti, str):
            self.revoked_jtis.add(jti)

    def end_session(self, sid: str) -> None:
        self.ended_sessions.add(sid)  # every token carrying this sid turns inactive

    def sessions_of(self, sub: str) -> list[str]:
        """The sids of `sub`'s sessions that have not ended, oldest first."""
        return [
            sid
            for sid, login in self.logins.items()
            if login.user.sub == sub and sid not in self.ended_sessions
        ]

    def logout_token(
        self,
        client_id: str = "authcar",
        *,
        sid: str | None = None,
        sub: str | None = None,
        claims: Mapping[str, Any] | None = None,
        omit: Iterable[str] = (),
        **signing: Any,
    ) -> str:
        """A Back-Channel Logout 1.0 logout token for `client_id`, bent as a test needs.

        `claims` are merged over the well-formed claims and `omit` drops claims (a `nonce`, no `events`,
        an old `iat`, another `aud`...); `signing` takes sign_bent()'s options (alg "none", HS* with the
        public key, an unpublished key, other headers).
        """
        if sid is None and sub is None and "sid" not in (claims or {}) and "sub" not in (claims or {}):
            raise ValueError("a logout token names a sid, a sub or both")
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": self.issuer,
            "aud": client_id,
            "iat": now,
            "exp": now + 120,
            "jti": str(uuid.uuid4()),
            "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
            **({"sid": sid} if sid is not None else {}),
            **({"sub": sub} if sub is not None else {}),
        }
        alg = signing.pop("alg", self.clients[client_id].alg if client_id in self.clients else "RS256")
        signing.setdefault("typ", "logout+jwt")  # section 2.4: explicit typing
        return self.sign_bent(bent(body, claims, omit), alg=alg, **signing)

    async def backchannel_logout(
        self,
        client_id: str = "authcar",
        *,
        sid: str | None = None,
        sub: str | None = None,
        uri: str | None = None,
        logout_token: str | None = None,
        end_session: bool = True,
        **bend: Any,
    ) -> dict[str, Any]:
        """POST a logout token (logout_token(), or the given one) to the client's backchannel_logout_uri
        (or `uri`), as an OP does when a session ends; `end_session` also ends it here (the sid, or
        every session of the sub). The RP's answer: {"status", "body", "logout_token"}."""
        target = uri or self.clients[client_id].backchannel_logout_uri
        if target is None:
            raise ValueError(f"client {client_id!r} has no backchannel_logout_uri")
        token = logout_token or self.logout_token(client_id, sid=sid, sub=sub, **bend)
        if end_session:
            for ended in [sid] if sid is not None else self.sessions_of(sub) if sub is not None else []:
                self.end_session(ended)
        return await deliver_logout_token(self, target, token)

    # -- token building

    def claims_for(
        self, user: User, *, aud: str | Sequence[str] | None, scope: str, azp: str, expires_in: int
    ) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": user.sub,
            "aud": aud if isinstance(aud, str) or aud is None else list(aud),
            "exp": now + expires_in,
            "iat": now,
            "nbf": now,
            "jti": str(uuid.uuid4()),
            "typ": "Bearer",
            "azp": azp,
            "scope": scope,
            "realm_access": {"roles": list(user.roles)},
            "groups": list(user.groups),
            "email": user.email,
            "preferred_username": user.username,
        }
        return {name: value for name, value in claims.items() if value is not None}

    def sign(self, claims: Mapping[str, Any], alg: str) -> str:
        """Signed as the provider signs what it issues: the newest published key for `alg`."""
        key = self.ring.signer(alg)
        return sign_jws({"alg": alg, "typ": "JWT", "kid": key.kid}, claims, key, alg)

    def store(self, grant: Grant) -> str:
        token = secrets.token_urlsafe(32)
        self.grants[token] = grant
        return token

    def verify(self, token: str) -> dict[str, Any] | None:
        """The claims of a JWT signed by a published key of ours for our issuer; times are not checked."""
        try:
            key = self.ring.verifying_key(jwt.get_unverified_header(token).get("kid"))
            if key is None:
                return None
            options: Any = {
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
            }
            claims: dict[str, Any] = jwt.decode(
                token, jwt.PyJWK(key.jwk), algorithms=[key.alg], options=options
            )
        except jwt.PyJWTError:
            return None
        return claims if claims.get("iss") == self.issuer else None

    def inspect(self, token: str) -> dict[str, Any] | None:
        """The claims of a token we issued and still honour (known, unrevoked, in its lifetime), else None."""
        grant = self.grants.get(token)
        claims = (None if grant.revoked else grant.claims) if grant is not None else self.verify(token)
        if (
            claims is None
            or claims.get("jti") in self.revoked_jtis
            or claims.get("sid") in self.ended_sessions
        ):
            return None
        now = time.time()
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if (isinstance(exp, int | float) and exp <= now) or (isinstance(nbf, int | float) and nbf > now):
            return None
        return claims


def bent(body: Mapping[str, Any], claims: Mapping[str, Any] | None, omit: Iterable[str]) -> dict[str, Any]:
    """`body` with `claims` merged over it and the `omit` names dropped."""
    merged = {**body, **(claims or {})}
    for name in omit:
        merged.pop(name, None)
    return merged
