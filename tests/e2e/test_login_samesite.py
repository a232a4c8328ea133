"""Signing in where the provider is another site, in a real chromium: the sidecar is
http://app.test:PORT (mapped to 127.0.0.1 by the browser's resolver rules), the provider
http://127.0.0.1:PORT2, so the provider's redirect back to the callback is a cross-site navigation.
That is where SameSite decides whether a sign-in can finish: with every AUTHCAR_COOKIE_SAMESITE
value, choosing a user ends on the page asked for, signed in, and a reload stays signed in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.faults.misbehaving import MisbehavingUpstream, misbehaving_upstream
from tests.idp import IdPClient, idp_process
from tests.support.browser import clear_browser_state, headless_chromium, wait_for_url
from tests.support.login import free_port, wait_for_login_blocking
from tests.support.process import SidecarProcess, start_sidecar_process

SECRET = "samesite-cookie-secret-0123456789abcdefgh"


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with headless_chromium(("--host-resolver-rules=MAP app.test 127.0.0.1",)) as driver:
        yield driver


@pytest.fixture(scope="module")
def provider() -> Iterator[IdPClient]:
    with idp_process() as running:
        running.client.configure(interactive=True)
        yield running.client


@pytest.fixture(scope="module")
def upstream() -> Iterator[MisbehavingUpstream]:
    with misbehaving_upstream() as running:
        yield running


def start(
    tmp_path: Path, provider: IdPClient, upstream: MisbehavingUpstream, samesite: str
) -> SidecarProcess:
    port = free_port()
    env = {
        "AUTHCAR_PORT": str(port),
        "AUTHCAR_UPSTREAM": upstream.url,
        "AUTHCAR_ALLOW_ANONYMOUS": "false",
        "AUTHCAR_OIDC_ISSUER_URL": provider.issuer,
        "AUTHCAR_OIDC_AUDIENCE": "api",
        "AUTHCAR_OIDC_CLIENT_ID": "authcar",
        "AUTHCAR_OIDC_CLIENT_SECRET": "authcar-secret",
        "AUTHCAR_LOGIN": "true",
        "AUTHCAR_OIDC_REDIRECT_URL": f"http://app.test:{port}/oauth2/callback",
        "AUTHCAR_COOKIE_SECRET": SECRET,
        "AUTHCAR_COOKIE_SECURE": "false",
        "AUTHCAR_COOKIE_SAMESITE": samesite,
        "AUTHCAR_ACCESS_LOG": "false",
        "AUTHCAR_SHUTDOWN_GRACE_PERIOD": "1",
    }
    sidecar = start_sidecar_process(tmp_path, env)
    try:
        wait_for_login_blocking(sidecar.url)
    except AssertionError:
        sidecar.stop()
        raise
    return sidecar


@pytest.mark.parametrize("samesite", ["lax", "strict"])
def test_a_sign_in_at_another_site_comes_back_signed_in(
    browser: WebDriver,
    provider: IdPClient,
    upstream: MisbehavingUpstream,
    tmp_path: Path,
    samesite: str,
) -> None:
    provider.register_client(
        "authcar", "authcar-secret", redirect_uris=["http://app.test:*"], post_logout_redirect_uris=[]
    )
    sidecar = start(tmp_path, provider, upstream, samesite)
    try:
        clear_browser_state(browser)
        upstream.requests.clear()
        app = f"http://app.test:{sidecar.port}"
        browser.get(app + "/books?page=2")
        wait_for_url(browser, provider.authorization_endpoint)
        browser.find_element(By.CSS_SELECTOR, "button[data-user='alice']").click()
        wait_for_url(browser, app + "/books?page=2")
        browser.refresh()
        assert browser.current_url == app + "/books?page=2"
        seen = [r.header("x-auth-request-user") for r in upstream.requests if r.target == "/books?page=2"]
        assert seen == ["alice", "alice"]
    finally:
        sidecar.stop()
