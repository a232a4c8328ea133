"""What every fault test checks about an answer, and the raw client that sends the requests.

An answer to a fault must be the documented one: a status below 500 or one of 502/503/504, the JSON
error body with exactly its three fields and a documented code, and nothing of the caller's identity
(subject, e-mail, the token itself) anywhere in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.idp import IdP
from tests.support.process import SidecarProcess, start_sidecar_process
from tests.support.rawhttp import RawResponse, parse_response, read_until_closed, request_bytes

SUBJECT = "fault-subject-7f3a"
EMAIL = f"{SUBJECT}@example.com"
ERROR_FIELDS = {"error", "error_description", "request_id"}
ANSWER_WAIT = 20.0  # generous: an upper bound for one answer, never a speed assertion


@dataclass
class Caller:
    """A caller with a token; what it must never find in an error answer."""

    token: str

    @property
    def secrets(self) -> tuple[str, ...]:
        return (SUBJECT, EMAIL, self.token, self.token.split(".")[1] if "." in self.token else self.token)


def caller_of(idp: IdP, **options: object) -> Caller:
    return Caller(idp.mint({"email": EMAIL}, sub=SUBJECT, **options))  # type: ignore[arg-type]


def assert_error(
    response: RawResponse, status: int, codes: str | set[str], caller: Caller | None = None
) -> None:
    """The documented error answer: status, JSON body with exactly the three fields, no identity data."""
    allowed = {codes} if isinstance(codes, str) else codes
    assert response.status == status, (response.status, response.body[:300])
    assert response.status != 500
    body = json.loads(response.body)
    assert set(body) == ERROR_FIELDS, body
    assert body["error"] in allowed, body
    if caller is not None:
        assert_no_identity(response, caller)


def assert_no_identity(response: RawResponse, caller: Caller) -> None:
    text = response.body.decode("latin-1") + repr(response.headers)
    for secret in caller.secrets:
        assert secret not in text, f"{secret[:40]!r} leaked into the answer"


async def send(
    port: int,
    method: str,
    target: str,
    *,
    token: str | None = None,
    body: bytes = b"",
    headers: list[tuple[str, str]] | None = None,
    wait: float = ANSWER_WAIT,
) -> RawResponse:
    """One request on a new connection (Connection: close); the whole answer, however it ended."""
    fields = list(headers or [])
    if token is not None:
        fields.append(("Authorization", f"Bearer {token}"))
    if body or method in ("POST", "PUT"):
        fields.append(("Content-Length", str(len(body))))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        with contextlib.suppress(ConnectionError):  # the sidecar may answer and close before the end
            writer.write(request_bytes(method, target, fields, body))
            await writer.drain()
        return parse_response(await read_until_closed(reader, wait), head=method == "HEAD")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def until(condition: Callable[[], Awaitable[bool]], within: float = 30.0, step: float = 0.1) -> None:
    """Wait for a condition with a generous bound (an outcome, not a speed)."""
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(step)


async def readiness(sidecar: SidecarProcess) -> tuple[int, dict[str, object]]:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(sidecar.admin_url + "/readyz")
    return response.status_code, response.json()


async def metrics(sidecar: SidecarProcess) -> str:
    async with httpx.AsyncClient(timeout=10) as http:
        return (await http.get(sidecar.admin_url + "/metrics")).text


def metric(text: str, sample: str) -> float:
    """A sample's value in Prometheus text, 0 when absent."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def start(log_dir: Path, env: dict[str, str]) -> SidecarProcess:
    """The real sidecar, started off the event loop so in-loop servers keep answering meanwhile."""
    return await asyncio.to_thread(start_sidecar_process, log_dir, env)


def tracebacks(sidecar: SidecarProcess, since: int = 0) -> list[dict[str, object]]:
    """Logged events (from the `since`-th on) with a traceback: a fault is logged, never as a crash."""
    return [e for e in sidecar.events()[since:] if "traceback" in e]
