"""A real headless browser for the tests: Debian's chromium driven by selenium through chromedriver.

Tools that download their own browser do not work here (no network, and the point is the browser users
have), so the binaries are the system's: `apt-get install chromium chromium-driver` (.ci/run does).
Without them a browser test skips with the reason, except under CI=true, where it fails.

    with headless_chromium() as driver:   # one per test module: a start costs about a second
        driver.get(url)

Each browser gets its own temporary profile; clear_browser_state() forgets cookies and storage between
tests sharing one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.support import system

# Generous upper bounds only: a page of this suite loads in milliseconds.
PAGE_LOAD_TIMEOUT = 30.0
WAIT_TIMEOUT = 15.0
BROWSER_NAMES = ("chromium", "chromium-browser")
DRIVER_NAMES = ("chromedriver",)
DEBIAN_PLACES = (Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver"))
FLAGS = (
    "--headless=new",
    "--no-sandbox",  # the suite runs as root in CI containers, where chromium's sandbox cannot start
    "--disable-dev-shm-usage",  # containers give /dev/shm 64 MB; chromium then crashes on big pages
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",  # no calls home: the tests must not depend on the network
    "--disable-component-update",
    "--disable-sync",
    "--password-store=basic",
    "--window-size=1280,900",
)


def unavailable(what: str) -> NoReturn:
    system.unavailable(what, "apt-get install chromium chromium-driver")


def find_binary(names: tuple[str, ...], fallback: Path) -> str | None:
    for name in names:
        if found := shutil.which(name):
            return found
    return str(fallback) if fallback.is_file() and os.access(fallback, os.X_OK) else None


def browser_binaries() -> tuple[str, str]:
    """(chromium, chromedriver), or a skip (a failure under CI) naming what is missing."""
    chromium = find_binary(BROWSER_NAMES, DEBIAN_PLACES[0])
    driver = find_binary(DRIVER_NAMES, DEBIAN_PLACES[1])
    if chromium is None or driver is None:
        missing = [name for name, path in (("chromium", chromium), ("chromedriver", driver)) if path is None]
        unavailable(" and ".join(missing))
    return chromium, driver


@contextmanager
def headless_chromium(extra_flags: tuple[str, ...] = ()) -> Iterator[WebDriver]:
    """A headless chromium with a profile of its own, quit (and the profile removed) at the end.
    `extra_flags`: more command-line switches, e.g. `--host-resolver-rules=MAP * 127.0.0.1` so that
    any host name reaches a local server."""
    chromium, chromedriver = browser_binaries()
    with tempfile.TemporaryDirectory(prefix="authcar-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in (*FLAGS, *extra_flags, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        service = Service(executable_path=chromedriver, log_output=str(Path(profile) / "chromedriver.log"))
        driver = webdriver.Chrome(service=service, options=options)
        try:
            driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT)
            yield driver
        finally:
            driver.quit()  # ends chromium and chromedriver before the profile goes


def clear_browser_state(driver: WebDriver) -> None:
    """Forget every cookie and all storage (a fresh visitor), whichever site the browser is on."""
    driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
    driver.execute_cdp_cmd("Storage.clearDataForOrigin", {"origin": "*", "storageTypes": "all"})
    driver.get("about:blank")


def wait_for_url(driver: WebDriver, prefix: str, timeout: float = WAIT_TIMEOUT) -> str:
    """The browser's URL once it starts with `prefix` (after redirects and form posts settle)."""
    WebDriverWait(driver, timeout).until(lambda d: d.current_url.startswith(prefix))
    return str(driver.current_url)


# What the browser makes of URLs, by the WHATWG URL parser every page uses for links and Location.
PARSE_SCRIPT = """
const base = arguments[1];
return arguments[0].map(function (url) {
  try { const u = new URL(url, base);
        return [u.href, u.protocol, u.hostname, u.port, u.username, u.pathname]; }
  catch (e) { return null; }
});
"""
PARSED_PARTS = ("href", "protocol", "hostname", "port", "username", "pathname")


def browser_parse_all(driver: WebDriver, urls: list[str], base: str) -> list[dict[str, str] | None]:
    """`new URL(url, base)` in the browser for each url, in one round trip: href, protocol, hostname,
    port, username, pathname, or None where the browser refuses to parse it."""
    parsed = driver.execute_script(PARSE_SCRIPT, urls, base)
    return [None if parts is None else dict(zip(PARSED_PARTS, parts, strict=True)) for parts in parsed]


def browser_parse(driver: WebDriver, url: str, base: str) -> dict[str, str] | None:
    return browser_parse_all(driver, [url], base)[0]
