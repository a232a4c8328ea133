"""The upstream HTTP/1.1 client against real servers that answer in every way the wire allows."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from authcar.config import ConfigError, load_settings
from authcar.errors import (
    ServiceUnavailable,
    UpstreamConnectFailed,
    UpstreamConnectTimeout,
    UpstreamHeaderTooLarge,
    UpstreamPoolExhausted,
    UpstreamProtocolError,
    UpstreamReset,
    UpstreamTimeout,
)
from authcar.http1 import BodyLengthMismatch, ConnectionPool, Response
from tests.support.rawhttp import request_bytes, send_raw
from tests.support.sidecar import start_sidecar
from tests.support.upstream_app import serve_upstream

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[int]:
    """A TCP server whose every connection runs `handler`; yields its port."""
    connections: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the test is over or the client went away: both are normal here
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in connections:
            writer.close()


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def pool_for(port: int, **overrides: float) -> ConnectionPool:
    options = {"connect_timeout": 2.0, "read_timeout": 2.0, "max_connections": 8, "keepalive_timeout": 30.0}
    options.update(overrides)
    return ConnectionPool(
        "127.0.0.1",
        port,
        connect_timeout=options["connect_timeout"],
        read_timeout=options["read_timeout"],
        max_connections=int(options["max_connections"]),
        keepalive_timeout=options["keepalive_timeout"],
    )


HOST = [(b"host", b"upstream")]


async def body_of(response: Response) -> bytes:
    parts = []
    while chunk := await response.read():
        parts.append(chunk)
    response.release()
    return b"".join(parts)


async def test_content_length_chunked_and_eof_delimited_bodies() -> None:
    answers = iter(
        [
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
        ]
    )

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_head(reader)
            answer = next(answers)
            writer.write(answer)
            await writer.drain()
            if b"Connection: close" in answer:
                return

    async with raw_server(handler) as port:
        pool = pool_for(port)
        assert await body_of(await pool.request(b"GET", b"/a", HOST)) == b"hello"
        assert await body_of(await pool.request(b"GET", b"/b", HOST)) == b"abcde"
        assert await body_of(await pool.request(b"GET", b"/c", HOST)) == b"until the end"
        assert pool.connections_made == 1  # the first two shared one keep-alive connection
        await pool.close()


async def test_head_answer_does_not_wait_for_a_body_and_keeps_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await read_head(reader)
            if head.startswith(b"HEAD"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")

    async with raw_server(handler) as port:
        pool = pool_for(port, read_timeout=1.0)
        head = await pool.request(b"HEAD", b"/", HOST)
        assert head.status == 200
        assert (b"Content-Length", b"1000") in head.headers
        assert await body_of(head) == b""
        empty = await pool.request(b"GET", b"/", HOST)
        assert empty.status == 204
        assert await body_of(empty) == b""
        assert pool.connections_made == 1
        await pool.close()


async def test_interim_answers_are_skipped_and_trailers_dropped() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
            b"4\r\nbody\r\n0\r\nX-Checksum: abc\r\nX-Injected: 1\r\n\r\n"
        )
        await writer.drain()
        await asyncio.sleep(1)

    async with raw_server(handler) as port:
        pool = pool_for(port)
        response = await pool.request(b"GET", b"/", HOST)
        assert response.status == 200
        names = [name.lower() for name, _ in response.headers]
        assert b"link" not in names
        assert await body_of(response) == b"body"
        assert b"x-injected" not in [name.lower() for name, _ in response.headers]
        await pool.close()


async def test_streams_request_bodies_with_length_and_chunked() -> None:
    async with serve_upstream() as upstream:
        pool = pool_for(upstream.port)
        payload = bytes(range(256)) * 4096  # 1 MiB

        async def pieces() -> AsyncIterator[bytes]:
            for start in range(0, len(payload), 65536):
                yield payload[start : start + 65536]

        sized = await pool.request(b"POST", b"/upload", HOST, pieces(), content_length=len(payload))
        chunked = await pool.request(b"POST", b"/upload", HOST, pieces(), chunked=True)
        expected = hashlib.sha256(payload).hexdigest().encode()
        assert expected in await body_of(sized)
        assert expected in await body_of(chunked)
        assert upstream.seen[0].header("Content-Length") == str(len(payload))
        assert upstream.seen[1].header("Transfer-Encoding") == "chunked"
        await pool.close()


async def test_a_reused_connection_closed_before_answering_is_retried_once_for_get_only() -> None:
    requests_seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_head(reader)
        requests_seen.append(head.split(b" ", 2)[1])
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        # Keep-alive in name only: read the next request, then drop it unanswered (the idle race).
        await read_head(reader)

    async with raw_server(handler) as port:
        pool = pool_for(port)
        assert await body_of(await pool.request(b"GET", b"/first", HOST)) == b"ok"
        assert await body_of(await pool.request(b"GET", b"/again", HOST)) == b"ok"
        assert requests_seen == [b"/first", b"/again"]  # the retry went to a fresh connection

        async def one_piece() -> AsyncIterator[bytes]:
            yield b"x"

        with pytest.raises(UpstreamReset):
            await pool.request(b"POST", b"/pay", HOST, one_piece(), content_length=1)
        assert requests_seen == [b"/first", b"/again"]  # never sent twice
        await pool.close()


@pytest.mark.parametrize(
    ("method", "retried"),
    [
        (b"GET", True),
        (b"HEAD", True),
        (b"OPTIONS", True),
        (b"TRACE", False),  # refused by the gate anyway; never resent if it were let through
        (b"DELETE", False),
        (b"POST", False),
        (b"PUT", False),
    ],
)
async def test_only_get_head_and_options_are_resent_after_the_idle_race(method: bytes, retried: bool) -> None:
    """Without a body, too: the idle race (a reused connection closed before answering) resends only
    methods that are safe to run twice."""
    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await read_head(reader)
            heads.append(head.split(b" ", 2)[1])
            if len(heads) == 2:
                return  # the reused connection dies unanswered, after the request arrived
            body = b"" if head.startswith(b"HEAD ") else b"ok"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n" + body)
            await writer.drain()

    async with raw_server(handler) as port:
        pool = pool_for(port)
        assert await body_of(await pool.request(b"GET", b"/warm", HOST)) == b"ok"
        if retried:
            response = await pool.request(method, b"/again", HOST)
            assert response.status == 200
            response.release()
            assert heads == [b"/warm", b"/again", b"/again"]  # the lost one, then once more, fresh
            assert pool.connections_made == 2
        else:
            with pytest.raises(UpstreamReset):
                await pool.request(method, b"/again", HOST)
            assert heads == [b"/warm", b"/again"]  # sent once, never again
        await pool.close()


async def test_a_pool_held_busy_is_pool_exhausted_not_a_connect_timeout() -> None:
    """Every pooled connection busy for connect_timeout: the sidecar's limit (503, Retry-After), not
    the application's failure to accept; the slot is usable again once the held answer ends."""
    arrived = asyncio.Event()
    answer = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_head(reader)
            arrived.set()
            await answer.wait()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async with raw_server(handler) as port:
        pool = pool_for(port, max_connections=1, connect_timeout=0.3)
        held = asyncio.create_task(pool.request(b"GET", b"/held", HOST))
        await asyncio.wait_for(arrived.wait(), 10)
        with pytest.raises(UpstreamPoolExhausted) as exhausted:
            await pool.request(b"GET", b"/next", HOST)
        assert not isinstance(exhausted.value, UpstreamConnectTimeout)
        assert isinstance(exhausted.value, ServiceUnavailable)
        assert (b"retry-after", b"1") in exhausted.value.extra_headers()
        answer.set()
        assert await body_of(await held) == b"ok"
        assert await body_of(await pool.request(b"GET", b"/after", HOST)) == b"ok"
        assert pool.connections_made == 1  # the refused request opened nothing
        await pool.close()


