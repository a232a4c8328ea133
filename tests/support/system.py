"""System programs the tests need (redis-server, chromium, nginx, kubectl, …): on a developer's
machine without one, its tests are skipped with the install command; in CI (`CI=true`, set by
.ci/run, which installs them all) a missing program fails the run instead of hiding tests."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(what: str, install: str) -> NoReturn:
    """Skip, or fail in CI, because `what` is not installed; `install` says how to get it."""
    if in_ci():
        pytest.fail(f"{what} is required in CI (.ci/run installs it: {install})")
    pytest.skip(f"{what} is not installed ({install})")
