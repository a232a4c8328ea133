"""Settings: one typed, frozen object from flags > AUTHCAR_* env > YAML (AUTHCAR_CONFIG) > defaults.

Every problem found while loading is collected and reported together, so an operator fixes a broken
ConfigMap in one round instead of one crash-loop per typo.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

import yaml

from authcar.paths import parse_public_path

ENV_PREFIX = "AUTHCAR_"

LogFormat = Literal["json", "text"]
LogLevel = Literal["debug", "info", "warning", "error"]


def setting(default: Any, help: str, *, secret: bool = False) -> Any:
    """A settings field with its documentation; `secret` adds the `AUTHCAR_<NAME>_FILE` variant."""
    return field(default=default, metadata={"help": help, "secret": secret})


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
    oidc_client_id: str | None = setting(
        None, "client id, for token introspection (and browser login, once it lands)"
    )
    oidc_client_secret: str | None = setting(
        None, "client secret (or AUTHCAR_OIDC_CLIENT_SECRET_FILE)", secret=True
    )
    oidc_jwks_url: str | None = setting(None, "JWKS location (default: from discovery)")
    oidc_jwks_file: Path | None = setting(None, "static JWKS file instead of fetching keys (air-gapped)")
    oidc_algorithms: tuple[str, ...] = setting(
        ("RS256", "ES256", "PS256", "EdDSA"), "accepted token signature algorithms (asymmetric only)"
    )
    oidc_leeway: float = setting(30.0, "seconds of clock skew tolerated on exp, nbf and iat (at most 300)")
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
        "/oauth2/", "path prefix served by the sidecar itself (JSON 404 until the login endpoints land)"
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

    def all_issuers(self) -> tuple[IssuerSettings, ...]:
        """Every trusted issuer with inherited fields filled in from the top-level settings."""
        inherited = {name: getattr(self, top) for name, top in IssuerSettings.INHERITED.items()}
        return tuple(
            replace(issuer, **{k: v for k, v in inherited.items() if getattr(issuer, k) is None})
            for issuer in self.configured_issuers()
        )


class ConfigError(Exception):
    """Every problem found in the configuration, reported at once."""

    def __init__(self, problems: list[str], warnings: Sequence[str] = ()) -> None:
        self.problems = problems
        # Found on the way (an unknown, maybe misspelt, variable): most useful exactly when it fails.
        self.warnings = tuple(warnings)
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class LoadedSettings:
    settings: Settings
    warnings: tuple[str, ...]
    sources: Mapping[str, str]  # field name -> "flag" | "env" | "yaml" | "default"


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    schema: type[Settings] = Settings,
) -> LoadedSettings:
    """Resolve settings; raises ConfigError listing every problem."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    warnings: list[str] = []
    hints = typing.get_type_hints(schema)
    known = {f.name: f for f in fields(schema)}

    raw: dict[str, tuple[str, Any]] = {}  # name -> (source, raw value)

    config_path = flags.get("config") or environ.get(env_name("config"))
    if config_path:
        for name, value in read_yaml(Path(config_path), known, problems).items():
            raw[name] = ("yaml", value)

    env_values, env_warnings = read_environ(environ, known)
    warnings.extend(env_warnings)
    for name, value in env_values.items():
        raw[name] = ("env", value)
    for name, value in read_secret_files(environ, known, problems).items():
        raw[name] = ("env", value)
    for name, value in flags.items():
        if name not in known:
            problems.append(f"unknown option --{name.replace('_', '-')}")
            continue
        raw[name] = ("flag", value)

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    unusable: set[str] = set()
    for name in known:
        if name not in raw:
            sources[name] = "default"
            continue
        source, value = raw[name]
        sources[name] = source
        try:
            values[name] = coerce(value, hints[name])
        except ValueError as exc:
            unusable.add(env_name(name))
            origin = {"flag": f"--{name.replace('_', '-')}", "env": env_name(name), "yaml": f"{name} (YAML)"}
            problems.append(f"{origin[source]}: {exc}")

    # Semantic checks run even after type errors (with defaults standing in for unusable values), so
    # one run reports everything; checks about the unusable values themselves would only mislead.
    settings = schema(**values)
    for problem in validate(settings):
        if problem.split(":", 1)[0] not in unusable:
            problems.append(problem)
    if problems:
        raise ConfigError(problems, warnings)
    warnings.extend(validation_warnings(settings))
    return LoadedSettings(settings=settings, warnings=tuple(warnings), sources=sources)