async def test_silence_times_out_but_a_slow_reader_does_not() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_head(reader)
        if b"/silent" in head:
            await asyncio.sleep(10)
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2097152\r\n\r\n" + b"z" * 2097152)
        await writer.drain()
        await asyncio.sleep(10)

    async with raw_server(handler) as port:
        pool = pool_for(port, read_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout):  # the timer's doing: the silence lasts 10 s
            await pool.request(b"GET", b"/silent", HOST)
        assert time.monotonic() - started >= 0.3

        big = await pool.request(b"GET", b"/big", HOST)
        total = 0
        while chunk := await big.read():
            total += len(chunk)
            if total < 600_000:
                await asyncio.sleep(0.5)  # longer than read_timeout: back-pressure, not silence
        assert total == 2097152
        big.release()
        await pool.close()


async def test_connect_failures_are_named() -> None:
    async with raw_server(lambda r, w: asyncio.sleep(0)) as port:
        pass  # closed again: nothing listens on the port now
    pool = pool_for(port)
    with pytest.raises(UpstreamConnectFailed) as refused:
        await pool.request(b"GET", b"/", HOST)
    assert str(port) in refused.value.detail  # for the log; the client gets the fixed description


async def test_reset_mid_body_and_garbage_are_errors() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_head(reader)
        if b"/garbage" in head:
            writer.write(b"SMTP ready\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
        await writer.drain()
        writer.transport.abort()

    async with raw_server(handler) as port:
        pool = pool_for(port)
        cut = await pool.request(b"GET", b"/cut", HOST)
        with pytest.raises(UpstreamReset):
            await body_of(cut)
        cut.release()
        with pytest.raises((UpstreamProtocolError, UpstreamReset)):
            await pool.request(b"GET", b"/garbage", HOST)
        await pool.close()


async def test_an_early_answer_stops_the_upload_and_retires_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\n\r\nbig")
        await writer.drain()
        await asyncio.sleep(2)

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"y" * 65536
            await asyncio.sleep(0.01)

    async with raw_server(handler) as port:
        pool = pool_for(port)
        response = await asyncio.wait_for(pool.request(b"PUT", b"/", HOST, endless(), chunked=True), 5)
        assert response.status == 413
        assert await body_of(response) == b"big"
        assert pool.idle == []  # half a request body is on that connection: never reused
        await pool.close()


async def test_the_pool_never_opens_more_than_its_limit() -> None:
    open_now = 0
    most = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now, most
        open_now += 1
        most = max(most, open_now)
        try:
            while True:
                await read_head(reader)
                await asyncio.sleep(0.1)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        finally:
            open_now -= 1

    async with raw_server(handler) as port:
        pool = pool_for(port, max_connections=2)

        async def fetch() -> bytes:
            return await body_of(await pool.request(b"GET", b"/", HOST))

        bodies = await asyncio.gather(*(fetch() for _ in range(6)))
        assert bodies == [b"ok"] * 6
        assert most == 2
        assert pool.connections_made == 2
        await pool.close()


async def test_a_second_response_to_one_request_closes_the_connection() -> None:
    """Surplus bytes would answer the next caller's request: the connection is never reused."""
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        number = connections
        while True:
            await read_head(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n%d"
                b"HTTP/1.1 403 Forbidden\r\nX-Smuggled: 1\r\nContent-Length: 5\r\n\r\nstale" % number
            )
            await writer.drain()

    async with raw_server(handler) as port:
        pool = pool_for(port)
        first = await pool.request(b"GET", b"/a", HOST)
        await asyncio.sleep(0.05)  # the surplus has arrived by now, in the same read or the next
        assert (first.status, first.headers) == (200, [(b"Content-Length", b"1")])
        assert await body_of(first) == b"1"
        await asyncio.sleep(0.05)
        assert await body_of(await pool.request(b"GET", b"/b", HOST)) == b"2"
        assert pool.connections_made == 2
        await pool.close()


@pytest.mark.parametrize(("pieces", "declared"), [([b"abc", b"def"], 4), ([b"ab"], 3)])
async def test_a_body_unlike_its_content_length_is_never_sent_on(pieces: list[bytes], declared: int) -> None:
    received: list[bytes] = []
    read_to_close = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read())  # everything until the pool closes the connection
        read_to_close.set()

    async def body() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    async with raw_server(handler) as port:
        pool = pool_for(port)
        with pytest.raises(BodyLengthMismatch):
            await pool.request(b"POST", b"/x", HOST, body(), content_length=declared)
        await asyncio.wait_for(read_to_close.wait(), 20)  # a generous bound
        sent = b"".join(received)
        assert sent.count(b"content-length: %d" % declared) == 1
        assert len(sent.partition(b"\r\n\r\n")[2]) <= declared  # never a byte past the length
        await pool.close()


