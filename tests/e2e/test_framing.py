"""The sidecar writes the upstream request's framing: one client request is one upstream request.

The upstream here (tests/support/recording_upstream.py) parses every connection's bytes with llhttp, so a
request smuggled inside another one's body would show up as a second request (or as leftover
bytes) on that connection. Whatever the client puts in `Connection`, whatever its HTTP version,
the upstream must see exactly the requests the sidecar checked, each with the sidecar's framing.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.support.rawhttp import parse_response, read_until_closed
from tests.support.recording_upstream import serve_recording
from tests.support.sidecar import start_sidecar

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: app\r\nX-Auth-Request-User: admin\r\n\r\n"


async def exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    try:
        return await read_until_closed(reader, 5.0)
    finally:
        writer.close()


def post(version: str, connection: str, body: bytes, *, extra: str = "") -> bytes:
    head = (
        f"POST /upload HTTP/{version}\r\nHost: app.example\r\nContent-Length: {len(body)}\r\n"
        f"{connection}{extra}\r\n"
    )
    return head.encode("latin-1") + body


# Every way a client can name the framing headers as hop-by-hop, with a request hidden in the body.
CONNECTION_FORMS = {
    "content-length": "Connection: content-length\r\n",
    "mixed-case-among-others": "Connection: keep-alive, Content-LENGTH, close\r\n",
    "second-connection-header": "Connection: close\r\nConnection: content-length\r\n",
    "padded-token": "Connection: close ,  content-length  \r\n",
    "host-and-length": "Connection: host, content-length, x-forwarded-host, close\r\n",
}


@pytest.mark.parametrize("version", ["1.1", "1.0"])
@pytest.mark.parametrize("connection", list(CONNECTION_FORMS.values()), ids=list(CONNECTION_FORMS))
async def test_connection_cannot_remove_content_length(version: str, connection: str) -> None:
    async with serve_recording() as upstream, start_sidecar(upstream.url) as sidecar:
        data = await exchange(sidecar.port, post(version, connection + "Connection: close\r\n", SMUGGLED))
        response = parse_response(data)
        assert response.status == 200
        await upstream.quiet()
        (upstream_connection,) = upstream.connections
        (seen,) = upstream_connection.requests
        assert upstream.problems() == []
        assert seen.target == b"/upload"
        assert seen.body == SMUGGLED
        assert seen.all("content-length") == [str(len(SMUGGLED)).encode()]
        assert seen.all("host") == [b"app.example"]
        assert seen.all("transfer-encoding") == []


@pytest.mark.parametrize(
    ("first_version", "connection"),
    [("1.0", "Connection: keep-alive, content-length\r\n"), ("1.1", "Connection: content-length\r\n")],
)
async def test_pipelined_requests_reach_the_upstream_once_each(first_version: str, connection: str) -> None:
    """Each answered request reached the upstream once, in order, and nothing else did.

    (uvicorn closes an HTTP/1.0 connection after its first answer even with keep-alive; then the
    pipelined request is neither answered nor forwarded.)
    """
    request = post(first_version, connection, SMUGGLED)
    follow_up = b"GET /next HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n"
    async with serve_recording() as upstream, start_sidecar(upstream.url) as sidecar:
        data = await exchange(sidecar.port, request + follow_up)
        answered = data.count(b"HTTP/1.1 200")
        assert answered == (1 if first_version == "1.0" else 2)
        await upstream.quiet()
        expected = [("POST", b"/upload", SMUGGLED), ("GET", b"/next", b"")][:answered]
        assert [(r.method, r.target, r.body) for r in upstream.requests()] == expected
        assert upstream.problems() == []


async def test_connection_cannot_remove_chunked_framing() -> None:
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)
    request = (
        b"POST /upload HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: transfer-encoding, close\r\n\r\n" + body
    )
    async with serve_recording() as upstream, start_sidecar(upstream.url) as sidecar:
        response = parse_response(await exchange(sidecar.port, request))
        assert response.status == 200
        await upstream.quiet()
        (seen,) = upstream.requests()
        assert seen.body == SMUGGLED
        assert seen.all("transfer-encoding") == [b"chunked"]
        assert seen.all("content-length") == []


async def test_zero_length_body_keeps_its_content_length() -> None:
    request = (
        b"POST /empty HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: content-length, close\r\n\r\n"
    )
    async with serve_recording() as upstream, start_sidecar(upstream.url) as sidecar:
        assert parse_response(await exchange(sidecar.port, request)).status == 200
        await upstream.quiet()
        (seen,) = upstream.requests()
        assert seen.all("content-length") == [b"0"]
        assert seen.body == b""


async def test_pooled_connection_carries_each_callers_request_once() -> None:
    """After a request whose framing the client tried to remove, the pooled connection is clean."""
    async with serve_recording(keep_alive=True) as upstream, start_sidecar(upstream.url) as sidecar:
        first = post("1.1", "Connection: content-length, close\r\n", SMUGGLED)
        assert parse_response(await exchange(sidecar.port, first)).status == 200
        second = b"GET /second HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n"
        assert parse_response(await exchange(sidecar.port, second)).status == 200
        await upstream.quiet()
        assert [r.target for r in upstream.requests()] == [b"/upload", b"/second"]
        assert len(upstream.connections) == 1  # reused, and nothing left over on it
        assert upstream.problems() == []
