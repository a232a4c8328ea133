"""bench/soak.py runs, drives every kind of traffic, and reports; and the task gauge it reads is live."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import httpx

from bench.soak import MIX
from tests.support.process import SidecarProcess, start_sidecar_process
from tests.support.upstream_app import RunningUpstream

ROOT = Path(__file__).resolve().parents[2]


def test_a_short_soak_runs_every_kind_of_traffic_and_reports(tmp_path: Path) -> None:
    report = tmp_path / "soak.json"
    command = [sys.executable, "bench/soak.py", "--seconds", "4", "--sample-interval", "1", "--settle", "20"]
    run = subprocess.run(
        [*command, "--json", str(report)], cwd=ROOT, capture_output=True, text=True, timeout=180, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "requests by kind:" in run.stdout
    assert "unexpected outcomes: none" in run.stdout
    result = json.loads(report.read_text())
    assert set(result["requests"]) == set(MIX)  # every kind ran at least once
    assert all(sum(outcomes.values()) > 0 for outcomes in result["requests"].values())
    assert result["unexpected"] == []
    assert result["problems"] == []
    assert len(result["samples"]) >= 3
    assert {"rss", "fds", "own_fds", "tasks"} <= set(result["resources"])
    assert all(sample["rss"] > 0 and sample["fds"] > 0 for sample in result["samples"])


async def test_the_task_gauge_follows_requests_in_flight(upstream: RunningUpstream, tmp_path: Path) -> None:
    # Its own process: in the test's loop, the gauge would count the upstream's and the test's tasks too.
    env = {"AUTHCAR_UPSTREAM": upstream.url, "AUTHCAR_ALLOW_ANONYMOUS": "true"}
    sidecar = await asyncio.to_thread(start_sidecar_process, tmp_path, env)
    try:
        await follow_the_gauge(sidecar, upstream)
    finally:
        sidecar.stop()


async def follow_the_gauge(sidecar: SidecarProcess, upstream: RunningUpstream) -> None:
    async with httpx.AsyncClient(timeout=10) as http:

        async def tasks() -> float:
            text = (await http.get(sidecar.admin_url + "/metrics")).text
            line = next(line for line in text.splitlines() if line.startswith("authcar_event_loop_tasks "))
            return float(line.split()[1])

        idle = await tasks()
        async with httpx.AsyncClient(base_url=sidecar.url, timeout=10) as callers:
            # Held by the upstream until released, so all 8 are in flight when the gauge is read.
            slow = [asyncio.create_task(callers.get("/slow", params={"delay": "60"})) for _ in range(8)]
            await upstream.until_seen(8)
            busy = await tasks()
            assert busy >= idle + 8  # at least one task per request in flight
            upstream.release()
            assert all(r.status_code == 200 for r in await asyncio.gather(*slow))
        for _ in range(100):  # the callers' connections are closed: back to where it was
            if await tasks() <= idle:
                break
            await asyncio.sleep(0.05)
        assert await tasks() <= idle
