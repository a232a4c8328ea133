"""Size limits on the request head and body, enforced before (or while) anything reaches the upstream."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.support.rawhttp import RawResponse, parse_response, read_until_closed, request_bytes, send_raw
from tests.support.sidecar import RunningSidecar, start_sidecar
from tests.support.upstream_app import RunningUpstream

ERROR_KEYS = {"error", "error_description", "request_id"}
MAX_BODY = 1000
MAX_HEAD = 4096
MAX_HEADERS = 30


@pytest.fixture
async def limited(upstream: RunningUpstream) -> AsyncIterator[RunningSidecar]:
    async with start_sidecar(
        upstream.url, max_body_bytes=MAX_BODY, max_header_bytes=MAX_HEAD, max_header_count=MAX_HEADERS
    ) as sidecar:
        yield sidecar


def assert_raw_error(response: RawResponse, status: int, code: str) -> None:
    assert response.status == status, response.body
    assert response.header("content-type") == "application/json"
    body = response.json()
    assert set(body) == ERROR_KEYS
    assert body["error"] == code
    assert body["request_id"] == response.header("x-request-id")
    assert response.header("connection") == "close"


async def assert_still_healthy(sidecar: RunningSidecar, upstream: RunningUpstream) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await client.get(f"{sidecar.admin_url}/healthz")).status_code == 200
        before = len(upstream.seen)
        response = await client.post(f"{sidecar.url}/healthy-after", content=b"x" * MAX_BODY)
    assert response.status_code == 200
    assert response.json()["body_bytes"] == MAX_BODY
    assert upstream.paths()[before:] == ["/healthy-after"]


# -- body --------------------------------------------------------------------------------------


async def test_content_length_over_limit_gets_413_before_the_body_is_sent(
    limited: RunningSidecar, upstream: RunningUpstream
) -> None:
    # Only the head is sent: the sidecar answers from Content-Length alone and never waits for the body.
    request = request_bytes("POST", "/upload", [("Content-Length", str(MAX_BODY + 1))])
    response = await send_raw(limited.port, request)
    assert_raw_error(response, 413, "body_too_large")
    assert await upstream.seen_before_marker(limited.port) == []
    await assert_still_healthy(limited, upstream)


async def test_content_length_over_limit_with_expect_gets_413_instead_of_100(
    limited: RunningSidecar, upstream: RunningUpstream
) -> None:
    headers = [("Content-Length", str(10 * MAX_BODY)), ("Expect", "100-continue")]
    response = await send_raw(limited.port, request_bytes("POST", "/upload", headers))
    assert response.interim == []
    assert_raw_error(response, 413, "body_too_large")
    assert await upstream.seen_before_marker(limited.port) == []


async def test_httpx_upload_over_limit_gets_413(limited: RunningSidecar, upstream: RunningUpstream) -> None:
    async with httpx.AsyncClient(base_url=limited.url, timeout=5) as client:
        response = await client.post("/upload", content=b"x" * (MAX_BODY + 1))
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"
    assert await upstream.seen_before_marker(limited.port) == []


async def test_chunked_body_over_limit_gets_413_and_connection_closed(
    limited: RunningSidecar, upstream: RunningUpstream
) -> None:
    chunk = b"y" * 400
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(5)) + b"0\r\n\r\n"
    request = request_bytes("POST", "/upload", [("Transfer-Encoding", "chunked")], body, close=False)
    reader, writer = await asyncio.open_connection("127.0.0.1", limited.port)
    try:
        writer.write(request)
        await writer.drain()
        data = await read_until_closed(reader)  # returns only once the sidecar has closed the connection
    finally:
        writer.close()
    response = parse_response(data)
    assert_raw_error(response, 413, "body_too_large")
    assert response.rest == b""
    # The upstream may have seen the request start (the body is streamed), never the whole of it.
    assert [s.raw_path for s in await upstream.seen_before_marker(limited.port)] in ([], ["/upload"])
    await assert_still_healthy(limited, upstream)


async def test_chunked_body_over_limit_streamed_slowly_gets_413(
    limited: RunningSidecar, upstream: RunningUpstream
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", limited.port)
    try:
        writer.write(request_bytes("POST", "/upload", [("Transfer-Encoding", "chunked")], close=False))
        for _ in range(3):
            await asyncio.sleep(0.05)
            writer.write(b"190\r\n" + b"z" * 400 + b"\r\n")
            await writer.drain()
        response = parse_response(await read_until_closed(reader))
    finally:
        writer.close()
    assert_raw_error(response, 413, "body_too_large")
    assert [s.raw_path for s in await upstream.seen_before_marker(limited.port)] in ([], ["/upload"])


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_body_exactly_at_limit_is_forwarded(
    limited: RunningSidecar, upstream: RunningUpstream, chunked: bool
) -> None:
    body = b"q" * MAX_BODY

    async def stream() -> AsyncIterator[bytes]:
        yield body[:600]
        yield body[600:]

    async with httpx.AsyncClient(base_url=limited.url, timeout=5) as client:
        response = await client.post("/upload", content=stream() if chunked else body)
    assert response.status_code == 200
    assert response.json()["bytes"] == MAX_BODY


async def test_no_body_limit_when_zero(upstream: RunningUpstream) -> None:
    async with (
        start_sidecar(upstream.url, max_body_bytes=0) as sidecar,
        httpx.AsyncClient(base_url=sidecar.url, timeout=10) as client,
    ):
        response = await client.post("/upload", content=b"b" * (3 * 1024 * 1024))
    assert response.status_code == 200
    assert response.json()["bytes"] == 3 * 1024 * 1024


# -- head --------------------------------------------------------------------------------------


async def test_one_huge_header_gets_431(limited: RunningSidecar, upstream: RunningUpstream) -> None:
    request = request_bytes("GET", "/", [("X-Huge", "h" * (2 * MAX_HEAD))])
    response = await send_raw(limited.port, request)
    assert_raw_error(response, 431, "headers_too_large")
    assert await upstream.seen_before_marker(limited.port) == []
    await assert_still_healthy(limited, upstream)


async def test_huge_head_of_default_size_gets_431(sidecar: RunningSidecar, upstream: RunningUpstream) -> None:
    limit = sidecar.settings.max_header_bytes
    headers = [(f"X-Filler-{i}", "f" * 1000) for i in range(limit // 1000 + 2)][
        : sidecar.settings.max_header_count - 5
    ]
    headers.append(("X-Last", "l" * 8000))
    response = await send_raw(sidecar.port, request_bytes("GET", "/", headers))
    assert_raw_error(response, 431, "headers_too_large")
    assert await upstream.seen_before_marker(sidecar.port) == []


async def test_many_small_headers_get_431(limited: RunningSidecar, upstream: RunningUpstream) -> None:
    headers = [(f"X-H{i}", "1") for i in range(MAX_HEADERS + 5)]
    request = request_bytes("GET", "/", headers)
    assert len(request) < MAX_HEAD  # small in bytes: the count alone is over the limit
    response = await send_raw(limited.port, request)
    assert_raw_error(response, 431, "headers_too_large")
    assert await upstream.seen_before_marker(limited.port) == []


async def test_headers_at_the_count_limit_are_forwarded(
    limited: RunningSidecar, upstream: RunningUpstream
) -> None:
    # Host and Connection are fields too.
    headers = [(f"X-H{i}", "1") for i in range(MAX_HEADERS - 2)]
    response = await send_raw(limited.port, request_bytes("GET", "/count", headers))
    assert response.status == 200
    assert upstream.paths() == ["/count"]


async def test_huge_url_gets_414(limited: RunningSidecar, upstream: RunningUpstream) -> None:
    response = await send_raw(limited.port, request_bytes("GET", "/" + "u" * (2 * MAX_HEAD)))
    assert_raw_error(response, 414, "uri_too_long")
    assert await upstream.seen_before_marker(limited.port) == []
    await assert_still_healthy(limited, upstream)


async def test_huge_query_string_gets_414(limited: RunningSidecar, upstream: RunningUpstream) -> None:
    response = await send_raw(limited.port, request_bytes("GET", "/q?x=" + "u" * (2 * MAX_HEAD)))
    assert_raw_error(response, 414, "uri_too_long")
    assert await upstream.seen_before_marker(limited.port) == []


async def test_endless_slow_header_is_cut_off_with_431(
    limited: RunningSidecar, upstream: RunningUpstream
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", limited.port)
    sent = 0
    started = time.perf_counter()
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        while time.perf_counter() - started < 10:
            piece = b"s" * 256
            try:
                writer.write(piece)
                await writer.drain()
            except ConnectionError:
                break
            sent += len(piece)
            await asyncio.sleep(0.005)
            if reader.at_eof() or len(reader._buffer):  # the answer has arrived
                break
        data = await read_until_closed(reader)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    response = parse_response(data)
    assert_raw_error(response, 431, "headers_too_large")
    # Cut off soon after the limit, not buffered on and on.
    assert MAX_HEAD - 512 < sent < 3 * MAX_HEAD
    assert await upstream.seen_before_marker(limited.port) == []
    await assert_still_healthy(limited, upstream)


async def test_slow_header_lines_without_end_are_cut_off(
    limited: RunningSidecar, upstream: RunningUpstream
) -> None:
    # Many complete small header lines trickling in: the count or byte limit ends it either way.
    reader, writer = await asyncio.open_connection("127.0.0.1", limited.port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
        for i in range(2 * MAX_HEADERS):
            try:
                writer.write(b"X-Trickle-%d: %s\r\n" % (i, b"t" * 100))
                await writer.drain()
            except ConnectionError:
                break
            await asyncio.sleep(0.005)
            if reader.at_eof() or len(reader._buffer):
                break
        response = parse_response(await read_until_closed(reader))
    finally:
        writer.close()
    assert_raw_error(response, 431, "headers_too_large")
    assert await upstream.seen_before_marker(limited.port) == []
