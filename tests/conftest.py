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
from contextlib import AbstractAsyncContextManager

import httpx
import pytest
from hypothesis import HealthCheck, is_hypothesis_test, settings

# Real redis-server topologies (session-scoped, started on first use), for every test directory.
from tests.support.redis_servers import redis_cluster, redis_sentinel, redis_server  # noqa: F401
from tests.support.sidecar import RunningSidecar, start_sidecar
from tests.support.upstream_app import RunningUpstream, serve_upstream

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
