"""The recording upstream itself: it must see a desync wherever one is, or the corpus proves nothing."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.support.recording_upstream import RecordingUpstream, serve_recording


async def send(upstream: RecordingUpstream, data: bytes) -> bytes:
    """Write `data` on a new connection, read the answers until the upstream closes, then settle."""
    reader, writer = await asyncio.open_connection("127.0.0.1", upstream.port)
    writer.write(data)
    await writer.drain()
    try:
        answer = await asyncio.wait_for(reader.read(1 << 20), 5)
    finally:
        writer.close()
    await upstream.quiet()
    return answer


async def test_one_request_is_recorded_with_its_raw_names_target_and_body() -> None:
    async with serve_recording() as upstream:
        answer = await send(
            upstream,
            b"POST /a%2Fb?x=1 HTTP/1.1\r\nHost: h\r\nX_Odd.Name: v\r\nContent-Length: 5\r\n\r\nhello",
        )
        [request] = upstream.requests()
        assert (request.method, request.target, request.body) == ("POST", b"/a%2Fb?x=1", b"hello")
        assert request.headers == [(b"Host", b"h"), (b"X_Odd.Name", b"v"), (b"Content-Length", b"5")]
        assert upstream.problems() == []
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"Connection: close" in head
        assert json.loads(body) == {
            "connection": 1,
            "index": 0,
            "method": "POST",
            "target": "/a%2Fb?x=1",
            "body_length": 5,
            "request_id": "",
        }


async def test_a_request_smuggled_in_a_body_the_framing_does_not_cover_is_a_second_request() -> None:
    async with serve_recording() as upstream:
        await send(upstream, b"POST /a HTTP/1.1\r\nHost: h\r\n\r\nGET /admin HTTP/1.1\r\nHost: h\r\n\r\n")
        [connection] = upstream.connections
        assert [r.target for r in connection.requests] == [b"/a", b"/admin"]
        assert connection.leftover == b""


async def test_bytes_after_the_last_request_are_leftover() -> None:
    async with serve_recording() as upstream:
        await send(upstream, b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /half HTTP/1.1\r\nX: y\r\n")
        [connection] = upstream.connections
        assert [r.target for r in connection.requests] == [b"/a"]
        assert connection.leftover == b"GET /half HTTP/1.1\r\nX: y\r\n"
        assert upstream.problems() != []


async def test_a_parse_error_is_recorded_and_the_rest_kept() -> None:
    async with serve_recording() as upstream:
        await send(
            upstream, b"GET /a HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy"
        )
        [connection] = upstream.connections
        assert connection.requests == []
        assert connection.error is not None
        assert connection.leftover.startswith(b"GET /a HTTP/1.1")


async def test_chunked_bodies_trailers_and_chunk_extensions_are_seen() -> None:
    async with serve_recording() as upstream:
        await send(
            upstream,
            b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n",
        )
        [request] = upstream.requests()
        assert (request.body, request.chunked, request.chunk_extensions) == (b"abcde", True, True)
        assert request.trailers == [(b"X-Trailer", b"t")]


async def test_reset_forgets_what_arrived_and_closes_connections_left_mid_request() -> None:
    async with serve_recording(keep_alive=True) as upstream:
        reader, writer = await asyncio.open_connection("127.0.0.1", upstream.port)
        writer.write(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\n")
        await writer.drain()
        await reader.readuntil(b"}")
        async with asyncio.timeout(5):  # until the half request has arrived too (it may come later)
            while not upstream.connections[0].raw.endswith(b"GET /b HTTP/1.1\r\n"):
                upstream.activity.clear()  # set again by the next bytes that arrive
                await upstream.activity.wait()
        upstream.reset()
        assert upstream.connections == []
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the reset
        writer.close()


async def test_quiet_refuses_to_call_a_connection_inside_a_request_quiet() -> None:
    async with serve_recording(keep_alive=True) as upstream:
        reader, writer = await asyncio.open_connection("127.0.0.1", upstream.port)
        writer.write(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n")
        await reader.readuntil(b"}")
        await upstream.quiet()  # a kept-alive connection between requests is quiet
        writer.write(b"GET /b HTTP/1.1\r\n")
        await writer.drain()
        with pytest.raises(AssertionError, match="did not settle"):
            await upstream.quiet(within=0.5)
        writer.close()
