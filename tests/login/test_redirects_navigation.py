"""Redirect targets followed by a real browser, not only parsed: chromium resolves every host name to
a local server, is sent a 302 to each target, and the server records the Host it finally arrives at.
Accepted targets arrive on our host or an allowed one; the refused forms really do arrive elsewhere."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from authcar.login.redirects import RedirectPolicy
from tests.login.test_redirects import CORPUS, generated_targets
from tests.support.browser import WAIT_TIMEOUT, headless_chromium
from tests.support.threaded_http import QuietHandler, serve_in_thread

SAMPLE = 100  # generated targets followed per run (the first ones, so the same every run)


@dataclass
class Landing:
    """A server that answers /go?to=<target> with a 302 there, and records the Host of everything else."""

    port: int = 0
    arrivals: list[tuple[str, str]] = field(default_factory=list)  # (Host, path) of each arrival
    lock: threading.Lock = field(default_factory=threading.Lock)


def landing_handler(landing: Landing) -> type[QuietHandler]:
    class Handler(QuietHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path == "/favicon.ico":  # the browser's own request, not a navigation
                self.answer(404)
            elif parts.path == "/go":
                self.send_response(302)
                self.send_header("Location", parse_qs(parts.query)["to"][0])
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                with landing.lock:
                    landing.arrivals.append((self.headers.get("Host", ""), self.path))
                self.answer(200)

    return Handler


@pytest.fixture(scope="module")
def landing() -> Iterator[Landing]:
    spot = Landing()
    with serve_in_thread(landing_handler(spot)) as port:
        spot.port = port
        yield spot


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    # Every name resolves to the landing server; only the port in the URL decides which port.
    with headless_chromium(("--host-resolver-rules=MAP * 127.0.0.1",)) as driver:
        yield driver


def follow(browser: WebDriver, landing: Landing, target: str) -> str:
    """Where the browser arrives after a 302 to `target` from our page: the Host it sent there."""
    with landing.lock:
        landing.arrivals.clear()
    browser.get(f"http://books.example:{landing.port}/go?to={quote(target, safe='')}")
    WebDriverWait(browser, WAIT_TIMEOUT).until(lambda _: landing.arrivals)
    with landing.lock:
        [(host, _)] = landing.arrivals
    return host


def http_forms(port: int) -> list[str]:
    """The corpus's targets for an http origin on `port`: paths as they are, our https URLs as http."""
    forms = [t for t in (*CORPUS["accepted"], *CORPUS["refused"]) if t.isascii() and t.isprintable()]
    return [t.replace("books.example", f"books.example:{port}").replace("https:", "http:") for t in forms]


def test_accepted_targets_arrive_on_our_or_an_allowed_host(browser: WebDriver, landing: Landing) -> None:
    ours, allowed = f"books.example:{landing.port}", f"shop.example:{landing.port}"
    policy = RedirectPolicy.build(f"http://{ours}/oauth2/callback", [allowed])
    paths = [t for t in generated_targets() if t.startswith("/") and policy.allows(t)][:SAMPLE]
    absolute = [f"http://{ours}/x", f"http://{allowed}/y?z=1", f"HTTP://SHOP.example:{landing.port}/"]
    targets = [t for t in http_forms(landing.port) if policy.allows(t)] + paths + absolute
    assert len(targets) > SAMPLE
    arrived = {target: follow(browser, landing, target) for target in targets}
    assert {target: host for target, host in arrived.items() if host not in (ours, allowed)} == {}


def test_refused_targets_would_have_arrived_elsewhere(browser: WebDriver, landing: Landing) -> None:
    port = landing.port
    evil = f"evil.example:{port}"
    for target in (
        f"//{evil}/",
        f"/\\{evil}/",
        f"///{evil}/",
        f"\\\\{evil}/",
        f"http://books.example:{port}@{evil}/",
    ):
        assert not RedirectPolicy.build(f"http://books.example:{port}/oauth2/callback").allows(target)
        assert follow(browser, landing, target) == evil, target
