"""Fixtures for the book service's tests: a sidecar key, its JWKS server, and the service itself.

The service's directory goes on sys.path so `book_service` imports whether pytest runs from the
repository root or from examples/book-service, in any import mode.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

SERVICE_DIR = Path(__file__).resolve().parents[1]
# The test directory too, for book_service_kit under --import-mode=importlib.
for directory in (SERVICE_DIR, SERVICE_DIR / "tests"):
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))

from book_service import Settings  # noqa: E402
from book_service_kit import JwksServer, RunningService, ServiceFactory, SidecarKey, serving  # noqa: E402


@pytest.fixture(scope="session")
def sidecar_key() -> SidecarKey:
    return SidecarKey.generate()


@pytest.fixture(scope="session")
def jwks(sidecar_key: SidecarKey) -> Iterator[JwksServer]:
    with JwksServer([sidecar_key]).running() as server:
        yield server


@pytest.fixture(scope="session")
def service(
    sidecar_key: SidecarKey, jwks: JwksServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningService]:
    """One service for the tests that only need a working one; each test makes its own books."""
    db_path = tmp_path_factory.mktemp("books") / "books.db"
    settings = Settings(db=str(db_path), jwks_url=jwks.url)
    with serving(settings, sidecar_key, db_path) as running:
        yield running


@pytest.fixture
def start_service(sidecar_key: SidecarKey, tmp_path: Path) -> ServiceFactory:
    """A fresh service (own database) with settings overridden, for tests that need their own."""

    @contextmanager
    def start(key: SidecarKey = sidecar_key, **overrides: Any) -> Iterator[RunningService]:
        db_path = tmp_path / f"books-{len(list(tmp_path.iterdir()))}.db"
        settings = Settings(**{"db": str(db_path), **overrides})
        with serving(settings, key, db_path) as running:
            yield running

    return start
