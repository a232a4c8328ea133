"""Browser login across two sidecar processes sharing one Redis, as replicas behind a Service: a
sign-in begun on one finishes on the other, the session made there is read by both, sign-out or a
back-channel logout received by either ends it on both (and a logout token replayed to the other is
refused), and a due refresh happens once for requests spread over both. With Redis gone, sessions
fail closed: 503, nothing forwarded, sign-out refuses to pretend."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_login import PAGE, SECRET, login_settings, sign_in
from tests.idp import IdP, run_idp
from tests.support.login import free_port, wait_for_login
from tests.support.process import SidecarProcess, start_sidecar_process
from tests.support.redis_servers import Standalone, standalone
from tests.support.sidecar import start_sidecar
from tests.support.upstream_app import RunningUpstream

API = {"Accept": "application/json"}


@pytest.fixture
async def idp() -> AsyncIterator[IdP]:
    async with run_idp() as provider:
        yield provider


@pytest.fixture
async def replicas(
    tmp_path: Path, idp: IdP, upstream: RunningUpstream, redis_server: Standalone
) -> AsyncIterator[tuple[SidecarProcess, SidecarProcess]]:
    """Two replicas; the provider sends browsers back to the second (its registered callback)."""
    redis_server.flush()
    ports = free_port(), free_port()
    base = {
        "AUTHCAR_UPSTREAM": upstream.url,
        "AUTHCAR_ALLOW_ANONYMOUS": "false",
        "AUTHCAR_OIDC_ISSUER_URL": idp.issuer,
        "AUTHCAR_OIDC_AUDIENCE": "api",
        "AUTHCAR_OIDC_CLIENT_ID": "authcar",
        "AUTHCAR_OIDC_CLIENT_SECRET": "authcar-secret",
        "AUTHCAR_LOGIN": "true",
        "AUTHCAR_OIDC_REDIRECT_URL": f"http://127.0.0.1:{ports[1]}/oauth2/callback",
        "AUTHCAR_COOKIE_SECRET": SECRET,
        "AUTHCAR_COOKIE_SECURE": "false",
        "AUTHCAR_REDIS_URL": redis_server.url,
        "AUTHCAR_ACCESS_LOG": "false",
        "AUTHCAR_SHUTDOWN_GRACE_PERIOD": "1",
    }
    # Off the event loop: the in-process provider must answer their discovery meanwhile.
    started = await asyncio.gather(
        *(
            asyncio.to_thread(start_sidecar_process, tmp_path, {**base, "AUTHCAR_PORT": str(port)})
            for port in ports
        )
    )
    try:
        for replica in started:
            await wait_for_login(replica.url)
        yield started[0], started[1]
    finally:
        for replica in started:
            replica.stop()


async def sign_in_across(
    http: httpx.AsyncClient, first: SidecarProcess, second: SidecarProcess, target: str
) -> None:
    """A page load on `first`, the provider, and the callback on `second` (where it sends browsers)."""
    answer = await http.get(first.url + target, headers=PAGE)
    assert answer.status_code == 302
    start = await http.get(first.url + answer.headers["location"])
    provider = await http.get(start.headers["location"])
    callback = provider.headers["location"]
    assert callback.startswith(second.url + "/oauth2/callback?")
    back = await http.get(callback)
    assert back.status_code == 302, back.text
    assert back.headers["location"] == target


async def status(http: httpx.AsyncClient, replica: SidecarProcess, path: str = "/books") -> int:
    return (await http.get(replica.url + path, headers=API)).status_code


async def test_a_session_made_on_one_replica_is_read_by_the_other_until_signed_out(
    replicas: tuple[SidecarProcess, SidecarProcess], upstream: RunningUpstream
) -> None:
    one, two = replicas
    async with httpx.AsyncClient(timeout=10) as http:
        await sign_in_across(http, one, two, "/books/7?sort=title")
        upstream.seen.clear()
        assert await status(http, one) == 200
        assert await status(http, two) == 200
        assert [seen.header("x-auth-request-user") for seen in upstream.seen] == ["alice", "alice"]
        signed_out = await http.get(two.url + "/oauth2/sign_out")
        assert signed_out.status_code == 302
        http.cookies.clear()
    # The cookie kept by someone who copied it is refused by both replicas.
    cookie = signed_out.request.headers["cookie"]
    async with httpx.AsyncClient(timeout=10, headers={"Cookie": cookie}) as copied:
        assert await status(copied, one) == 401
        assert await status(copied, two) == 401
    assert len(upstream.seen) == 2


async def test_a_back_channel_logout_on_one_replica_ends_the_session_on_both(
    replicas: tuple[SidecarProcess, SidecarProcess], idp: IdP, upstream: RunningUpstream
) -> None:
    one, two = replicas
    async with httpx.AsyncClient(timeout=10) as http:
        await sign_in_across(http, one, two, "/")
        assert await status(http, one) == 200
        [sid] = idp.sessions_of("alice")
        answer = await idp.backchannel_logout(sid=sid, uri=two.url + "/oauth2/backchannel_logout")
        assert answer["status"] == 200, answer
        upstream.seen.clear()
        assert await status(http, one) == 401
        assert await status(http, two) == 401
        assert upstream.seen == []
        # The same logout token, delivered again to the other replica, is a replay.
        async with httpx.AsyncClient(timeout=10) as op:
            replayed = await op.post(
                one.url + "/oauth2/backchannel_logout", data={"logout_token": answer["logout_token"]}
            )
        assert replayed.status_code == 400
        assert replayed.json()["error"] == "logout_token_replayed"


async def test_a_due_refresh_happens_once_for_requests_on_both_replicas(
    replicas: tuple[SidecarProcess, SidecarProcess], idp: IdP
) -> None:
    one, two = replicas
    idp.token_lifetime = 2  # the refresh margin is a fifth of it: due 1.6 s after sign-in
    async with httpx.AsyncClient(timeout=10) as http:
        await sign_in_across(http, one, two, "/")
        await asyncio.sleep(1.7)
        answers = await asyncio.gather(*(status(http, replica) for replica in (one, two) * 6))
        assert answers == [200] * 12
        assert sum(idp.refreshes.values()) == 1


async def test_sessions_fail_closed_while_redis_is_down(
    tmp_path: Path, idp: IdP, upstream: RunningUpstream
) -> None:
    with standalone(tmp_path) as redis:
        settings = login_settings(idp, free_port(), redis_url=redis.url)
        async with start_sidecar(upstream.url, **settings) as sidecar:
            await wait_for_login(sidecar.url)
            async with httpx.AsyncClient(timeout=10) as http:
                assert (await sign_in(http, sidecar, "/")).status_code == 200
                upstream.seen.clear()
                redis.server.kill()
                for headers in (API, PAGE):
                    answer = await http.get(sidecar.url + "/books", headers=headers)
                    assert answer.status_code == 503
                    assert answer.json()["error"] == "session_store_unavailable"
                    assert answer.headers["retry-after"] == "1"
                signed_out = await http.get(sidecar.url + "/oauth2/sign_out")
                assert signed_out.status_code == 503
                assert "set-cookie" not in signed_out.headers  # the browser keeps its cookie: not signed out
    assert upstream.seen == []
