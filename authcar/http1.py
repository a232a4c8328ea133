"""A lean HTTP/1.1 client for one upstream origin: a keep-alive pool of asyncio protocols.

Why not aiohttp on this path (docs/decisions.md, 8. "Our own HTTP/1.1 upstream pool instead of
aiohttp for plain requests"): a bare uvicorn hello-world serves ~15k req/s on the reference machine,
the same server forwarding through aiohttp ~4-6k; the client side was most of the cost. A forwarding
proxy needs little of a general client: one origin, requests whose head is already bytes, bodies
streamed as they come, no cookies, redirects, decompression or retries of anything but a reused
connection that died before answering.

What it does:
- keeps up to `max_connections` connections, reusing idle ones last-in-first-out (the warmest);
- writes the request head in one `write`; streams a request body (Content-Length or chunked);
- parses the response with httptools (llhttp): Content-Length, chunked, EOF-delimited bodies, 1xx
  interim responses skipped, trailers dropped, HEAD answered without waiting for a body;
- caps the response head while it is parsed (`max_header_bytes` for the status line and headers of
  the final and any interim heads together, raw bytes counted while the head is incomplete, and
  `max_header_count` fields): above either, the exchange fails (UpstreamHeaderTooLarge) and the
  connection is closed, never pooled;
- applies back-pressure both ways: reading pauses while the consumer lags, writing awaits drain;
- times out connecting (`connect_timeout`) and silence while answering (`read_timeout`);
- retries only an idempotent, body-less request whose *reused* connection closed before a single
  response byte arrived: the upstream dropped an idle connection, it never saw the request.

Each failure is raised as its own authcar.errors.UpstreamError type where it is found, already the
error the client gets.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
from collections.abc import AsyncIterator

import httptools

from authcar.errors import (
    UpstreamConnectFailed,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamHeaderTooLarge,
    UpstreamPoolExhausted,
    UpstreamProtocolError,
    UpstreamReset,
    UpstreamTimeout,
)

READ_HIGH_WATER = 256 * 1024  # buffered response bytes that pause reading from the upstream
READ_LOW_WATER = 64 * 1024
DEFAULT_MAX_HEADER_BYTES = 64 * 1024  # AUTHCAR_UPSTREAM_MAX_HEADER_BYTES
# Far more than any application sends (a few dozen, with every Set-Cookie), far fewer than a flood.
DEFAULT_MAX_HEADER_COUNT = 1000
# Around the reason phrase on_status reports: the rest of the status line, and the blank line that
# ends the same head (one of each per head), so that a head's size is exactly its bytes on the wire.
STATUS_LINE_OVERHEAD = len(b"HTTP/1.1 200 \r\n") + len(b"\r\n")
RETRYABLE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})  # TRACE is refused before forwarding


class HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a response head that passed a limit."""