def read_yaml(path: Path, known: Mapping[str, Any], problems: list[str]) -> dict[str, Any]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        problems.append(f"{env_name('config')}: cannot read {path}: {exc.strerror}")
        return {}
    except yaml.YAMLError as exc:
        problems.append(f"{env_name('config')}: {path} is not valid YAML: {exc}")
        return {}
    if document is None:
        return {}
    if not isinstance(document, dict):
        problems.append(f"{env_name('config')}: {path} must hold a mapping of settings")
        return {}
    values: dict[str, Any] = {}
    for key, value in document.items():
        name = str(key).replace("-", "_")
        if name not in known or name == "config":
            problems.append(f"{path}: unknown setting {key!r}")
            continue
        values[name] = value
    return values


def is_service_link(name: str, value: str) -> bool:
    """Kubernetes injects <SERVICE>_PORT=tcp://ip:port and friends for a Service named 'authcar'."""
    if name.startswith(ENV_PREFIX + "SERVICE_") or name.startswith(ENV_PREFIX + "PORT_"):
        return True
    return name == env_name("port") and value.startswith("tcp://")


def read_environ(environ: Mapping[str, str], known: Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
    values: dict[str, str] = {}
    warnings: list[str] = []
    secret_files = {env_name(n) + "_FILE" for n, f in known.items() if f.metadata.get("secret")}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key in secret_files:
            continue
        if is_service_link(key, value):
            if key == env_name("port"):
                warnings.append(
                    f"ignoring {key}={value}: it was injected by a Kubernetes Service named 'authcar'; "
                    "set enableServiceLinks: false in the pod spec"
                )
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name not in known:
            warnings.append(f"ignoring unknown environment variable {key}{suggestion(key, known)}")
            continue
        values[name] = value
    return values, warnings


def suggestion(key: str, known: Mapping[str, Any]) -> str:
    """` (did you mean AUTHCAR_X?)` for a likely misspelling of a setting's variable, else nothing."""
    names = [env_name(n) for n in known] + [
        env_name(n) + "_FILE" for n, f in known.items() if f.metadata.get("secret")
    ]
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.85)
    return f" (did you mean {close[0]}?)" if close else ""


def read_secret_files(
    environ: Mapping[str, str], known: Mapping[str, Any], problems: list[str]
) -> dict[str, str]:
    values: dict[str, str] = {}
    for name, f in known.items():
        if not f.metadata.get("secret"):
            continue
        file_var = env_name(name) + "_FILE"
        if file_var not in environ:
            continue
        if env_name(name) in environ:
            problems.append(f"{env_name(name)} and {file_var} are both set; use one")
            continue
        try:
            # Secrets mounted from Kubernetes often end with a newline the owner never meant.
            values[name] = Path(environ[file_var]).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            problems.append(f"{file_var}: cannot read {environ[file_var]}: {exc.strerror}")
    return values


TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off"}


def coerce(value: Any, hint: Any) -> Any:
    """Turn a raw env/YAML/flag value into the annotated type, or raise ValueError with a reason."""
    origin = get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip() == ""):
            return None
        return coerce(value, inner[0])
    if origin is Literal:
        choices = get_args(hint)
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return text
    if origin is tuple and get_args(hint)[0] is IssuerSettings:
        return coerce_issuers(value)
    if origin is tuple:
        if isinstance(value, str):
            items = [part.strip() for part in value.split(",")]
        elif isinstance(value, list | tuple):
            items = [str(part).strip() for part in value]
        else:
            raise ValueError(f"expected a list, got {value!r}")
        return tuple(item for item in items if item)
    if hint is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in TRUE_WORDS:
            return True
        if text in FALSE_WORDS:
            return False
        raise ValueError(f"{value!r} is not a boolean (true/false)")
    if hint is int:
        if isinstance(value, bool):
            raise ValueError(f"expected a whole number, got {value!r}")
        try:
            return int(str(value).strip())
        except ValueError:
            raise ValueError(f"{value!r} is not a whole number") from None
    if hint is float:
        try:
            return float(str(value).strip())
        except ValueError:
            raise ValueError(f"{value!r} is not a number") from None
    if hint is Path:
        return Path(str(value).strip())
    if hint is str:
        if isinstance(value, dict | list):
            raise ValueError(f"expected text, got {type(value).__name__}")
        return str(value).strip()
    raise ValueError(f"unsupported setting type {hint!r}")  # a bug in the schema, not in the input


