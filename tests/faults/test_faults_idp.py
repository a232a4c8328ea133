"""The identity provider fails under a running sidecar: down, slow, frozen, killed, lying, enormous.

The provider is `python -m tests.idp` in its own process, switched into its failure modes through its
admin API (or stopped with SIGSTOP / killed with SIGKILL); the sidecar is `authcar run`; the upstream
records every request. For each fault: tokens that cannot be verified get the documented 401 and
never reach the upstream, nothing answers 500, tokens whose keys are already known keep working
(docs/authentication.md: the last good keys stay in use), and once the fault is gone the same sidecar
process accepts the new tokens again and is ready.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import pytest

from tests.faults.misbehaving import MisbehavingUpstream, misbehaving_upstream
from tests.faults.support import (
    EMAIL,
    SUBJECT,
    Caller,
    assert_error,
    readiness,
    send,
    start,
    tracebacks,
    until,
)
from tests.idp import IdPClient, IdPProcess, idp_process, run_idp
from tests.support.process import SidecarProcess, start_sidecar_process

# Longer than the sidecar's provider timeout (5 s, authcar/app.py idp_http and the introspector).
SLOW = 6.5


def sidecar_env(idp: IdPClient, upstream: MisbehavingUpstream) -> dict[str, str]:
    return {
        "AUTHCAR_UPSTREAM": upstream.url,
        "AUTHCAR_OIDC_ISSUER_URL": idp.issuer,
        "AUTHCAR_OIDC_AUDIENCE": "api",
        "AUTHCAR_OIDC_CLIENT_ID": "authcar",
        "AUTHCAR_OIDC_CLIENT_SECRET": "authcar-secret",
        # Short intervals so that recovery comes soon; the waits below are generous.
        "AUTHCAR_OIDC_JWKS_REFRESH_INTERVAL": "1",
        "AUTHCAR_OIDC_JWKS_COOLDOWN": "1",
        "AUTHCAR_SHUTDOWN_GRACE_PERIOD": "1",
    }


def jwt_caller(idp: IdPClient, **options: object) -> Caller:
    return Caller(idp.mint({"email": EMAIL}, sub=SUBJECT, **options))


def opaque_caller(idp: IdPClient) -> Caller:
    return Caller(idp.mint_opaque({"email": EMAIL}, sub=SUBJECT))


async def accepted(sidecar: SidecarProcess, upstream: MisbehavingUpstream, caller: Caller) -> bool:
    """The token gets through, and the upstream sees the request with the token's subject."""
    before = len(upstream.requests)
    answer = await send(sidecar.port, "GET", "/whoami", token=caller.token)
    if answer.status != 200:
        assert answer.status == 401, (answer.status, answer.body[:300])  # still refused: never a 5xx
        return False
    assert upstream.requests[before].header("x-auth-request-user") == SUBJECT
    return True


async def refused(
    sidecar: SidecarProcess, upstream: MisbehavingUpstream, caller: Caller, codes: str | set[str]
) -> None:
    """401 with the documented code, and nothing reached the upstream (never fail open)."""
    before = len(upstream.requests)
    for method in ("GET", "POST"):
        answer = await send(sidecar.port, method, "/orders", token=caller.token, body=b"{}")
        assert_error(answer, 401, codes, caller)
        assert (answer.header("www-authenticate") or "").startswith(
            'Bearer realm="authcar", error="invalid_token"'
        )
    assert len(upstream.requests) == before, upstream.requests[before:]


