"""Slow clients are bounded: a request head and a body must arrive in time and at a minimum rate, small
bodies are read whole before an upstream connection is taken, and a worker holds a bounded number of
client connections (Slowloris, slow POST; Apache mod_reqtimeout's semantics).

Timeouts are set small (well under a second) and every wait is a generous upper bound: the tests
assert what happened, never how fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import httpx
import pytest

from tests.support.process import start_sidecar_process
from tests.support.rawhttp import RawResponse, parse_response, read_until_closed, request_bytes
from tests.support.sidecar import RunningSidecar, start_sidecar
from tests.support.tls_material import CertAuthority, SecretVolume
from tests.support.upstream_app import RunningUpstream

HEAD_TIMEOUT = 0.5
BODY_TIMEOUT = 0.5
WAIT = 10.0  # upper bound for anything the sidecar must do
ERROR_KEYS = {"error", "error_description", "request_id"}


@pytest.fixture
async def paced(upstream: RunningUpstream) -> AsyncIterator[RunningSidecar]:
    async with start_sidecar(
        upstream.url,
        request_header_timeout=HEAD_TIMEOUT,
        request_body_timeout=BODY_TIMEOUT,
        request_body_min_rate=0,
        keepalive_timeout=30,
    ) as sidecar:
        yield sidecar


class Client:
    """One raw connection to the sidecar."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.trickler: asyncio.Task[None] | None = None

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def trickle(self, data: bytes, every: float = 0.05, size: int = 1) -> None:
        """Send `data` a few bytes at a time, in the background, until it ends or the server closes."""

        async def run() -> None:
            with contextlib.suppress(OSError):
                for start in range(0, len(data), size):
                    if self.writer.is_closing():
                        return
                    self.writer.write(data[start : start + size])
                    await self.writer.drain()
                    await asyncio.sleep(every)

        self.trickler = asyncio.create_task(run())

    async def response(self) -> RawResponse:
        """The next response on a kept-alive connection (Content-Length bodies)."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), WAIT)
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await asyncio.wait_for(self.reader.readexactly(length), WAIT) if length else b""
        return parse_response(head + body)

    async def until_closed(self) -> bytes:
        return await read_until_closed(self.reader, WAIT)

    async def close(self) -> None:
        if self.trickler is not None:
            self.trickler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.trickler
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def connect(port: int) -> AsyncIterator[Client]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = Client(reader, writer)
    try:
        yield client
    finally:
        await client.close()


def assert_timeout(response: RawResponse, code: str) -> None:
    assert response.status == 408, response.body
    assert response.header("content-type") == "application/json"
    assert response.header("connection") == "close"
    body = response.json()
    assert set(body) == ERROR_KEYS
    assert body["error"] == code
    assert response.rest == b""


async def assert_serves(sidecar: RunningSidecar, upstream: RunningUpstream, path: str = "/after") -> None:
    before = len(upstream.seen)
    async with httpx.AsyncClient(timeout=WAIT) as client:
        response = await client.post(f"{sidecar.url}{path}", content=b"fine")
    assert response.status_code == 200
    assert upstream.paths()[before:] == [path]


async def metric(admin_url: str, name: str) -> float:
    async with httpx.AsyncClient(timeout=WAIT) as client:
        text = (await client.get(f"{admin_url}/metrics")).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


# -- the request head ------------------------------------------------------------------------------


async def test_a_silent_connection_is_closed_without_an_answer(
    paced: RunningSidecar, upstream: RunningUpstream
) -> None:
    async with connect(paced.port) as client:
        assert await client.until_closed() == b""
    assert upstream.seen == []
    assert await metric(paced.admin_url, 'authcar_client_timeouts_total{phase="head_silent"}') == 1
    await assert_serves(paced, upstream)


async def test_the_admin_listener_closes_slow_clients_too(paced: RunningSidecar) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", paced.admin_port)
    client = Client(reader, writer)
    try:
        client.trickle(b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"p" * 400, every=0.02)
        response = parse_response(await client.until_closed())
    finally:
        await client.close()
    assert_timeout(response, "request_header_timeout")


@pytest.mark.parametrize(
    "head",
    [
        b"GET /trickled HTTP/1.1\r\nHost: sidecar.test\r\nX-Pad: " + b"p" * 400,
        b"GET /" + b"a" * 400,  # still in the request line
        b"\r\n" * 200,  # blank lines before a request line never come
        b"POST /trickled HTTP/1.1\r\nHost: sidecar.test\r\nContent-Length: 5\r\n\r",  # all but one byte
    ],
    ids=["header-value", "request-line", "blank-lines", "last-byte-missing"],
)
async def test_a_head_trickled_byte_by_byte_gets_408_and_never_reaches_the_upstream(
    paced: RunningSidecar, upstream: RunningUpstream, head: bytes
) -> None:
    async with connect(paced.port) as client:
        # Never silent for long: only the whole head's deadline can end this.
        client.trickle(head, every=0.02)
        response = parse_response(await client.until_closed())
    assert_timeout(response, "request_header_timeout")
    assert upstream.seen == []
    await assert_serves(paced, upstream)


async def test_a_kept_alive_connection_idles_freely_but_its_next_head_must_arrive_in_time(
    paced: RunningSidecar, upstream: RunningUpstream
) -> None:
    async with connect(paced.port) as client:
        await client.send(request_bytes("GET", "/first", close=False))
        assert (await client.response()).status == 200
        # Idle between requests is the keep-alive timeout's business, not the head timeout's.
        await asyncio.sleep(HEAD_TIMEOUT * 3)
        await client.send(request_bytes("GET", "/second", close=False))
        assert (await client.response()).status == 200
        await asyncio.sleep(HEAD_TIMEOUT * 3)
        client.trickle(request_bytes("GET", "/third", [("X-Pad", "p" * 400)], close=False), every=0.02)
        response = parse_response(await client.until_closed())
    assert_timeout(response, "request_header_timeout")
    assert upstream.paths() == ["/first", "/second"]


async def test_a_pipelined_partial_head_after_a_complete_request(
    paced: RunningSidecar, upstream: RunningUpstream
) -> None:
    async with connect(paced.port) as client:
        await client.send(request_bytes("GET", "/first", close=False) + b"GET /second HTTP/1.1\r\nHo")
        first = await client.response()
        rest = parse_response(await client.until_closed())
    assert first.status == 200
    assert_timeout(rest, "request_header_timeout")
    assert upstream.paths() == ["/first"]


async def test_pipelined_requests_are_taken_a_bounded_number_at_a_time(
    sidecar: RunningSidecar, upstream: RunningUpstream
) -> None:
    count = 5000  # 5000 heads in one write: uvicorn would queue every one of them at once
    requests = b"".join(request_bytes("GET", f"/p/{i}", close=False) for i in range(count))
    async with connect(sidecar.port) as client:
        await client.send(requests)
        answered = []
        with contextlib.suppress(asyncio.IncompleteReadError):
            while True:
                answered.append(await client.response())
        assert await client.until_closed() == b""
    # Those taken are answered in order, each by its own request; the rest were never read and the
    # connection closed after the last answer (RFC 9112 9.3.2: the client retries them).
    assert 1 <= len(answered) < count
    assert [r.json()["raw_path"] for r in answered] == [f"/p/{i}" for i in range(len(answered))]
    assert answered[-1].header("connection") == "close"
    assert upstream.paths() == [f"/p/{i}" for i in range(len(answered))]
    await assert_serves(sidecar, upstream)


# -- the request body ------------------------------------------------------------------------------


async def test_a_stalled_streamed_body_gets_408_and_its_upstream_connection_is_dropped(
    upstream: RunningUpstream,
) -> None:
    async with start_sidecar(
        upstream.url, request_body_timeout=BODY_TIMEOUT, request_buffer_bytes=1000
    ) as sidecar:
        async with connect(sidecar.port) as client:
            # Larger than the buffer: streamed, so the upstream has seen the request start.
            await client.send(
                request_bytes("POST", "/upload", [("Content-Length", "100000")], b"x" * 5000, close=False)
            )
            response = parse_response(await client.until_closed())
        assert_timeout(response, "request_body_timeout")
        assert upstream.paths() == ["/upload"]
        stalled_on = upstream.seen[0].peer_port
        await assert_serves(sidecar, upstream)
        # The connection that carried half a body was aborted, never handed to the next request.
        assert upstream.seen[1].peer_port != stalled_on
        assert await metric(sidecar.admin_url, 'authcar_client_timeouts_total{phase="body"}') == 1


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_stalled_small_body_gets_408_and_nothing_reaches_the_upstream(
    paced: RunningSidecar, upstream: RunningUpstream, chunked: bool
) -> None:
    framing = [("Transfer-Encoding", "chunked")] if chunked else [("Content-Length", "1000")]
    body = b"64\r\n" + b"x" * 100 + b"\r\n" if chunked else b"x" * 100
    async with connect(paced.port) as client:
        await client.send(request_bytes("POST", "/upload", framing, body, close=False))
        response = parse_response(await client.until_closed())
    assert_timeout(response, "request_body_timeout")
    assert upstream.seen == []
    await assert_serves(paced, upstream)


async def test_a_body_trickled_after_the_answer_is_cut_off(upstream: RunningUpstream) -> None:
    # Refused before the body was read (401): the client keeps the connection by trickling the body.
    async with (
        start_sidecar(upstream.url, allow_anonymous=False, request_body_timeout=BODY_TIMEOUT) as sidecar,
        connect(sidecar.port) as client,
    ):
        await client.send(request_bytes("POST", "/x", [("Content-Length", "100000")], close=False))
        assert (await client.response()).status == 401
        client.trickle(b"x" * 100000, every=BODY_TIMEOUT * 3)
        assert await client.until_closed() == b""
    assert upstream.seen == []


async def test_a_body_below_the_minimum_rate_gets_408(upstream: RunningUpstream) -> None:
    async with start_sidecar(
        upstream.url, request_body_timeout=1.5, request_body_min_rate=1000, request_buffer_bytes=100
    ) as sidecar:
        async with connect(sidecar.port) as client:
            await client.send(request_bytes("POST", "/upload", [("Content-Length", "100000")], close=False))
            # 5 bytes every 0.1 s: never silent for long, but ~50 bytes/s against 1000 required.
            client.trickle(b"x" * 100000, every=0.1, size=5)
            response = parse_response(await client.until_closed())
        assert_timeout(response, "request_body_timeout")
        await assert_serves(sidecar, upstream)


async def test_the_same_pace_is_served_without_a_minimum_rate(upstream: RunningUpstream) -> None:
    async with start_sidecar(upstream.url, request_body_timeout=3, request_body_min_rate=0) as sidecar:
        async with connect(sidecar.port) as client:
            # Takes longer than the body timeout in all, but never falls silent for that long.
            await client.send(request_bytes("POST", "/upload", [("Content-Length", "200")], close=False))
            client.trickle(b"y" * 200, every=0.1, size=5)
            response = await client.response()
        assert response.status == 200
        assert response.json()["bytes"] == 200


async def test_back_pressure_from_a_stalled_upstream_does_not_count_against_the_client(
    upstream: RunningUpstream,
) -> None:
    size = 16 * 1024 * 1024  # more than the socket buffers between client and upstream hold
    async with (
        start_sidecar(upstream.url, request_body_timeout=BODY_TIMEOUT, max_body_bytes=0) as sidecar,
        httpx.AsyncClient(timeout=30) as client,
    ):
        # The upstream leaves the body unread for longer than the body timeout: the sidecar stops
        # reading from the client, whose silence is then the sidecar's doing.
        response = await client.post(f"{sidecar.url}/upload?pause={BODY_TIMEOUT * 4}", content=b"z" * size)
    assert response.status_code == 200
    assert response.json()["bytes"] == size


@pytest.mark.parametrize(
    ("framing", "trickled"),
    [
        (b"1;ext=", b"e" * 1_000_000),
        (b"0\r\nX-Trailer: ", b"t" * 1_000_000),
        (b"", (b"1;" + b"e" * 900 + b"\r\nx\r\n") * 1000),  # each gap small, but 900 bytes per byte
    ],
    ids=["endless-chunk-extension", "endless-trailer", "extensions-between-bytes"],
)
async def test_chunk_framing_without_body_is_refused(
    upstream: RunningUpstream, framing: bytes, trickled: bytes
) -> None:
    # Framing the parser would read (and, for a trailer, buffer) for ever, carrying no body: refused
    # once more of it has come than a request head may hold (1024 bytes here), or far more than body.
    async with (
        start_sidecar(upstream.url, max_header_bytes=1024, request_body_timeout=30) as sidecar,
        connect(sidecar.port) as client,
    ):
        head = request_bytes("POST", "/upload", [("Transfer-Encoding", "chunked")], close=False)
        await client.send(head + b"5\r\nhello\r\n" + framing)
        client.trickle(trickled, every=0.01, size=500)
        response = parse_response(await client.until_closed())
        assert response.status == 400
        assert response.json()["error"] == "bad_transfer_encoding"
        assert upstream.seen == []
        await assert_serves(sidecar, upstream)


async def test_a_trickled_chunk_extension_earns_no_time(upstream: RunningUpstream) -> None:
    async with (
        start_sidecar(upstream.url, request_body_timeout=BODY_TIMEOUT, request_body_min_rate=1) as sidecar,
        connect(sidecar.port) as client,
    ):
        await client.send(request_bytes("POST", "/upload", [("Transfer-Encoding", "chunked")], close=False))
        # Bytes keep coming, faster than the minimum rate, but none of them is body.
        client.trickle(b"5;" + b"e" * 20000, every=0.02, size=10)
        response = parse_response(await client.until_closed())
    assert_timeout(response, "request_body_timeout")
    assert upstream.seen == []


async def test_a_body_in_one_byte_chunks_is_forwarded(sidecar: RunningSidecar) -> None:
    body = b"".join(b"1\r\n%c\r\n" % (65 + i % 26) for i in range(3000)) + b"0\r\n\r\n"
    async with connect(sidecar.port) as client:
        await client.send(
            request_bytes("POST", "/echo", [("Transfer-Encoding", "chunked")], body, close=False)
        )
        response = await client.response()
    assert response.status == 200
    assert response.json()["body_bytes"] == 3000


# -- the upstream pool -----------------------------------------------------------------------------


async def test_stalled_small_uploads_do_not_hold_the_upstream_pool(upstream: RunningUpstream) -> None:
    async with start_sidecar(
        upstream.url,
        upstream_max_connections=2,
        upstream_connect_timeout=1,  # a held pool would answer 502 upstream_connect_timeout after this
        request_body_timeout=30,
    ) as sidecar:
        stalled = [await asyncio.open_connection("127.0.0.1", sidecar.port) for _ in range(8)]
        try:
            for index, (_, writer) in enumerate(stalled):
                head = request_bytes("POST", f"/stalled/{index}", [("Content-Length", "1000")], close=False)
                writer.write(head + b"x")  # one byte of a thousand, then nothing
                await writer.drain()
            for path in ("/other/1", "/other/2", "/other/3"):
                await assert_serves(sidecar, upstream, path)
            # The application never saw any of the half-sent requests.
            assert upstream.paths() == ["/other/1", "/other/2", "/other/3"]
        finally:
            for _, writer in stalled:
                writer.close()


async def test_a_small_body_that_arrives_slowly_is_forwarded_whole(upstream: RunningUpstream) -> None:
    async with (
        start_sidecar(upstream.url, request_body_timeout=5) as sidecar,
        connect(sidecar.port) as client,
    ):
        await client.send(request_bytes("POST", "/echo", [("Content-Length", "300")], close=False))
        client.trickle(b"b" * 300, every=0.01, size=30)
        response = await client.response()
    assert response.status == 200
    assert response.json()["body_bytes"] == 300
    assert ("content-length", "300") in [(n.lower(), v) for n, v in response.json()["headers"]]


@pytest.mark.parametrize("size", [65536, 65537, 300000], ids=["at-buffer", "over-buffer", "large"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_bodies_around_the_buffer_size_arrive_intact(
    sidecar: RunningSidecar, size: int, chunked: bool
) -> None:
    body = bytes(range(256)) * (size // 256) + b"e" * (size % 256)

    async def stream() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 20000):
            yield body[start : start + 20000]

    async with httpx.AsyncClient(timeout=WAIT) as client:
        response = await client.post(f"{sidecar.url}/echo", content=stream() if chunked else body)
    assert response.status_code == 200
    assert response.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert response.json()["chunked"] is chunked


# -- reading the response -------------------------------------------------------------------------


async def test_a_client_that_stops_reading_is_cut_off_and_frees_its_upstream_connection(
    upstream: RunningUpstream,
) -> None:
    async with start_sidecar(
        upstream.url, response_send_timeout=0.5, upstream_max_connections=1, upstream_connect_timeout=30
    ) as sidecar:
        async with connect(sidecar.port) as reader_that_stops:
            # Far more than the socket buffers between the two hold; never read.
            await reader_that_stops.send(request_bytes("GET", f"/download?size={200 * 1024 * 1024}"))
            head = await asyncio.wait_for(reader_that_stops.reader.readuntil(b"\r\n\r\n"), WAIT)
            assert head.startswith(b"HTTP/1.1 200")  # and from here on, nothing more is read
            # The next request waits for the pool's only connection, which the stalled download holds
            # until the send timeout drops both: then it is served.
            await assert_serves(sidecar, upstream)
            assert await metric(sidecar.admin_url, 'authcar_client_timeouts_total{phase="send"}') == 1
        assert upstream.paths()[0].startswith("/download")
        assert upstream.seen[1].peer_port != upstream.seen[0].peer_port


# -- connections per worker ------------------------------------------------------------------------


async def test_past_the_connection_limit_new_connections_wait_until_one_closes(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    env = {
        "AUTHCAR_UPSTREAM": upstream.url,
        "AUTHCAR_ALLOW_ANONYMOUS": "true",
        "AUTHCAR_MAX_CONNECTIONS": "4",
        "AUTHCAR_REQUEST_HEADER_TIMEOUT": "60",  # the parked connections stay until the test closes them
    }
    process = await asyncio.to_thread(start_sidecar_process, tmp_path, env)
    try:
        parked = [await asyncio.open_connection("127.0.0.1", process.port) for _ in range(4)]
        for _, writer in parked:
            writer.write(b"GET /parked HTTP/1.1\r\nHost: a\r\n")  # a head that never ends
            await writer.drain()
        async with connect(process.port) as waiting:
            # The kernel completes the handshake (the listen backlog), but the full worker does not
            # take the connection, so the request is not answered while the four are held.
            await waiting.send(request_bytes("GET", "/waiting", close=False))
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(waiting.reader.read(1), 1.0)
            assert upstream.seen == []
            parked.pop()[1].close()
            response = await waiting.response()
        assert response.status == 200
        assert upstream.paths() == ["/waiting"]
        async with httpx.AsyncClient(timeout=WAIT) as client:
            for _, writer in parked:
                writer.close()
            # Service goes on once the held connections are gone.
            response = await client.get(f"{process.url}/after")
        assert response.status_code == 200
        assert await metric(process.admin_url, "authcar_connection_limit_reached_total") >= 1
    finally:
        process.stop()


async def test_a_websocket_holds_a_connection_and_gives_it_back_when_closed(
    upstream: RunningUpstream,
) -> None:
    async with (
        start_sidecar(upstream.url, max_connections=2, request_header_timeout=60) as sidecar,
        aiohttp.ClientSession() as session,
        connect(sidecar.port) as parked,
    ):
        await parked.send(b"GET /parked HTTP/1.1\r\nHost: a\r\n")
        ws = await session.ws_connect(f"ws://127.0.0.1:{sidecar.port}/ws")
        await ws.send_str("hi")
        assert (await ws.receive(timeout=WAIT)).data == "echo:hi"
        async with connect(sidecar.port) as waiting:
            await waiting.send(request_bytes("GET", "/waiting", close=False))
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(waiting.reader.read(1), 1.0)
            await ws.close()  # the upgraded connection's end frees its place too
            assert (await waiting.response()).status == 200


# -- over TLS --------------------------------------------------------------------------------------


@pytest.fixture
async def paced_tls(
    upstream: RunningUpstream, tmp_path: Path
) -> AsyncIterator[tuple[RunningSidecar, ssl.SSLContext]]:
    ca = CertAuthority("test-ca")
    volume = SecretVolume(tmp_path / "tls")
    server = ca.issue_server("ec")
    volume.publish({"tls.crt": server.cert_pem, "tls.key": server.key_pem})
    async with start_sidecar(
        upstream.url,
        tls_cert_file=volume.path("tls.crt"),
        tls_key_file=volume.path("tls.key"),
        request_header_timeout=HEAD_TIMEOUT,
    ) as sidecar:
        yield sidecar, ssl.create_default_context(cadata=ca.cert_pem.decode())


async def test_a_tls_handshake_that_never_starts_is_closed(
    paced_tls: tuple[RunningSidecar, ssl.SSLContext], upstream: RunningUpstream
) -> None:
    sidecar, _ = paced_tls
    async with connect(sidecar.port) as client:
        assert await client.until_closed() == b""
    assert upstream.seen == []


async def test_a_head_trickled_over_tls_gets_408(
    paced_tls: tuple[RunningSidecar, ssl.SSLContext], upstream: RunningUpstream
) -> None:
    sidecar, context = paced_tls
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", sidecar.port, ssl=context, server_hostname="localhost"
    )
    client = Client(reader, writer)
    try:
        client.trickle(b"GET /tls HTTP/1.1\r\nHost: localhost\r\nX-Pad: " + b"p" * 400, every=0.02)
        response = parse_response(await client.until_closed())
    finally:
        await client.close()
    assert_timeout(response, "request_header_timeout")
    assert upstream.seen == []
