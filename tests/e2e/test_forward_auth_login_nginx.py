"""Forward-auth with browser login behind a real nginx: nginx asks authcar (`auth_request`) and
proxies `/oauth2/` to it; a person's page load without a session gets authcar's 401 with the
sign-in URL in `X-Auth-Request-Sign-In`, which nginx turns into a redirect (`error_page 401`); after
signing in at the test provider the browser is back at the page it asked for, and the application
sees who it is, from nginx. An API call keeps its plain 401, and nothing reaches the application
without a session.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest

from tests.support.login import free_port
from tests.support.nginx import RunningNginx, main_conf, running_nginx
from tests.support.property_stack import ThreadedStack, threaded_stack

SECRET = "forward-auth-login-cookie-secret-0123456789"
PAGE = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


def gateway_conf(prefix: Path, port: int, sidecar_port: int, upstream_port: int) -> str:
    """The README's nginx example with sign-in: /oauth2/ goes to authcar, a 401 that names a sign-in
    URL becomes a redirect there."""
    return main_conf(
        prefix,
        "  server {\n"
        f"    listen 127.0.0.1:{port};\n"
        "    location /oauth2/ {\n"
        f"      proxy_pass http://127.0.0.1:{sidecar_port};\n"
        "      proxy_set_header Host $http_host;\n"
        "    }\n"
        "    location = /_authcar {\n"
        "      internal;\n"
        f"      proxy_pass http://127.0.0.1:{sidecar_port}/oauth2/auth;\n"
        "      proxy_pass_request_body off;\n"
        '      proxy_set_header Content-Length "";\n'
        "      proxy_set_header X-Original-URI $request_uri;\n"
        "      proxy_set_header X-Original-Method $request_method;\n"
        "      proxy_set_header X-Forwarded-Host $http_host;\n"
        "      proxy_set_header X-Forwarded-Proto $scheme;\n"
        "    }\n"
        "    location / {\n"
        "      auth_request /_authcar;\n"
        "      auth_request_set $authcar_user $upstream_http_x_auth_request_user;\n"
        "      auth_request_set $authcar_sign_in $upstream_http_x_auth_request_sign_in;\n"
        "      proxy_set_header X-Auth-Request-User $authcar_user;\n"
        "      error_page 401 = @sign_in;\n"
        f"      proxy_pass http://127.0.0.1:{upstream_port};\n"
        "    }\n"
        "    location @sign_in {\n"
        '      if ($authcar_sign_in = "") { return 401; }\n'
        "      return 302 $authcar_sign_in;\n"
        "    }\n"
        "  }\n",
    )


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ThreadedStack, RunningNginx]]:
    port = free_port()
    env = {
        "AUTHCAR_TRUSTED_PROXIES": "127.0.0.1/32",
        "AUTHCAR_LOGIN": "true",
        "AUTHCAR_OIDC_CLIENT_ID": "authcar",
        "AUTHCAR_OIDC_CLIENT_SECRET": "authcar-secret",
        "AUTHCAR_OIDC_REDIRECT_URL": f"http://127.0.0.1:{port}/oauth2/callback",
        "AUTHCAR_COOKIE_SECRET": SECRET,
        "AUTHCAR_COOKIE_SECURE": "false",
    }
    with threaded_stack(tmp_path_factory.mktemp("fwdauth-login"), env) as stack:
        conf = gateway_conf(
            tmp_path_factory.mktemp("nginx"), port, stack.stack.port, stack.stack.upstream.port
        )
        with running_nginx(tmp_path_factory.mktemp("nginx-prefix"), conf, port) as nginx:
            yield stack, nginx


def seen_users(stack: ThreadedStack) -> list[bytes | None]:
    stack.run(stack.stack.upstream.quiet(grace=0.05))
    return [request.header("x-auth-request-user") for request in stack.stack.upstream.requests()]


def test_a_page_load_is_sent_to_sign_in_and_returns_to_the_page_through_nginx(
    gateway: tuple[ThreadedStack, RunningNginx],
) -> None:
    stack, nginx = gateway
    base = f"http://127.0.0.1:{nginx.port}"
    stack.stack.upstream.reset()
    with httpx.Client(timeout=10) as browser:
        first = browser.get(base + "/api/books?page=2", headers=PAGE)
        assert first.status_code == 302
        start = urljoin(base, first.headers["location"])  # nginx makes it absolute
        assert urlsplit(start).path == "/oauth2/start"
        assert parse_qs(urlsplit(start).query)["rd"] == [base + "/api/books?page=2"]
        assert seen_users(stack) == []
        provider = browser.get(start)  # through nginx to authcar
        assert provider.status_code == 302
        callback = browser.get(provider.headers["location"])  # the provider signs alice in
        assert callback.status_code == 302
        assert callback.headers["location"].startswith(base + "/oauth2/callback?")
        back = browser.get(callback.headers["location"])
        assert back.status_code == 302
        assert back.headers["location"] == base + "/api/books?page=2"
        page = browser.get(back.headers["location"], headers=PAGE)
        assert page.status_code == 200
    assert seen_users(stack) == [b"alice"]


def test_an_api_call_without_a_session_keeps_its_401_through_nginx(
    gateway: tuple[ThreadedStack, RunningNginx],
) -> None:
    stack, nginx = gateway
    stack.stack.upstream.reset()
    answer = httpx.get(
        f"http://127.0.0.1:{nginx.port}/api/books", headers={"Accept": "application/json"}, timeout=10
    )
    assert answer.status_code == 401
    assert "location" not in answer.headers
    assert seen_users(stack) == []


def test_authcar_names_the_sign_in_url_only_for_page_loads(
    gateway: tuple[ThreadedStack, RunningNginx],
) -> None:
    stack, _ = gateway
    url = f"{stack.stack.sidecar.url}/oauth2/auth"
    described = {"X-Original-URI": "/api/books?x=1", "X-Original-Method": "GET"}
    page = httpx.get(url, headers={**described, **PAGE}, timeout=10)
    assert page.status_code == 401
    assert page.headers["x-auth-request-sign-in"] == "/oauth2/start?rd=%2Fapi%2Fbooks%3Fx%3D1"
    assert page.headers["www-authenticate"] == 'Bearer realm="authcar"'
    api = httpx.get(url, headers={**described, "Accept": "application/json"}, timeout=10)
    assert api.status_code == 401
    assert "x-auth-request-sign-in" not in api.headers
    # A host the redirect policy does not allow is not a return-to: only the path is.
    elsewhere = httpx.get(
        url,
        headers={**described, **PAGE, "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"},
        timeout=10,
    )
    assert elsewhere.headers["x-auth-request-sign-in"] == "/oauth2/start?rd=%2Fapi%2Fbooks%3Fx%3D1"