@dataclass
class Stack:
    idp: IdPProcess
    upstream: MisbehavingUpstream
    sidecar: SidecarProcess


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One provider and one sidecar for the runtime faults: each test brings the provider back."""
    with idp_process() as idp, misbehaving_upstream() as upstream:
        sidecar = start_sidecar_process(
            tmp_path_factory.mktemp("idp-faults"), sidecar_env(idp.client, upstream)
        )
        try:
            yield Stack(idp, upstream, sidecar)
        finally:
            sidecar.stop()


@pytest.fixture
def stack(running: Stack) -> Iterator[Stack]:
    running.idp.client.set_mode("normal")
    yield running
    os.kill(running.idp.process.pid, signal.SIGCONT)  # in case a test stopped it and failed
    running.idp.client.set_mode("normal")


def freeze(idp: IdPProcess) -> None:
    os.kill(idp.process.pid, signal.SIGSTOP)


def thaw(idp: IdPProcess) -> None:
    os.kill(idp.process.pid, signal.SIGCONT)


@pytest.mark.parametrize("fault", ["down", "garbage", "reset", "huge", "slow", "stopped"])
async def test_a_failing_provider_never_lets_an_unverifiable_token_through(stack: Stack, fault: str) -> None:
    await provider_fails_at_run_time(stack, fault)


async def test_deeply_nested_provider_documents_at_run_time(tmp_path: Path) -> None:
    # A sidecar of its own: before JSON depth limits, this failure ended its key refresh for good.
    with idp_process() as idp, misbehaving_upstream() as upstream:
        sidecar = await start(tmp_path, sidecar_env(idp.client, upstream))
        try:
            await provider_fails_at_run_time(Stack(idp, upstream, sidecar), "nested")
        finally:
            sidecar.stop()


async def provider_fails_at_run_time(stack: Stack, fault: str) -> None:
    client, sidecar, upstream = stack.idp.client, stack.sidecar, stack.upstream
    known = jwt_caller(client)
    assert await accepted(sidecar, upstream, known)  # its key is loaded
    new_kid = client.rotate()  # published only while the provider is broken: the sidecar cannot know it
    events_before = len(sidecar.events())

    unknown, opaque = jwt_caller(client, kid=new_kid), opaque_caller(client)  # minted while it answers
    if fault == "stopped":
        freeze(stack.idp)
    else:
        client.set_mode(fault, delay=SLOW if fault == "slow" else None)
    try:
        # A scheduled refresh has met the fault (and kept the keys): readiness stays 200 and says so.
        await until(lambda: _keys_detail(sidecar, "last refresh failed"), within=20)
        await refused(sidecar, upstream, unknown, "unknown_key")
        await refused(sidecar, upstream, opaque, "introspection_unavailable")  # asks the provider each time
        assert await accepted(sidecar, upstream, known)  # the last good keys stay in use
    finally:
        if fault == "stopped":
            thaw(stack.idp)
        else:
            client.set_mode("normal")

    await until(lambda: accepted(sidecar, upstream, unknown))
    await until(lambda: accepted(sidecar, upstream, opaque))
    await until(lambda: _keys_detail(sidecar, None))
    assert sidecar.process.poll() is None
    assert tracebacks(sidecar, since=events_before) == []


START_FAULTS = ["down", "garbage", "reset", "huge", "nested", "slow"]


@pytest.mark.parametrize("fault", START_FAULTS)
async def test_a_provider_failing_at_start_keeps_the_sidecar_unready_until_it_answers(
    tmp_path: Path, fault: str
) -> None:
    with idp_process() as idp, misbehaving_upstream() as upstream:
        client = idp.client
        client.set_mode(fault, delay=SLOW if fault == "slow" else None)
        sidecar = await start(tmp_path, sidecar_env(client, upstream))
        try:
            caller = jwt_caller(client)
            status, body = await readiness(sidecar)
            assert status == 503
            assert body["checks"]["keys"]["ok"] is False  # type: ignore[index]
            await refused(sidecar, upstream, caller, "keys_unavailable")

            client.set_mode("normal")
            # Discovery is retried every few seconds: the same process becomes ready on its own.
            await until(lambda: _ready(sidecar), within=25)
            assert await accepted(sidecar, upstream, caller)
            assert tracebacks(sidecar) == []
        finally:
            sidecar.stop()


async def _keys_detail(sidecar: SidecarProcess, expected: str | None) -> bool:
    """/readyz is 200 and its keys check has `expected` in its detail (None: no detail at all)."""
    status, body = await readiness(sidecar)
    assert status == 200, body
    detail = body["checks"]["keys"].get("detail")  # type: ignore[index, union-attr]
    return detail is None if expected is None else expected in str(detail)


async def _ready(sidecar: SidecarProcess) -> bool:
    return (await readiness(sidecar))[0] == 200


async def test_a_killed_provider_that_comes_back_with_new_keys(tmp_path: Path) -> None:
    # The provider process dies and is replaced (same address, new keys, no memory of old grants).
    with idp_process() as first, misbehaving_upstream() as upstream:
        port = int(first.url.rsplit(":", 1)[1])
        sidecar = await start(tmp_path, sidecar_env(first.client, upstream))
        try:
            old = jwt_caller(first.client)
            old_opaque = opaque_caller(first.client)
            assert await accepted(sidecar, upstream, old)
            assert await accepted(sidecar, upstream, old_opaque)
            first.process.kill()
            first.process.wait(timeout=10)

            # Down: known keys still verify; cached introspection answers still count.
            assert await accepted(sidecar, upstream, old)
            await refused(
                sidecar, upstream, opaque_caller_offline(), {"introspection_unavailable", "inactive"}
            )

            with idp_process(port=port) as second:
                new = jwt_caller(second.client)
                await until(lambda: accepted(sidecar, upstream, new))
                # The replacement publishes only its own keys: the old ones are dropped on refresh.
                await until(lambda: _refused_quietly(sidecar, upstream, old))
                await refused(sidecar, upstream, old, "unknown_key")
                status, _ = await readiness(sidecar)
                assert status == 200
            assert tracebacks(sidecar) == []
        finally:
            sidecar.stop()


def opaque_caller_offline() -> Caller:
    return Caller("opaque-token-the-provider-never-issued-" + "x" * 20)


async def _refused_quietly(sidecar: SidecarProcess, upstream: MisbehavingUpstream, caller: Caller) -> bool:
    return not await accepted(sidecar, upstream, caller)


async def test_rotated_and_retired_keys(stack: Stack) -> None:
    client, sidecar, upstream = stack.idp.client, stack.sidecar, stack.upstream
    old = jwt_caller(client)
    old_kid = _kid(old.token)
    assert await accepted(sidecar, upstream, old)

    new_kid = client.rotate()  # the provider signs with a new key from now on
    new = jwt_caller(client)
    assert _kid(new.token) == new_kid
    await until(lambda: accepted(sidecar, upstream, new))  # an unknown kid is fetched on first use
    assert await accepted(sidecar, upstream, old)  # the old key is still published

    client.retire(old_kid)
    # Once the refresh drops the old key, its tokens (cached as verified or not) are refused.
    await until(lambda: _refused_quietly(sidecar, upstream, old))
    await refused(sidecar, upstream, old, "unknown_key")
    assert await accepted(sidecar, upstream, new)


def _kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


async def test_the_providers_document_faults_are_200_json_and_only_on_oidc_endpoints() -> None:
    async with run_idp() as idp, httpx.AsyncClient(timeout=10) as http:
        idp.mode = "huge"
        jwks = await http.get(idp.jwks_uri)
        assert jwks.status_code == 200
        assert len(jwks.content) > 4 * 1024 * 1024
        assert jwks.json()["keys"] == idp.keys["keys"]  # well-formed, just far too big
        idp.set_mode("nested", ["introspect"])
        nested = await http.post(idp.introspection_endpoint, data={"token": "t"})
        assert nested.status_code == 200
        assert nested.content.startswith(b'{"a":{"a":')
        assert (await http.get(idp.jwks_uri)).json() == idp.keys  # other endpoints answer normally
        assert (await http.post(f"{idp.url}/_idp/describe")).json()["mode"] == "nested"
