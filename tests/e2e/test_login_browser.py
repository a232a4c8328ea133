"""Browser login in a real browser: headless chromium signs in through the sidecar at the test
provider's sign-in page (a person choosing a user), comes back to the page it asked for, and the
application sees that person's identity and never the sidecar's cookies. The session cookie is out of
the page's reach (HttpOnly); sign-out ends the session, a page load then goes to sign-in again and a
script's fetch() gets 401 JSON, not a redirect; the sidecar's own error page renders.

The provider, the recording upstream and the sidecar share an event loop in a thread of their own:
the browser driver blocks, and the test hands that loop coroutines. Every wait is for a condition.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlencode

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.e2e.test_login import login_settings
from tests.idp import IdP, run_idp
from tests.support.browser import WAIT_TIMEOUT, clear_browser_state, headless_chromium, wait_for_url
from tests.support.login import free_port, wait_for_login
from tests.support.recording_upstream import ReceivedRequest, RecordingUpstream, serve_recording
from tests.support.sidecar import RunningSidecar, start_sidecar

T = TypeVar("T")
START_TIMEOUT = 60.0  # generous upper bound for the provider and the sidecar to start


@dataclass
class Stack:
    idp: IdP
    upstream: RecordingUpstream
    sidecar: RunningSidecar
    loop: asyncio.AbstractEventLoop

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def url(self, path: str) -> str:
        return self.sidecar.url + path

    def pages_seen(self) -> list[ReceivedRequest]:
        """What reached the application, without the browser's own favicon requests."""

        async def requests() -> list[ReceivedRequest]:
            return [r for r in self.upstream.requests() if not r.target.startswith(b"/favicon")]

        return self.run(requests())


@contextlib.asynccontextmanager
async def serving(loop: asyncio.AbstractEventLoop) -> AsyncIterator[Stack]:
    async with run_idp() as idp, serve_recording() as upstream:
        idp.interactive = True
        port = free_port()
        settings = login_settings(
            idp,
            port,
            # Back from the provider's logout to our sign_out, which (with no session left) says so.
            post_logout_redirect_url=f"http://127.0.0.1:{port}/oauth2/sign_out",
        )
        async with start_sidecar(upstream.url, **settings) as sidecar:
            await wait_for_login(sidecar.url)
            yield Stack(idp, upstream, sidecar, loop)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="login-browser-stack", daemon=True)
    thread.start()
    context = serving(loop)
    try:
        running = asyncio.run_coroutine_threadsafe(context.__aenter__(), loop).result(START_TIMEOUT)
        try:
            yield running
        finally:
            asyncio.run_coroutine_threadsafe(context.__aexit__(None, None, None), loop).result(START_TIMEOUT)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with headless_chromium() as driver:
        yield driver


@pytest.fixture
def fresh(browser: WebDriver, stack: Stack) -> WebDriver:
    """A browser with no cookies, and an upstream that has seen nothing yet."""
    clear_browser_state(browser)

    async def reset() -> None:
        await stack.upstream.quiet()
        stack.upstream.reset()

    stack.run(reset())
    return browser


def choose(browser: WebDriver, stack: Stack, user: str) -> None:
    """On the provider's sign-in page: sign in as `user`."""
    wait_for_url(browser, stack.idp.authorization_endpoint)
    WebDriverWait(browser, WAIT_TIMEOUT).until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-user]"))
    assert browser.title == "Sign in to authcar"
    browser.find_element(By.CSS_SELECTOR, f'[data-user="{user}"]').click()


def loaded(browser: WebDriver, url: str) -> None:
    """The browser is at `url` (exactly) and has finished loading it."""
    WebDriverWait(browser, WAIT_TIMEOUT).until(
        lambda d: d.current_url == url and d.execute_script("return document.readyState") == "complete"
    )


def sign_in(browser: WebDriver, stack: Stack, user: str, target: str) -> None:
    browser.get(stack.url(target))
    choose(browser, stack, user)
    loaded(browser, stack.url(target))
    WebDriverWait(browser, WAIT_TIMEOUT).until(lambda _: stack.pages_seen())


FETCH_SCRIPT = """
const done = arguments[arguments.length - 1];
fetch(arguments[0], {headers: {Accept: "application/json"}, redirect: "manual"})
  .then(async (r) => done([r.status, r.type, r.headers.get("content-type"), await r.text()]))
  .catch((e) => done(["failed", String(e)]));
"""