class Connection(asyncio.Protocol):
    """One upstream connection, carrying one exchange at a time."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.slot_freed = False  # the pool has counted this connection as gone
        self.idle_since = 0.0
        self.parser: httptools.HttpResponseParser | None = None  # set while an exchange is open
        self.headers_ready: asyncio.Future[None] | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None
        self.reset_exchange()
        self.reading_paused = False
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.last_activity = 0.0
        self.timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        self.last_activity = self.loop.time()
        parser = self.parser
        if parser is None:
            # Bytes nobody asked for: the connection's framing can no longer be trusted.
            self.abort()
            return
        in_head = not self.headers_done
        if in_head:
            self.head_bytes += len(data)
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:  # also what a callback raised (HeadTooLarge)
            self.fail(UpstreamProtocolError(f"invalid response from the upstream: {exc}"))
            self.abort()
            return
        # A head still incomplete after this many bytes cannot fit: stop buffering it.
        if in_head and not self.headers_done and self.head_bytes > self.pool.max_header_bytes:
            self.head_too_large(f"more than {self.pool.max_header_bytes} bytes")
            self.abort()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.cancel_timer()
        if self.parser is not None and not self.complete:
            if self.headers_done and self.eof_delimited():
                self.on_message_complete()  # the body was delimited by the close itself
            else:
                self.fail(UpstreamReset("the upstream closed the connection"))
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)
        self.pool.forget(self)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.complete:
            # A second response on one request: the upstream's framing and ours disagree, so the
            # connection can never be trusted again (its surplus would answer the next request).
            self.keep_alive = False
            self.surplus = True
            return
        self.headers = []
        self.headers_done = False

    def on_status(self, reason: bytes) -> None:
        if not self.headers_done:
            self.count_head(len(reason) + STATUS_LINE_OVERHEAD)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.headers_done:  # later calls are chunked trailers: dropped
            # Exact sizes, for heads that arrive whole in one read; interim heads count too.
            self.header_count += 1
            if self.header_count > self.pool.max_header_count:
                self.head_too_large(f"more than {self.pool.max_header_count} header fields")
                raise HeadTooLarge
            self.count_head(len(name) + len(value) + 4)
            self.headers.append((name, value))

    def count_head(self, size: int) -> None:
        self.head_size += size
        if self.head_size > self.pool.max_header_bytes:
            self.head_too_large(f"more than {self.pool.max_header_bytes} bytes")
            raise HeadTooLarge

    def head_too_large(self, detail: str) -> None:
        self.fail(UpstreamHeaderTooLarge(f"the upstream's response head has {detail}"))

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        if self.surplus:
            return  # a second response's head must never replace the first's
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            return  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        self.status = status
        self.headers_done = True
        if self.headers_ready is not None and not self.headers_ready.done():
            self.headers_ready.set_result(None)
        if self.head_only:
            # llhttp cannot be told that the request was HEAD; the answer has no body by definition.
            self.on_message_complete()

    def on_body(self, body: bytes) -> None:
        if self.complete or not body:
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > READ_HIGH_WATER and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.cancel_timer()  # our own back-pressure is not the upstream's silence
            self.transport.pause_reading()
        self.wake()

    def on_message_complete(self) -> None:
        if self.complete or not self.headers_done:
            return
        # Asked now: llhttp resets its flags once the callback returns.
        self.keep_alive = (
            self.parser is not None
            and self.parser.should_keep_alive()
            and not self.closed
            and not self.surplus
        )
        self.complete = True
        # The read timer stays armed: check_silence() retires it when it fires on an idle
        # connection, and the next exchange reuses it, instead of a call_later/cancel per request.
        self.wake()

    # exchange
    def begin(self, head_only: bool) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.headers_ready = self.loop.create_future()
        self.chunks.clear()
        self.reset_exchange(head_only)

    def reset_exchange(self, head_only: bool = False) -> None:
        """The state of one request/response exchange, as it is before anything happened."""
        self.head_only = head_only
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.buffered = 0
        self.complete = False
        self.error: UpstreamError | None = None
        self.received_any = False
        self.body_unsent = False  # answered before the request body was sent: not reusable
        self.keep_alive = False
        self.surplus = False  # bytes arrived after the response ended: never reusable
        self.head_bytes = 0  # raw bytes received while a response head was incomplete
        self.head_size = 0  # parsed status lines and header fields, as sent
        self.header_count = 0
        self.request_done = False  # the whole request is written: the upstream's turn

    def request_sent(self) -> None:
        """From here on, silence is the upstream's: start the read timeout."""
        self.request_done = True
        self.last_activity = self.loop.time()
        if self.timer is None and not self.complete and self.error is None:
            self.arm_timer(self.pool.read_timeout)

    def eof_delimited(self) -> bool:
        for name, _ in self.headers:
            lower = name.lower()
            if lower == b"content-length" or lower == b"transfer-encoding":
                return False
        return True

    def fail(self, error: UpstreamError) -> None:
        if self.complete or self.error is not None:
            return
        self.error = error
        self.cancel_timer()
        if self.headers_ready is not None and not self.headers_ready.done():
            self.headers_ready.set_exception(error)
            # Marked as seen: an exchange that already gave up (its body failed to send) no longer
            # awaits it, and asyncio would log the orphaned exception as an error.
            self.headers_ready.exception()
        self.wake()

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def arm_timer(self, delay: float) -> None:
        self.timer = self.loop.call_later(delay, self.check_silence)

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def check_silence(self) -> None:
        self.timer = None
        if (
            not self.request_done
            or self.complete
            or self.error is not None
            or self.reading_paused
            or self.closed
        ):
            return  # nothing is awaited from the upstream now (a slow upload is the client's pace)
        silent = self.loop.time() - self.last_activity
        if silent >= self.pool.read_timeout:
            self.fail(UpstreamTimeout("the upstream did not answer in time"))
            self.abort()
        else:
            self.arm_timer(self.pool.read_timeout - silent)

    async def next_chunk(self) -> bytes:
        """The next piece of the response body; b"" once it is complete."""
        while True:
            if self.chunks:
                chunk = self.chunks.popleft()
                self.buffered -= len(chunk)
                if self.reading_paused and self.buffered < READ_LOW_WATER and self.transport is not None:
                    self.reading_paused = False
                    self.last_activity = self.loop.time()
                    self.arm_timer(self.pool.read_timeout)
                    self.transport.resume_reading()
                return chunk
            if self.error is not None:
                raise self.error
            if self.complete:
                return b""
            self.waiter = self.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None

    def write(self, data: bytes) -> None:
        if self.transport is None or self.closed:
            raise UpstreamReset("the upstream closed the connection")
        self.last_activity = self.loop.time()
        self.transport.write(data)

    async def drain(self) -> None:
        if self.closed:
            raise UpstreamReset("the upstream closed the connection")
        if self.write_paused:
            self.drain_waiter = self.loop.create_future()
            try:
                await self.drain_waiter
            finally:
                self.drain_waiter = None
            if self.closed:
                raise UpstreamReset("the upstream closed the connection")

    def reusable(self) -> bool:
        return (
            self.complete
            and not self.closed
            and not self.body_unsent
            and not self.surplus
            and self.error is None
            and self.keep_alive
        )

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()