def coerce_issuers(value: Any) -> tuple[IssuerSettings, ...]:
    """A list of issuer mappings (YAML, or YAML/JSON text in the environment variable)."""
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ValueError("not a YAML or JSON list of issuer mappings") from None
    if not isinstance(value, list):
        raise ValueError("expected a list of issuer mappings")
    hints = typing.get_type_hints(IssuerSettings)
    known = {f.name for f in fields(IssuerSettings)}
    issuers: list[IssuerSettings] = []
    problems: list[str] = []
    for index, entry in enumerate(value):
        where = f"issuers[{index}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected a mapping with at least issuer_url")
            continue
        values: dict[str, Any] = {}
        for key, raw in entry.items():
            name = str(key).replace("-", "_")
            if name == "client_secret_file":
                try:
                    values["client_secret"] = Path(str(raw)).read_text(encoding="utf-8").rstrip("\r\n")
                except OSError as exc:
                    problems.append(f"{where}.client_secret_file: cannot read {raw}: {exc.strerror}")
                continue
            if name not in known:
                problems.append(f"{where}: unknown issuer setting {key!r}")
                continue
            try:
                values[name] = coerce(raw, hints[name])
            except ValueError as exc:
                problems.append(f"{where}.{name}: {exc}")
        if not values.get("issuer_url"):
            problems.append(f"{where}: issuer_url is required")
            continue
        issuers.append(IssuerSettings(**values))
    if problems:
        raise ValueError("; ".join(problems))
    return tuple(issuers)


def validate(s: Settings) -> list[str]:
    """Cross-field and semantic checks; returns every problem found."""
    problems: list[str] = []
    for name in ("port", "admin_port"):
        port = getattr(s, name)
        if not 0 <= port <= 65535:
            problems.append(f"{env_name(name)}: {port} is not a TCP port (0-65535)")
    if s.port == s.admin_port and s.port != 0 and s.host == s.admin_host:
        problems.append(f"{env_name('port')} and {env_name('admin_port')} are both {s.port}")
    if s.workers < 1:
        problems.append(f"{env_name('workers')}: must be at least 1")

    upstream = urlsplit(s.upstream)
    if upstream.scheme not in ("http", "https") or not upstream.hostname:
        problems.append(
            f"{env_name('upstream')}: {s.upstream!r} is not an http:// or https:// URL with a host"
        )
    elif upstream.query or upstream.fragment or upstream.username:
        problems.append(f"{env_name('upstream')}: must not carry a query, fragment or credentials")
    else:
        try:
            upstream.port  # noqa: B018 - raises on an out-of-range port
        except ValueError:
            problems.append(f"{env_name('upstream')}: {s.upstream!r} has an invalid port")

    if (s.tls_cert_file is None) != (s.tls_key_file is None):
        problems.append(f"{env_name('tls_cert_file')} and {env_name('tls_key_file')} must be set together")
    if s.tls_client_ca_file is not None and s.tls_cert_file is None:
        problems.append(f"{env_name('tls_client_ca_file')} needs TLS ({env_name('tls_cert_file')}) to be set")
    for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file"):
        path = getattr(s, name)
        if path is not None and not path.is_file():
            problems.append(f"{env_name(name)}: {path} does not exist or is not a file")

    problems.extend(validate_oidc(s))

    for network in s.trusted_proxies:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            problems.append(
                f"{env_name('trusted_proxies')}: {network!r} is not an IP address or CIDR network"
            )

    if not (
        s.reserved_prefix.startswith("/") and s.reserved_prefix.endswith("/") and len(s.reserved_prefix) > 2
    ):
        problems.append(f"{env_name('reserved_prefix')}: must look like /name/ (got {s.reserved_prefix!r})")

    positive = (
        "max_header_bytes",
        "max_header_count",
        "upstream_connect_timeout",
        "upstream_read_timeout",
        "upstream_max_connections",
        "upstream_keepalive_timeout",
        "upstream_max_header_bytes",
        "keepalive_timeout",
        "request_header_timeout",
        "request_body_timeout",
        "response_send_timeout",
        "max_connections",
    )
    for name in positive:
        if getattr(s, name) <= 0:
            problems.append(f"{env_name(name)}: must be greater than 0")
    for name in (
        "max_body_bytes",
        "shutdown_delay",
        "shutdown_grace_period",
        "request_body_min_rate",
        "request_buffer_bytes",
    ):
        if getattr(s, name) < 0:
            problems.append(f"{env_name(name)}: must not be negative")
    if s.max_header_bytes < 1024:
        problems.append(f"{env_name('max_header_bytes')}: below 1024 bytes no real client gets through")
    if s.upstream_max_header_bytes < 1024:
        problems.append(
            f"{env_name('upstream_max_header_bytes')}: below 1024 bytes few real responses get through"
        )
    problems.extend(validate_authorization(s))
    return problems


