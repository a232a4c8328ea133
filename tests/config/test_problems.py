"""Findings are Problems: code decides by their settings, operators read their messages."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from authcar.config import ConfigError, Problem, Settings, env_name, load_settings, validate

SETTINGS = {f.name for f in fields(Settings)}


def found(flags: dict[str, object] | None = None, env: dict[str, str] | None = None) -> tuple[Problem, ...]:
    with pytest.raises(ConfigError) as caught:
        load_settings(flags or {}, environ=env or {})
    return caught.value.problems


def named_as_written(problem: Problem) -> bool:
    """Does the message name the setting it is filed under, the way the operator wrote it?"""
    if problem.setting == "issuers":
        return "issuers[" in problem.message or problem.message.startswith("AUTHCAR_ISSUERS")
    name = problem.setting
    spellings = (env_name(name), "--" + name.replace("_", "-"), f"{name} (YAML)")
    return any(spelling in problem.message for spelling in spellings)


BROKEN = {
    "AUTHCAR_PORT": "99999",
    "AUTHCAR_ADMIN_PORT": "99999",
    "AUTHCAR_WORKERS": "0",
    "AUTHCAR_UPSTREAM": "http://127.0.0.1:8080/?q",
    "AUTHCAR_TLS_KEY_FILE": "/nonexistent/key.pem",
    "AUTHCAR_TLS_CLIENT_CERT_IDENTITY": "true",
    "AUTHCAR_TRUSTED_PROXIES": "not-a-network",
    "AUTHCAR_OIDC_ISSUER_URL": "ftp://idp",
    "AUTHCAR_OIDC_ALGORITHMS": "HS256",
    "AUTHCAR_OIDC_LEEWAY": "301",
    "AUTHCAR_OIDC_REQUIRED_CLAIMS": "iat",
    "AUTHCAR_OIDC_CLIENT_ID": "only-the-id",
    "AUTHCAR_OIDC_JWKS_URL": "file:///etc/jwks",
    "AUTHCAR_OIDC_JWKS_FILE": "/nonexistent/jwks.json",
    "AUTHCAR_TOKEN_COOKIE": "a b",
    "AUTHCAR_INTROSPECTION_CACHE_TTL": "0",
    "AUTHCAR_PUBLIC_PATHS": "BREW /pot",
    "AUTHCAR_DRY_RUN_PATHS": "/a/../b",
    "AUTHCAR_CLAIM_HEADERS": "Host=sub,X-A=a,x-a=b",
    "AUTHCAR_POLICY_ROLE_PREFIX": "authcar:",
    "AUTHCAR_ASSERTION_LIFETIME": "1",
    "AUTHCAR_ASSERTION_AUDIENCE": "a b",
    "AUTHCAR_RESERVED_PREFIX": "oauth2",
    "AUTHCAR_MAX_HEADER_BYTES": "100",
    "AUTHCAR_SHUTDOWN_DELAY": "-1",
    "AUTHCAR_LOG_LEVEL": "loud",
    "AUTHCAR_OIDC_CLIENT_SECRET_FILE": "/nonexistent/secret",
}


def test_every_problem_is_filed_under_a_real_setting_that_its_message_names(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("issuers:\n  - issuer_url: https://b.example\n    algorithms: [none]\n")
    problems = found(flags={"workers": "many"}, env={**BROKEN, "AUTHCAR_CONFIG": str(config)})
    assert len(problems) >= len(BROKEN)
    for problem in problems:
        assert problem.setting in SETTINGS, problem
        assert problem.concerns <= SETTINGS, problem
        assert named_as_written(problem), problem
    # Each concern reported what it found: one setting of each area is among them.
    at_fault = {problem.setting for problem in problems}
    for setting in ("port", "upstream", "oidc_algorithms", "introspection_cache_ttl", "claim_headers"):
        assert setting in at_fault, setting
    assert {"max_header_bytes", "shutdown_delay", "issuers", "oidc_client_secret"} <= at_fault


def test_problems_that_depend_on_an_unparsable_value_are_left_out() -> None:
    # The unusable port falls back to 4180 while checking the rest: a clash with the admin port
    # would be about a value nobody set.
    problems = found(env={"AUTHCAR_PORT": "http", "AUTHCAR_ADMIN_PORT": "4180"})
    assert [(p.setting, p.message) for p in problems] == [
        ("port", "AUTHCAR_PORT: 'http' is not a whole number")
    ]
    # Once both parse, the clash is reported, under both settings; not when neither is a port.
    (clash,) = found(env={"AUTHCAR_PORT": "4180", "AUTHCAR_ADMIN_PORT": "4180"})
    assert {"port", "admin_port"} <= clash.concerns
    assert [p.setting for p in found(env={"AUTHCAR_PORT": "70000", "AUTHCAR_ADMIN_PORT": "70000"})] == [
        "port",
        "admin_port",
    ]
    # An unparsable switch hides the audience problem it would decide.
    problems = found(
        env={"AUTHCAR_OIDC_ISSUER_URL": "https://idp.example", "AUTHCAR_OIDC_ALLOW_ANY_AUDIENCE": "?"}
    )
    assert [p.setting for p in problems] == ["oidc_allow_any_audience"]


def test_a_yaml_issuer_is_filed_under_issuers_and_named_by_its_place(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("issuers:\n  - issuer_url: https://a.example\n    audience: [a]\n    leeway: 900\n")
    (problem,) = found(env={"AUTHCAR_CONFIG": str(config)})
    assert problem == Problem("issuers", "issuers[0].leeway: must be between 0 and 300 seconds")
    # The same rule on the environment's issuer is filed under its variable.
    (problem,) = found(env={"AUTHCAR_OIDC_LEEWAY": "900"})
    assert problem == Problem("oidc_leeway", "AUTHCAR_OIDC_LEEWAY: must be between 0 and 300 seconds")


def test_warnings_are_problems_too() -> None:
    loaded = load_settings({}, environ={"AUTHCAR_UPSTREM": "http://x", "AUTHCAR_ALLOW_ANONYMOUS": "true"})
    (unknown,) = loaded.warnings
    assert unknown.setting == ""  # about no setting: the variable is not one
    assert (
        str(unknown)
        == "ignoring unknown environment variable AUTHCAR_UPSTREM (did you mean AUTHCAR_UPSTREAM?)"
    )
    (no_issuer,) = load_settings({}, environ={}).warnings
    assert no_issuer.setting == "oidc_issuer_url"
    assert "issuers" in no_issuer.also


def test_the_error_lists_every_message_once_in_the_order_found() -> None:
    error = ConfigError([Problem("port", "AUTHCAR_PORT: bad"), Problem("", "unknown option --x")])
    assert str(error) == "invalid configuration:\n  - AUTHCAR_PORT: bad\n  - unknown option --x"
    assert error.messages == ["AUTHCAR_PORT: bad", "unknown option --x"]


def test_the_defaults_are_valid() -> None:
    assert validate(Settings()) == []


def test_each_bad_entry_of_the_issuer_list_is_its_own_problem(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("issuers:\n  - audience: [x]\n    colour: blue\n  - 42\n")
    assert [str(p) for p in found(env={"AUTHCAR_CONFIG": str(config)})] == [
        "issuers (YAML): issuers[0]: unknown issuer setting 'colour'",
        "issuers (YAML): issuers[0]: issuer_url is required",
        "issuers (YAML): issuers[1]: expected a mapping with at least issuer_url",
    ]
