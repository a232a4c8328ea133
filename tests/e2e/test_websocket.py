"""WebSockets through the sidecar: echo, subprotocols, close codes both ways, refusals, header rules."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tests.support.rawhttp import parse_response, read_until_closed
from tests.support.sidecar import RunningSidecar, start_sidecar
from tests.support.upstream_app import RunningUpstream

ERROR_KEYS = {"error", "error_description", "request_id"}


def ws_url(sidecar: RunningSidecar, path: str = "/ws") -> str:
    return sidecar.url.replace("http", "ws", 1) + path


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        yield http


async def eventually(condition: Callable[[], object], wait: float = 20.0) -> None:
    for _ in range(int(wait / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)


async def raw_handshake(port: int, path: str, extra: list[tuple[str, str]] | None = None) -> bytes:
    """A hand-written upgrade request; returns everything the sidecar sent until it closed."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: sidecar.test",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{n}: {v}" for n, v in extra or []),
    ]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        return await read_until_closed(reader)
    finally:
        writer.close()


async def test_text_and_binary_messages_are_echoed(
    sidecar: RunningSidecar, session: aiohttp.ClientSession
) -> None:
    async with session.ws_connect(ws_url(sidecar)) as ws:
        await ws.send_str("hello")
        assert await ws.receive_str(timeout=5) == "echo:hello"
        payload = os.urandom(70_000)
        await ws.send_bytes(payload)
        assert await ws.receive_bytes(timeout=5) == b"echo:" + payload
        await ws.send_str("ünïcødé ✓")
        assert await ws.receive_str(timeout=5) == "echo:ünïcødé ✓"


async def test_large_binary_message_is_echoed(
    sidecar: RunningSidecar, session: aiohttp.ClientSession
) -> None:
    payload = os.urandom(3 * 1024 * 1024)  # the upstream (aiohttp.web) takes up to 4 MiB
    async with session.ws_connect(ws_url(sidecar), max_msg_size=8 * 1024 * 1024) as ws:
        await ws.send_bytes(payload)
        assert await ws.receive_bytes(timeout=10) == b"echo:" + payload


async def test_many_messages_keep_their_order(
    sidecar: RunningSidecar, session: aiohttp.ClientSession
) -> None:
    async with session.ws_connect(ws_url(sidecar)) as ws:
        for i in range(200):
            await ws.send_str(str(i))
        received = [await ws.receive_str(timeout=5) for _ in range(200)]
    assert received == [f"echo:{i}" for i in range(200)]


@pytest.mark.parametrize(
    ("offered", "accepted"),
    [(("chat.v1",), "chat.v1"), (("chat.v3", "chat.v2"), "chat.v2"), (("chat.v3",), None), ((), None)],
)
async def test_subprotocol_is_negotiated_by_the_upstream(
    sidecar: RunningSidecar,
    session: aiohttp.ClientSession,
    upstream: RunningUpstream,
    offered: tuple[str, ...],
    accepted: str | None,
) -> None:
    async with session.ws_connect(ws_url(sidecar), protocols=offered) as ws:
        assert ws.protocol == accepted
        await ws.send_str("hi")
        assert await ws.receive_str(timeout=5) == "echo:hi"
    (seen,) = upstream.seen
    offered_upstream = ",".join(seen.all("sec-websocket-protocol")).replace(" ", "")
    assert offered_upstream == ",".join(offered)


async def test_upstream_close_code_reaches_the_client(
    sidecar: RunningSidecar, session: aiohttp.ClientSession
) -> None:
    async with session.ws_connect(ws_url(sidecar)) as ws:
        await ws.send_str("close:4001")
        message = await ws.receive(timeout=5)
        assert message.type == aiohttp.WSMsgType.CLOSE
        assert message.data == 4001
        assert message.extra == "bye"
    assert ws.close_code == 4001


async def test_client_close_code_reaches_the_upstream(
    sidecar: RunningSidecar, session: aiohttp.ClientSession, upstream: RunningUpstream
) -> None:
    async with session.ws_connect(ws_url(sidecar)) as ws:
        await ws.send_str("ping")
        assert await ws.receive_str(timeout=5) == "echo:ping"
        await ws.close(code=4002, message=b"client done")
    await eventually(lambda: upstream.ws_closes)
    assert upstream.ws_closes == [4002]