def validate_authorization(s: Settings) -> list[str]:
    """The policy's inputs and what the application is told (the policy files: `authcar check-config`)."""
    from authcar.identity_headers import claim_header_problems

    problems = [f"{env_name('claim_headers')}: {p}" for p in claim_header_problems(s.claim_headers)]
    for entry in s.dry_run_paths:
        try:
            parse_public_path(entry)
        except ValueError as exc:
            problems.append(f"{env_name('dry_run_paths')}: {exc}")
    prefix = s.policy_role_prefix
    if not prefix or prefix.startswith("authcar:") or any(c in prefix for c in ", \t"):
        # Without a prefix a subject `admin` would hold the role `admin`'s rules; `authcar:` names the
        # built-in roles; commas and blanks would split in policy CSV lines.
        problems.append(
            f"{env_name('policy_role_prefix')}: must not start with `authcar:` or hold , or blanks"
        )
    if not 5 <= s.assertion_lifetime <= 3600:
        # Shorter outlives no clock skew between sidecar and app; longer makes a leaked one useful.
        problems.append(f"{env_name('assertion_lifetime')}: must be between 5 and 3600 seconds")
    if not s.assertion_audience or not s.assertion_audience.isprintable() or " " in s.assertion_audience:
        problems.append(f"{env_name('assertion_audience')}: must be a non-empty value without spaces")
    return problems


# RFC 6265 cookie-name: an RFC 7230 token.
COOKIE_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "ES256K", "EdDSA"}
)


# How problems name an issuer's field: the environment variable for the AUTHCAR_OIDC_* issuer.
ENV_ISSUER_NAMES = {
    "issuer_url": "oidc_issuer_url",
    "audience": "oidc_audience",
    "allow_any_audience": "oidc_allow_any_audience",
    "jwks_url": "oidc_jwks_url",
    "jwks_file": "oidc_jwks_file",
    "introspection_url": "oidc_introspection_url",
    "client_id": "oidc_client_id",
    "client_secret": "oidc_client_secret",
    **IssuerSettings.INHERITED,
}


def validate_oidc(s: Settings) -> list[str]:
    problems: list[str] = []
    # Top-level values (inherited by every issuer that does not set its own) are checked once.
    top_level = (s.oidc_algorithms, s.oidc_leeway, s.oidc_required_claims)
    problems.extend(
        validate_token_rules(*top_level, lambda field_name: env_name(IssuerSettings.INHERITED[field_name]))
    )
    if s.oidc_issuer_url is None:
        for name in ("oidc_jwks_url", "oidc_jwks_file", "oidc_introspection_url", "oidc_audience"):
            if getattr(s, name):
                problems.append(f"{env_name('oidc_issuer_url')} is needed to check the `iss` of tokens")
                break
    positive = (
        "oidc_jwks_refresh_interval",
        "oidc_jwks_cooldown",
        "max_token_bytes",
        "introspection_cache_ttl",
        "introspection_negative_ttl",
        "introspection_max_concurrency",
    )
    for name in positive:
        if getattr(s, name) <= 0:
            problems.append(f"{env_name(name)}: must be greater than 0")
    for entry in s.public_paths:
        try:
            parse_public_path(entry)
        except ValueError as exc:
            problems.append(f"{env_name('public_paths')}: {exc}")
    if s.token_cookie is not None and not COOKIE_NAME.fullmatch(s.token_cookie):
        problems.append(f"{env_name('token_cookie')}: {s.token_cookie!r} is not a valid cookie name")
    for needs_client_certificates in ("tls_client_cert_identity", "tls_forward_client_cert"):
        if getattr(s, needs_client_certificates) and s.tls_client_ca_file is None:
            problems.append(
                f"{env_name(needs_client_certificates)} needs client certificates"
                f" ({env_name('tls_client_ca_file')})"
            )

    seen: set[str] = set()
    for issuer, name_of in named_issuers(s):
        problems.extend(validate_issuer(issuer, name_of))
        if issuer.issuer_url in seen:
            problems.append(f"{name_of('issuer_url')}: issuer {issuer.issuer_url!r} is configured twice")
        seen.add(issuer.issuer_url)
    return problems


IssuerFieldName = typing.Callable[[str], str]


def named_issuers(s: Settings) -> list[tuple[IssuerSettings, IssuerFieldName]]:
    """Each configured issuer with how messages name its fields: the AUTHCAR_OIDC_* variable for the
    environment's issuer, `issuers[i].field` for the YAML list."""
    named: list[tuple[IssuerSettings, IssuerFieldName]] = []
    for index, issuer in enumerate(s.configured_issuers()):
        from_env = index == 0 and s.oidc_issuer_url is not None
        yaml_index = index - 1 if s.oidc_issuer_url is not None else index

        def name_of(field_name: str, from_env: bool = from_env, yaml_index: int = yaml_index) -> str:
            if from_env:
                return env_name(ENV_ISSUER_NAMES[field_name])
            return f"issuers[{yaml_index}].{field_name}"

        named.append((issuer, name_of))
    return named


