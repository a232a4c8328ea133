"""The sidecar's own pages: self-contained, accessible basics, everything escaped; and in a real
browser their style applies under their own Content-Security-Policy (and a changed one would not)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from authcar.login.pages import PAGE_HEADERS, STYLE, continue_page, error_page, page, signed_out_page
from tests.support.browser import headless_chromium
from tests.support.threaded_http import QuietHandler, serve_in_thread


@dataclass
class Outline(HTMLParser):
    tags: list[tuple[str, dict[str, str | None]]] = field(default_factory=list)
    text: dict[str, str] = field(default_factory=dict)  # tag -> its text (last seen)
    current: str = ""

    def __post_init__(self) -> None:
        super().__init__()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self.current = tag

    def handle_data(self, data: str) -> None:
        self.text[self.current] = self.text.get(self.current, "") + data


def outline(html: bytes) -> Outline:
    parsed = Outline()
    parsed.feed(html.decode())
    return parsed


PAGES = {
    "error": error_page(
        403, "This sign-in was not started here.", request_id="r-1", retry_path="/oauth2/start"
    ),
    "signed out": signed_out_page("/oauth2/start"),
}


@pytest.mark.parametrize("name", PAGES)
def test_pages_are_self_contained_and_have_the_accessible_basics(name: str) -> None:
    parsed = outline(PAGES[name])
    names = [tag for tag, _ in parsed.tags]
    assert names[0] == "html"
    assert parsed.tags[0][1]["lang"] == "en"
    assert names.count("h1") == 1
    assert names.count("main") == 1
    assert parsed.text["title"] == parsed.text["h1"]
    assert not {"script", "img", "link", "iframe", "object", "embed", "form", "base"} & set(names)
    for _, attrs in parsed.tags:
        assert "src" not in attrs
        assert not [k for k in attrs if k.startswith("on")]  # no inline handlers
        assert attrs.get("href") is None or str(attrs["href"]).startswith("/")


def test_the_continue_page_escapes_its_target() -> None:
    # rd may hold any printable ASCII but a backslash (authcar/login/redirects.py): quotes and
    # angle brackets included.
    body = continue_page("/books?q=\"><script>alert(1)</script>&x='y'").decode()
    assert "<script>" not in body
    assert 'content="0;url=/books?q=&quot;&gt;&lt;script&gt;' in body
    assert "&#x27;y&#x27;" in body


def test_everything_shown_is_escaped() -> None:
    hostile = '<script>alert(1)</script>"'
    html = error_page(400, hostile, request_id=hostile, retry_path='/x"><script>')
    assert b"<script>" not in html
    assert b"&lt;script&gt;alert(1)&lt;/script&gt;&quot;" in html
    with pytest.raises(ValueError, match="our own paths"):
        page("t", [], link=("elsewhere", "https://evil.example/"))
    with pytest.raises(ValueError, match="our own paths"):
        page("t", [], link=("elsewhere", "javascript:alert(1)"))


def luminance(color: str) -> float:
    """WCAG 2 relative luminance of `#rgb` or `#rrggbb`."""
    digits = color[1:] if len(color) == 7 else "".join(c * 2 for c in color[1:])
    channels = [int(digits[i : i + 2], 16) / 255 for i in (0, 2, 4)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_text_contrast_meets_wcag_aa_in_light_and_dark() -> None:
    schemes = re.findall(r"--fg:(#\w+);--bg:(#\w+);--muted:(#\w+);--link:(#\w+)", STYLE)
    assert len(schemes) == 2
    for fg, bg, muted, link in schemes:
        assert contrast(fg, bg) >= 7  # AAA for the text
        assert contrast(muted, bg) >= 4.5  # AA for the small print
        assert contrast(link, bg) >= 4.5


@dataclass
class Site:
    pages: dict[str, bytes]
    port: int = 0


def site_handler(site: Site) -> type[QuietHandler]:
    class Handler(QuietHandler):
        def do_GET(self) -> None:
            body = site.pages[self.path]
            self.send_response(403)
            for name, value in PAGE_HEADERS:
                self.send_header(name.decode(), value.decode())
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    tampered = PAGES["error"].replace(b"max-width:36rem", b"max-width:35rem")  # the hash no longer fits
    served = Site({"/error": PAGES["error"], "/signed-out": PAGES["signed out"], "/tampered": tampered})
    with serve_in_thread(site_handler(served)) as port:
        served.port = port
        yield served


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with headless_chromium() as driver:
        yield driver


def main_width(browser: WebDriver, url: str) -> str:
    browser.get(url)
    return str(browser.execute_script("return getComputedStyle(document.querySelector('main')).maxWidth"))


def test_the_pages_style_applies_under_their_own_csp_in_a_real_browser(
    browser: WebDriver, site: Site
) -> None:
    origin = f"http://127.0.0.1:{site.port}"
    assert main_width(browser, f"{origin}/error") == "576px"  # 36rem: the style ran
    assert browser.title == "Sign-in refused"
    assert main_width(browser, f"{origin}/signed-out") == "576px"
    assert browser.execute_script("return document.documentElement.lang") == "en"
    assert main_width(browser, f"{origin}/tampered") == "none"  # the CSP blocks a style it did not hash