async def test_client_vanishing_closes_the_upstream_leg(
    sidecar: RunningSidecar, upstream: RunningUpstream
) -> None:
    response = await asyncio.wait_for(_vanish(sidecar.port), 5)
    assert response.startswith(b"HTTP/1.1 101")
    await eventually(lambda: upstream.ws_closes)
    assert len(upstream.ws_closes) == 1  # the upstream's handler ended instead of waiting forever


async def _vanish(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request.encode())
    head = await reader.readuntil(b"\r\n\r\n")
    writer.transport.abort()  # no close frame, just gone
    return head


async def test_upstream_refusing_the_upgrade_gives_502_json(
    sidecar: RunningSidecar, session: aiohttp.ClientSession, upstream: RunningUpstream
) -> None:
    # /not-a-socket is the plain echo handler: it answers 200, not 101.
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await session.ws_connect(ws_url(sidecar, "/not-a-socket"))
    assert refused.value.status == 502
    response = parse_response(await raw_handshake(sidecar.port, "/not-a-socket"))
    assert response.status == 502
    assert response.header("content-type") == "application/json"
    body = response.json()
    assert set(body) == ERROR_KEYS
    assert body["error"] == "websocket_rejected"
    assert body["request_id"] == response.header("x-request-id")
    assert b"raw_path" not in response.body  # nothing of the upstream's answer leaks through


async def test_upstream_down_gives_502_json_to_the_handshake(session: aiohttp.ClientSession) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with start_sidecar(f"http://127.0.0.1:{port}") as sidecar:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(ws_url(sidecar))
        response = parse_response(await raw_handshake(sidecar.port, "/ws", [("X-Request-Id", "ws-502")]))
    assert refused.value.status == 502
    assert response.status == 502
    assert response.json() == {
        "error": "upstream_unavailable",
        "error_description": response.json()["error_description"],
        "request_id": "ws-502",
    }
    assert response.header("x-request-id") == "ws-502"


async def test_identity_headers_in_the_handshake_are_stripped(
    sidecar: RunningSidecar, session: aiohttp.ClientSession, upstream: RunningUpstream
) -> None:
    spoofed = {
        "X-Auth-Request-User": "admin",
        "x_auth_request_email": "admin@example.com",
        "X.Auth.Request.Groups": "admins",
        "X-Forwarded-User": "admin",
        "X-Original-URL": "/admin",
        "X-Forwarded-For": "1.2.3.4",
        "X-Normal": "kept",
    }
    async with session.ws_connect(ws_url(sidecar), headers=spoofed) as ws:
        await ws.send_str("hi")
        assert await ws.receive_str(timeout=5) == "echo:hi"
    (seen,) = upstream.seen
    names = {n.lower().replace("_", "-").replace(".", "-") for n, _ in seen.headers}
    assert not any(n.startswith("x-auth-request-") for n in names - {"x-auth-request-jwt"})
    assert len(seen.all("x-auth-request-jwt")) == 1  # the sidecar's own, not the client's
    assert not names & {"x-forwarded-user", "x-original-url"}
    assert seen.all("x-forwarded-for") == ["127.0.0.1"]
    assert seen.all("x-forwarded-proto") == ["http"]  # the scheme applications know, not "ws"
    assert seen.all("x-normal") == ["kept"]
    assert len(seen.all("sec-websocket-key")) == 1  # the sidecar's own handshake, not the client's twice


async def test_upstream_leg_is_not_compressed(
    sidecar: RunningSidecar, session: aiohttp.ClientSession, upstream: RunningUpstream
) -> None:
    # The client offers permessage-deflate to the sidecar; the localhost hop does without it.
    async with session.ws_connect(ws_url(sidecar), compress=15) as ws:
        await ws.send_str("z" * 10_000)
        assert await ws.receive_str(timeout=5) == "echo:" + "z" * 10_000
    (seen,) = upstream.seen
    assert seen.all("sec-websocket-extensions") == []


