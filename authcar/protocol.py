"""uvicorn's httptools protocol with the limits and facts a gateway needs before the ASGI app runs.

- The request head (request line and headers) is capped while it is being parsed, so a client cannot
  make the server buffer megabytes of headers: 414 for a long target, 431 for large or many headers.
- Malformed requests (including Content-Length with Transfer-Encoding, which llhttp refuses) get the
  JSON error body instead of uvicorn's plain text, and the connection is closed.
- Over TLS, the verified client certificate is put in the scope's `tls` extension for the identity
  stages, parsed once per connection.
- Slow clients are bounded (Slowloris, slow POST; the semantics of Apache mod_reqtimeout): a request
  head must be whole within the header timeout, counted from the connection's start or from a
  kept-alive request's first byte (idle time between requests is uvicorn's keep-alive timeout); a
  body may not stay silent longer than the body timeout, nor average less than the minimum rate once
  that time has passed. Time the sidecar itself holds the body back (flow control, a pipelined
  request waiting its turn, an unanswered `Expect: 100-continue`) does not count against the client.
  One timer per connection watches whichever of the two is awaited, armed only while it is. A body's
  progress is body bytes: chunk extensions and trailers earn no time, and framing without body is
  refused past the head size (the parser would buffer a trailer without limit).
- A client that leaves its response unread (the write buffer stays full) for the send timeout is
  cut off, so a slow reader cannot hold the response's upstream connection either.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httptools

from authcar.compat import FlowControl, HttpToolsProtocol, WebSocketsSansIOProtocol
from authcar.errors import (
    BadRequest,
    GatewayError,
    HeadersTooLarge,
    RequestTimeout,
    URITooLong,
    raw_error_response,
)
from authcar.extensions import (
    BODY_REFUSED_EXTENSION,
    CONNECTION_STATE_EXTENSION,
    TARGET_AUTHORITY_EXTENSION,
    ConnectionState,
)
from authcar.headers import new_request_id
from authcar.observe import Metrics
from authcar.tls import client_certificate


@dataclass(frozen=True)
class HeadLimits:
    max_head_bytes: int
    max_header_count: int


@dataclass(frozen=True)
class ClientPacing:
    """How slow a client may be: AUTHCAR_REQUEST_HEADER_TIMEOUT, _BODY_TIMEOUT, _BODY_MIN_RATE."""

    header_timeout: float
    body_timeout: float
    body_min_rate: int  # bytes/s; 0: no minimum
    send_timeout: float = 60.0  # a response left unread this long (write buffer full): closed


HEAD_TIMEOUT = RequestTimeout("the request head did not arrive in time", code="request_header_timeout")
BODY_TIMEOUT = RequestTimeout("the request body did not arrive in time", code="request_body_timeout")
CHUNK_FRAMING_TOO_LARGE = BadRequest(
    "chunk extensions or trailer fields are too large", code="bad_transfer_encoding"
)
# Pipelined requests queued behind the one being answered (~3 KiB each); more are not read (see
# on_headers_complete). Clients that pipeline at all rarely go past a handful.
MAX_PIPELINED = 32
# Chunked framing allowed per body byte overall (one-byte chunks take 5); with the gap limit, a
# body cannot be made to last, or to fill the parser's buffers, with framing alone.
FRAMING_PER_BODY_BYTE = 8


class PacedFlowControl(FlowControl):
    """uvicorn's read/write flow control, reporting how long reading was held back by the sidecar."""

    def __init__(
        self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, on_held: Callable[[float], None]
    ) -> None:
        super().__init__(transport)
        self.loop = loop
        self.on_held = on_held
        self.paused_at = 0.0

    def pause_reading(self) -> None:
        if not self.read_paused:
            self.paused_at = self.loop.time()
        super().pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            super().resume_reading()
            self.on_held(self.loop.time() - self.paused_at)


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


def target_authority(url: bytes) -> bytes:
    """The `host[:port]` of an absolute-form target; b"" (never a match) when it has none, carries
    userinfo, or names a scheme other than http and https."""
    try:
        parsed = httptools.parse_url(url)
    except httptools.HttpParserInvalidURLError:
        return b""
    if parsed.userinfo or not parsed.host or parsed.schema.lower() not in (b"http", b"https"):
        return b""
    host = b"[" + parsed.host + b"]" if b":" in parsed.host else parsed.host
    return host + b":%d" % parsed.port if parsed.port is not None else host


