"""The browser-login settings (CONTRACT "Browser login"): each mistake is a problem naming its setting,
AUTHCAR_LOGIN=true is accepted with what it needs, and the login settings warn when login is off."""

from __future__ import annotations

import pytest

from authcar.config import ConfigError, Settings, load_settings, validation_warnings
from tests.test_config import authcar

BASE = {"AUTHCAR_UPSTREAM": "http://127.0.0.1:8080", "AUTHCAR_ALLOW_ANONYMOUS": "true"}
SECRET = "0123456789abcdef0123456789abcdef"
WHOLE_LOGIN = {
    "AUTHCAR_LOGIN": "true",
    "AUTHCAR_OIDC_ISSUER_URL": "https://idp.example/realms/x",
    "AUTHCAR_OIDC_AUDIENCE": "api",
    "AUTHCAR_OIDC_CLIENT_ID": "authcar",
    "AUTHCAR_OIDC_CLIENT_SECRET": "s",
    "AUTHCAR_OIDC_REDIRECT_URL": "https://books.example/oauth2/callback",
    "AUTHCAR_COOKIE_SECRET": SECRET,
}


def load(env: dict[str, str]) -> Settings:
    return load_settings({}, environ={**BASE, **env}).settings


def problems_of(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings({}, environ={**BASE, **env})
    return caught.value.messages


def test_defaults_are_the_contracts() -> None:
    s = load({})
    assert (s.login, s.oidc_redirect_url, s.oidc_scopes) == (False, None, "openid profile email")
    assert (s.cookie_name, s.cookie_secure, s.cookie_samesite) == ("__Host-authcar", True, "lax")
    assert (s.session_idle_timeout, s.session_max_age) == (3600, 86400)
    assert (s.allowed_redirect_hosts, s.post_logout_redirect_url, s.pass_access_token) == ((), None, False)
    assert s.session_cookie_name() == "__Host-authcar"
    assert validation_warnings(s) == []


def test_a_whole_login_configuration_is_accepted_and_names_its_issuer() -> None:
    s = load(WHOLE_LOGIN)
    assert s.login is True
    issuer = s.login_issuer()
    assert issuer is not None
    assert issuer.issuer_url == "https://idp.example/realms/x"
    assert validation_warnings(s) == []


def test_without_client_credentials_there_is_no_login_issuer() -> None:
    s = load({"AUTHCAR_OIDC_ISSUER_URL": "https://idp.example/realms/x", "AUTHCAR_OIDC_AUDIENCE": "api"})
    assert s.login_issuer() is None


def test_login_names_what_it_needs() -> None:
    found = problems_of({"AUTHCAR_LOGIN": "true"})
    assert "AUTHCAR_LOGIN needs AUTHCAR_OIDC_REDIRECT_URL" in found
    assert "AUTHCAR_LOGIN needs AUTHCAR_COOKIE_SECRET" in found
    assert any("needs an issuer with client credentials" in message for message in found)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"AUTHCAR_COOKIE_SECRET": "x" * 31}, "AUTHCAR_COOKIE_SECRET: must be at least 32 bytes"),
        ({"AUTHCAR_COOKIE_SECRET": "é" * 15}, "it has 30"),  # bytes, not characters
        ({"AUTHCAR_COOKIE_NAME": "a b"}, "AUTHCAR_COOKIE_NAME: 'a b' is not a cookie name"),
        ({"AUTHCAR_COOKIE_NAME": "sid;x=1"}, "is not a cookie name"),
        (
            {"AUTHCAR_COOKIE_NAME": "__Host-mine", "AUTHCAR_COOKIE_SECURE": "false"},
            "browsers refuse __Host- cookies without Secure",
        ),
        (
            {"AUTHCAR_COOKIE_NAME": "__Secure-mine", "AUTHCAR_COOKIE_SECURE": "false"},
            "browsers refuse __Secure- cookies without Secure",
        ),
        (
            {"AUTHCAR_COOKIE_SAMESITE": "none", "AUTHCAR_COOKIE_SECURE": "false"},
            "AUTHCAR_COOKIE_SAMESITE: none needs AUTHCAR_COOKIE_SECURE=true",
        ),
        ({"AUTHCAR_COOKIE_SAMESITE": "sometimes"}, "AUTHCAR_COOKIE_SAMESITE"),
        ({"AUTHCAR_SESSION_IDLE_TIMEOUT": "0"}, "AUTHCAR_SESSION_IDLE_TIMEOUT: must be greater than 0"),
        ({"AUTHCAR_SESSION_MAX_AGE": "-1"}, "AUTHCAR_SESSION_MAX_AGE: must be greater than 0"),
        ({"AUTHCAR_OIDC_REDIRECT_URL": "/oauth2/callback"}, "must be an absolute http:// or https:// URL"),
        ({"AUTHCAR_OIDC_REDIRECT_URL": "javascript:alert(1)"}, "must be an absolute http:// or https:// URL"),
        ({"AUTHCAR_OIDC_REDIRECT_URL": "https://u@books.example/oauth2/callback"}, "must have no user"),
        ({"AUTHCAR_OIDC_REDIRECT_URL": "https://books.example:99999/oauth2/callback"}, "is not a URL"),
        (
            {"AUTHCAR_OIDC_REDIRECT_URL": "https://books.example/callback"},
            "its path must be /oauth2/callback",
        ),
        ({"AUTHCAR_POST_LOGOUT_REDIRECT_URL": "//evil.example/"}, "AUTHCAR_POST_LOGOUT_REDIRECT_URL:"),
        ({"AUTHCAR_ALLOWED_REDIRECT_HOSTS": "shop.example,bücher.example"}, "'bücher.example' is not a host"),
        ({"AUTHCAR_ALLOWED_REDIRECT_HOSTS": "https://shop.example"}, "'https://shop.example' is not a host"),
        ({"AUTHCAR_ALLOWED_REDIRECT_HOSTS": "127.1"}, "'127.1' is not a host"),
        ({"AUTHCAR_OIDC_SCOPES": "profile email"}, "AUTHCAR_OIDC_SCOPES: must include openid"),
        ({"AUTHCAR_OIDC_SCOPES": 'openid "x"'}, "is not a space-separated list of scopes"),
    ],
)
def test_each_mistake_is_a_problem_naming_its_setting(env: dict[str, str], expected: str) -> None:
    found = problems_of(env)
    assert any(expected in message for message in found), found