async def test_default_deny_refuses_the_handshake_with_401(
    upstream: RunningUpstream, session: aiohttp.ClientSession
) -> None:
    async with start_sidecar(upstream.url, allow_anonymous=False) as sidecar:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(ws_url(sidecar))
        response = parse_response(await raw_handshake(sidecar.port, "/ws"))
    assert refused.value.status == 401
    assert response.status == 401
    assert response.json()["error"] == "no_credentials"
    assert response.header("www-authenticate") == 'Bearer realm="authcar"'
    assert upstream.seen == []


async def test_reserved_path_is_not_bridged(upstream: RunningUpstream, sidecar: RunningSidecar) -> None:
    response = await raw_handshake(sidecar.port, "/oauth2/ws")
    assert not response.startswith(b"HTTP/1.1 101")
    assert upstream.seen == []


# -- an upstream written with the websockets library, for closes aiohttp.web will not send -------


@pytest.fixture
async def odd_upstream() -> AsyncIterator[tuple[str, list[object]]]:
    """Commands: "empty" closes with a frame that has no status code, "drop" cuts the TCP connection.

    /slow-handshake notes "handshake" in the list, then takes 1.5 s before it answers the upgrade.
    """
    received: list[object] = []

    async def handler(ws: ServerConnection) -> None:
        try:
            command = await ws.recv()
        except ConnectionClosed:
            return
        if command == "empty":
            ws.transport.write(b"\x88\x00")  # a close frame without a status code (RFC 6455 §5.5.1)
            await ws.wait_closed()
            received.append(ws.protocol.close_rcvd.code if ws.protocol.close_rcvd else None)
        elif command == "drop":
            ws.transport.abort()

    async def slow_handshake(ws: ServerConnection, request: object) -> None:
        if getattr(request, "path", "") == "/slow-handshake":
            received.append("handshake")
            await asyncio.sleep(1.5)

    async with serve(handler, "127.0.0.1", 0, process_request=slow_handshake) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}", received


async def test_upstream_close_without_status_is_a_normal_close_on_both_legs(
    odd_upstream: tuple[str, list[object]], session: aiohttp.ClientSession
) -> None:
    url, received = odd_upstream
    async with start_sidecar(url) as sidecar, session.ws_connect(ws_url(sidecar)) as ws:
        await ws.send_str("empty")
        message = await ws.receive(timeout=5)
    assert message.type == aiohttp.WSMsgType.CLOSE
    assert message.data == 1000
    await eventually(lambda: received)
    assert received == [1000]  # the upstream got a valid close reply, not a protocol error


async def test_upstream_dropping_the_connection_closes_the_client_with_a_code(
    odd_upstream: tuple[str, list[object]], session: aiohttp.ClientSession
) -> None:
    url, _ = odd_upstream
    async with start_sidecar(url) as sidecar, session.ws_connect(ws_url(sidecar)) as ws:
        await ws.send_str("drop")
        message = await ws.receive(timeout=5)
    assert message.type == aiohttp.WSMsgType.CLOSE
    assert message.data in (1001, 1011)


async def test_client_leaving_during_the_upstream_handshake_is_not_an_error(
    odd_upstream: tuple[str, list[object]], caplog: pytest.LogCaptureFixture
) -> None:
    url, received = odd_upstream
    async with start_sidecar(url) as sidecar:
        key = base64.b64encode(os.urandom(16)).decode()
        _reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
        writer.write(
            "GET /slow-handshake HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        await eventually(lambda: "handshake" in received)
        writer.transport.abort()  # gone before the upstream has accepted
        metrics = sidecar.service.sidecar.metrics
        await eventually(lambda: metrics.in_flight._value.get() == 0)
        assert metrics.in_flight._value.get() == 0  # the upstream leg was closed, not left open
        metrics.flush()
        assert metrics.requests.labels(status="499", decision="anonymous")._value.get() == 1
    assert [r for r in caplog.records if r.name.startswith("authcar")] == []
