"""Forwarding to the application on localhost: HTTP streamed both ways, and WebSockets bridged.

HTTP goes through `authcar.http1`, our keep-alive HTTP/1.1 pool (see docs/decisions.md, decision 8:
it costs a fraction of a general-purpose client per request). WebSockets, rare and long-lived, go
through aiohttp. Redirects are never followed, compression is left to the two ends, and the only
retry is an idempotent body-less request whose reused connection had been closed by the upstream
before it saw the request.

A small body (up to AUTHCAR_REQUEST_BUFFER_BYTES) is read whole before an upstream connection is
taken: a client that sends a byte and stalls holds only its own connection, never one of the pool's,
and the application never sees half of it. Larger bodies stream, with back-pressure both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from yarl import URL

from authcar.errors import (
    BadGateway,
    GatewayError,
    PayloadTooLarge,
    UpstreamConnectFailed,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamFailed,
    UpstreamProtocolError,
    UpstreamReset,
    UpstreamTimeout,
    UpstreamWebSocketRejected,
)
from authcar.exchange import Exchange
from authcar.extensions import BODY_REFUSED_EXTENSION
from authcar.headers import Framed, InvalidResponseHeader, response_headers
from authcar.http1 import (
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_HEADER_COUNT,
    ConnectionPool,
    Response,
)
from authcar.types import Receive, Scope, Send

# The server answers these itself; forwarding them would start a second handshake upstream.
WEBSOCKET_HANDSHAKE = frozenset(
    {b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions", b"sec-websocket-protocol"}
)
NO_BODY_STATUS = frozenset({204, 304})
MAX_WEBSOCKET_MESSAGE = 16 * 1024 * 1024


class ClientGone(Exception):
    """The client went away before its request body was complete."""


class RequestBody:
    """The client's body as an async iterator, enforcing the size limit while streaming."""

    def __init__(self, receive: Receive, limit: int, extensions: dict[str, Any] | None = None) -> None:
        self.receive = receive
        self.limit = limit
        self.extensions = extensions
        self.received = 0
        self.too_large = False
        self.client_gone = False
        self.refused: GatewayError | None = None  # the protocol ended the body (and answered this)
        self.complete = False

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.client_gone = True
                self.refused = self.extensions.get(BODY_REFUSED_EXTENSION) if self.extensions else None
                raise ClientGone
            chunk = message.get("body", b"")
            if chunk:
                self.received += len(chunk)
                if self.limit and self.received > self.limit:
                    self.too_large = True
                    raise PayloadTooLarge()
                yield chunk
            if not message.get("more_body", False):
                self.complete = True
                return

    async def read_ahead(self, size: int) -> AsyncIterator[bytes]:
        """Read the body until it ends or passes `size` bytes; then the same body as `chunks()`
        (what was read first, in one piece, then the rest as it comes)."""
        stream = self.chunks()
        held: list[bytes] = []
        total = 0
        async for chunk in stream:
            held.append(chunk)
            total += len(chunk)
            if total > size:
                break
        return replay(b"".join(held), stream)


