"""Two sidecar processes share one Redis, as replicas do: an opaque token introspected through one is
not introspected again through the other, and when Redis goes away mid-traffic they keep answering
(the introspection cache falls back to asking the provider) and share again once it is back, without
a restart, also when Sentinel fails the master over."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.idp import IdP, run_idp
from tests.support.process import SidecarProcess, start_sidecar_process
from tests.support.redis_servers import Standalone, sentinel_set, standalone, wait_for
from tests.support.upstream_app import RunningUpstream


@pytest.fixture
async def idp() -> AsyncIterator[IdP]:
    async with run_idp() as provider:
        yield provider


async def replicas(
    log_dir: Path, idp: IdP, upstream: RunningUpstream, redis_url: str
) -> list[SidecarProcess]:
    env = {
        "AUTHCAR_UPSTREAM": upstream.url,
        "AUTHCAR_OIDC_ISSUER_URL": idp.issuer,
        "AUTHCAR_OIDC_AUDIENCE": "api",
        "AUTHCAR_OIDC_CLIENT_ID": "authcar",
        "AUTHCAR_OIDC_CLIENT_SECRET": "authcar-secret",
        "AUTHCAR_REDIS_URL": redis_url,
        "AUTHCAR_ACCESS_LOG": "false",
        "AUTHCAR_SHUTDOWN_GRACE_PERIOD": "1",
        # These tests are about the introspection cache: while Redis is down the revocation check
        # would answer 503 (it fails closed; tests/e2e/test_revocations.py proves that), so here
        # it is told to let requests through.
        "AUTHCAR_REVOCATION_FAIL_OPEN": "true",
    }
    # Off the event loop: the in-process provider must answer their discovery meanwhile.
    return list(await asyncio.gather(*(asyncio.to_thread(start_sidecar_process, log_dir, env) for _ in "12")))


async def status(sidecar: SidecarProcess, token: str) -> int:
    async with httpx.AsyncClient(timeout=30) as http:
        answer = await http.get(f"{sidecar.url}/whoami", headers={"Authorization": f"Bearer {token}"})
    return answer.status_code


async def test_one_introspection_serves_every_replica(
    tmp_path: Path, idp: IdP, upstream: RunningUpstream, redis_server: Standalone
) -> None:
    redis_server.flush()
    one, two = await replicas(tmp_path, idp, upstream, redis_server.url)
    try:
        token = idp.mint_opaque(sub="alice")
        assert await status(one, token) == 200
        assert await status(two, token) == 200
        assert idp.introspections == 1
        refused = "not-a-token-the-provider-knows"
        assert await status(two, refused) == 401
        assert await status(one, refused) == 401  # negative answers are shared too
        assert idp.introspections == 2
    finally:
        for sidecar in (one, two):
            sidecar.stop()


async def test_replicas_keep_answering_while_redis_is_down_and_share_again_after(
    tmp_path: Path, idp: IdP, upstream: RunningUpstream
) -> None:
    with standalone(tmp_path) as redis:
        one, two = await replicas(tmp_path, idp, upstream, redis.url)
        try:
            redis.server.kill()
            token = idp.mint_opaque(sub="bob")
            # No store: each replica asks the provider itself, and the answer is still right.
            assert await status(one, token) == 200
            assert await status(two, token) == 200
            assert idp.introspections == 2
            for sidecar in (one, two):
                assert any(e.get("event", "").startswith("introspection_cache") for e in sidecar.events())
            redis.server.start()
            later = idp.mint_opaque(sub="carol")
            assert await status(one, later) == 200  # may still have found Redis down: poll below
            deadline = asyncio.get_running_loop().time() + 30
            while True:
                before = idp.introspections
                fresh = idp.mint_opaque(sub="dave")
                assert await status(one, fresh) == 200
                assert await status(two, fresh) == 200
                if idp.introspections == before + 1:
                    break  # shared again, by the same processes
                assert asyncio.get_running_loop().time() < deadline, "the replicas never shared again"
                await asyncio.sleep(0.2)
        finally:
            for sidecar in (one, two):
                sidecar.stop()


async def test_replicas_follow_a_sentinel_failover_without_a_restart(
    tmp_path: Path, idp: IdP, upstream: RunningUpstream
) -> None:
    with sentinel_set(tmp_path, sentinels=1, down_after_ms=500) as group:
        one, two = await replicas(tmp_path, idp, upstream, group.url)
        try:
            token = idp.mint_opaque(sub="erin")
            assert await status(one, token) == 200
            with group.master.client() as client:
                assert client.wait(1, 10_000) == 1  # the cached answer is on the replica too
            group.master.kill()
            # While Sentinel fails over: still answered (from the provider if need be), never a 5xx.
            assert await status(two, token) == 200
            await asyncio.to_thread(
                wait_for, lambda: group.master_port() == group.replica.port, "the failover", 60
            )
            deadline = asyncio.get_running_loop().time() + 30
            while True:
                before = idp.introspections
                fresh = idp.mint_opaque(sub="frank")
                assert await status(one, fresh) == 200
                assert await status(two, fresh) == 200
                if idp.introspections == before + 1:
                    break  # sharing through the new master, by the same processes
                assert asyncio.get_running_loop().time() < deadline, "the replicas never used the new master"
                await asyncio.sleep(0.2)
        finally:
            for sidecar in (one, two):
                sidecar.stop()