# --- the response head is capped while it is parsed (AUTHCAR_UPSTREAM_MAX_HEADER_BYTES) ----------


def capped_pool(port: int, max_header_bytes: int = 4096, max_header_count: int = 50) -> ConnectionPool:
    return ConnectionPool(
        "127.0.0.1",
        port,
        connect_timeout=2.0,
        read_timeout=30.0,  # far beyond the test: a refusal comes from the limit, never from silence
        max_connections=8,
        keepalive_timeout=30.0,
        max_header_bytes=max_header_bytes,
        max_header_count=max_header_count,
    )


async def refused_head(handler: Handler) -> None:
    """The pool refuses the head `handler` answers with as too large."""
    async with raw_server(handler) as port:
        pool = capped_pool(port)
        with pytest.raises(UpstreamHeaderTooLarge):
            await pool.request(b"GET", b"/", HOST)
        await pool.close()


def head_of_size(size: int, status: bytes = b"200 OK") -> bytes:
    """A complete response head of exactly `size` bytes, blank line included, with an empty body."""
    start = b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\n"
    padding = size - len(start) - len(b"x-pad: \r\n\r\n")
    return start + b"x-pad: " + b"p" * padding + b"\r\n\r\n"


def answering(*answers: bytes, seen: list[bytes] | None = None) -> Handler:
    """A server that answers each request, on whichever connection, with the next of `answers`."""
    remaining = iter(answers)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await read_head(reader)  # first: a connection closed meanwhile takes no answer
            if seen is not None:
                seen.append(head)
            writer.write(next(remaining))
            await writer.drain()

    return handler


