"""OIDC: the trusted issuers, the rules their tokens must meet, and where tokens are read from.

Problems about an issuer name its fields as the operator wrote them: the AUTHCAR_OIDC_* variable
for the environment's issuer, `issuers[i].field` for the YAML list.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from authcar.config.problems import Problem
from authcar.config.settings import IssuerSettings, Settings, env_name
from authcar.config.validation.checks import greater_than_zero, problem
from authcar.jose import ASYMMETRIC_ALGORITHMS, MAX_LEEWAY

# RFC 6265 cookie-name: an RFC 7230 token.
COOKIE_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

# The Settings field behind each field of the AUTHCAR_OIDC_* issuer.
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


@dataclass(frozen=True)
class IssuerNames:
    """How findings about one issuer name its fields (IssuerSettings field names)."""

    yaml_index: int | None  # None: the AUTHCAR_OIDC_* issuer, or the top-level rules all inherit

    def setting(self, field_name: str) -> str:
        return ENV_ISSUER_NAMES[field_name] if self.yaml_index is None else "issuers"

    def __call__(self, field_name: str) -> str:
        if self.yaml_index is None:
            return env_name(ENV_ISSUER_NAMES[field_name])
        return f"issuers[{self.yaml_index}].{field_name}"

    def problem(self, field_name: str, text: str, also: Iterable[str] = ()) -> Problem:
        """`text` names its fields through this object; the Problem's settings are their fields."""
        setting = self.setting(field_name)
        others = dict.fromkeys(self.setting(name) for name in also)
        return Problem(setting, text, tuple(name for name in others if name != setting))


TOP_LEVEL = IssuerNames(yaml_index=None)


def named_issuers(s: Settings) -> list[tuple[IssuerSettings, IssuerNames]]:
    """Each configured issuer, in order, with how findings name its fields."""
    offset = 1 if s.oidc_issuer_url is not None else 0
    return [
        (issuer, IssuerNames(None if index < offset else index - offset))
        for index, issuer in enumerate(s.configured_issuers())
    ]


def validate_issuers(s: Settings) -> list[Problem]:
    problems: list[Problem] = []
    # Top-level values (inherited by every issuer that does not set its own) are checked once.
    problems.extend(validate_token_rules(s.oidc_algorithms, s.oidc_leeway, s.oidc_required_claims, TOP_LEVEL))
    if s.oidc_issuer_url is None:
        for name in ("oidc_jwks_url", "oidc_jwks_file", "oidc_introspection_url", "oidc_audience"):
            if getattr(s, name):
                problems.append(
                    Problem(name, f"{env_name('oidc_issuer_url')} is needed to check the `iss` of tokens")
                )
                break
    problems.extend(
        greater_than_zero(s, "oidc_jwks_refresh_interval", "oidc_jwks_cooldown", "max_token_bytes")
    )
    if s.token_cookie is not None and not COOKIE_NAME.fullmatch(s.token_cookie):
        problems.append(problem("token_cookie", f"{s.token_cookie!r} is not a valid cookie name"))

    seen: set[str] = set()
    for issuer, name_of in named_issuers(s):
        problems.extend(validate_issuer(issuer, name_of))
        if issuer.issuer_url in seen:
            problems.append(
                name_of.problem(
                    "issuer_url",
                    f"{name_of('issuer_url')}: issuer {issuer.issuer_url!r} is configured twice",
                )
            )
        seen.add(issuer.issuer_url)
    return problems


