"""An upstream that records, per connection, the raw bytes it received and the requests they parse to.

tests/support/upstream_app.py is an application (aiohttp) and sees what aiohttp makes of the bytes; this one
sees the bytes. It parses them with httptools (llhttp, strict: no leniency flags), one byte at a time
so that every request's exact end is known: a second request smuggled into one forwarded request shows
up as two requests on the connection, and bytes after the last complete request that do not form
another one are kept as `leftover`, never ignored. A parse error ends the connection and is recorded.

Every complete request is answered at once with a small 200 (a JSON echo naming the connection and
the request's position on it). With `keep_alive=False` (the default) each answer says
`Connection: close` and the connection is read until the peer closes it, so "the upstream is quiet"
is exact: every connection has been closed by the sidecar and everything it wrote has been parsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httptools

SETTLE_TIMEOUT = 10.0  # generous upper bound: a correct sidecar closes within milliseconds
IDLE_WINDOW = 0.1  # keep-alive mode only: no bytes for this long counts as quiet
CONNECT_GRACE = 0.03  # close mode: how long an upstream connection that was never made is waited for


@dataclass
class ReceivedRequest:
    """One request exactly as it arrived: method, raw target, header list in order, body."""

    method: str
    target: bytes
    version: str
    headers: list[tuple[bytes, bytes]]  # names as sent (not lower-cased), in order
    body: bytes
    chunked: bool  # the body arrived in chunked framing
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    chunk_extensions: bool = False  # a chunk-size line carried `;ext` (the sidecar never writes them)
    upgrade: bool = False  # the parser switched protocols after this request

    def all(self, name: str) -> list[bytes]:
        wanted = name.lower().encode("latin-1")
        return [value for key, value in self.headers if key.lower() == wanted]

    def header(self, name: str) -> bytes | None:
        values = self.all(name)
        return values[0] if values else None

    def names(self) -> list[str]:
        return [key.decode("latin-1").lower() for key, _ in self.headers]


@dataclass
class RecordedConnection:
    """Everything one upstream connection carried."""

    id: int
    peer_port: int
    raw: bytearray = field(default_factory=bytearray)
    requests: list[ReceivedRequest] = field(default_factory=list)
    error: str | None = None  # the parser's complaint; nothing after it was parsed
    closed: bool = False  # the peer closed (or reset) the connection
    consumed: int = 0  # offset in `raw` just after the last complete request

    @property
    def leftover(self) -> bytes:
        """Bytes after the last complete request: a partial request, garbage, or the rest after an error."""
        return bytes(self.raw[self.consumed :])

    def describe(self) -> str:
        lines = [f"connection {self.id} (peer port {self.peer_port}, closed={self.closed})"]
        for index, request in enumerate(self.requests):
            lines.append(f"  request {index}: {request.method} {request.target!r} body={request.body[:80]!r}")
        if self.error:
            lines.append(f"  parse error: {self.error}")
        if self.leftover:
            lines.append(f"  leftover: {self.leftover[:300]!r}")
        return "\n".join(lines)


class RecordingProtocol(asyncio.Protocol):
    """Parses one connection byte by byte and answers each complete request."""

    def __init__(self, upstream: RecordingUpstream) -> None:
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self.record: RecordedConnection | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.failed = False
        self.in_message = False
        self.reset_message()

    def reset_message(self) -> None:
        self.url = bytearray()
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.trailers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.chunked = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.record = self.upstream.open_connection(self, peer[1] if peer else 0)

    def data_received(self, data: bytes) -> None:
        record = self.record
        assert record is not None
        self.upstream.touch()
        start = len(record.raw)
        record.raw += data
        if self.failed:
            return  # after an error or an upgrade, bytes are only kept (as leftover)
        for offset in range(start, len(record.raw)):
            self.position = offset
            try:
                self.parser.feed_data(record.raw[offset : offset + 1])
            except httptools.HttpParserUpgrade:
                self.failed = True  # the rest is another protocol: kept as leftover
                return
            except httptools.HttpParserError as exc:
                # As a strict server would: answer 400 and close (the failure is already recorded).
                record.error = f"{exc.__class__.__name__}: {exc}"
                self.failed = True
                assert self.transport is not None
                self.transport.write(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                self.transport.close()
                return

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.record is not None:
            self.record.closed = True
        self.upstream.touch()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.in_message = True
        self.reset_message()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # httptools joins the pieces of a name and value itself; after the head, fields are trailers.
        (self.trailers if self.head_done else self.headers).append((name, value))

    def on_headers_complete(self) -> None:
        self.head_done = True
        self.chunked = any(
            name.lower() == b"transfer-encoding" and b"chunked" in value.lower()
            for name, value in self.headers
        )

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        record = self.record
        assert record is not None
        request = ReceivedRequest(
            method=self.parser.get_method().decode("latin-1"),
            target=bytes(self.url),
            version=self.parser.get_http_version(),
            headers=list(self.headers),
            body=bytes(self.body),
            trailers=list(self.trailers),
            chunked=self.chunked,
            chunk_extensions=self.chunked
            and has_chunk_extensions(record.raw, record.consumed, self.position),
            upgrade=self.parser.should_upgrade(),
        )
        record.requests.append(request)
        record.consumed = self.position + 1
        self.in_message = False
        self.answer(request, len(record.requests) - 1)

    def answer(self, request: ReceivedRequest, index: int) -> None:
        record = self.record
        assert record is not None
        assert self.transport is not None
        close = not self.upstream.keep_alive or not self.parser.should_keep_alive() or request.upgrade
        body = json.dumps(
            {
                "connection": record.id,
                "index": index,
                "method": request.method,
                "target": request.target.decode("latin-1"),
                "body_length": len(request.body),
                "request_id": (request.header("x-request-id") or b"").decode("latin-1"),
            }
        ).encode()
        head = [
            b"HTTP/1.1 200 OK",
            b"Content-Type: application/json",
            b"Content-Length: %d" % len(body),
        ]
        if close:
            head.append(b"Connection: close")
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + (b"" if request.method == "HEAD" else body))
        # With `Connection: close` we keep reading until the peer closes: whatever it still writes
        # (a smuggled request, say) is recorded, not lost in a race with our close.

    @property
    def busy(self) -> bool:
        """A request has begun and not ended (its bytes are, so far, leftover)."""
        return self.in_message and not self.failed


def has_chunk_extensions(raw: bytearray, start: int, end: int) -> bool:
    """Whether a chunked message in raw[start:end] has a chunk-size line with `;` (an extension)."""
    head_end = raw.find(b"\r\n\r\n", start, end)
    if head_end < 0:
        return False
    position = head_end + 4
    while position < end:
        line_end = raw.find(b"\r\n", position, end + 1)
        if line_end < 0:
            return False
        line = bytes(raw[position:line_end])
        if b";" in line:
            return True
        try:
            size = int(line, 16)
        except ValueError:
            return False
        if size == 0:
            return False
        position = line_end + 2 + size + 2
    return False


class RecordingUpstream:
    """The server and its records; `connections` holds what arrived since the last `reset()`."""

    def __init__(self, *, keep_alive: bool = False) -> None:
        self.keep_alive = keep_alive
        self.connections: list[RecordedConnection] = []
        self.protocols: dict[int, RecordingProtocol] = {}
        self.next_id = 0
        self.server: asyncio.Server | None = None
        self.port = 0
        self.activity = asyncio.Event()
        self.last_activity = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def open_connection(self, protocol: RecordingProtocol, peer_port: int) -> RecordedConnection:
        self.next_id += 1
        record = RecordedConnection(self.next_id, peer_port)
        self.connections.append(record)
        self.protocols[record.id] = protocol
        return record

    def touch(self) -> None:
        self.last_activity = asyncio.get_running_loop().time()
        self.activity.set()

    # what arrived
    def requests(self) -> list[ReceivedRequest]:
        return [request for connection in self.connections for request in connection.requests]

    def problems(self) -> list[str]:
        """Parse errors and leftover bytes on any connection: each is a desync (or a broken framing)."""
        return [
            connection.describe()
            for connection in self.connections
            if connection.error is not None or connection.leftover
        ]

    def describe(self) -> str:
        return "\n".join(connection.describe() for connection in self.connections) or "(no connections)"

    def open_count(self) -> int:
        return sum(not connection.closed for connection in self.connections)

    def reset(self) -> None:
        """Forget what arrived so far. Connections left mid-request or broken are closed, since their
        next bytes could not be told apart from the next test's; clean idle ones are kept (keep-alive)."""
        kept = []
        for connection in self.connections:
            protocol = self.protocols.get(connection.id)
            if connection.closed or protocol is None:
                self.protocols.pop(connection.id, None)
                continue
            if protocol.busy or protocol.failed or connection.leftover:
                if protocol.transport is not None:
                    protocol.transport.abort()
                self.protocols.pop(connection.id, None)
                continue
            connection.raw.clear()
            connection.requests.clear()
            connection.consumed = 0
            kept.append(connection)
        self.connections = kept

    async def quiet(self, within: float = SETTLE_TIMEOUT, grace: float = 0.0) -> None:
        """Wait until nothing more can arrive for what was sent so far.

        Close mode: every connection has been closed by the sidecar (exact), and nothing happened
        for `grace` seconds. Keep-alive mode: no connection is inside a request and no byte arrived
        for IDLE_WINDOW seconds.
        Raises AssertionError, describing the connections, if that does not happen `within` seconds.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + within
        while True:
            now = loop.time()
            if self.keep_alive:
                busy = any(p.busy for p in self.protocols.values() if p.record and not p.record.closed)
                # Watched for a whole window from now on: bytes still in flight get to arrive.
                if not busy and now - max(self.last_activity, started) >= IDLE_WINDOW:
                    return
                wait = IDLE_WINDOW
            else:
                # Closed is exact for what arrived; the grace covers a connection not yet made
                # (an answer to the client can come before the sidecar connects upstream).
                idle = now - max(self.last_activity, started)
                if self.open_count() == 0 and idle >= grace:
                    return
                wait = max(grace - idle, 0.001) if self.open_count() == 0 else deadline - now
            if now >= deadline:
                raise AssertionError(f"the upstream did not settle within {within} s:\n{self.describe()}")
            self.activity.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.activity.wait(), min(wait, max(deadline - now, 0.001)))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for protocol in self.protocols.values():
                if protocol.transport is not None:
                    protocol.transport.abort()
            await self.server.wait_closed()


@asynccontextmanager
async def serve_recording(
    *, keep_alive: bool = False, host: str = "127.0.0.1"
) -> AsyncIterator[RecordingUpstream]:
    upstream = RecordingUpstream(keep_alive=keep_alive)
    loop = asyncio.get_running_loop()
    upstream.server = await loop.create_server(lambda: RecordingProtocol(upstream), host, 0)
    upstream.port = upstream.server.sockets[0].getsockname()[1]
    try:
        yield upstream
    finally:
        await upstream.close()