def trickling(answer: bytes, pieces: int) -> Handler:
    """A server that sends `answer` in this many writes, a moment apart."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        step = -(-len(answer) // pieces)
        for start in range(0, len(answer), step):
            writer.write(answer[start : start + step])
            await writer.drain()
            await asyncio.sleep(0.001 if pieces > 1 else 0)
        await reader.read()

    return handler


@pytest.mark.parametrize("pieces", [1, 3, 700])
@pytest.mark.parametrize(("size", "accepted"), [(4096, True), (4097, False)])
async def test_a_head_of_exactly_the_limit_is_accepted_and_one_byte_more_is_not(
    pieces: int, size: int, accepted: bool
) -> None:
    """In one read (exact sizes from the parser) or in pieces (raw bytes while incomplete): the
    limit is the same either way, however the reads fall."""
    head = head_of_size(size)
    assert len(head) == size
    async with raw_server(trickling(head, pieces)) as port:
        pool = capped_pool(port)
        if accepted:
            response = await pool.request(b"GET", b"/", HOST)
            assert response.status == 200
            assert await body_of(response) == b""
        else:
            with pytest.raises(UpstreamHeaderTooLarge):
                await pool.request(b"GET", b"/", HOST)
        await pool.close()


@pytest.mark.parametrize(
    ("start", "more"),
    [
        (b"HTTP/1.1 200 OK\r\n", b"x-more: " + b"m" * 500 + b"\r\n"),  # field after field
        (b"HTTP/1.1 200 OK\r\nx-endless: ", b"v" * 512),  # one value: the parser reports it only whole
    ],
    ids=["fields", "one-value"],
)
async def test_an_endless_head_is_refused_once_it_passes_the_limit(start: bytes, more: bytes) -> None:
    """The upstream never finishes its head: the pool stops at the limit (not at a timeout, which
    an upstream that keeps sending never reaches)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(start)
        while True:
            writer.write(more)
            await writer.drain()
            await asyncio.sleep(0.001)

    await refused_head(handler)


async def test_header_fields_are_counted() -> None:
    fifty = b"HTTP/1.1 200 OK\r\n" + b"a: b\r\n" * 49 + b"content-length: 0\r\n\r\n"
    fifty_one = b"HTTP/1.1 200 OK\r\n" + b"a: b\r\n" * 50 + b"content-length: 0\r\n\r\n"
    async with raw_server(answering(fifty)) as port:
        pool = capped_pool(port)
        response = await pool.request(b"GET", b"/", HOST)
        assert len(response.headers) == 50
        assert await body_of(response) == b""
        await pool.close()
    await refused_head(answering(fifty_one))


async def test_interim_heads_count_towards_the_limit() -> None:
    early_hints = b"HTTP/1.1 103 Early Hints\r\nlink: " + b"l" * 2100 + b"\r\n\r\n"
    final = head_of_size(2100)
    await refused_head(answering(early_hints + final))
    async with raw_server(answering(early_hints + head_of_size(1000))) as port:
        pool = capped_pool(port)
        assert (await pool.request(b"GET", b"/", HOST)).status == 200
        await pool.close()