def validate_issuer(issuer: IssuerSettings, name_of: IssuerNames) -> list[Problem]:
    problems: list[Problem] = []

    def add(field_name: str, text: str, *also: str) -> None:
        problems.append(name_of.problem(field_name, text, also))

    url = urlsplit(issuer.issuer_url)
    if url.scheme not in ("https", "http") or not url.hostname or url.query or url.fragment:
        add("issuer_url", f"{name_of('issuer_url')}: {issuer.issuer_url!r} is not an issuer URL")
    for name in ("jwks_url", "introspection_url"):
        value = getattr(issuer, name)
        if value is not None and urlsplit(value).scheme not in ("https", "http"):
            add(name, f"{name_of(name)}: {value!r} is not an http(s) URL")
    if issuer.jwks_file is not None and not issuer.jwks_file.is_file():
        add("jwks_file", f"{name_of('jwks_file')}: {issuer.jwks_file} does not exist or is not a file")
    if issuer.jwks_file is not None and issuer.jwks_url is not None:
        add("jwks_file", f"{name_of('jwks_file')} and {name_of('jwks_url')} exclude each other", "jwks_url")
    if (issuer.client_id is None) != (issuer.client_secret is None):
        add(
            "client_id",
            f"{name_of('client_id')} and {name_of('client_secret')} must be set together",
            "client_secret",
        )
    if issuer.introspection_url is not None and issuer.client_id is None:
        add(
            "introspection_url",
            f"{name_of('introspection_url')} needs {name_of('client_id')} and its secret",
            "client_id",
        )
    if not issuer.audience and not issuer.allow_any_audience:
        # Without one, a token the provider minted for any other of its clients would be accepted.
        add(
            "audience",
            f"{name_of('audience')}: required, the `aud` this service's tokens carry"
            f" (or {name_of('allow_any_audience')}=true to accept tokens minted for any client)",
            "allow_any_audience",
        )
    # Per-issuer overrides of the top-level token rules (None: inherited, checked once at the top).
    problems.extend(validate_token_rules(issuer.algorithms, issuer.leeway, issuer.required_claims, name_of))
    return problems


def validate_token_rules(
    algorithms: tuple[str, ...] | None,
    leeway: float | None,
    required_claims: tuple[str, ...] | None,
    name_of: IssuerNames,
) -> list[Problem]:
    """Checks on the inheritable token rules (None values are inherited: checked where they are set)."""
    problems: list[Problem] = []
    if algorithms is not None:
        unknown = [a for a in algorithms if a not in ASYMMETRIC_ALGORITHMS]
        if unknown:
            # HS* would let anyone holding the (public) verification key mint tokens.
            text = f"{', '.join(unknown)} not accepted (asymmetric algorithms only)"
            problems.append(name_of.problem("algorithms", f"{name_of('algorithms')}: {text}"))
        if not algorithms:
            problems.append(
                name_of.problem("algorithms", f"{name_of('algorithms')}: at least one algorithm is needed")
            )
    if leeway is not None and not 0 <= leeway <= MAX_LEEWAY:
        problems.append(
            name_of.problem("leeway", f"{name_of('leeway')}: must be between 0 and {MAX_LEEWAY:g} seconds")
        )
    if required_claims is not None and "exp" not in required_claims:
        # A token without exp never expires: not something an access token may be.
        problems.append(name_of.problem("required_claims", f"{name_of('required_claims')}: must include exp"))
    return problems


def issuer_warnings(s: Settings) -> list[Problem]:
    """What is allowed but weakens the token checks or does nothing."""
    warnings: list[Problem] = []
    for issuer, name_of in named_issuers(s):
        if not issuer.allow_any_audience:
            continue
        if issuer.audience:
            text = f"{name_of('allow_any_audience')} has no effect: {name_of('audience')} is set"
        else:
            text = (
                f"{name_of('allow_any_audience')}: issuer {issuer.issuer_url!r} accepts tokens minted for"
                f" any client of its provider, as `aud` is not checked; set {name_of('audience')}"
            )
        warnings.append(name_of.problem("allow_any_audience", text, ("audience",)))
    if not s.configured_issuers() and not s.allow_anonymous and not s.tls_client_cert_identity:
        warnings.append(
            Problem(
                "oidc_issuer_url",
                f"no issuer is configured ({env_name('oidc_issuer_url')},"
                f" or issuers in {env_name('config')}):"
                f" every request outside {env_name('public_paths')} is refused with 401"
                f" ({env_name('allow_anonymous')}=true lets anonymous callers through, for development)",
                also=("issuers", "allow_anonymous", "tls_client_cert_identity"),
            )
        )
    if s.oidc_allow_any_audience and s.oidc_issuer_url is None:
        warnings.append(
            Problem(
                "oidc_allow_any_audience",
                f"{env_name('oidc_allow_any_audience')} has no effect without {env_name('oidc_issuer_url')}"
                " (YAML issuers set allow_any_audience each)",
                also=("oidc_issuer_url",),
            )
        )
    return warnings
