"""A missing system program skips its tests on a developer's machine and fails them in CI."""

from __future__ import annotations

import pytest

from tests.support import system


@pytest.mark.parametrize("value", ["", "false", "0", "no"])
def test_outside_ci_a_missing_program_skips_with_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match=r"nginx is not installed \(apt-get install nginx\)"):
        system.unavailable("nginx", "apt-get install nginx")


@pytest.mark.parametrize("value", ["true", "TRUE", "True"])
def test_in_ci_a_missing_program_fails(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="nginx is required in CI"):
        system.unavailable("nginx", "apt-get install nginx")
