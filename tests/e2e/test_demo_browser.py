"""`authcar demo` in a real browser: headless chromium opens the book list, signs in at the development
issuer's page by pressing a user's button, sees the book service's answer as that user, and signs out
back to the sign-in page. What httpx cannot show: the pages work under their own
Content-Security-Policy (the form's answer may redirect to the sidecar), with the browser's cookie
rules for plain-HTTP development cookies.

The demo runs in an event loop of its own thread (the browser driver blocks).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from authcar.demo import BROWSER_PATH, RunningDemo, running_demo, wait_ready
from tests.support.browser import WAIT_TIMEOUT, headless_chromium, wait_for_url

START_TIMEOUT = 60.0  # generous upper bound for the demo's parts to start


@asynccontextmanager
async def ready_demo() -> AsyncIterator[RunningDemo]:
    async with running_demo(0, 0) as demo:
        assert await wait_ready(demo.urls.admin, asyncio.Event())
        yield demo


@pytest.fixture(scope="module")
def demo() -> Iterator[RunningDemo]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="demo-browser", daemon=True)
    thread.start()
    context = ready_demo()
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


def sign_in_page(browser: WebDriver, demo: RunningDemo) -> None:
    wait_for_url(browser, f"{demo.urls.issuer}/authorize?")
    WebDriverWait(browser, WAIT_TIMEOUT).until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-user]"))
    assert browser.title == "Sign in to the authcar demo"


def test_a_person_signs_in_sees_the_books_and_signs_out_in_a_browser(
    browser: WebDriver, demo: RunningDemo
) -> None:
    books = demo.urls.public + BROWSER_PATH
    browser.get(books)
    sign_in_page(browser, demo)
    buttons = browser.find_elements(By.CSS_SELECTOR, "[data-user]")
    assert [b.text for b in buttons] == [
        "Sign in as alice (reader)",
        "Sign in as bob (editor)",
        "Sign in as carol (admin)",
    ]
    buttons[1].click()

    WebDriverWait(browser, WAIT_TIMEOUT).until(
        lambda d: d.current_url == books and d.execute_script("return document.readyState") == "complete"
    )
    shown = json.loads(browser.find_element(By.TAG_NAME, "body").text)
    assert "books" in shown
    browser.get(demo.urls.public + "/oauth2/userinfo")
    me = json.loads(browser.find_element(By.TAG_NAME, "body").text)
    assert (me["sub"], me["groups"]) == ("bob", ["editor"])

    browser.get(demo.urls.public + "/oauth2/sign_out")
    # Through the issuer's logout to the book list, which asks who you are again.
    sign_in_page(browser, demo)
    assert not [c for c in browser.get_cookies() if c["name"] == demo.sidecar.settings.session_cookie_name()]
