"""A raw-socket client: write exactly the given bytes, read back the responses as they are.

Responses are parsed with httptools (llhttp), so a sidecar that answered with broken framing would
show up as a parse error rather than be tidied away. Reading stops when the sidecar closes the
connection or when as many responses as expected are complete (a keep-alive answer never closes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

import httptools

READ_TIMEOUT = 10.0  # generous upper bound; a correct answer takes milliseconds


@dataclass
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""

    def header(self, name: str) -> bytes | None:
        wanted = name.lower().encode()
        return next((value for key, value in self.headers if key.lower() == wanted), None)

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


@dataclass
class Exchange:
    answers: list[Answer] = field(default_factory=list)
    raw: bytes = b""
    closed: bool = False  # the sidecar closed (or reset) the connection
    error: str | None = None  # the answer bytes did not parse as HTTP/1.1 responses

    def statuses(self) -> list[int]:
        return [answer.status for answer in self.answers]


class ResponseReader:
    """httptools callbacks collecting complete responses."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.answers: list[Answer] = []
        self.current: Answer | None = None

    def on_message_begin(self) -> None:
        self.current = Answer(0, [])

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.current is not None
        self.current.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        self.current.body += body

    def on_message_complete(self) -> None:
        assert self.current is not None
        if self.current.status >= 200:  # 100 Continue and friends come before the real answer
            self.answers.append(self.current)
        self.current = None


async def exchange(port: int, data: bytes, *, responses: int = 1, within: float = READ_TIMEOUT) -> Exchange:
    """Write `data` on a new connection; read until closed or `responses` answers are complete."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    result = Exchange()
    parsing = ResponseReader()
    received = bytearray()
    try:
        writer.write(data)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while len(parsing.answers) < responses:
            remaining = deadline - loop.time()
            if remaining <= 0:
                result.error = f"no complete answer within {within} s"
                break
            try:
                chunk = await asyncio.wait_for(reader.read(65536), remaining)
            except ConnectionError:
                chunk = b""
            except TimeoutError:
                continue
            if not chunk:
                result.closed = True  # the sidecar frames every answer: none ends with the close
                break
            received += chunk
            try:
                parsing.parser.feed_data(chunk)
            except httptools.HttpParserError as exc:
                result.error = f"the answer is not HTTP: {exc}"
                break
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    result.answers = parsing.answers
    result.raw = bytes(received)
    return result
