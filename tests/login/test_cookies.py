"""The sidecar's cookies: read by exact name only, removed under every spelling before forwarding,
and set so that a real chromium keeps them, sends them back, and hides them from page scripts."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from authcar.login.cookies import SidecarCookies
from tests.support.browser import headless_chromium
from tests.support.threaded_http import QuietHandler, serve_in_thread

COOKIES = SidecarCookies("__Host-authcar", secure=True, samesite="lax")


@pytest.mark.parametrize(
    ("headers", "session"),
    [
        ([b"__Host-authcar=abc"], "abc"),
        ([b"a=1; __Host-authcar=abc; b=2"], "abc"),
        ([b"a=1", b"__Host-authcar=abc"], "abc"),
        ([], None),
        ([b"a=1"], None),
        ([b"__Host-authcar=abc; __Host-authcar=def"], None),  # a tossed cookie beside ours
        ([b"__Host-authcar=abc", b"__host-authcar=def"], None),  # a disguised second one
        ([b"__Host%2Dauthcar=abc"], None),
        ([b"__Host-authcar=a b"], None),
        ([b"__Host-authcar"], None),
    ],
)
def test_the_session_id_is_one_cookie_of_exactly_its_name(headers: list[bytes], session: str | None) -> None:
    assert COOKIES.session_id(headers) == session


@pytest.mark.parametrize(
    ("headers", "forwarded"),
    [
        ([b"a=1; __Host-authcar=abc; b=2"], [b"a=1; b=2"]),
        ([b"__Host-authcar=abc"], []),
        ([b"__Host-authcar-login-0123456789abcdef=v1.x.y; theme=dark"], [b"theme=dark"]),
        (
            [b"__host-authcar=x; __HOST_AUTHCAR=y; __Host.authcar=z; %5F%5FHost-authcar=w; keep=1"],
            [b"keep=1"],
        ),
        ([b"__Host%252Dauthcar=x; keep=1"], [b"keep=1"]),  # encoded twice
        ([b"keep=1, __Host-authcar=x"], []),  # RFC 2109 parsers split on ','
        ([b"a=1", b"__Host-authcar=x", b"b=2"], [b"a=1", b"b=2"]),
        ([b"  a=1 ;;  b=2  "], [b"a=1; b=2"]),
        ([b"authcar=1; my-authcar=2; hostauth=3"], [b"authcar=1; my-authcar=2; hostauth=3"]),
    ],
)
def test_our_cookies_never_reach_the_application(headers: list[bytes], forwarded: list[bytes]) -> None:
    assert COOKIES.without_ours(headers) == forwarded


def test_a_login_state_cookie_is_lax_even_when_the_session_cookie_is_strict() -> None:
    # The provider's redirect to the callback is cross-site: a Strict state cookie would not come
    # back with it and no sign-in could finish.
    strict = SidecarCookies("__Host-authcar", secure=True, samesite="strict")
    assert b"SameSite=Strict" in strict.set_cookie("__Host-authcar", "sid")
    login = strict.set_cookie(strict.login_name("0123456789abcdef"), "v1.x.y", max_age=600)
    assert b"SameSite=Lax" in login
    assert b"SameSite=Strict" not in login
    none = SidecarCookies("__Host-authcar", secure=True, samesite="none")
    assert b"SameSite=None" in none.set_cookie(none.login_name("0123456789abcdef"), "v1.x.y")


def test_login_state_cookies_are_found_by_their_exact_prefix() -> None:
    headers = [
        b"__Host-authcar-login-aaaa=1; __Host-authcar=sid; other-login-bbbb=2",
        b"__Host-authcar-login-cccc=3",
    ]
    assert COOKIES.login_names(headers) == ["__Host-authcar-login-aaaa", "__Host-authcar-login-cccc"]


def test_set_cookie_has_what_the_host_prefix_requires() -> None:
    assert COOKIES.set_cookie("__Host-authcar", "abc", max_age=60) == (
        b"__Host-authcar=abc; Path=/; HttpOnly; SameSite=Lax; Secure; Max-Age=60"
    )
    assert COOKIES.clear_cookie("__Host-authcar") == (
        b"__Host-authcar=x; Path=/; HttpOnly; SameSite=Lax; Secure; Max-Age=0"
    )
    plain = SidecarCookies("authcar", secure=False, samesite="strict")
    assert plain.set_cookie("authcar", "abc") == b"authcar=abc; Path=/; HttpOnly; SameSite=Strict"
    for name, value in (
        ("other", "abc"),
        ("__Host-authcar", "a;b"),
        ("__Host-authcar", "a\r\nSet-Cookie: x=y"),
    ):
        with pytest.raises(ValueError, match="not one of"):
            COOKIES.set_cookie(name, value)


@dataclass
class Site:
    cookies: SidecarCookies
    received: list[str] = field(default_factory=list)  # Cookie headers, one per request
    port: int = 0


def site_handler(site: Site) -> type[QuietHandler]:
    class Handler(QuietHandler):
        def do_GET(self) -> None:
            site.received.append(self.headers.get("Cookie", ""))
            self.send_response(200)
            if self.path == "/set":
                name = site.cookies.session_name
                self.send_header("Set-Cookie", site.cookies.set_cookie(name, "sess1", max_age=600).decode())
                login = site.cookies.login_name("0123456789abcdef")
                self.send_header("Set-Cookie", site.cookies.set_cookie(login, "v1.a.b", max_age=600).decode())
            elif self.path == "/clear":
                self.send_header("Set-Cookie", site.cookies.clear_cookie(site.cookies.session_name).decode())
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with headless_chromium() as driver:
        yield driver


@pytest.mark.parametrize(
    "cookies",
    [
        SidecarCookies(
            "__Host-authcar", secure=True, samesite="lax"
        ),  # Secure on http://127.0.0.1 is allowed
        SidecarCookies("authcar", secure=False, samesite="strict"),  # plain-HTTP development
    ],
    ids=["host-prefix-secure", "plain-http"],
)
def test_a_real_browser_keeps_sends_hides_and_forgets_them(
    browser: WebDriver, cookies: SidecarCookies
) -> None:
    site = Site(cookies)
    with serve_in_thread(site_handler(site)) as port:
        origin = f"http://127.0.0.1:{port}"
        browser.delete_all_cookies()
        browser.get(f"{origin}/set")
        browser.get(f"{origin}/page")
        sent = [site.received[-1].encode()]
        assert cookies.session_id(sent) == "sess1"
        assert cookies.without_ours(sent) == []
        assert f"{cookies.session_name}-login-0123456789abcdef=v1.a.b" in site.received[-1]
        assert browser.execute_script("return document.cookie") == ""  # HttpOnly: no script reads them
        browser.get(f"{origin}/clear")
        browser.get(f"{origin}/page")
        assert cookies.session_id([site.received[-1].encode()]) is None
