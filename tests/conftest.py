"""Shared fixtures: a real upstream server and the sidecar in front of it, over real sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from authcar.config import Settings, load_settings
from authcar.server import Service, running
from tests.process import ALLOW_ALL_POLICY
from tests.upstream_app import RunningUpstream, serve_upstream


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
