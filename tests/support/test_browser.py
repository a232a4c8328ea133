"""The browser fixture's own rules: a missing browser skips on a developer's machine and fails in CI."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import browser
from tests.support.browser import browser_binaries, browser_parse, headless_chromium


@pytest.fixture
def no_browser(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(browser, "DEBIAN_PLACES", (tmp_path / "chromium", tmp_path / "chromedriver"))


@pytest.mark.usefixtures("no_browser")
def test_a_missing_browser_skips_with_the_reason_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="chromium and chromedriver is not installed"):
        browser_binaries()


@pytest.mark.usefixtures("no_browser")
def test_a_missing_browser_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="required in CI"):
        browser_binaries()


def test_the_browser_parses_urls_as_the_whatwg_parser_does() -> None:
    with headless_chromium() as driver:
        base = "https://books.example/shelf/"
        assert browser_parse(driver, "/\\evil.example/x", base)["hostname"] == "evil.example"  # type: ignore[index]
        assert browser_parse(driver, "a b", base)["href"] == "https://books.example/shelf/a%20b"  # type: ignore[index]
        assert browser_parse(driver, "https://[::1", base) is None
