"""Process lifecycle as Kubernetes drives it: start, SIGTERM with requests in flight, workers, SIGHUP."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from pathlib import Path

import httpx
import pytest

from authcar.observe import FLUSH_INTERVAL
from tests.support.process import SidecarProcess, start_sidecar_process
from tests.support.sidecar import RunningSidecar
from tests.support.upstream_app import RunningUpstream

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


@pytest.fixture
def sidecar_process_factory(tmp_path: Path):  # type: ignore[no-untyped-def]
    started: list[SidecarProcess] = []

    def start(env: dict[str, str]) -> SidecarProcess:
        process = start_sidecar_process(tmp_path, env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/nothing"), ("GET", "/api/v1/revocations"), ("POST", "/healthz"), ("DELETE", "/metrics")],
)
async def test_the_admin_listener_answers_unknown_paths_and_methods_with_the_json_error_body(
    sidecar: RunningSidecar, method: str, path: str
) -> None:
    """Starlette's 404 and 405 on the admin listener are authcar's NotFound, with a fresh request id
    (admin requests have none of their own), like every other error body."""
    async with httpx.AsyncClient(base_url=sidecar.admin_url, timeout=10) as admin:
        first = await admin.request(method, path)
        second = await admin.request(method, path)
        healthy = await admin.get("/healthz")
    for response in (first, second):
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/json"
        assert response.headers["cache-control"] == "no-store"
        assert "www-authenticate" not in response.headers
        assert response.json() == {
            "error": "not_found",
            "error_description": "no such sidecar endpoint",
            "request_id": response.headers["x-request-id"],
        }
        assert UUID.fullmatch(response.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    assert (healthy.status_code, healthy.json()) == (200, {"status": "ok"})


async def test_sigterm_lets_the_in_flight_request_finish_then_exits_0(
    upstream: RunningUpstream, sidecar_process_factory
) -> None:
    sidecar = sidecar_process_factory(
        {
            "AUTHCAR_UPSTREAM": upstream.url,
            "AUTHCAR_ALLOW_ANONYMOUS": "true",
            "AUTHCAR_SHUTDOWN_GRACE_PERIOD": "10",
        }
    )
    async with httpx.AsyncClient(base_url=sidecar.url, timeout=30) as client:
        # The upstream holds the answer until released: in flight for as long as the test needs.
        in_flight = asyncio.create_task(client.get("/slow", params={"delay": "60"}))
        await upstream.until_seen(1)
        sidecar.signal(signal.SIGTERM)
        await asyncio.to_thread(wait_for_events, sidecar, "draining", count=1)
        assert not in_flight.done()  # draining began with the request in flight
        upstream.release()
        response = await in_flight
    assert response.status_code == 200
    assert response.text == "late"
    assert await asyncio.to_thread(sidecar.wait) == 0
    events = [e["event"] for e in sidecar.events()]
    assert "draining" in events
    assert "stopped" in events


async def test_new_connections_are_refused_once_draining_ends(
    upstream: RunningUpstream, sidecar_process_factory
) -> None:
    sidecar = sidecar_process_factory({"AUTHCAR_UPSTREAM": upstream.url, "AUTHCAR_ALLOW_ANONYMOUS": "true"})
    sidecar.signal(signal.SIGTERM)
    assert await asyncio.to_thread(sidecar.wait) == 0
    async with httpx.AsyncClient(timeout=2) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(sidecar.url + "/after")
    assert upstream.seen == []


async def test_shutdown_delay_keeps_serving_while_readiness_fails(
    upstream: RunningUpstream, sidecar_process_factory
) -> None:
    # The delay is the window in which the checks below must run: generous for a loaded machine.
    sidecar = sidecar_process_factory(
        {"AUTHCAR_UPSTREAM": upstream.url, "AUTHCAR_ALLOW_ANONYMOUS": "true", "AUTHCAR_SHUTDOWN_DELAY": "5"}
    )
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await client.get(sidecar.admin_url + "/readyz")).status_code == 200
        sidecar.signal(signal.SIGTERM)
        await asyncio.to_thread(wait_for_events, sidecar, "draining", count=1)
        ready = await client.get(sidecar.admin_url + "/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["shutdown"]["ok"] is False
        # Endpoints take a moment to drop the pod: traffic that still arrives is served.
        assert (await client.get(sidecar.url + "/still-here")).status_code == 200
    assert await asyncio.to_thread(sidecar.wait) == 0


async def test_a_stuck_request_is_cut_at_the_grace_period(
    upstream: RunningUpstream, sidecar_process_factory
) -> None:
    sidecar = sidecar_process_factory(
        {
            "AUTHCAR_UPSTREAM": upstream.url,
            "AUTHCAR_ALLOW_ANONYMOUS": "true",
            "AUTHCAR_SHUTDOWN_GRACE_PERIOD": "1",
        }
    )
    async with httpx.AsyncClient(base_url=sidecar.url, timeout=60) as client:
        # Never answered unless cut: without the grace period the sidecar would wait for ever
        # (sidecar.wait's 20 s is the generous bound), so exiting at all is the proof.
        stuck = asyncio.create_task(client.get("/slow", params={"delay": "600"}))
        await upstream.until_seen(1)
        started = time.monotonic()
        sidecar.signal(signal.SIGTERM)
        assert await asyncio.to_thread(sidecar.wait) == 0
        assert time.monotonic() - started >= 1  # not before the grace period
        try:
            answer: httpx.Response | None = await stuck
        except httpx.TransportError:
            answer = None  # cut without an answer: also clean
    # A clean refusal (or none), never uvicorn's text/plain 500.
    if answer is not None:
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"] == "shutting_down"
    assert upstream.abandoned == ["/slow?delay=600"]


async def test_workers_share_the_ports_and_metrics_add_up(
    upstream: RunningUpstream, sidecar_process_factory
) -> None:
    sidecar = sidecar_process_factory(
        {"AUTHCAR_UPSTREAM": upstream.url, "AUTHCAR_ALLOW_ANONYMOUS": "true", "AUTHCAR_WORKERS": "2"}
    )
    worker_pids = {int(e["pid"]) for e in wait_for_events(sidecar, "listening", count=2)}  # type: ignore[call-overload]
    assert len(worker_pids) == 2
    assert sidecar.process.pid not in worker_pids

    requests = 40
    async with httpx.AsyncClient(base_url=sidecar.url, timeout=10) as client:
        # Separate connections, so the kernel spreads them over both workers.
        for index in range(requests):
            response = await client.get(f"/n/{index}", headers={"Connection": "close"})
            assert response.status_code == 200

        # Each worker adds its batched counts to the shared files every FLUSH_INTERVAL (later on a
        # loaded machine: waited for, with a generous bound).
        async def counted() -> int:
            metrics = (await client.get(sidecar.admin_url + "/metrics")).text
            found = re.search(r'authcar_requests_total\{decision="anonymous",status="200"\} (\d+)', metrics)
            return int(float(found.group(1))) if found else 0

        deadline = time.monotonic() + FLUSH_INTERVAL + 20
        while (total := await counted()) < requests:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert total == requests
        for _ in range(3):  # any worker may answer /metrics: each reports the sum of all
            assert await counted() == requests
    assert len(upstream.seen) == requests

    sidecar.signal(signal.SIGTERM)
    assert await asyncio.to_thread(sidecar.wait) == 0


async def test_a_dead_worker_is_replaced(upstream: RunningUpstream, sidecar_process_factory) -> None:
    import os

    sidecar = sidecar_process_factory(
        {"AUTHCAR_UPSTREAM": upstream.url, "AUTHCAR_ALLOW_ANONYMOUS": "true", "AUTHCAR_WORKERS": "2"}
    )
    first = wait_for_events(sidecar, "listening", count=2)
    victim = int(first[0]["pid"])  # type: ignore[call-overload]
    os.kill(victim, signal.SIGKILL)
    replacement = wait_for_events(sidecar, "listening", count=3)
    assert int(replacement[-1]["pid"]) != victim  # type: ignore[call-overload]
    async with httpx.AsyncClient(base_url=sidecar.url, timeout=5) as client:
        for _ in range(6):
            assert (await client.get("/alive", headers={"Connection": "close"})).status_code == 200
    sidecar.signal(signal.SIGTERM)
    assert await asyncio.to_thread(sidecar.wait) == 0


def wait_for_events(
    sidecar: SidecarProcess, name: str, *, count: int, timeout: float = 20
) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in sidecar.events() if e.get("event") == name]
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} {name!r} events:\n{sidecar.log_path.read_text()}")
