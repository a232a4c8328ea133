"""HTTP/1.1 over a bare socket, for requests a client library would normalise or refuse to send.

Only what the forwarding tests need: write bytes, read until the server closes, and parse what came
back (interim 1xx answers, Content-Length or chunked bodies, whether the body arrived whole).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

IO_TIMEOUT = 5.0


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]  # names lower-cased, in order
    body: bytes
    complete: bool  # the framing (Content-Length or the last chunk) says the whole body arrived
    interim: list[int] = field(default_factory=list)  # 1xx statuses before the final one
    trailers: list[tuple[str, str]] = field(default_factory=list)
    rest: bytes = b""  # bytes after the response (there should be none on a closed connection)

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


def parse_fields(block: bytes) -> list[tuple[str, str]]:
    fields = []
    for line in block.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            fields.append((name.decode("latin-1").strip().lower(), value.decode("latin-1").strip()))
    return fields


def parse_response(data: bytes, *, head: bool = False) -> RawResponse:
    """Parse one response (after any 1xx) from everything the server sent."""
    interim: list[int] = []
    while True:
        head_block, sep, data = data.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError(f"no complete response head in {head_block[:200]!r}")
        status_line, _, header_block = head_block.partition(b"\r\n")
        status = int(status_line.split()[1])
        if 100 <= status < 200:
            interim.append(status)
            continue
        break
    headers = parse_fields(header_block)
    names = {n for n, _ in headers}
    if head or status in (204, 304):
        return RawResponse(status, headers, b"", True, interim, rest=data)
    if "transfer-encoding" in names:
        body, complete, trailers, rest = dechunk(data)
        return RawResponse(status, headers, body, complete, interim, trailers, rest)
    if "content-length" in names:
        length = int(dict(headers)["content-length"])
        return RawResponse(status, headers, data[:length], len(data) >= length, interim, rest=data[length:])
    return RawResponse(status, headers, data, True, interim)  # read to close


def dechunk(data: bytes) -> tuple[bytes, bool, list[tuple[str, str]], bytes]:
    body = bytearray()
    while True:
        size_line, sep, data = data.partition(b"\r\n")
        if not sep:
            return bytes(body), False, [], b""
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            trailer_block, sep, rest = (b"\r\n" + data).partition(b"\r\n\r\n")
            return bytes(body), bool(sep), parse_fields(trailer_block) if sep else [], rest
        if len(data) < size + 2:
            body += data[:size]
            return bytes(body), False, [], b""
        body += data[:size]
        data = data[size + 2 :]


async def read_until_closed(reader: asyncio.StreamReader, wait: float = IO_TIMEOUT) -> bytes:
    """Everything the server sends until it closes (or resets) the connection."""
    data = bytearray()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError(f"the server did not close the connection; got {bytes(data[:300])!r}")
        try:
            chunk = await asyncio.wait_for(reader.read(65536), remaining)
        except ConnectionResetError:
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk


async def send_raw(port: int, request: bytes, *, wait: float = IO_TIMEOUT, head: bool = False) -> RawResponse:
    """Send `request` on a new connection and parse the answer; the request should ask to close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return parse_response(await read_until_closed(reader, wait), head=head)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def request_bytes(
    method: str,
    target: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    *,
    host: str = "sidecar.test",
    close: bool = True,
) -> bytes:
    """A request written exactly as given: no header is added except Host (first) and Connection: close."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"] if host else [f"{method} {target} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in headers or []]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