async def test_a_connection_whose_head_was_too_large_is_never_reused() -> None:
    seen: list[bytes] = []
    async with raw_server(answering(head_of_size(5000), head_of_size(100), seen=seen)) as port:
        pool = capped_pool(port)
        with pytest.raises(UpstreamHeaderTooLarge):
            await pool.request(b"GET", b"/a", HOST)
        response = await pool.request(b"GET", b"/b", HOST)
        assert await body_of(response) == b""
        assert pool.connections_made == 2  # the second request went on a new connection
        await pool.close()
    assert [head.split(b" ")[1] for head in seen] == [b"/a", b"/b"]  # /b was the new connection's first


async def test_trailers_do_not_count_as_the_head() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"
        + b"x-trailer: "
        + b"t" * 5000
        + b"\r\n\r\n"
    )
    async with raw_server(answering(chunked)) as port:
        pool = capped_pool(port)
        response = await pool.request(b"GET", b"/", HOST)
        assert (response.status, await body_of(response)) == (200, b"abc")
        await pool.close()


# --- through the running sidecar -------------------------------------------------------------


OVERSIZED_HEADS = {
    "100 KB head": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-big: " + b"b" * 100_000 + b"\r\n\r\nok",
    "10,000 headers": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n" + b"x-h: v\r\n" * 10_000 + b"\r\nok",
    "endless head": b"HTTP/1.1 200 OK\r\nx-endless: " + b"e" * 200_000,
    "huge reason phrase": b"HTTP/1.1 200 " + b"O" * 70_000 + b"\r\ncontent-length: 2\r\n\r\nok",
}
FINE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-size: normal\r\n\r\nok"


@pytest.mark.parametrize("name", sorted(OVERSIZED_HEADS))
async def test_the_sidecar_answers_502_for_an_oversized_head_and_the_next_request_works(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[bytes] = []
    answers = answering(OVERSIZED_HEADS[name], FINE, FINE, seen=seen)
    async with (
        raw_server(answers) as port,
        start_sidecar(f"http://127.0.0.1:{port}") as sidecar,
        httpx.AsyncClient(base_url=sidecar.url, timeout=10) as client,
    ):
        with caplog.at_level(logging.INFO):
            refused = await client.get("/big")
            after = [await client.get("/next"), await client.get("/again")]
        metrics = (await client.get(sidecar.admin_url + "/metrics")).text
    assert refused.status_code == 502
    assert refused.json()["error"] == "upstream_header_too_large"
    assert set(refused.json()) == {"error", "error_description", "request_id"}
    assert "x-big" not in refused.headers
    assert "x-h" not in refused.headers
    assert [(r.status_code, r.text, r.headers["x-size"]) for r in after] == [(200, "ok", "normal")] * 2
    assert [head.split(b" ")[1] for head in seen] == [b"/big", b"/next", b"/again"]
    assert 'authcar_upstream_errors_total{kind="header_too_large"} 1.0' in metrics
    assert [record for record in caplog.records if record.exc_info] == []


async def test_the_limit_is_the_setting() -> None:
    small, large = head_of_size(4000), head_of_size(4200)
    async with (
        raw_server(answering(small, large)) as port,
        start_sidecar(f"http://127.0.0.1:{port}", upstream_max_header_bytes=4096) as sidecar,
        httpx.AsyncClient(base_url=sidecar.url, timeout=10) as client,
    ):
        assert (await client.get("/small")).status_code == 200
        assert (await client.get("/large")).json()["error"] == "upstream_header_too_large"


def test_the_setting_is_validated() -> None:
    with pytest.raises(ConfigError, match="AUTHCAR_UPSTREAM_MAX_HEADER_BYTES"):
        load_settings({"upstream_max_header_bytes": 100}, environ={})
    settings = load_settings({}, environ={"AUTHCAR_UPSTREAM_MAX_HEADER_BYTES": "131072"}).settings
    assert settings.upstream_max_header_bytes == 131072


@pytest.mark.parametrize("extra", [b"x-h: v\r\n" * 10_000, b"x-big: " + b"b" * 100_000 + b"\r\n"])
async def test_a_websocket_handshake_answer_with_an_oversized_head_is_a_502(extra: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_head(reader)
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n" + extra + b"\r\n"
        )
        await writer.drain()
        await reader.read()

    handshake = request_bytes(
        "GET",
        "/ws",
        [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", base64.b64encode(b"0123456789abcdef").decode()),
            ("Sec-WebSocket-Version", "13"),
        ],
        close=False,
    )
    async with raw_server(handler) as port, start_sidecar(f"http://127.0.0.1:{port}") as sidecar:
        answer = await send_raw(sidecar.port, handshake)
    assert answer.status == 502
    assert answer.json()["error"] == "upstream_protocol_error"