def answer_and_close(transport: asyncio.Transport, error: GatewayError) -> None:
    """The JSON error answer for a request the ASGI app never saw, then the end of the connection."""
    if not transport.is_closing():
        transport.write(raw_error_response(error, new_request_id()))
        transport.close()


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


def http_protocol(
    limits: HeadLimits,
    pacing: ClientPacing,
    metrics: Metrics | None = None,
    on_closed: Callable[[], None] | None = None,
) -> type[HttpToolsProtocol]:
    """A protocol class bound to these limits (uvicorn instantiates it per connection).

    `on_closed` runs whenever a connection ends (the connection limit's cue to accept again)."""

    class GateHttpProtocol(HttpToolsProtocol):
        head_limits = limits

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.flow = PacedFlowControl(transport, self.loop, self.reading_held)
            self.tls = tls_extension(transport)
            self.connection_state: ConnectionState = {}  # for the stages; see authcar/extensions.py
            self.in_head = True
            self.head_bytes = 0  # raw bytes read while a head is incomplete
            self.header_count = 0
            self.header_size = 0  # parsed header bytes of the current head
            self.limit_error: GatewayError | None = None
            self.deferred_error: GatewayError | None = None  # a bad pipelined request, answered last
            self.received_any = False
            self.head_started = False  # bytes of a head not yet complete have arrived
            self.body_pending = False  # a head is complete, its message is not
            self.body_last = 0.0  # when the body last made progress (or stopped being held back)
            self.body_raw = self.body_decoded = self.framing_gap = 0
            self.body_deadline = 0.0  # the minimum rate's allowance, grown by each byte
            self.asked_to_continue = False  # the body timer found the client waiting for 100 Continue
            self.upgraded = False
            self.pipeline_full = False  # MAX_PIPELINED requests wait: no more are taken
            self.send_timer: asyncio.TimerHandle | None = None
            # The new connection's head is due from now: a connection that sends nothing is closed too.
            self.watching = "head"
            self.timer: asyncio.TimerHandle | None = self.loop.call_later(
                pacing.header_timeout, self.head_overdue
            )

        def connection_lost(self, exc: Exception | None) -> None:
            self.stop_all_timers()
            super().connection_lost(exc)
            if on_closed is not None:
                on_closed()

        def data_received(self, data: bytes) -> None:
            if self.pipeline_full:
                return  # the connection ends after the requests already taken
            self.received_any = True
            if self.in_head:
                self.head_bytes += len(data)
                self.head_started = True
            elif self.body_pending:
                self.body_raw += len(data)
                self.framing_gap += len(data)
            try:
                super().data_received(data)
            except HeadLimitExceeded as exc:  # when the parser lets our exception through unwrapped
                self.limit_error = exc.error
                self.send_400_response(str(exc))
                return
            if self.upgraded or self.pipeline_full or self.transport.is_closing():
                return
            # A head still incomplete after this much data will not fit: stop buffering it.
            if self.in_head and self.head_bytes > self.head_limits.max_head_bytes:
                self.limit_error = HeadersTooLarge()
                self.send_400_response("")
                return
            if self.body_pending and self.framing_excessive():
                self.refuse_body(CHUNK_FRAMING_TOO_LARGE)
                return
            # Timers only for what is still awaited once this read is parsed: a request that arrives
            # whole in one read (the usual case on a kept-alive connection) arms none.
            if self.timer is None:
                if self.head_started:
                    self.watch("head", pacing.header_timeout)
                elif self.body_pending:
                    self.asked_to_continue = False
                    now = self.loop.time()
                    self.body_last = now
                    self.body_deadline = now + pacing.body_timeout
                    self.watch("body", pacing.body_timeout)

        def on_body(self, body: bytes) -> None:
            if self.pipeline_full:
                return  # a request that was not taken
            # Progress is body bytes, not bytes: chunk extensions and trailers never earn time.
            self.body_decoded += len(body)
            self.framing_gap = 0
            self.body_last = self.loop.time()
            if pacing.body_min_rate:
                self.body_deadline += len(body) / pacing.body_min_rate
            super().on_body(body)

        def framing_excessive(self) -> bool:
            """Chunked framing that carries no body: an endless chunk extension or trailer section
            (which the parser would buffer), or far more framing than body overall."""
            limit = self.head_limits.max_head_bytes
            if self.framing_gap > limit:
                return True
            return self.body_raw - self.body_decoded > limit + FRAMING_PER_BODY_BYTE * self.body_decoded

        def watch(self, what: str, delay: float) -> None:
            self.watching = what
            self.timer = self.loop.call_later(
                delay, self.head_overdue if what == "head" else self.body_overdue
            )

        def stop_watching(self) -> None:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self.watching = ""

        def head_overdue(self) -> None:
            self.timer = None
            self.watching = ""
            if self.transport.is_closing():
                return
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                # A pipelined head behind a response still in flight: end the connection after it.
                cycle.keep_alive = False
                return
            if not self.received_any:
                self.count_timeout("head_silent")
                self.transport.close()
                return
            self.count_timeout("head")
            self.limit_error = HEAD_TIMEOUT
            self.send_400_response("")

        def body_overdue(self) -> None:
            self.timer = None
            cycle = self.cycle
            if self.transport.is_closing() or not self.body_pending or cycle is None:
                self.watching = ""
                return
            now = self.loop.time()
            if self.flow.read_paused:
                # The sidecar is holding the body back: not the client's silence. reading_held()
                # restarts the clock when reading resumes.
                self.body_last = now
                self.watch("body", pacing.body_timeout)
                return
            if cycle.waiting_for_100_continue or self.asked_to_continue:
                # The client waits to be asked for its body (Expect: 100-continue): its clock starts
                # once it has been (at most one period late).
                self.asked_to_continue = cycle.waiting_for_100_continue
                self.body_last = now
                self.body_deadline = now + pacing.body_timeout
                self.watch("body", pacing.body_timeout)
                return
            due = self.body_last + pacing.body_timeout
            if pacing.body_min_rate:
                due = min(due, self.body_deadline)
            if now < due:
                self.watch("body", due - now)
                return
            self.count_timeout("body")
            self.refuse_body(BODY_TIMEOUT)

        def refuse_body(self, error: GatewayError) -> None:
            """End a request whose body broke a rule: answer `error` unless an answer has started,
            and close. The application's receive() reports a disconnect, so an upstream exchange
            under way is aborted (never pooled); the extension tells it why."""
            self.stop_watching()
            cycle = self.cycle
            cycle.scope["extensions"][BODY_REFUSED_EXTENSION] = error
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_complete:
                self.transport.close()
            elif cycle.response_started:
                self.transport.abort()  # a cut-short response must not look complete
            else:
                answer_and_close(self.transport, error)

        def reading_held(self, seconds: float) -> None:
            """Reading resumes after the sidecar held it back: that time is not the client's."""
            if self.watching == "body":
                self.body_last = self.loop.time()
                self.body_deadline += seconds

        def count_timeout(self, phase: str) -> None:
            if metrics is not None:
                metrics.client_timeouts.labels(phase=phase).inc()

        def pause_writing(self) -> None:
            # The client is not reading what it is sent: a slow read would hold the response, and
            # the upstream connection behind it, for as long as the client likes.
            super().pause_writing()
            if self.send_timer is None:
                self.send_timer = self.loop.call_later(pacing.send_timeout, self.send_overdue)

        def resume_writing(self) -> None:
            super().resume_writing()
            self.stop_send_timer()

        def stop_send_timer(self) -> None:
            if self.send_timer is not None:
                self.send_timer.cancel()
                self.send_timer = None

        def stop_all_timers(self) -> None:
            self.stop_watching()
            self.stop_send_timer()

        def send_overdue(self) -> None:
            self.send_timer = None
            if self.transport.is_closing() or not self.flow.write_paused:
                return
            self.count_timeout("send")
            if self.cycle is not None:
                self.cycle.disconnected = True  # the application's receive() reports a disconnect
                self.cycle.message_event.set()
            self.transport.abort()

        def handle_websocket_upgrade(self) -> None:
            # From here the WebSocket protocol owns the connection (and reports its end).
            if self.pipeline_full:
                return  # an upgrade among requests that were not taken: the connection just ends
            self.upgraded = True
            self.stop_all_timers()
            super().handle_websocket_upgrade()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.deferred_error is not None and not self.answers_pending():
                answer_and_close(self.transport, self.deferred_error)
                return
            if self.watching == "head":
                # The next head has begun: the header timeout governs it, not the keep-alive timeout.
                self._unset_keepalive_if_required()

        def on_message_begin(self) -> None:
            self.head_started = True
            super().on_message_begin()
            extensions: dict[str, Any] = {CONNECTION_STATE_EXTENSION: self.connection_state}
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
            if self.watching == "head":
                self.stop_watching()
            self.in_head = False
            self.head_started = False
            self.body_pending = True  # until on_message_complete, at once for a body-less request
            self.body_raw = 0  # bytes read since, framing included
            self.body_decoded = 0
            self.framing_gap = 0  # bytes read since the last body byte
            self.head_bytes = 0
            self.header_count = 0
            self.header_size = 0
            if self.url[:1] not in (b"/", b"*"):
                # Absolute form: RFC 9112 §3.2.2 makes its authority the request's host, whatever
                # Host says. The gate compares the two (uvicorn keeps only the path).
                self.scope["extensions"][TARGET_AUTHORITY_EXTENSION] = target_authority(self.url)
            if self.pipeline_full or len(self.pipeline) >= MAX_PIPELINED:
                # uvicorn parses a whole read ahead, queueing a request (~3 KiB) per head it finds:
                # a quarter MiB of tiny pipelined requests held ~20 MiB. Past the limit no request
                # is taken; the connection closes after the last one taken is answered, and the
                # client retries the rest (RFC 9112 9.3.2).
                if not self.pipeline_full:
                    self.pipeline_full = True
                    last_taken = self.pipeline[0][0] if self.pipeline else self.cycle
                    last_taken.keep_alive = False
                return
            super().on_headers_complete()
            cycle = self.cycle
            if cycle is not None and cycle.scope is self.scope:
                # Only the first write of a response is held; see CorkedTransport.
                cycle.transport = CorkedTransport(self.transport, self.loop)  # type: ignore[assignment]

        def on_message_complete(self) -> None:
            if not self.pipeline_full:
                super().on_message_complete()
            self.in_head = True
            self.body_pending = False
            if self.watching == "body":
                self.stop_watching()

        def fail(self, error: GatewayError) -> HeadLimitExceeded:
            self.limit_error = error
            return HeadLimitExceeded(error)

        def send_400_response(self, msg: str) -> None:
            error = self.limit_error or BadRequest("malformed HTTP request", code="malformed_request")
            if self.in_head and self.answers_pending():
                # The bad bytes begin a pipelined request; those before it were complete and may
                # already be at the application: answer them first, then refuse and close.
                self.deferred_error = error
                self.transport.pause_reading()
                return
            answer_and_close(self.transport, error)

        def answers_pending(self) -> bool:
            cycle = self.cycle
            return bool(self.pipeline) or (cycle is not None and not cycle.response_complete)

    return GateHttpProtocol


