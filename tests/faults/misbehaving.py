"""An upstream application that misbehaves on demand: a raw HTTP/1.1 server in a thread of its own.

It parses requests with httptools and records every one of them (method, target, headers, body bytes,
whether the body arrived whole, which connection), then answers as `behaviour` says. The behaviour is
switched at run time, so one sidecar process can be taken through every fault and back to health:

    ok                    200 with a small JSON body, keep-alive
    refuse                nothing listens on the port (connection refused); `ok` listens again
    hang                  reads the request, never answers
    close_before_answer   reads the request, closes the connection (FIN) without a word
    reset_mid_request     resets the connection (RST) once part of the request body has arrived
    reset_mid_response    starts a 100 kB answer, resets after 1 kB
    malformed_status      a status line that is not HTTP
    oversized_head        a 1 MiB response head (many large header fields)
    too_many_fields       a small response head of 5,000 tiny header fields
    invalid_header_bytes  a header field with a NUL byte in its value
    short_body            Content-Length: 1000, then 10 bytes and a close
    long_body             Content-Length: 2, then a second, smuggled response in the same write
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal, get_args

import httptools

Behaviour = Literal[
    "ok",
    "refuse",
    "hang",
    "close_before_answer",
    "reset_mid_request",
    "reset_mid_response",
    "malformed_status",
    "oversized_head",
    "too_many_fields",
    "invalid_header_bytes",
    "short_body",
    "long_body",
]
BEHAVIOURS: tuple[str, ...] = get_args(Behaviour)

SMUGGLED = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nX-Smuggled: yes\r\n\r\nsmuggled"
OVERSIZED_FIELD = b"X-Padding-%d: " + b"p" * 8192 + b"\r\n"


@dataclass
class Received:
    """One request as the upstream parsed it."""

    connection: int
    method: str
    target: str
    headers: list[tuple[str, str]]
    body_bytes: int = 0
    complete: bool = False  # the whole body arrived (the parser saw the end of the message)

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)


@dataclass
class MisbehavingUpstream:
    port: int = 0
    behaviour: Behaviour = "ok"
    requests: list[Received] = field(default_factory=list)
    connections: int = 0
    loop: asyncio.AbstractEventLoop | None = None
    server: asyncio.Server | None = None
    transports: set[asyncio.Transport] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def behave(self, behaviour: Behaviour) -> None:
        """Switch behaviour; `refuse` closes the listener, any other reopens it on the same port."""
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"behaviour must be one of {BEHAVIOURS}")
        self.behaviour = behaviour
        self.call(self.listen(behaviour != "refuse"))

    def methods(self) -> list[str]:
        return [r.method for r in self.requests]

    def call(self, coroutine: object) -> None:
        assert self.loop is not None
        asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=10)  # type: ignore[arg-type]

    async def listen(self, on: bool) -> None:
        if on and self.server is None:
            self.server = await self.loop.create_server(  # type: ignore[union-attr]
                lambda: UpstreamProtocol(self), "127.0.0.1", self.port, reuse_address=True
            )
            self.port = self.server.sockets[0].getsockname()[1]
        elif not on and self.server is not None:
            self.server.close()
            self.server = None
            for transport in list(self.transports):  # pooled connections go too: the process is gone
                transport.abort()


class UpstreamProtocol(asyncio.Protocol):
    def __init__(self, state: MisbehavingUpstream) -> None:
        self.state = state
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.number = 0
        self.current: Received | None = None
        self.headers: list[tuple[str, str]] = []
        self.url = b""

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.state.connections += 1
        self.number = self.state.connections
        self.state.transports.add(self.transport)  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.transports.discard(self.transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError:
            self.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.headers, self.url = [], b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        method = self.parser.get_method().decode("ascii")
        self.current = Received(self.number, method, self.url.decode("latin-1"), self.headers)
        self.state.requests.append(self.current)

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        self.current.body_bytes += len(body)
        if self.state.behaviour == "reset_mid_request":
            self.reset()

    def on_message_complete(self) -> None:
        assert self.current is not None
        self.current.complete = True
        self.answer(self.state.behaviour)

    # answers
    def answer(self, behaviour: str) -> None:
        assert self.transport is not None
        assert self.current is not None
        write = self.transport.write
        if behaviour == "ok":
            body = json.dumps({"ok": True, "method": self.current.method, "bytes": self.current.body_bytes})
            write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
            )
            write(body.encode())
        elif behaviour == "close_before_answer":
            self.close()
        elif behaviour == "reset_mid_request":
            self.reset()  # a body-less request: nothing to cut in the middle, so reset now
        elif behaviour == "reset_mid_response":
            write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
            asyncio.get_running_loop().call_later(0.05, self.reset)
        elif behaviour == "malformed_status":
            write(b"HTTP/1.1 2OO Fine\r\nContent-Length: 2\r\n\r\nok")
            self.close()
        elif behaviour == "oversized_head":
            write(b"HTTP/1.1 200 OK\r\n" + b"".join(OVERSIZED_FIELD % i for i in range(128)))
            write(b"Content-Length: 2\r\n\r\nok")
        elif behaviour == "too_many_fields":
            write(b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-F%d: v\r\n" % i for i in range(5000)))
            write(b"Content-Length: 2\r\n\r\nok")
        elif behaviour == "invalid_header_bytes":
            write(b"HTTP/1.1 200 OK\r\nX-Broken: a\x00b\r\nContent-Length: 2\r\n\r\nok")
            self.close()
        elif behaviour == "short_body":
            write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"y" * 10)
            self.close()
        elif behaviour == "long_body":
            write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + SMUGGLED)
        # hang: say nothing; the sidecar's read timeout is what ends it

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def reset(self) -> None:
        if self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()


@contextmanager
def misbehaving_upstream() -> Iterator[MisbehavingUpstream]:
    """A MisbehavingUpstream on a free loopback port, served from its own thread until the block ends."""
    state = MisbehavingUpstream()
    loop = asyncio.new_event_loop()
    state.loop = loop
    thread = threading.Thread(target=loop.run_forever, name="misbehaving-upstream", daemon=True)
    thread.start()
    try:
        state.call(state.listen(True))
        yield state
    finally:
        with contextlib.suppress(Exception):
            state.call(state.listen(False))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