async def replay(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for chunk in rest:
        yield chunk


class Upstream:
    """The clients for the application; one per process, built at startup, started in the loop."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int,
        keepalive_timeout: float,
        max_body_bytes: int,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        buffer_bytes: int = 0,
    ) -> None:
        """`buffer_bytes`: bodies up to this size are read whole before a connection is taken."""
        base = URL(url)
        self.origin = str(base.origin())
        self.host = base.host or "127.0.0.1"
        self.port = base.port or (443 if base.scheme == "https" else 80)
        self.tls = base.scheme == "https"
        self.base_path = base.raw_path.rstrip("/").encode("latin-1")
        self.host_header = base.raw_authority
        self.max_body_bytes = max_body_bytes
        self.buffer_bytes = buffer_bytes
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.keepalive_timeout = keepalive_timeout
        self.max_header_bytes = max_header_bytes
        self.pool: ConnectionPool | None = None
        self.session: aiohttp.ClientSession | None = None
        # Browser login's: which Set-Cookie names the application may not set (None: login off).
        self.own_cookie: Callable[[bytes], bool] | None = None

    async def start(self) -> None:
        self.pool = ConnectionPool(
            self.host,
            self.port,
            tls=ssl.create_default_context() if self.tls else None,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            max_connections=self.max_connections,
            keepalive_timeout=self.keepalive_timeout,
            max_header_bytes=self.max_header_bytes,
        )
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, connect=self.connect_timeout),
            auto_decompress=False,
            # The upstream sees the client's headers, not aiohttp's defaults.
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
            # The WebSocket handshake's response head: bounded like every other (see http1).
            max_line_size=self.max_header_bytes,
            max_field_size=self.max_header_bytes,
            max_headers=DEFAULT_MAX_HEADER_COUNT,
        )

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None
        if self.session is not None:
            await self.session.close()
            self.session = None

    def target(self, scope: Scope) -> bytes:
        """The request target sent upstream: the request's raw path and query, byte for byte."""
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        query: bytes = scope.get("query_string", b"")
        target = self.base_path + raw_path
        return target + b"?" + query if query else target

    def websocket_url(self, scope: Scope) -> URL:
        scheme = "wss" if self.tls else "ws"
        return URL(f"{scheme}://{self.host_header}" + self.target(scope).decode("latin-1"), encoded=True)

    async def probe(self, wait: float = 1.0) -> str | None:
        """Readiness: can a TCP connection to the upstream be opened? Returns a problem or None."""
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), wait)
        except (OSError, TimeoutError) as exc:
            return f"cannot connect to {self.origin}: {exc.__class__.__name__}"
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return None

    async def forward(
        self, scope: Scope, receive: Receive, send: Send, framed: Framed, exchange: Exchange
    ) -> None:
        """Send the request upstream and stream the answer back.

        Raises a GatewayError only while nothing has been sent to the client; once the response has
        started, an upstream failure aborts the client connection instead (a truncated body must not
        look complete).
        """
        assert self.pool is not None, "Upstream.start() was not awaited"
        has_body = framed.chunked or bool(framed.content_length)
        body = RequestBody(receive, self.max_body_bytes, scope.get("extensions")) if has_body else None
        started = time.perf_counter()
        try:
            chunks = None
            if body is not None:
                small = framed.chunked or (framed.content_length or 0) <= self.buffer_bytes
                # Before a pooled connection is taken: a slow small upload holds none (module doc).
                chunks = await body.read_ahead(self.buffer_bytes) if small else body.chunks()
                started = time.perf_counter()
            response = await self.pool.request(
                scope["method"].encode("ascii"),
                self.target(scope),
                framed.headers,
                chunks,
                content_length=framed.content_length,
                chunked=framed.chunked,
            )
        except UpstreamError as exc:
            raise self.request_failure(exc, body, exchange) from None
        except GatewayError:
            raise  # the client's body was refused (too large): that is the answer
        except Exception as exc:
            raise self.request_failure(upstream_failure(exc), body, exchange) from None
        exchange.upstream_seconds = time.perf_counter() - started
        exchange.bytes_in = body.received if body is not None else 0
        try:
            await self.relay_response(scope, receive, send, response, framed.request_id_bytes, body, exchange)
        finally:
            response.release()

    def request_failure(
        self, failure: UpstreamError, body: RequestBody | None, exchange: Exchange
    ) -> GatewayError:
        """What went wrong before the upstream answered, as the error the client gets: the client's
        body first (the upstream leg may have failed only because the body did)."""
        if body is not None and body.too_large:
            exchange.client_failed("body_too_large")
            return PayloadTooLarge()
        if body is not None and body.refused is not None:
            exchange.client_failed("body_refused")
            return body.refused
        if body is not None and body.client_gone:
            exchange.client_failed("client_gone")
            exchange.client_gone = True
            return BadGateway("the client disconnected", code="client_closed_request")
        exchange.error = failure.kind
        return failure

    async def relay_response(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        response: Response,
        request_id: bytes,
        body: RequestBody | None,
        exchange: Exchange,
    ) -> None:
        status = response.status
        has_body = status not in NO_BODY_STATUS
        try:
            # Interim 1xx answers never get here (the client skips them); 101 without an Upgrade
            # request and codes outside 2xx-5xx cannot be relayed.
            if not 200 <= status <= 599:
                raise InvalidResponseHeader(":status")
            headers = response_headers(
                response.headers, request_id, body=has_body, own_cookie=self.own_cookie
            )
        except InvalidResponseHeader:
            # Checked before anything is sent, while a 502 can still be answered.
            response.close()
            exchange.error = UpstreamProtocolError.kind
            raise UpstreamProtocolError("an invalid status or response header") from None
        exchange.status = status
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if not has_body or scope["method"] == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return

        watcher: asyncio.Task[None] | None = None
        try:
            chunk = await response.read()
            while chunk:
                exchange.bytes_out += len(chunk)
                if response.at_eof():
                    # Small answers arrive whole: one send instead of two.
                    await send({"type": "http.response.body", "body": chunk})
                    return
                if watcher is None and (body is None or body.complete):
                    # A long download to a client that left would run on for nothing.
                    watcher = asyncio.create_task(watch_disconnect(receive, response))
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                chunk = await response.read()
            if watcher is not None and watcher.done():
                exchange.client_gone = True
                return
            await send({"type": "http.response.body", "body": b""})
        except Exception as exc:
            if watcher is not None and watcher.done():
                exchange.client_gone = True
                return
            # Mid-stream: the status line is out, so the only honest signal left is a broken connection.
            exchange.error = upstream_failure(exc).kind + "_mid_stream"
            response.close()
            return
        finally:
            if watcher is not None:
                watcher.cancel()

    async def forward_websocket(
        self, scope: Scope, receive: Receive, send: Send, framed: Framed, exchange: Exchange
    ) -> None:
        """Open the upstream WebSocket first, then accept the client, then bridge until either closes."""
        assert self.session is not None, "Upstream.start() was not awaited"
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        upstream_headers = [
            (n.decode("latin-1"), v.decode("latin-1"))
            for n, v in framed.headers
            if n not in WEBSOCKET_HANDSHAKE
        ]
        started = time.perf_counter()
        try:
            ws = await self.session.ws_connect(
                self.websocket_url(scope),
                headers=upstream_headers,
                protocols=tuple(scope.get("subprotocols") or ()),
                autoclose=False,
                autoping=True,
                # Deflate on a localhost hop only burns CPU twice; the client's leg negotiates its own.
                compress=0,
                max_msg_size=MAX_WEBSOCKET_MESSAGE,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0),
            )
        except aiohttp.WSServerHandshakeError as exc:
            exchange.error = UpstreamWebSocketRejected.kind
            raise UpstreamWebSocketRejected(exc.status) from None
        except Exception as exc:
            failure = upstream_failure(exc)
            exchange.error = failure.kind
            raise failure from None
        exchange.upstream_seconds = time.perf_counter() - started
        async with ws:
            try:
                await send({"type": "websocket.accept", "subprotocol": ws.protocol})
            except OSError:  # the client left while the upstream handshake was under way
                exchange.client_gone = True
                return
            exchange.status = 101
            to_upstream = asyncio.create_task(client_to_upstream(receive, ws, exchange))
            to_client = asyncio.create_task(upstream_to_client(ws, send, exchange))
            done, pending = await asyncio.wait({to_upstream, to_client}, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for task in done:
                if task.exception() is not None:
                    exchange.error = "websocket_" + task.exception().__class__.__name__


async def watch_disconnect(receive: Receive, response: Response) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            response.close()  # stops the read loop: the chunk read raises or ends
            return


async def client_to_upstream(
    receive: Receive, ws: aiohttp.ClientWebSocketResponse, exchange: Exchange
) -> None:
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "websocket.receive":
            if message.get("bytes") is not None:
                exchange.bytes_in += len(message["bytes"])
                await ws.send_bytes(message["bytes"])
            else:
                text = message.get("text") or ""
                exchange.bytes_in += len(text)
                await ws.send_str(text)
        elif kind == "websocket.disconnect":
            code = message.get("code", 1000)
            # 1005/1006 are never sent on the wire (RFC 6455 §7.4.1).
            await ws.close(
                code=code if code not in (1005, 1006) else 1000,
                message=(message.get("reason") or "").encode(),
            )
            return


async def upstream_to_client(ws: aiohttp.ClientWebSocketResponse, send: Send, exchange: Exchange) -> None:
    while True:
        message = await ws.receive()
        if message.type == aiohttp.WSMsgType.TEXT:
            exchange.bytes_out += len(message.data)
            await send({"type": "websocket.send", "text": message.data})
        elif message.type == aiohttp.WSMsgType.BINARY:
            exchange.bytes_out += len(message.data)
            await send({"type": "websocket.send", "bytes": message.data})
        elif message.type == aiohttp.WSMsgType.CLOSE:
            # aiohttp reports a close frame without a status as 0, which neither leg may send back.
            code = message.data if isinstance(message.data, int) and message.data else 1000
            await ws.close(code=code)
            await send({"type": "websocket.close", "code": code, "reason": message.extra or ""})
            return
        else:  # CLOSING, CLOSED, ERROR: the upstream leg is gone without a close frame
            await send(
                {"type": "websocket.close", "code": 1011 if message.type == aiohttp.WSMsgType.ERROR else 1001}
            )
            return


def upstream_failure(exc: BaseException) -> UpstreamError:
    """The failure type for what forwarding raised: the pool's own errors are typed already; aiohttp
    (WebSockets) and the rest are named here. The order matters: aiohttp's connect timeout is also
    a timeout, and its connector error also an OSError."""
    if isinstance(exc, UpstreamError):
        return exc
    detail = f"{exc.__class__.__name__}: {exc}"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamConnectTimeout(detail)
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return UpstreamTimeout(detail)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamConnectFailed(detail)
    if isinstance(
        exc,
        aiohttp.ServerDisconnectedError
        | aiohttp.ClientOSError
        | ConnectionError
        | aiohttp.ClientPayloadError,
    ):
        return UpstreamReset(detail)
    if isinstance(exc, aiohttp.ClientResponseError):
        return UpstreamProtocolError(detail)
    return UpstreamFailed(detail)
