"""Reading the identity provider's answers (authcar/authn/fetch.py) from real servers that misbehave:
too long, compressed, trickling, lying about their length."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from authcar.authn.fetch import UnreadableAnswer, get_bounded

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[str]:
    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await handler(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(guarded, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/jwks"
    finally:
        server.close()


def answer(body: bytes, *headers: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n" + b"".join(
            h + b"\r\n" for h in headers
        )
        writer.write(head + b"connection: close\r\n\r\n" + body)
        await writer.drain()

    return handler


async def fetch(url: str, limit: int = 1000, within: float = 10.0) -> bytes:
    async with httpx.AsyncClient() as http:
        return await get_bounded(http, url, limit, within)


async def refused(handler: Handler, match: str, **options: float) -> None:
    async with serving(handler) as url:
        with pytest.raises(UnreadableAnswer, match=match):
            await fetch(url, **options)  # type: ignore[arg-type]


async def test_an_answer_within_the_limit_is_read_as_sent() -> None:
    async with serving(answer(b"x" * 1000, b"content-length: 1000")) as url:
        assert await fetch(url) == b"x" * 1000
    async with serving(answer(b"y" * 1000)) as url:  # no length: delimited by the close
        assert await fetch(url) == b"y" * 1000


async def test_longer_than_the_limit_is_refused_with_or_without_a_length() -> None:
    await refused(answer(b"x" * 1001, b"content-length: 1001"), "larger than 1000 bytes")
    await refused(answer(b"x" * 5000), "larger than 1000 bytes")
    await refused(answer(b"1", b"content-length: " + b"9" * 19), "larger than 1000 bytes")
    await refused(answer(b"1", b"content-length: " + b"9" * 5000), "RemoteProtocolError")  # httpx, first


async def test_a_compressed_answer_is_refused_unread() -> None:
    bomb = gzip.compress(b"\0" * 10_000_000)  # 10 MB of zeros in a few KiB
    await refused(
        answer(bomb, b"content-encoding: gzip", b"content-length: %d" % len(bomb)),
        "compressed",
        limit=100_000,
    )


async def test_a_trickling_answer_is_cut_at_the_deadline() -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 900\r\n\r\n")
        for _ in range(900):
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.05)  # each byte well inside httpx's own read timeout

    started = time.monotonic()
    await refused(trickle, "no complete answer within 0.5 s", within=0.5)
    assert time.monotonic() - started < 30  # a generous bound: the whole answer would take 45 s


async def test_an_error_status_is_refused() -> None:
    async def unavailable(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()

    await refused(unavailable, "answered 503")