class Response:
    """The upstream's answer: status and headers now, the body as it arrives."""

    __slots__ = ("connection", "headers", "released", "status")

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.status = connection.status
        self.headers = connection.headers
        self.released = False

    async def read(self) -> bytes:
        return await self.connection.next_chunk()

    def at_eof(self) -> bool:
        connection = self.connection
        return connection.complete and not connection.chunks

    def release(self) -> None:
        """Give the connection back to the pool if the exchange ended cleanly, else close it."""
        if not self.released:
            self.released = True
            self.connection.pool.release(self.connection)

    def close(self) -> None:
        if not self.released:
            self.released = True
            self.connection.abort()
            self.connection.pool.release(self.connection)


class ConnectionPool:
    """Connections to one origin, bounded, reused while fresh."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int,
        keepalive_timeout: float,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_header_count: int = DEFAULT_MAX_HEADER_COUNT,
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.keepalive_timeout = keepalive_timeout
        self.max_header_bytes = max_header_bytes  # of one response head; see Connection
        self.max_header_count = max_header_count
        self.loop = asyncio.get_running_loop()
        self.idle: list[Connection] = []
        self.open = 0  # connections open or being opened
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.connections_made = 0  # for tests and metrics

    async def request(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: AsyncIterator[bytes] | None = None,
        *,
        content_length: int | None = None,
        chunked: bool = False,
    ) -> Response:
        """Send one request; returns once the response headers are in.

        The request's framing is written here and nowhere else: the request line, then `headers`
        (which must hold Host and must not hold Content-Length or Transfer-Encoding), then
        `Transfer-Encoding: chunked` when `chunked` (the body is framed as chunks) or
        `Content-Length: content_length` (the body must be exactly that long: a body that is not
        is never sent on, so the upstream can never read a second request out of it).
        """
        if chunked and body is None:
            raise ValueError("a chunked request needs a body")
        lines = [method, b" ", target, b" HTTP/1.1\r\n"]
        for name, value in headers:
            lines += (name, b": ", value, b"\r\n")
        if chunked:
            lines.append(b"transfer-encoding: chunked\r\n")
        elif content_length is not None:
            lines.append(b"content-length: %d\r\n" % content_length)
        elif body is not None:
            raise ValueError("a body needs a Content-Length or chunked framing")
        lines.append(b"\r\n")
        head = b"".join(lines)
        if body is not None:
            if not chunked:
                assert content_length is not None  # refused above: a body needs one framing
                body = length_checked(body, content_length)
            # Nothing goes upstream until the client's body has really started: a request whose
            # body never comes (or is refused by the server's parser) never reaches the app, and
            # head and first chunk share one write.
            first = await anext(body, b"")
            if first:
                head += b"%x\r\n" % len(first) + first + b"\r\n" if chunked else first
        retry = body is None and method in RETRYABLE_METHODS
        while True:
            connection, reused = await self.acquire()
            try:
                return await self.exchange(connection, head, method == b"HEAD", body, chunked)
            except UpstreamError as exc:
                self.release(connection)
                if retry and reused and isinstance(exc, UpstreamReset) and not connection.received_any:
                    retry = False  # once: the next connection is a fresh one or just as stale
                    continue
                raise
            except BaseException:
                connection.abort()
                self.release(connection)
                raise

    async def exchange(
        self,
        connection: Connection,
        head: bytes,
        head_only: bool,
        body: AsyncIterator[bytes] | None,
        chunked: bool,
    ) -> Response:
        connection.begin(head_only)
        assert connection.headers_ready is not None
        if body is None:
            connection.write(head)
            connection.request_sent()
            await connection.headers_ready
            return Response(connection)
        connection.write(head)
        sender = asyncio.ensure_future(send_body(connection, body, chunked))
        try:
            # The upstream may answer before the body is complete (an early 413, say).
            await asyncio.wait({sender, connection.headers_ready}, return_when=asyncio.FIRST_COMPLETED)
            if sender.done() and sender.exception() is not None:
                connection.abort()
                raise sender.exception()  # type: ignore[misc]
            connection.request_sent()
            await connection.headers_ready
        except BaseException:
            sender.cancel()
            with contextlib.suppress(BaseException):
                await sender
            raise
        if not sender.done():
            # Answered early: stop sending and do not reuse a connection with half a body on it.
            sender.cancel()
            with contextlib.suppress(BaseException):
                await sender
            connection.body_unsent = True
        return Response(connection)

    async def acquire(self) -> tuple[Connection, bool]:
        """A connection and whether it was reused; waits for a free slot up to connect_timeout."""
        deadline = self.loop.time() + self.connect_timeout
        while True:
            now = self.loop.time()
            while self.idle:
                connection = self.idle.pop()
                if not connection.closed and now - connection.idle_since < self.keepalive_timeout:
                    return connection, True
                connection.abort()  # stale: its slot is freed when the close completes
            if self.open < self.max_connections:
                self.open += 1
                try:
                    return await self.connect(), False
                except BaseException:
                    self.open -= 1
                    self.wake_one()
                    raise
            waiter = self.loop.create_future()
            self.waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, max(0.0, deadline - now))
            except TimeoutError:
                # Every pooled connection stayed busy: the sidecar's limit, not the application's
                # failure to accept (that is UpstreamConnectTimeout).
                raise UpstreamPoolExhausted("no free upstream connection in time") from None
            finally:
                with contextlib.suppress(ValueError):
                    self.waiters.remove(waiter)

    async def connect(self) -> Connection:
        try:
            _, connection = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: Connection(self),
                    self.host,
                    self.port,
                    ssl=self.tls,
                    server_hostname=self.host if self.tls else None,
                ),
                self.connect_timeout,
            )
        except TimeoutError:
            raise UpstreamConnectTimeout(f"timed out connecting to {self.host}:{self.port}") from None
        except OSError as exc:
            raise UpstreamConnectFailed(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        self.connections_made += 1
        return connection

    def release(self, connection: Connection) -> None:
        if connection.reusable():
            connection.parser = None
            connection.idle_since = self.loop.time()
            self.idle.append(connection)
            self.wake_one()
            return
        connection.abort()
        # forget() runs from connection_lost, which frees the slot.

    def forget(self, connection: Connection) -> None:
        """A connection closed: free its slot."""
        if connection in self.idle:
            self.idle.remove(connection)
        if connection.slot_freed:
            return
        connection.slot_freed = True
        self.open -= 1
        self.wake_one()

    def wake_one(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        for connection in list(self.idle):
            connection.abort()
        self.idle.clear()
        await asyncio.sleep(0)


class BodyLengthMismatch(Exception):
    """The body handed to the pool is not as long as its Content-Length said."""


async def length_checked(body: AsyncIterator[bytes], length: int) -> AsyncIterator[bytes]:
    """`body`, checked against the Content-Length the request head announces.

    The server's parser already delivers exactly that many bytes; this keeps the promise even if
    it did not. A surplus is never written (the upstream would parse it as another request); a
    shortfall raises at the end. Either way the connection is closed, never reused.
    """
    sent = 0
    async for chunk in body:
        sent += len(chunk)
        if sent > length:
            raise BodyLengthMismatch(f"the body is longer than its Content-Length {length}")
        yield chunk
    if sent != length:
        raise BodyLengthMismatch(f"the body ended after {sent} of {length} bytes")


async def send_body(connection: Connection, body: AsyncIterator[bytes], chunked: bool) -> None:
    async for chunk in body:
        if not chunk:
            continue
        if chunked:
            connection.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        else:
            connection.write(chunk)
        await connection.drain()
    if chunked:
        connection.write(b"0\r\n\r\n")
