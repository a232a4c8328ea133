"""Shared fixtures: a real upstream server and the sidecar in front of it, over real sockets.

Also the Hypothesis profiles, chosen once for the whole run:
- "ci" when CI=true: derandomized (the same examples every run), no example database (a failure
  found once is not replayed forever), no deadline, a bounded number of examples;
- "dev" otherwise: random, with the local database, no deadline;
- "fuzz" when AUTHCAR_HYPOTHESIS_PROFILE=fuzz (`python3 dev.py fuzz`): many more examples.
AUTHCAR_HYPOTHESIS_PROFILE names any of them explicitly. Tests that fix `max_examples` themselves
keep their count; the others take the profile's. Every Hypothesis test is marked `property`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, is_hypothesis_test, settings

from authcar.config import Settings, load_settings
from authcar.server import Service, running
from tests.process import ALLOW_ALL_POLICY
from tests.upstream_app import RunningUpstream, serve_upstream

settings.register_profile("ci", derandomize=True, database=None, deadline=None, max_examples=100)
settings.register_profile("dev", deadline=None)
settings.register_profile(
    "fuzz", deadline=None, max_examples=5000, suppress_health_check=[HealthCheck.too_slow]
)


def hypothesis_profile(environ: dict[str, str] | os._Environ[str] = os.environ) -> str:
    explicit = environ.get("AUTHCAR_HYPOTHESIS_PROFILE", "")
    if explicit:
        return explicit
    return "ci" if environ.get("CI", "").lower() == "true" else "dev"


settings.load_profile(hypothesis_profile())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every property-based test `property` (`pytest -m property`, `python3 dev.py fuzz`)."""
    for item in items:
        test = getattr(item, "obj", None)
        # A state machine's TestCase runs hypothesis from its runTest, which @given never wrapped.
        stateful = getattr(test, "__module__", "") == "hypothesis.stateful"
        if (test is not None and is_hypothesis_test(test)) or stateful:
            item.add_marker(pytest.mark.property)


@dataclass
class RunningSidecar:
    service: Service
    url: str
    admin_url: str
    port: int
    admin_port: int

    @property
    def settings(self) -> Settings:
        return self.service.settings


def sidecar_settings(upstream_url: str, **overrides: Any) -> Settings:
    flags: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "admin_host": "127.0.0.1",
        "admin_port": 0,
        "upstream": upstream_url,
        "allow_anonymous": True,
        "log_level": "warning",
        "access_log": False,
        "policy_dir": ALLOW_ALL_POLICY,
    }
    flags.update(overrides)
    return load_settings(flags, environ={}).settings


@asynccontextmanager
async def start_sidecar(upstream_url: str, **overrides: Any) -> AsyncIterator[RunningSidecar]:
    settings = sidecar_settings(upstream_url, **overrides)
    async with running(settings) as service:
        scheme = "https" if service.sidecar.tls else "http"
        port, admin_port = service.listeners.public_port, service.listeners.admin_port
        yield RunningSidecar(
            service=service,
            url=f"{scheme}://127.0.0.1:{port}",
            admin_url=f"http://127.0.0.1:{admin_port}",
            port=port,
            admin_port=admin_port,
        )


@pytest.fixture
async def upstream() -> AsyncIterator[RunningUpstream]:
    async with serve_upstream() as running_upstream:
        yield running_upstream


SidecarFactory = Callable[..., AbstractAsyncContextManager[RunningSidecar]]


@pytest.fixture
async def sidecar(upstream: RunningUpstream) -> AsyncIterator[RunningSidecar]:
    async with start_sidecar(upstream.url) as running_sidecar:
        yield running_sidecar


@pytest.fixture
async def client(sidecar: RunningSidecar) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sidecar.url, timeout=10) as http:
        yield http