def test_without_secure_the_default_cookie_name_loses_its_prefix() -> None:
    s = load({"AUTHCAR_COOKIE_SECURE": "false"})
    assert s.session_cookie_name() == "authcar"
    assert load({"AUTHCAR_COOKIE_NAME": "books"}).session_cookie_name() == "books"


def test_a_valid_login_configuration_without_login_warns_that_it_does_nothing() -> None:
    s = load(
        {
            "AUTHCAR_COOKIE_SECRET": SECRET,
            "AUTHCAR_ALLOWED_REDIRECT_HOSTS": "shop.example,admin.example:8443",
            "AUTHCAR_OIDC_REDIRECT_URL": "http://127.0.0.1:4180/oauth2/callback",
        }
    )
    assert s.allowed_redirect_hosts == ("shop.example", "admin.example:8443")
    [warning] = validation_warnings(s)
    assert warning.message == (
        "AUTHCAR_OIDC_REDIRECT_URL, AUTHCAR_COOKIE_SECRET, AUTHCAR_ALLOWED_REDIRECT_HOSTS:"
        " no effect without AUTHCAR_LOGIN=true"
    )


def test_check_config_names_a_missing_login_setting_without_showing_the_secret() -> None:
    env = {**BASE, **WHOLE_LOGIN}
    del env["AUTHCAR_OIDC_REDIRECT_URL"]
    result = authcar("check-config", env=env)
    assert result.returncode == 1
    assert "AUTHCAR_LOGIN needs AUTHCAR_OIDC_REDIRECT_URL" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert SECRET not in result.stderr + result.stdout