def validation_warnings(s: Settings) -> list[str]:
    """What is allowed but weakens or does nothing: printed by `check-config` and at start."""
    warnings: list[str] = []
    for issuer, name_of in named_issuers(s):
        if not issuer.allow_any_audience:
            continue
        if issuer.audience:
            warnings.append(f"{name_of('allow_any_audience')} has no effect: {name_of('audience')} is set")
        else:
            warnings.append(
                f"{name_of('allow_any_audience')}: issuer {issuer.issuer_url!r} accepts tokens minted for"
                f" any client of its provider, as `aud` is not checked; set {name_of('audience')}"
            )
    if not s.configured_issuers() and not s.allow_anonymous and not s.tls_client_cert_identity:
        warnings.append(
            f"no issuer is configured ({env_name('oidc_issuer_url')}, or issuers in {env_name('config')}):"
            f" every request outside {env_name('public_paths')} is refused with 401"
            f" ({env_name('allow_anonymous')}=true lets anonymous callers through, for development)"
        )
    if s.oidc_allow_any_audience and s.oidc_issuer_url is None:
        warnings.append(
            f"{env_name('oidc_allow_any_audience')} has no effect without {env_name('oidc_issuer_url')}"
            " (YAML issuers set allow_any_audience each)"
        )
    return warnings


def validate_issuer(issuer: IssuerSettings, name_of: IssuerFieldName) -> list[str]:
    problems: list[str] = []
    url = urlsplit(issuer.issuer_url)
    if url.scheme not in ("https", "http") or not url.hostname or url.query or url.fragment:
        problems.append(f"{name_of('issuer_url')}: {issuer.issuer_url!r} is not an issuer URL")
    for name in ("jwks_url", "introspection_url"):
        value = getattr(issuer, name)
        if value is not None and urlsplit(value).scheme not in ("https", "http"):
            problems.append(f"{name_of(name)}: {value!r} is not an http(s) URL")
    if issuer.jwks_file is not None and not issuer.jwks_file.is_file():
        problems.append(f"{name_of('jwks_file')}: {issuer.jwks_file} does not exist or is not a file")
    if issuer.jwks_file is not None and issuer.jwks_url is not None:
        problems.append(f"{name_of('jwks_file')} and {name_of('jwks_url')} exclude each other")
    if (issuer.client_id is None) != (issuer.client_secret is None):
        problems.append(f"{name_of('client_id')} and {name_of('client_secret')} must be set together")
    if issuer.introspection_url is not None and issuer.client_id is None:
        problems.append(f"{name_of('introspection_url')} needs {name_of('client_id')} and its secret")
    if not issuer.audience and not issuer.allow_any_audience:
        # Without one, a token the provider minted for any other of its clients would be accepted.
        problems.append(
            f"{name_of('audience')}: required, the `aud` this service's tokens carry"
            f" (or {name_of('allow_any_audience')}=true to accept tokens minted for any client)"
        )
    # Per-issuer overrides of the top-level token rules (None: inherited, checked once at the top).
    problems.extend(validate_token_rules(issuer.algorithms, issuer.leeway, issuer.required_claims, name_of))
    return problems


def validate_token_rules(
    algorithms: tuple[str, ...] | None,
    leeway: float | None,
    required_claims: tuple[str, ...] | None,
    name_of: IssuerFieldName,
) -> list[str]:
    """Checks on the inheritable token rules; `name_of` turns an IssuerSettings field name into
    the name a problem should carry (None values are inherited: checked where they are set)."""
    problems: list[str] = []
    if algorithms is not None:
        unknown = [a for a in algorithms if a not in ASYMMETRIC_ALGORITHMS]
        if unknown:
            # HS* would let anyone holding the (public) verification key mint tokens.
            problems.append(
                f"{name_of('algorithms')}: {', '.join(unknown)} not accepted (asymmetric algorithms only)"
            )
        if not algorithms:
            problems.append(f"{name_of('algorithms')}: at least one algorithm is needed")
    if leeway is not None and not 0 <= leeway <= 300:
        problems.append(f"{name_of('leeway')}: must be between 0 and 300 seconds")
    if required_claims is not None and "exp" not in required_claims:
        # A token without exp never expires: not something an access token may be.
        problems.append(f"{name_of('required_claims')}: must include exp")
    return problems


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
