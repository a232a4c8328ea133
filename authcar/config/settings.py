"""The typed settings: what each setting is, its default and its documentation; nothing of where
values come from (loading.py) or whether they make sense together (validation/).

Every field of Settings is a setting: AUTHCAR_<NAME>, `--<name>` and `<name>` in the YAML file.
"""

from __future__ import annotations

import typing
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from authcar.jose import DEFAULT_LEEWAY, MAX_LEEWAY
from authcar.redis_url import DEFAULT_KEY_PREFIX, DEFAULT_TIMEOUT

ENV_PREFIX = "AUTHCAR_"
HOST_PREFIX = "__Host-"  # cookie name prefix browsers hold to Secure, Path=/ and no Domain (RFC 6265bis)
DEFAULT_COOKIE_NAME = HOST_PREFIX + "authcar"

LogFormat = Literal["json", "text"]
LogLevel = Literal["debug", "info", "warning", "error"]
CookieSameSite = Literal["lax", "strict", "none"]


def setting(default: Any, help: str, *, secret: bool = False) -> Any:
    """A settings field with its documentation; `secret` adds the `AUTHCAR_<NAME>_FILE` variant and
    keeps the value out of the repr (a logged or printed Settings never shows a secret)."""
    return field(default=default, repr=not secret, metadata={"help": help, "secret": secret})


@dataclass(frozen=True)
class IssuerSettings:
    """One trusted token issuer. The AUTHCAR_OIDC_* variables describe the first; YAML adds more.

    Fields left out of a YAML issuer (None) take the value of the matching top-level setting, except
    those that only make sense per issuer (audience, key and endpoint locations, client credentials).
    An issuer needs an audience unless it opts out itself with `allow_any_audience`.
    """

    issuer_url: str
    audience: tuple[str, ...] = ()
    allow_any_audience: bool = False
    algorithms: tuple[str, ...] | None = None
    leeway: float | None = None
    jwks_url: str | None = None
    jwks_file: Path | None = None
    introspection_url: str | None = None
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    required_claims: tuple[str, ...] | None = None
    required_scopes: tuple[str, ...] | None = None
    subject_claim: str | None = None
    roles_claim: tuple[str, ...] | None = None

    # Settings fields the inheritable fields fall back to.
    INHERITED: typing.ClassVar[dict[str, str]] = {
        "algorithms": "oidc_algorithms",
        "leeway": "oidc_leeway",
        "required_claims": "oidc_required_claims",
        "required_scopes": "oidc_required_scopes",
        "subject_claim": "subject_claim",
        "roles_claim": "roles_claim",
    }


