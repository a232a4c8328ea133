"""The system under attack, all real: the identity provider and the sidecar as their own processes,
the recording upstream in the test's event loop.

The sidecar is configured with the provider's issuer and the audience `api`, public paths
`GET|HEAD /public` and below, and tests/security/policy (readers may use /api/*, nobody /admin/*).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.idp import IdPClient
from tests.idp.client import idp_process
from tests.security.tokens import Tokens
from tests.support.process import SidecarProcess, start_sidecar_process
from tests.support.recording_upstream import RecordingUpstream, serve_recording

POLICY_DIR = Path(__file__).resolve().parent / "policy"
HOST = "app.test"  # the Host header well-formed requests carry


@dataclass
class Stack:
    sidecar: SidecarProcess
    upstream: RecordingUpstream
    idp: IdPClient
    tokens: Tokens

    @property
    def port(self) -> int:
        return self.sidecar.port

    def log_size(self) -> int:
        return self.sidecar.log_path.stat().st_size

    def log_since(self, offset: int) -> str:
        with self.sidecar.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode("utf-8", "replace")

    async def healthz(self) -> int:
        async with httpx.AsyncClient(timeout=10) as admin:
            return (await admin.get(self.sidecar.admin_url + "/healthz")).status_code


def sidecar_env(upstream: RecordingUpstream, idp: IdPClient, extra: Mapping[str, str]) -> dict[str, str]:
    return {
        "AUTHCAR_UPSTREAM": upstream.url,
        "AUTHCAR_OIDC_ISSUER_URL": idp.issuer,
        "AUTHCAR_OIDC_AUDIENCE": "api",
        "AUTHCAR_POLICY_DIR": str(POLICY_DIR),
        "AUTHCAR_PUBLIC_PATHS": "GET|HEAD /public,GET|HEAD /public/*",
        "AUTHCAR_ACCESS_LOG": "false",
        # A case that leaves the upstream waiting for bytes that never come ends in seconds.
        "AUTHCAR_UPSTREAM_READ_TIMEOUT": "5",
        **extra,
    }


@contextlib.contextmanager
def provider() -> Iterator[IdPClient]:
    with idp_process() as process:
        yield process.client


@contextlib.asynccontextmanager
async def running_stack(
    log_dir: Path, *, keep_alive: bool = False, env: Mapping[str, str] | None = None
) -> AsyncIterator[Stack]:
    """Provider, recording upstream and sidecar, up and healthy; torn down in reverse."""
    with provider() as idp:
        async with serve_recording(keep_alive=keep_alive) as upstream:
            environment = sidecar_env(upstream, idp, env or {})
            # Started in a thread: the loop keeps serving the upstream while the sidecar starts.
            sidecar = await asyncio.to_thread(start_sidecar_process, log_dir, environment)
            try:
                tokens = await asyncio.to_thread(Tokens, idp, upstream.url)
                yield Stack(sidecar, upstream, idp, tokens)
            finally:
                sidecar.stop()
