"""Return-to and post-logout targets: the corpus of open-redirect forms, a property over generated
targets, and the real browser's reading of every target the policy accepts."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from selenium.webdriver.remote.webdriver import WebDriver

from authcar.login.redirects import FALLBACK, MAX_DECODE_ROUNDS, Origin, RedirectPolicy
from tests.support.browser import browser_parse_all, headless_chromium

CORPUS = yaml.safe_load((Path(__file__).parent / "redirect_corpus.yaml").read_text(encoding="utf-8"))
POLICY = RedirectPolicy.build("https://books.example/oauth2/callback", ["shop.example", "admin.example:8443"])
ALLOWED = {("https", "books.example", 443), ("https", "shop.example", 443), ("https", "admin.example", 8443)}
BASE = "https://books.example/shelf/page?x=1"  # where the browser is when it follows the target
# Pieces targets are made of: every character class the corpus attacks with, and hosts near ours.
PIECES = (
    "/", "//", "\\", "%2F", "%2f", "%5C", "%25", "%2e", ".", "..", "@", ":", "?", "#", "\t", "\n",
    "%0d%0a", "%00", " ", "https:", "http:", "https://", "javascript:", "books.example", "evil.example",
    "shop.example", "admin.example:8443", ":443", ":8443", "\u3002", "\uff0e", "%EF%BC%8F", "x", "",
)  # fmt: skip


def test_the_corpus_has_every_form_security_md_names() -> None:
    refused = CORPUS["refused"]
    for form in ("//evil.example", "/\\evil.example", "https:evil.example", "/%2F%2Fevil.example"):
        assert form in refused
    assert any("\t" in target for target in refused)
    assert any("\n" in target for target in refused)


@pytest.mark.parametrize("target", CORPUS["refused"])
def test_refused_targets_fall_back_to_the_root(target: str) -> None:
    assert POLICY.target(target) == FALLBACK


@pytest.mark.parametrize("target", CORPUS["accepted"])
def test_accepted_targets_are_followed_as_written(target: str) -> None:
    assert POLICY.target(target) == target
    assert lands_on_an_allowed_origin(target)


def test_no_target_and_oversized_targets_fall_back() -> None:
    assert POLICY.target(None) == FALLBACK
    assert POLICY.target("/" + "a" * 2047) != FALLBACK
    assert POLICY.target("/" + "a" * 2048) == FALLBACK


def test_decoding_is_bounded() -> None:
    nested = "/" + "%" + "25" * (MAX_DECODE_ROUNDS + 1) + "2F"  # still encoded after the last round
    assert POLICY.target(nested) == FALLBACK


def origin_of(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    assert (parts.username, parts.password) == (None, None), url
    port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    return parts.scheme, parts.hostname, port


def lands_on_an_allowed_origin(target: str) -> bool:
    """By urllib.parse: the target, and each percent-decoded form of it, resolved against where the
    browser is, names our origin or an allowed one."""
    form = target
    for _ in range(MAX_DECODE_ROUNDS + 1):
        if origin_of(urljoin(BASE, form)) not in ALLOWED:
            return False
        form = unquote(form)
    return True


@settings(deadline=None)
@given(st.one_of(st.lists(st.sampled_from(PIECES), max_size=6).map("".join), st.text(max_size=40)))
def test_an_accepted_target_always_lands_on_our_or_an_allowed_origin(target: str) -> None:
    if POLICY.allows(target):
        assert lands_on_an_allowed_origin(target), target
        assert target.isascii()
        assert target.isprintable()


def generated_targets() -> Iterator[str]:
    """Every target of up to three pieces (deterministic: the same ~40000 every run)."""
    for size in range(1, 4):
        for pieces in itertools.product(PIECES, repeat=size):
            yield "".join(pieces)


def test_the_policy_accepts_some_generated_targets_and_refuses_most() -> None:
    verdicts = [POLICY.allows(target) for target in generated_targets()]
    assert 100 < sum(verdicts) < len(verdicts) / 4


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with headless_chromium() as driver:
        yield driver


def test_the_real_browser_reads_every_accepted_target_as_our_or_an_allowed_origin(browser: WebDriver) -> None:
    accepted = sorted({*CORPUS["accepted"], *filter(POLICY.allows, generated_targets())})
    for target, parsed in zip(accepted, browser_parse_all(browser, accepted, BASE), strict=True):
        assert parsed is not None, target
        assert parsed["username"] == "", target
        port = int(parsed["port"] or {"https:": 443, "http:": 80}[parsed["protocol"]])
        assert (parsed["protocol"].rstrip(":"), parsed["hostname"], port) in ALLOWED, (target, parsed)


# Refused forms a browser itself would follow off our origin (the others are refused for what an
# application that decodes them and redirects again would do).
LEAVE_IN_A_BROWSER = [
    "//evil.example", "///evil.example", "/\\evil.example", "\\\\evil.example", "\\/evil.example",
    "/\t/evil.example", "/\n/evil.example", "/\r\n/evil.example", "\t//evil.example", " //evil.example",
    "ht\ttps://evil.example", "https\n://evil.example", "http:evil.example", "javascript:alert(1)",
    "java\nscript:alert(1)", "data:text/html,<script>alert(1)</script>", "https://books.example@evil.example/",
    "http://books.example/", "https://books.example:8443/",
]  # fmt: skip


def test_the_refused_forms_do_leave_our_origin_in_a_real_browser(browser: WebDriver) -> None:
    """The corpus refuses real attacks, not harmless strings: in chromium these leave our origin."""
    assert set(LEAVE_IN_A_BROWSER) <= set(CORPUS["refused"])
    parsed = browser_parse_all(browser, LEAVE_IN_A_BROWSER, BASE)
    stayed = [
        target
        for target, url in zip(LEAVE_IN_A_BROWSER, parsed, strict=True)
        if url is not None
        and (url["protocol"], url["hostname"], url["port"]) == ("https:", "books.example", "")
    ]
    assert stayed == []
    # Refused because parsers disagree: chromium maps fullwidth and ideographic dots onto ours,
    # urllib does not; `https:evil.example` is a path from an https page, another host from an http one.
    for dotted in ("https://books\uff0eexample/", "https://books\u3002example/"):
        assert browser_parse_all(browser, [dotted], BASE)[0]["hostname"] == "books.example"  # type: ignore[index]
        assert urlsplit(dotted).hostname != "books.example"
    backslashed = "https://books.example\\@evil.example/"  # chromium: a path on ours; urllib: evil's
    assert browser_parse_all(browser, [backslashed], BASE)[0]["hostname"] == "books.example"  # type: ignore[index]
    assert urlsplit(backslashed).hostname == "evil.example"
    assert (
        browser_parse_all(browser, ["https:evil.example"], "http://books.example/")[0]["hostname"]
        == "evil.example"
    )  # type: ignore[index]


@pytest.mark.parametrize(
    "host",
    ["bücher.example", "0x7f.1", "1.2.3", "127.1", "a..b", "", "evil.example:0", "evil.example:x",
     "-a.example", "user@evil.example", "[::1]", "evil.example/x"],
)  # fmt: skip
def test_allowed_hosts_must_be_plain_dns_names_or_ipv4(host: str) -> None:
    with pytest.raises(ValueError, match="not a host"):
        Origin.parse(host, scheme="https")


def test_allowed_hosts_are_compared_lower_case_with_the_default_port() -> None:
    policy = RedirectPolicy.build("http://127.0.0.1:4180/oauth2/callback", ["Shop.Example", "10.0.0.1:8080"])
    assert policy.own == Origin("http", "127.0.0.1", 4180)
    assert policy.allows("http://shop.example/")
    assert policy.allows("http://10.0.0.1:8080/x")
    assert not policy.allows("https://shop.example/")  # our scheme is http: only http targets
    assert not policy.allows("http://127.0.0.1/")  # our port is 4180
    with pytest.raises(ValueError, match="absolute"):
        RedirectPolicy.build("/oauth2/callback")
