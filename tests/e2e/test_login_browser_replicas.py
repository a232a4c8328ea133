"""A person in a real browser (Debian's chromium, driven by selenium) signs in through two sidecar
replicas that share one redis-server, at the test provider's interactive sign-in page:

open a protected page on replica A -> the provider's sign-in page -> choose a user -> back at the
original URL, the application seeing that user; reload without a new login; replica B knows the
session too; sign out -> asked to sign in again; sign in again, then the provider's back-channel
logout, delivered to replica B, ends the session on replica A.

Cookies are not separated by port, so the two replicas on 127.0.0.1 share the browser's cookie as two
pods behind one Service would. Everything here is a real process: the provider (blocking selenium
would stall one in the test's event loop), the sidecars, the upstream and Redis.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.faults.misbehaving import MisbehavingUpstream, misbehaving_upstream
from tests.idp import IdPClient, idp_process
from tests.support.browser import clear_browser_state, headless_chromium, wait_for_url
from tests.support.login import free_port, wait_for_login_blocking
from tests.support.process import SidecarProcess, start_sidecar_process
from tests.support.redis_servers import redis_server_binary, standalone

SECRET = "browser-replicas-cookie-secret-0123456789"


@dataclass
class Deployment:
    idp: IdPClient
    upstream: MisbehavingUpstream
    a: SidecarProcess
    b: SidecarProcess


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with headless_chromium() as driver:
        yield driver


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    redis_server_binary()  # skips with its reason where redis-server is missing (fails in CI)
    workdir = tmp_path_factory.mktemp("browser-replicas")
    with idp_process() as idp, misbehaving_upstream() as upstream, standalone(workdir) as redis:
        idp.client.configure(interactive=True)
        port_a, port_b = free_port(), free_port()
        base = {
            "AUTHCAR_UPSTREAM": upstream.url,
            "AUTHCAR_ALLOW_ANONYMOUS": "false",
            "AUTHCAR_OIDC_ISSUER_URL": idp.client.issuer,
            "AUTHCAR_OIDC_AUDIENCE": "api",
            "AUTHCAR_OIDC_CLIENT_ID": "authcar",
            "AUTHCAR_OIDC_CLIENT_SECRET": "authcar-secret",
            "AUTHCAR_LOGIN": "true",
            # Both replicas are "our host" at A, as pods behind one Service are at its name.
            "AUTHCAR_OIDC_REDIRECT_URL": f"http://127.0.0.1:{port_a}/oauth2/callback",
            "AUTHCAR_POST_LOGOUT_REDIRECT_URL": f"http://127.0.0.1:{port_a}/",
            "AUTHCAR_COOKIE_SECRET": SECRET,
            "AUTHCAR_COOKIE_SECURE": "false",
            "AUTHCAR_REDIS_URL": redis.url,
            "AUTHCAR_ACCESS_LOG": "false",
            "AUTHCAR_SHUTDOWN_GRACE_PERIOD": "1",
        }
        started: list[SidecarProcess] = []
        try:
            for port in (port_a, port_b):
                started.append(start_sidecar_process(workdir, {**base, "AUTHCAR_PORT": str(port)}))
            for replica in started:
                wait_for_login_blocking(replica.url)
            yield Deployment(idp.client, upstream, started[0], started[1])
        finally:
            for replica in started:
                replica.stop()


def sign_in_page(browser: WebDriver, deployment: Deployment) -> None:
    wait_for_url(browser, deployment.idp.authorization_endpoint)
    browser.find_element(By.CSS_SELECTOR, "button[data-user='alice']")  # the page, not an error


def choose(browser: WebDriver, user: str) -> None:
    browser.find_element(By.CSS_SELECTOR, f"button[data-user='{user}']").click()


def users_seen(upstream: MisbehavingUpstream, path: str) -> list[str | None]:
    return [r.header("x-auth-request-user") for r in upstream.requests if r.target == path]


def test_a_person_signs_in_stays_signed_in_on_both_replicas_and_is_signed_out_everywhere(
    browser: WebDriver, deployment: Deployment
) -> None:
    a, b, idp, upstream = deployment.a, deployment.b, deployment.idp, deployment.upstream
    clear_browser_state(browser)
    upstream.requests.clear()

    browser.get(a.url + "/books/7?sort=title&page=2")
    sign_in_page(browser, deployment)
    assert upstream.requests == []  # nothing reached the application before signing in
    choose(browser, "alice")
    wait_for_url(browser, a.url + "/books/7?sort=title&page=2")
    assert users_seen(upstream, "/books/7?sort=title&page=2") == ["alice"]
    [sid] = idp.sessions_of("alice")

    browser.refresh()  # no new login: the provider is not visited again
    assert browser.current_url == a.url + "/books/7?sort=title&page=2"
    assert users_seen(upstream, "/books/7?sort=title&page=2") == ["alice", "alice"]
    assert idp.sessions_of("alice") == [sid]
    # The session cookie is HttpOnly: the page's scripts cannot read it.
    assert "authcar" not in browser.execute_script("return document.cookie")

    browser.get(b.url + "/shelf")  # the other replica reads the same session from Redis
    assert browser.current_url == b.url + "/shelf"
    assert users_seen(upstream, "/shelf") == ["alice"]

    browser.get(a.url + "/oauth2/sign_out")  # RP-initiated logout, then back to A, which asks again
    sign_in_page(browser, deployment)
    assert idp.sessions_of("alice") == []
    seen = len(upstream.requests)
    browser.get(b.url + "/shelf")
    sign_in_page(browser, deployment)
    assert len(upstream.requests) == seen

    # Signed in again; then the provider ends that session over the back channel, at replica B.
    browser.get(a.url + "/books")
    sign_in_page(browser, deployment)
    choose(browser, "alice")
    wait_for_url(browser, a.url + "/books")
    [again] = idp.sessions_of("alice")
    delivered = idp.backchannel_logout(sid=again, uri=b.url + "/oauth2/backchannel_logout")
    assert delivered["status"] == 200, delivered
    seen = len(upstream.requests)
    browser.refresh()
    sign_in_page(browser, deployment)
    assert len(upstream.requests) == seen
