"""What the login tests share: a free port for a sidecar whose callback URL must be known before it
starts, and waiting until its login knows the provider (discovery runs in the background, and
/oauth2/start answers 302 only once it is done)."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx

READY_POLLS = 500
READY_PAUSE = 0.01  # seconds between polls


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_for_login(base_url: str) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        for _ in range(READY_POLLS):
            if (await http.get(f"{base_url}/oauth2/start")).status_code == 302:
                return
            await asyncio.sleep(READY_PAUSE)
    raise AssertionError("login never became ready")


def wait_for_login_blocking(base_url: str) -> None:
    """The same for tests that drive a blocking browser (the sidecar runs in its own process)."""
    for _ in range(READY_POLLS):
        if httpx.get(f"{base_url}/oauth2/start", timeout=10).status_code == 302:
            return
        time.sleep(READY_PAUSE)
    raise AssertionError("login never became ready")