@dataclass(frozen=True)
class Settings:
    host: str = setting("0.0.0.0", "public listener address (the pod's service port)")
    port: int = setting(4180, "public listener port")
    admin_host: str = setting("0.0.0.0", "admin listener address: probes and metrics")
    admin_port: int = setting(9901, "admin listener port")
    upstream: str = setting("http://127.0.0.1:8080", "the application, on localhost")
    workers: int = setting(1, "server processes")

    tls_cert_file: Path | None = setting(None, "PEM certificate chain for TLS on the public listener")
    tls_key_file: Path | None = setting(None, "PEM private key for TLS")
    tls_client_ca_file: Path | None = setting(None, "require client certificates signed by this CA (mTLS)")

    oidc_issuer_url: str | None = setting(
        None, "issuer; discovery at <issuer>/.well-known/openid-configuration"
    )
    oidc_audience: tuple[str, ...] = setting(
        (), "accepted `aud` values of access tokens (required with an issuer)"
    )
    oidc_allow_any_audience: bool = setting(
        False,
        "run the AUTHCAR_OIDC_* issuer without an audience: it then accepts tokens minted for any"
        " client of the provider (YAML issuers: `allow_any_audience` each); check-config warns",
    )
    oidc_client_id: str | None = setting(None, "client id, for token introspection and browser login")
    oidc_client_secret: str | None = setting(
        None, "client secret (or AUTHCAR_OIDC_CLIENT_SECRET_FILE)", secret=True
    )
    oidc_jwks_url: str | None = setting(None, "JWKS location (default: from discovery)")
    oidc_jwks_file: Path | None = setting(None, "static JWKS file instead of fetching keys (air-gapped)")
    oidc_algorithms: tuple[str, ...] = setting(
        ("RS256", "ES256", "PS256", "EdDSA"), "accepted token signature algorithms (asymmetric only)"
    )
    oidc_leeway: float = setting(
        DEFAULT_LEEWAY, f"seconds of clock skew tolerated on exp, nbf and iat (at most {MAX_LEEWAY:g})"
    )
    oidc_jwks_refresh_interval: float = setting(300.0, "seconds between JWKS refreshes")
    oidc_jwks_cooldown: float = setting(
        30.0, "seconds before a token with an unknown key id may trigger another JWKS fetch"
    )
    oidc_introspection_url: str | None = setting(
        None, "RFC 7662 endpoint for opaque tokens (default: from discovery; needs the client id and secret)"
    )
    oidc_required_claims: tuple[str, ...] = setting(
        ("exp", "iat"), "claims every JWT access token must carry (the subject claim is always required)"
    )
    oidc_required_scopes: tuple[str, ...] = setting(
        (), "scopes every token must carry; 403 insufficient_scope otherwise"
    )
    subject_claim: str = setting(
        "sub", "claim (dotted path) that names the subject (opaque tokens without it: client_id)"
    )
    roles_claim: tuple[str, ...] = setting(
        ("groups", "roles", "realm_access.roles"), "claims (dotted paths) whose values become roles"
    )
    issuers: tuple[IssuerSettings, ...] = setting(
        (), "further issuers, each a mapping of issuer settings (YAML list; see docs/authentication.md)"
    )
    max_token_bytes: int = setting(16384, "largest bearer token accepted; 401 above")
    introspection_cache_ttl: float = setting(
        300.0, "seconds an active introspection result is reused (never past the token's exp)"
    )
    introspection_negative_ttl: float = setting(
        10.0, "seconds an inactive token's answer is reused, so a flood of one bad token costs one call"
    )
    introspection_max_concurrency: int = setting(16, "most introspection calls in flight at once")
    token_cookie: str | None = setting(None, "name of a cookie that may carry the bearer token")
    allow_query_token: bool = setting(
        False, "accept tokens in the `access_token` query parameter (RFC 6750 2.3; leaks into logs)"
    )
    public_paths: tuple[str, ...] = setting(
        (), "paths served without authentication, e.g. `GET /healthz,/docs/*` (normalised path only)"
    )
    public_cors_preflight: bool = setting(
        False, "let CORS preflight requests (OPTIONS with Origin and Access-Control-Request-Method) through"
    )
    tls_client_cert_identity: bool = setting(
        False, "a verified client certificate (mTLS) without a token identifies the caller (URI SAN, else CN)"
    )
    tls_forward_client_cert: bool = setting(
        False,
        "send the verified client certificate (mTLS) to the application as RFC 9440 Client-Cert;"
        " client-sent certificate headers are always removed",
    )

    # Browser login (CONTRACT "Browser login", authcar/login/), checked by validation/login.py.
    login: bool = setting(
        False,
        "browser login (OIDC code + PKCE): page loads without a token are sent to sign in at the issuer"
        " with client credentials; API calls still get 401",
    )
    oidc_redirect_url: str | None = setting(
        None,
        "(browser login) the callback URL registered at the provider, e.g. https://app.example/oauth2/callback",
    )
    oidc_scopes: str = setting("openid profile email", "(browser login) scopes asked for, space-separated")
    cookie_secret: str | None = setting(
        None,
        "(browser login) at least 32 random bytes that sign the login-state cookie",
        secret=True,
    )
    cookie_name: str = setting(
        DEFAULT_COOKIE_NAME,
        "(browser login) the session cookie's name (without Secure the default loses `__Host-`)",
    )
    cookie_secure: bool = setting(
        True, "(browser login) Secure cookies; `false` only for plain-HTTP development"
    )
    cookie_samesite: CookieSameSite = setting(
        "lax", "(browser login) the cookies' SameSite (lax, strict or none)"
    )
    session_idle_timeout: int = setting(3600, "(browser login) seconds an unused session lasts")
    session_max_age: int = setting(86400, "(browser login) seconds any session lasts")
    allowed_redirect_hosts: tuple[str, ...] = setting(
        (),
        "(browser login) hosts (`host` or `host:port`) a return-to or post-logout target"
        " may name besides ours",
    )
    post_logout_redirect_url: str | None = setting(
        None, "(browser login) where the provider sends the browser after RP-initiated logout"
    )
    pass_access_token: bool = setting(
        False,
        "(browser login) give a session's access token to the app as X-Auth-Request-Access-Token",
    )

    policy_dir: Path = setting(
        Path("policies"),
        "directory with model.conf and policy.csv (a mounted ConfigMap); watched and reloaded",
    )
    policy_role_prefix: str = setting(
        "role:", "prefix the caller's roles carry in Casbin, so no subject can be mistaken for a role"
    )
    dry_run: bool = setting(False, "evaluate and log decisions, but let denied requests through")
    dry_run_paths: tuple[str, ...] = setting(
        (), "paths (public-path syntax) where a denial is only logged: shadow rules for part of a service"
    )
    claim_headers: tuple[str, ...] = setting(
        ("X-Auth-Request-Email=email", "X-Auth-Request-Preferred-Username=preferred_username"),
        "identity headers set from claims, `Header=claim.path`; client-sent copies are always removed",
    )
    forward_authorization: bool = setting(
        True, "pass the client's Authorization header on to the application"
    )
    assertion_key_file: Path | None = setting(
        None, "PEM EC P-256 private key that signs X-Auth-Request-Jwt (default: a new key at start)"
    )
    assertion_lifetime: float = setting(60.0, "seconds an X-Auth-Request-Jwt stays valid")
    assertion_audience: str = setting("upstream", "`aud` of X-Auth-Request-Jwt, checked by the application")

    allow_anonymous: bool = setting(
        False, "forward requests without authentication (development only; the default is deny)"
    )
    trusted_proxies: tuple[str, ...] = setting(
        (), "networks (CIDR) whose X-Forwarded-* headers are trusted, e.g. an ingress controller's pod range"
    )
    reserved_prefix: str = setting(
        "/oauth2/",
        "path prefix served by the sidecar itself (login endpoints, forward-auth; other paths JSON 404)",
    )
    pass_host_header: bool = setting(True, "forward the client's Host header (else the upstream's host)")

    max_header_bytes: int = setting(
        32768, "largest request head (request line and headers) accepted; 431 above"
    )
    max_header_count: int = setting(100, "most request header fields accepted; 431 above")
    max_body_bytes: int = setting(
        104857600, "largest request body accepted, in bytes; 413 above; 0 = no limit"
    )

    upstream_connect_timeout: float = setting(5.0, "seconds to connect to the upstream; 502 after")
    upstream_read_timeout: float = setting(
        60.0, "seconds the upstream may stay silent while answering; 504 after"
    )
    upstream_max_connections: int = setting(512, "size of the keep-alive connection pool to the upstream")
    upstream_keepalive_timeout: float = setting(
        15.0, "seconds an idle pooled upstream connection is kept (keep it below the app's own idle timeout)"
    )
    upstream_max_header_bytes: int = setting(
        65536, "largest response head (status line and headers) accepted from the application; 502 above"
    )
    keepalive_timeout: float = setting(75.0, "seconds an idle client connection is kept open")
    request_header_timeout: float = setting(
        10.0,
        "seconds for a whole request head to arrive, from the connection's start or a kept-alive"
        " request's first byte; 408 (or a silent close if nothing came) after",
    )
    request_body_timeout: float = setting(
        20.0, "longest silence, in seconds, while a request body arrives; 408 (or a close) after"
    )
    request_body_min_rate: int = setting(
        500,
        "bytes/s a request body must average once AUTHCAR_REQUEST_BODY_TIMEOUT has passed (each"
        " received byte adds 1/rate s to its allowance, as in mod_reqtimeout); 0 = no minimum",
    )
    response_send_timeout: float = setting(
        60.0, "longest time a client may leave its response unread (nothing it is sent is taken); then closed"
    )
    request_buffer_bytes: int = setting(
        65536, "request bodies up to this size are read whole before an upstream connection is taken"
    )
    max_connections: int = setting(
        # A parked connection holds ~7 KiB, ~39 KiB with a head just under the 32 KiB limit and
        # ~78 KiB with a 64 KiB body being buffered (bench/parked.py): ~80 MiB per worker at most.
        1024,
        "client connections one worker holds at once; more wait in the listen backlog",
    )

    redis_url: str | None = setting(
        None,
        "shared state for every replica: redis://, rediss:// (TLS), redis+sentinel://host:26379/<master>"
        " or redis+cluster://host:6379,...; unset: each worker keeps its state in memory",
    )
    redis_password: str | None = setting(
        None, "Redis password, overriding the URL's (or AUTHCAR_REDIS_PASSWORD_FILE)", secret=True
    )
    redis_ca_file: Path | None = setting(None, "CA bundle for rediss:// (default: the system's CAs)")
    redis_key_prefix: str = setting(
        DEFAULT_KEY_PREFIX, "every key authcar writes in Redis starts with it (then the schema version, v1:)"
    )
    redis_timeout: float = setting(
        DEFAULT_TIMEOUT, "seconds a Redis call may take before it counts as failed (connecting included)"
    )
    revocation_fail_open: bool = setting(
        False,
        "when the revocation list cannot be confirmed for 1 s (the store is unreachable): false answers"
        " 503 revocation_unavailable, true lets tokens through on the last known list (logged, counted)",
    )
    admin_token: str | None = setting(
        None,
        "bearer token for the admin API (/api/v1/revocations) on the admin listener, at least 32"
        " characters (or AUTHCAR_ADMIN_TOKEN_FILE); unset: /api/ is absent (404); probes and metrics"
        " stay open",
        secret=True,
    )

    rate_limit: str | None = setting(
        None,
        "requests per subject (anonymous callers: per client address, IPv6 per /64), shared by every"
        " replica through the store: <count>/<s|m|h>, e.g. 100/s or 6000/m; over it: 429; unset: no limit",
    )
    rate_limit_burst: int | None = setting(
        None, "most requests allowed at once, then they pass at the steady rate (default: the rate's count)"
    )

    shutdown_delay: float = setting(
        0.0, "seconds to keep serving after SIGTERM while /readyz fails, so endpoints drop this pod first"
    )
    shutdown_grace_period: float = setting(
        25.0,
        "seconds in-flight requests get to finish after SIGTERM (keep below terminationGracePeriodSeconds)",
    )

    log_format: LogFormat = setting("json", "json (one object per line) or text")
    log_level: LogLevel = setting("info", "debug, info, warning or error")
    access_log: bool = setting(True, "one line per request on stdout (events go to stderr)")

    config: Path | None = setting(None, "YAML file with settings (lower precedence than env and flags)")

    def configured_issuers(self) -> tuple[IssuerSettings, ...]:
        """The issuers as configured: the AUTHCAR_OIDC_* one first (if set), then the YAML list."""
        if self.oidc_issuer_url is None:
            return self.issuers
        from_env = IssuerSettings(
            issuer_url=self.oidc_issuer_url,
            audience=self.oidc_audience,
            allow_any_audience=self.oidc_allow_any_audience,
            jwks_url=self.oidc_jwks_url,
            jwks_file=self.oidc_jwks_file,
            introspection_url=self.oidc_introspection_url,
            client_id=self.oidc_client_id,
            client_secret=self.oidc_client_secret,
        )
        return (from_env, *self.issuers)

    def session_cookie_name(self) -> str:
        """AUTHCAR_COOKIE_NAME as browsers will accept it: a `__Host-` cookie must be Secure, so without
        AUTHCAR_COOKIE_SECURE the default name drops the prefix (another `__Host-` name is refused)."""
        if not self.cookie_secure and self.cookie_name == DEFAULT_COOKIE_NAME:
            return self.cookie_name.removeprefix(HOST_PREFIX)
        return self.cookie_name

    def login_issuer(self) -> IssuerSettings | None:
        """The issuer browsers sign in at: the first (AUTHCAR_OIDC_* before the YAML list) with
        client credentials, inherited fields filled in."""
        return next((i for i in self.all_issuers() if i.client_id and i.client_secret), None)

    def all_issuers(self) -> tuple[IssuerSettings, ...]:
        """Every trusted issuer with inherited fields filled in from the top-level settings."""
        inherited = {name: getattr(self, top) for name, top in IssuerSettings.INHERITED.items()}
        return tuple(
            replace(issuer, **{k: v for k, v in inherited.items() if getattr(issuer, k) is None})
            for issuer in self.configured_issuers()
        )


def env_name(name: str) -> str:
    """The environment variable of a Settings field."""
    return ENV_PREFIX + name.upper()


def secret_names(schema: type[Settings] = Settings) -> tuple[str, ...]:
    """The fields that also have an AUTHCAR_<NAME>_FILE variant."""
    return tuple(f.name for f in fields(schema) if f.metadata.get("secret"))


def setting_docs(schema: type[Settings] = Settings) -> list[tuple[str, str, str]]:
    """(env name, default, help) for each setting: feeds `--help` and the README table."""
    rows = []
    for f in fields(schema):
        default = "" if f.default is MISSING else f.default
        if isinstance(default, tuple):
            default = ",".join(default)
        shown = (
            "unset"
            if default is None or default == ""
            else str(default).lower()
            if isinstance(default, bool)
            else str(default)
        )
        rows.append((env_name(f.name), shown, f.metadata["help"]))
    return rows
