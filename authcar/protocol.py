"""uvicorn's httptools protocol with the limits and facts a gateway needs before the ASGI app runs.

- The request head (request line and headers) is capped while it is being parsed, so a client cannot
  make the server buffer megabytes of headers: 414 for a long target, 431 for large or many headers.
- Malformed requests (including Content-Length with Transfer-Encoding, which llhttp refuses) get the
  JSON error body instead of uvicorn's plain text, and the connection is closed.
- Over TLS, the verified client certificate is put in the scope's `tls` extension for the identity
  stages, parsed once per connection.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from authcar.authn.jwt import TOKEN_MEMO_EXTENSION, TokenDigestMemo
from authcar.errors import BadRequest, GatewayError, HeadersTooLarge, URITooLong, raw_error_response
from authcar.headers import new_request_id
from authcar.tls import client_certificate


@dataclass(frozen=True)
class HeadLimits:
    max_head_bytes: int
    max_header_count: int


class HeadLimitExceeded(Exception):
    def __init__(self, error: GatewayError) -> None:
        super().__init__(error.description)
        self.error = error


def tls_extension(transport: asyncio.BaseTransport) -> dict[str, Any] | None:
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    certificate = client_certificate(ssl_object)
    return {
        "tls_version": ssl_object.version(),
        "cipher_suite": (ssl_object.cipher() or ("",))[0],
        "client_cert_name": certificate.subject if certificate else None,
        "client_certificate": certificate,
    }


class CorkedTransport:
    """Holds a response head back until the body's first write, so a small answer is one syscall.

    uvicorn writes the status line and headers, then the body, as two writes; on loopback each
    write is a TCP send that costs more than the rest of the response handling. Whatever is held is
    flushed on the next loop iteration, so a slow body never delays the head for long.
    """

    __slots__ = ("flush_handle", "held", "loop", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self.loop = loop
        self.held: bytes | None = None
        self.flush_handle: asyncio.Handle | None = None

    def write(self, data: bytes) -> None:
        if self.held is not None:
            data = self.held + data
            self.held = None
            self.transport.write(data)
        elif self.flush_handle is None:
            self.held = data
            self.flush_handle = self.loop.call_soon(self.flush)
        else:
            self.transport.write(data)

    def flush(self) -> None:
        if self.held is not None:
            held, self.held = self.held, None
            if not self.transport.is_closing():
                self.transport.write(held)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


def http_protocol(limits: HeadLimits) -> type[HttpToolsProtocol]:
    """A protocol class bound to these limits (uvicorn instantiates it per connection)."""

    class GateHttpProtocol(HttpToolsProtocol):
        head_limits = limits

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.tls = tls_extension(transport)
            self.token_memo = TokenDigestMemo()
            self.in_head = True
            self.head_bytes = 0  # raw bytes read while a head is incomplete
            self.header_count = 0
            self.header_size = 0  # parsed header bytes of the current head
            self.limit_error: GatewayError | None = None

        def data_received(self, data: bytes) -> None:
            if self.in_head:
                self.head_bytes += len(data)
            try:
                super().data_received(data)
            except HeadLimitExceeded as exc:  # when the parser lets our exception through unwrapped
                self.limit_error = exc.error
                self.send_400_response(str(exc))
                return
            # A head still incomplete after this much data will not fit: stop buffering it.
            if (
                self.in_head
                and self.head_bytes > self.head_limits.max_head_bytes
                and not self.transport.is_closing()
            ):
                self.limit_error = HeadersTooLarge()
                self.send_400_response("")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            extensions: dict[str, Any] = {TOKEN_MEMO_EXTENSION: self.token_memo}
            if self.tls is not None:
                extensions["tls"] = self.tls
            self.scope["extensions"] = extensions

        def on_url(self, url: bytes) -> None:
            super().on_url(url)
            if len(self.url) > self.head_limits.max_head_bytes:
                raise self.fail(URITooLong())
            if b"#" in url:
                # The parser drops a fragment from the path it reports; a client never sends one, so
                # refuse it rather than authorize and forward a path shorter than what was sent.
                raise self.fail(BadRequest("the request target contains '#'", code="invalid_path_character"))

        def on_header(self, name: bytes, value: bytes) -> None:
            if not self.in_head:
                # A chunked body's trailer fields: uvicorn would append them to the headers the
                # gate has not read yet (a trailing `Authorization` would authenticate). Dropped.
                return
            # Exact size of what was parsed, for heads that arrived whole in one read.
            self.header_count += 1
            self.header_size += len(name) + len(value) + 4
            if self.header_count > self.head_limits.max_header_count:
                raise self.fail(HeadersTooLarge("too many request headers"))
            if self.header_size + len(self.url) > self.head_limits.max_head_bytes:
                raise self.fail(HeadersTooLarge())
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self.in_head = False
            self.head_bytes = 0
            self.header_count = 0
            self.header_size = 0
            super().on_headers_complete()
            cycle = self.cycle
            if cycle is not None and cycle.scope is self.scope:
                # Only the first write of a response is held; see CorkedTransport.
                cycle.transport = CorkedTransport(self.transport, self.loop)  # type: ignore[assignment]

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self.in_head = True

        def fail(self, error: GatewayError) -> HeadLimitExceeded:
            self.limit_error = error
            return HeadLimitExceeded(error)

        def send_400_response(self, msg: str) -> None:
            error = self.limit_error or BadRequest("malformed HTTP request", code="malformed_request")
            if not self.transport.is_closing():
                self.transport.write(raw_error_response(error, new_request_id()))
                self.transport.close()

    return GateHttpProtocol


class GateWebSocketProtocol(WebSocketsSansIOProtocol):
    """Adds the same TLS facts to WebSocket scopes."""

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            tls = tls_extension(self.transport)
            if tls is not None:
                scope.setdefault("extensions", {})["tls"] = tls