BAD_HANDSHAKE = BadRequest("the WebSocket handshake is invalid", code="bad_websocket_handshake")


class GateWebSocketProtocol(WebSocketsSansIOProtocol):
    """Adds the same TLS facts to WebSocket scopes, and answers bad handshakes like any bad request."""

    def handle_connect(self, event: Any) -> None:
        if self.conn.accept(event).status_code != 101:
            # websockets refuses the handshake (no key, wrong version, ...) with a text/plain page;
            # the client gets the JSON error every other malformed request gets.
            self.refuse(BAD_HANDSHAKE)
            return
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            tls = tls_extension(self.transport)
            if tls is not None:
                scope.setdefault("extensions", {})["tls"] = tls

    def handle_handshake_exception(self) -> None:
        # websockets could not parse the handshake: it queued a 414/431 for a limit, else nothing.
        queued = b"".join(self.conn.data_to_send())
        error: GatewayError = BAD_HANDSHAKE
        if queued.startswith(b"HTTP/1.1 414"):
            error = URITooLong()
        elif queued.startswith(b"HTTP/1.1 431"):
            error = HeadersTooLarge()
        self.refuse(error)

    def refuse(self, error: GatewayError) -> None:
        self.handshake_initiated = True
        self.handshake_complete = True
        self.close_sent = True
        answer_and_close(self.transport, error)


def websocket_protocol(on_closed: Callable[[], None]) -> type[GateWebSocketProtocol]:
    """The WebSocket protocol class, reporting each connection's end like the HTTP one."""

    class BoundWebSocketProtocol(GateWebSocketProtocol):
        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            on_closed()

    return BoundWebSocketProtocol
