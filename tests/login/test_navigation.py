"""Page loads or API calls: the header rules alone, and the headers a real chromium sends when it
opens a page, follows a link, submits a form, or runs fetch()/XHR, an image and an iframe from it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from authcar.login.navigation import is_page_load, return_to
from tests.support.browser import WAIT_TIMEOUT, headless_chromium
from tests.support.threaded_http import QuietHandler, serve_in_thread

CHROMIUM = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
FIREFOX = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def h(**headers: str) -> list[tuple[bytes, bytes]]:
    return [(name.replace("_", "-").lower().encode(), value.encode()) for name, value in headers.items()]


@pytest.mark.parametrize(
    ("method", "headers", "page"),
    [
        ("GET", h(Accept=CHROMIUM), True),
        ("GET", h(Accept=FIREFOX), True),
        ("HEAD", h(Accept="text/html"), True),
        ("get", h(Accept="TEXT/HTML"), True),
        ("GET", h(Accept=CHROMIUM, Sec_Fetch_Mode="navigate", Sec_Fetch_Dest="document"), True),
        ("GET", h(Accept="text/html, application/json"), True),
        ("GET", [], False),  # curl without -H, most SDKs
        ("GET", h(Accept="*/*"), False),  # fetch()'s default
        ("GET", h(Accept="application/json"), False),
        ("GET", h(Accept="application/json, text/html;q=0.9"), False),
        ("GET", h(Accept="text/html;q=0"), False),
        ("GET", h(Accept="text/html;q=nan"), False),
        ("GET", h(Accept="text/html;q=2"), False),
        ("GET", h(Accept="text/*"), False),
        ("POST", h(Accept=CHROMIUM), False),  # a form post is not a page to come back to
        ("PUT", h(Accept=CHROMIUM), False),
        ("GET", h(Accept=CHROMIUM, X_Requested_With="XMLHttpRequest"), False),
        ("GET", h(Accept=CHROMIUM, Sec_Fetch_Mode="cors"), False),
        ("GET", h(Accept=CHROMIUM, Sec_Fetch_Mode="navigate", Sec_Fetch_Dest="iframe"), False),
        ("GET", h(Accept=CHROMIUM, Sec_Fetch_Mode="no-cors", Sec_Fetch_Dest="image"), False),
        ("GET", h(Accept="application/json;q=0.1," * 100 + "text/html"), False),  # read no further than 64
    ],
)
def test_page_loads_and_api_calls_by_their_headers(
    method: str, headers: list[tuple[bytes, bytes]], page: bool
) -> None:
    assert is_page_load(method, headers) is page


def test_several_accept_headers_are_one_list() -> None:
    assert is_page_load("GET", [(b"accept", b"application/xml"), (b"Accept", b"text/html")])


def test_return_to_is_the_target_as_it_arrived() -> None:
    assert return_to(b"/books/%2F1", b"page=2&q=a+b") == "/books/%2F1?page=2&q=a+b"
    assert return_to(b"/", b"") == "/"


@dataclass
class Recorder:
    port: int = 0
    seen: dict[str, tuple[str, list[tuple[bytes, bytes]]]] = field(default_factory=dict)  # path -> request
    lock: threading.Lock = field(default_factory=threading.Lock)


PAGE = b"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>app</title></head><body>
<a id="link" href="/linked">a link</a>
<form id="form" method="get" action="/submitted"><button id="submit">go</button></form>
<img src="/image" alt=""><iframe src="/frame" title="frame"></iframe>
<script>
fetch("/fetch-default");
fetch("/fetch-json", {headers: {"Accept": "application/json"}});
const x = new XMLHttpRequest(); x.open("GET", "/xhr");
x.setRequestHeader("X-Requested-With", "XMLHttpRequest"); x.send();
</script></body></html>"""


def recorder_handler(recorder: Recorder) -> type[QuietHandler]:
    class Handler(QuietHandler):
        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            headers = [
                (name.lower().encode(), value.encode("latin-1")) for name, value in self.headers.items()
            ]
            with recorder.lock:
                recorder.seen[path] = (self.command, headers)
            self.answer(200, PAGE if path == "/" else b"<!doctype html><title>x</title>")

    return Handler


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    recording = Recorder()
    with serve_in_thread(recorder_handler(recording)) as port:
        recording.port = port
        yield recording


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with headless_chromium() as driver:
        yield driver


def test_chromiums_own_requests_are_told_apart(browser: WebDriver, recorder: Recorder) -> None:
    browser.get(f"http://127.0.0.1:{recorder.port}/")
    subresources = {"/", "/image", "/frame", "/fetch-default", "/fetch-json", "/xhr"}
    WebDriverWait(browser, WAIT_TIMEOUT).until(lambda _: subresources <= recorder.seen.keys())
    browser.find_element(By.ID, "link").click()
    WebDriverWait(browser, WAIT_TIMEOUT).until(lambda _: "/linked" in recorder.seen)
    browser.back()
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, WAIT_TIMEOUT).until(lambda _: "/submitted" in recorder.seen)

    verdicts = {path: is_page_load(method, headers) for path, (method, headers) in recorder.seen.items()}
    pages = {"/", "/linked", "/submitted"}
    assert {path: verdict for path, verdict in verdicts.items() if verdict != (path in pages)} == {}
    # Without Fetch Metadata (an older browser, a proxy that strips it) content negotiation alone
    # still tells fetch() and XHR from page loads.
    bare = {
        path: is_page_load(method, [(k, v) for k, v in headers if not k.startswith(b"sec-fetch-")])
        for path, (method, headers) in recorder.seen.items()
        if path in pages | {"/fetch-default", "/fetch-json", "/xhr"}
    }
    assert bare == {path: path in pages for path in bare}
