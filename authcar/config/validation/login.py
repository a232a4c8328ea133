"""Browser login (CONTRACT "Browser login"): the cookies, the callback, the targets it may send
browsers to, and what AUTHCAR_LOGIN=true needs (a callback URL, a cookie secret, an issuer with client
credentials), every problem at once so that the operator can fix them together.
"""

from __future__ import annotations

import re
from dataclasses import fields
from urllib.parse import urlsplit

from authcar.config.hosts import split_host_port
from authcar.config.problems import Problem
from authcar.config.settings import HOST_PREFIX, Settings, env_name
from authcar.config.validation.checks import greater_than_zero, problem

MIN_COOKIE_SECRET_BYTES = 32
# RFC 6265 section 4.1.1: a cookie name is an RFC 2616 token.
COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
SECURE_PREFIXES = (HOST_PREFIX, "__Secure-")  # browsers drop cookies with these names unless Secure
SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")  # RFC 6749 section 3.3
CALLBACK = "callback"  # served under AUTHCAR_RESERVED_PREFIX


def validate_login(s: Settings) -> list[Problem]:
    problems = [
        *cookie_problems(s),
        *greater_than_zero(s, "session_idle_timeout", "session_max_age"),
        *target_problems(s),
        *scope_problems(s),
    ]
    if s.login:
        problems.extend(required_with_login(s))
    return problems


def cookie_problems(s: Settings) -> list[Problem]:
    problems: list[Problem] = []
    if not COOKIE_NAME.fullmatch(s.cookie_name):
        problems.append(problem("cookie_name", f"{s.cookie_name!r} is not a cookie name (RFC 6265 token)"))
    elif not s.cookie_secure and s.session_cookie_name().startswith(SECURE_PREFIXES):
        problems.append(
            Problem(
                "cookie_name",
                f"{env_name('cookie_name')}: browsers refuse {s.cookie_name.split('-')[0]}- cookies without"
                f" Secure; set {env_name('cookie_secure')}=true or choose a name without the prefix",
                also=("cookie_secure",),
            )
        )
    if s.cookie_samesite == "none" and not s.cookie_secure:
        problems.append(
            Problem(
                "cookie_samesite",
                f"{env_name('cookie_samesite')}: none needs {env_name('cookie_secure')}=true"
                " (browsers refuse SameSite=None cookies that are not Secure)",
                also=("cookie_secure",),
            )
        )
    secret = s.cookie_secret
    if secret is not None and len(secret.encode()) < MIN_COOKIE_SECRET_BYTES:
        problems.append(
            problem(
                "cookie_secret",
                f"must be at least {MIN_COOKIE_SECRET_BYTES} bytes (e.g. `openssl rand -base64 32`);"
                f" it has {len(secret.encode())}",
            )
        )
    return problems


def url_problem(url: str | None) -> str | None:
    """Why `url` is not an absolute http(s) URL without credentials or fragment, or None."""
    if url is None:
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises for a port that is not one)
    except ValueError:
        return f"{url!r} is not a URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{url!r} must be an absolute http:// or https:// URL"
    if parts.username is not None or parts.fragment or any(c.isspace() for c in url):
        return f"{url!r} must have no user, fragment or spaces"
    return None


def target_problems(s: Settings) -> list[Problem]:
    problems: list[Problem] = []
    for name in ("oidc_redirect_url", "post_logout_redirect_url"):
        if (why := url_problem(getattr(s, name))) is not None:
            problems.append(problem(name, why))
    callback = s.reserved_prefix + CALLBACK
    if s.oidc_redirect_url and not problems and urlsplit(s.oidc_redirect_url).path != callback:
        problems.append(
            Problem(
                "oidc_redirect_url",
                f"{env_name('oidc_redirect_url')}: its path must be {callback}, where authcar serves the"
                f" callback (under {env_name('reserved_prefix')})",
                also=("reserved_prefix",),
            )
        )
    for entry in s.allowed_redirect_hosts:
        try:
            split_host_port(entry)
        except ValueError:
            problems.append(
                problem(
                    "allowed_redirect_hosts",
                    f"{entry!r} is not a host or host:port (ASCII; write IDN hosts in punycode)",
                )
            )
    return problems


def scope_problems(s: Settings) -> list[Problem]:
    scopes = s.oidc_scopes.split()
    if not all(SCOPE_TOKEN.fullmatch(scope) for scope in scopes):
        return [problem("oidc_scopes", f"{s.oidc_scopes!r} is not a space-separated list of scopes")]
    if "openid" not in scopes:
        return [problem("oidc_scopes", "must include openid (login reads the ID token)")]
    return []


def required_with_login(s: Settings) -> list[Problem]:
    problems: list[Problem] = []
    for name in ("oidc_redirect_url", "cookie_secret"):
        if getattr(s, name) is None:
            problems.append(Problem(name, f"{env_name('login')} needs {env_name(name)}", also=("login",)))
    if not any(issuer.client_id and issuer.client_secret for issuer in s.configured_issuers()):
        problems.append(
            Problem(
                "oidc_client_id",
                f"{env_name('login')} needs an issuer with client credentials"
                f" ({env_name('oidc_client_id')} and {env_name('oidc_client_secret')})",
                also=("login", "oidc_client_secret"),
            )
        )
    return problems


# The settings only login reads: set without it, they do nothing.
LOGIN_ONLY = (
    "oidc_redirect_url",
    "oidc_scopes",
    "cookie_secret",
    "cookie_name",
    "cookie_secure",
    "cookie_samesite",
    "session_idle_timeout",
    "session_max_age",
    "allowed_redirect_hosts",
    "post_logout_redirect_url",
    "pass_access_token",
)


def login_warnings(s: Settings) -> list[Problem]:
    defaults = {f.name: f.default for f in fields(Settings)}
    changed = [name for name in LOGIN_ONLY if getattr(s, name) != defaults[name]]
    if s.login or not changed:
        return []
    names = ", ".join(env_name(name) for name in changed)
    return [
        Problem(
            changed[0],
            f"{names}: no effect without {env_name('login')}=true",
            tuple(changed[1:]),
        )
    ]
