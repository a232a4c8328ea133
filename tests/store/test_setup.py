"""The sidecar uses the store its settings name, and /readyz reports it without failing on it."""

from __future__ import annotations

from pathlib import Path

import httpx

from authcar.store import MemoryStore
from authcar.store.redis import RedisStore
from tests.support.redis_servers import Standalone, standalone
from tests.support.sidecar import start_sidecar
from tests.support.upstream_app import RunningUpstream


async def ready(admin_url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.get(f"{admin_url}/readyz")


async def test_without_a_url_the_store_is_in_memory(upstream: RunningUpstream) -> None:
    async with start_sidecar(upstream.url) as sidecar:
        assert isinstance(sidecar.service.sidecar.store, MemoryStore)
        answer = await ready(sidecar.admin_url)
        assert answer.status_code == 200
        assert answer.json()["checks"]["store"] == {
            "ok": True,
            "backend": "memory",
            "reachable": True,
            "detail": "this process's memory",
        }


async def test_the_sidecar_shares_state_through_redis(
    upstream: RunningUpstream, redis_server: Standalone
) -> None:
    redis_server.flush()
    async with start_sidecar(upstream.url, redis_url=redis_server.url, redis_key_prefix="wired:") as sidecar:
        store = sidecar.service.sidecar.store
        assert isinstance(store, RedisStore)
        check = (await ready(sidecar.admin_url)).json()["checks"]["store"]
        assert check == {"ok": True, "backend": "redis", "reachable": True, "detail": str(store.target)}
        await store.set("probe", b"v", 30)
        with redis_server.server.client() as client:
            assert client.get("wired:v1:probe") == b"v"
        async with httpx.AsyncClient(timeout=30) as http:
            metrics = (await http.get(f"{sidecar.admin_url}/metrics")).text
        assert 'authcar_store_seconds_count{operation="set",result="ok"} 1.0' in metrics
        assert 'authcar_store_seconds_count{operation="ping",result="ok"}' in metrics


async def test_readiness_reports_redis_down_but_stays_ready(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    with standalone(tmp_path, password="readiness-secret") as server:
        async with start_sidecar(upstream.url, redis_url=server.url) as sidecar:
            assert (await ready(sidecar.admin_url)).json()["checks"]["store"]["reachable"] is True
            server.stop()
            answer = await ready(sidecar.admin_url)
            assert answer.status_code == 200  # every replica shares Redis: never take them all out
            check = answer.json()["checks"]["store"]
            assert check["ok"] is True
            assert check["reachable"] is False
            assert "ping failed" in check["detail"]
            assert "readiness-secret" not in answer.text
            async with httpx.AsyncClient(timeout=30) as http:
                metrics = (await http.get(f"{sidecar.admin_url}/metrics")).text
            assert 'authcar_store_seconds_count{operation="ping",result="unavailable"} 1.0' in metrics
            server.server.start()
            assert (await ready(sidecar.admin_url)).json()["checks"]["store"]["reachable"] is True