def test_a_page_load_signs_in_at_the_provider_and_returns_to_the_page(fresh: WebDriver, stack: Stack) -> None:
    fresh.get(stack.url("/books?x=1"))
    choose(fresh, stack, "bob")
    loaded(fresh, stack.url("/books?x=1"))
    WebDriverWait(fresh, WAIT_TIMEOUT).until(lambda _: stack.pages_seen())
    [seen] = stack.pages_seen()
    assert (seen.method, seen.target) == ("GET", b"/books?x=1")
    assert seen.header("x-auth-request-user") == b"bob"
    assert seen.header("x-auth-request-email") == b"bob@example.com"
    assert b"editor" in (seen.header("x-auth-request-groups") or b"")
    assert not any(b"authcar" in value for value in seen.all("cookie"))
    # What the page shows is the application's answer to that request.
    assert '"target": "/books?x=1"' in fresh.find_element(By.TAG_NAME, "body").text


def test_the_session_cookie_is_httponly_out_of_the_pages_reach(fresh: WebDriver, stack: Stack) -> None:
    sign_in(fresh, stack, "alice", "/books")
    cookies = fresh.execute_cdp_cmd("Network.getCookies", {"urls": [stack.url("/")]})["cookies"]
    [session] = [c for c in cookies if c["name"] == stack.sidecar.settings.session_cookie_name()]
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Lax"
    assert session["value"] not in fresh.execute_script("return document.cookie")
    assert "authcar" not in fresh.execute_script("return document.cookie")


def test_sign_out_ends_the_session_and_the_next_page_load_signs_in_again(
    fresh: WebDriver, stack: Stack
) -> None:
    sign_in(fresh, stack, "carol", "/books")
    fresh.get(stack.url("/oauth2/sign_out"))
    # Through the provider's logout, back to our sign_out, which has no session left to end.
    wait_for_url(fresh, stack.url("/oauth2/sign_out"))
    WebDriverWait(fresh, WAIT_TIMEOUT).until(lambda d: d.title == "Signed out")
    assert fresh.find_element(By.TAG_NAME, "h1").text == "Signed out"
    assert stack.sidecar.settings.session_cookie_name() not in {c["name"] for c in fresh.get_cookies()}

    fresh.get(stack.url("/books?after=sign-out"))
    choose(fresh, stack, "alice")  # the sign-in page again, not carol's session
    loaded(fresh, stack.url("/books?after=sign-out"))
    WebDriverWait(fresh, WAIT_TIMEOUT).until(lambda _: len(stack.pages_seen()) == 2)
    assert [s.header("x-auth-request-user") for s in stack.pages_seen()] == [b"carol", b"alice"]


def test_a_script_fetch_after_the_session_ended_gets_401_json_not_a_redirect(
    fresh: WebDriver, stack: Stack
) -> None:
    sign_in(fresh, stack, "alice", "/books")
    ok = fresh.execute_async_script(FETCH_SCRIPT, "/books/1")
    assert ok[0] == 200
    # The person signs out in another tab; this page stays open.
    page = fresh.current_window_handle
    fresh.switch_to.new_window("tab")
    fresh.get(stack.url("/oauth2/sign_out"))
    WebDriverWait(fresh, WAIT_TIMEOUT).until(lambda d: d.title == "Signed out")
    fresh.close()
    fresh.switch_to.window(page)

    status, kind, content_type, body = fresh.execute_async_script(FETCH_SCRIPT, "/books/2")
    assert (status, kind) == (401, "basic")  # an answer, not an opaque redirect to sign in
    assert content_type.startswith("application/json")
    assert '"error":"no_credentials"' in body.replace(" ", "")
    assert [s.target for s in stack.pages_seen()] == [b"/books", b"/books/1"]


def test_the_sidecars_error_page_renders_for_a_callback_it_did_not_start(
    fresh: WebDriver, stack: Stack
) -> None:
    # A login under way (its state cookie set), then a callback whose state is not that login's.
    fresh.get(stack.url("/books"))
    wait_for_url(fresh, stack.idp.authorization_endpoint)
    query = urlencode({"state": "not-the-state-we-sent", "code": "x", "iss": stack.idp.issuer})
    fresh.get(stack.url(f"/oauth2/callback?{query}"))
    WebDriverWait(fresh, WAIT_TIMEOUT).until(lambda d: d.find_elements(By.TAG_NAME, "h1"))
    assert fresh.title == "Sign-in refused"
    main = fresh.find_element(By.TAG_NAME, "main")
    assert "not started here" in main.text
    link = main.find_element(By.LINK_TEXT, "Try signing in again")
    assert link.get_attribute("href") == stack.url("/")
    # Its style applied under its own Content-Security-Policy (no external assets to load).
    assert main.value_of_css_property("max-width") == "576px"
    assert stack.sidecar.settings.session_cookie_name() not in {c["name"] for c in fresh.get_cookies()}
    assert stack.pages_seen() == []
