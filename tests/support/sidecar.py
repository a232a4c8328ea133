"""The sidecar in this process, over real sockets: settings for tests and a running service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from authcar.config import Settings, load_settings
from authcar.server import Service, running
from tests.support.process import ALLOW_ALL_POLICY


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
