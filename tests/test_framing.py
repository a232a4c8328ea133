"""The sidecar writes the upstream request's framing: one client request is one upstream request.

The upstream here is a raw TCP server that parses every connection's bytes with llhttp, so a
request smuggled inside another one's body would show up as a second request (or as leftover
bytes) on that connection. Whatever the client puts in `Connection`, whatever its HTTP version,
the upstream must see exactly the requests the sidecar checked, each with the sidecar's framing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httptools
import pytest

from tests.conftest import start_sidecar
from tests.rawhttp import parse_response, read_until_closed

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: app\r\nX-Auth-Request-User: admin\r\n\r\n"


@dataclass
class WireRequest:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]


@dataclass
class WireConnection:
    requests: list[WireRequest] = field(default_factory=list)
    raw: bytearray = field(default_factory=bytearray)
    error: str = ""  # what llhttp said about bytes that were not a request


class RecordingParser:
    """httptools callbacks collecting the requests of one connection."""

    def __init__(self, connection: WireConnection) -> None:
        self.connection = connection
        self.current: WireRequest | None = None
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.done: list[WireRequest] = []
        self.parser = httptools.HttpRequestParser(self)

    def on_message_begin(self) -> None:
        self.url, self.headers = b"", []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        method = self.parser.get_method().decode("latin-1")
        self.current = WireRequest(method, self.url.decode("latin-1"), self.headers)

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        self.current.body += body

    def on_message_complete(self) -> None:
        assert self.current is not None
        self.connection.requests.append(self.current)
        self.done.append(self.current)
        self.current = None


@dataclass
class WireUpstream:
    url: str = ""
    connections: list[WireConnection] = field(default_factory=list)

    def requests(self) -> list[WireRequest]:
        return [r for c in self.connections for r in c.requests]


@asynccontextmanager
async def wire_upstream() -> AsyncIterator[WireUpstream]:
    state = WireUpstream()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = WireConnection()
        state.connections.append(connection)
        parser = RecordingParser(connection)
        try:
            while data := await reader.read(65536):
                connection.raw += data
                try:
                    parser.parser.feed_data(data)
                except httptools.HttpParserError as exc:
                    connection.error = str(exc)
                    return
                for _ in parser.done:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                parser.done.clear()
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield state
    finally:
        server.close()


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
    async with wire_upstream() as upstream, start_sidecar(upstream.url) as sidecar:
        data = await exchange(sidecar.port, post(version, connection + "Connection: close\r\n", SMUGGLED))
        response = parse_response(data)
        assert response.status == 200
        await asyncio.sleep(0.1)
        (upstream_connection,) = upstream.connections
        (seen,) = upstream_connection.requests
        assert upstream_connection.error == ""
        assert seen.target == "/upload"
        assert seen.body == SMUGGLED
        assert seen.all("content-length") == [str(len(SMUGGLED))]
        assert seen.all("host") == ["app.example"]
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
    async with wire_upstream() as upstream, start_sidecar(upstream.url) as sidecar:
        data = await exchange(sidecar.port, request + follow_up)
        answered = data.count(b"HTTP/1.1 200")
        assert answered == (1 if first_version == "1.0" else 2)
        await asyncio.sleep(0.1)
        expected = [("POST", "/upload", SMUGGLED), ("GET", "/next", b"")][:answered]
        assert [(r.method, r.target, r.body) for r in upstream.requests()] == expected
        assert all(c.error == "" for c in upstream.connections)


async def test_connection_cannot_remove_chunked_framing() -> None:
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)
    request = (
        b"POST /upload HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: transfer-encoding, close\r\n\r\n" + body
    )
    async with wire_upstream() as upstream, start_sidecar(upstream.url) as sidecar:
        response = parse_response(await exchange(sidecar.port, request))
        assert response.status == 200
        await asyncio.sleep(0.1)
        (seen,) = upstream.requests()
        assert seen.body == SMUGGLED
        assert seen.all("transfer-encoding") == ["chunked"]
        assert seen.all("content-length") == []


async def test_zero_length_body_keeps_its_content_length() -> None:
    request = (
        b"POST /empty HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: content-length, close\r\n\r\n"
    )
    async with wire_upstream() as upstream, start_sidecar(upstream.url) as sidecar:
        assert parse_response(await exchange(sidecar.port, request)).status == 200
        await asyncio.sleep(0.1)
        (seen,) = upstream.requests()
        assert seen.all("content-length") == ["0"]
        assert seen.body == b""


async def test_pooled_connection_carries_each_callers_request_once() -> None:
    """After a request whose framing the client tried to remove, the pooled connection is clean."""
    async with wire_upstream() as upstream, start_sidecar(upstream.url) as sidecar:
        first = post("1.1", "Connection: content-length, close\r\n", SMUGGLED)
        assert parse_response(await exchange(sidecar.port, first)).status == 200
        second = b"GET /second HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n"
        assert parse_response(await exchange(sidecar.port, second)).body == b"ok"
        await asyncio.sleep(0.1)
        assert [r.target for r in upstream.requests()] == ["/upload", "/second"]
        assert len(upstream.connections) == 1  # reused, and nothing left over on it
        assert upstream.connections[0].error == ""
