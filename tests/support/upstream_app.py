"""A real upstream application for the tests: aiohttp.web on a free port, recording what it received.

Every request that reaches it is appended to `seen`, so security tests can assert that nothing did.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.support.rawhttp import request_bytes, send_raw

WAIT_BOUND = 20.0  # seconds: a generous bound for what a correct sidecar does in milliseconds


@dataclass
class Seen:
    method: str
    raw_path: str
    headers: list[tuple[str, str]]
    peer_port: int = 0  # the sidecar's side of the upstream connection: counts pooled connections

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


@dataclass
class RunningUpstream:
    url: str
    port: int
    seen: list[Seen] = field(default_factory=list)
    ws_closes: list[int | None] = field(default_factory=list)  # close codes the /ws endpoint received
    # /slow and /slow-body requests whose connection the sidecar closed before the answer was done
    abandoned: list[str] = field(default_factory=list)
    released: asyncio.Event = field(default_factory=asyncio.Event)  # ends every /slow wait early

    def release(self) -> None:
        """Let every waiting and future /slow, /slow-body request answer now (tests that need an
        answer at a moment of their choosing ask for a delay far beyond it, then release)."""
        self.released.set()

    def paths(self) -> list[str]:
        return [s.raw_path for s in self.seen]

    async def seen_before_marker(self, sidecar_port: int, path: str = "/__marker") -> list[Seen]:
        """Everything that reached the upstream, once a marker request sent now has arrived.

        For "nothing reached the application" without guessing how long to wait: whatever the
        sidecar forwarded for requests answered before is written upstream before the marker, which
        goes on a new connection through the same sidecar (to `path`, which it must let through
        anonymously). The marker is taken out of `seen` again, so later assertions are unchanged.
        """
        marker = f"{path}?marker={uuid.uuid4().hex}"
        answer = await send_raw(sidecar_port, request_bytes("GET", marker))
        assert answer.status == 200, f"the marker was not forwarded: {answer.status} {answer.body[:300]!r}"
        # Recorded before the upstream answered, so it is there now.
        (arrived,) = [seen for seen in self.seen if seen.raw_path == marker]
        self.seen.remove(arrived)
        return list(self.seen)

    async def until_seen(self, count: int, within: float = WAIT_BOUND) -> list[Seen]:
        """The requests received, once there are `count` (AssertionError after `within` seconds)."""
        await _until(lambda: len(self.seen) >= count, within, f"{count} requests")
        return self.seen

    async def until_abandoned(self, count: int, within: float = WAIT_BOUND) -> list[str]:
        """The abandoned /slow requests, once there are `count`."""
        await _until(lambda: len(self.abandoned) >= count, within, f"{count} abandoned requests")
        return self.abandoned

    def connections(self) -> set[int]:
        """Distinct upstream connections the requests seen so far arrived on."""
        return {s.peer_port for s in self.seen}


async def _until(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the upstream did not see {what} within {within} s")
        await asyncio.sleep(0.02)


def make_app(
    seen: list[Seen],
    ws_closes: list[int | None] | None = None,
    abandoned: list[str] | None = None,
    released: asyncio.Event | None = None,
) -> web.Application:
    ws_closes = [] if ws_closes is None else ws_closes
    abandoned = [] if abandoned is None else abandoned
    released = asyncio.Event() if released is None else released

    async def hold(request: web.Request) -> bool:
        """Wait ?delay= seconds or until released; False (and noted) if the sidecar closes first.

        So a delay far beyond the sidecar's timeout costs nothing: no handler outlives its test.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(request.query.get("delay", "5"))
        while (remaining := deadline - loop.time()) > 0 and not released.is_set():
            if request.transport is None or request.transport.is_closing():
                abandoned.append(request.raw_path)
                return False
            await asyncio.sleep(min(remaining, 0.05))
        return True

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seen.append(Seen(request.method, request.raw_path, decoded_headers(request), peer[1] if peer else 0))
        return await handler(request)

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "raw_path": request.raw_path,
                "headers": [list(pair) for pair in decoded_headers(request)],
                "body_bytes": len(body),
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "chunked": request.headers.get("Transfer-Encoding", "").lower() == "chunked",
            }
        )

    async def upload(request: web.Request) -> web.Response:
        # Streams the body without keeping it: the proxy must not buffer either.
        # ?pause=S first leaves the body unread for S seconds (a stalled app: backpressure must hold).
        await asyncio.sleep(float(request.query.get("pause", "0")))
        digest = hashlib.sha256()
        total = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            total += len(chunk)
        return web.json_response({"bytes": total, "sha256": digest.hexdigest()})

    async def download(request: web.Request) -> web.StreamResponse:
        size = int(request.query.get("size", "1048576"))
        chunk = int(request.query.get("chunk", "65536"))
        response = web.StreamResponse()
        if request.query.get("length") == "1":
            response.content_length = size
        await response.prepare(request)
        if request.method == "HEAD":  # aiohttp would write the body after a HEAD's head
            await response.write_eof()
            return response
        block = pattern(chunk)
        sent = 0
        while sent < size:
            piece = block[: min(chunk, size - sent)]
            await response.write(piece)
            sent += len(piece)
        await response.write_eof()
        return response

    async def slow(request: web.Request) -> web.Response:
        await hold(request)
        return web.Response(text="late")

    async def slow_body(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first")
        if await hold(request):
            await response.write(b"second")
        return response

    async def reset(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 1_000_000
        await response.prepare(request)
        await response.write(b"x" * 10_000)
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()  # RST mid-body
        return response

    async def abort(request: web.Request) -> web.Response:
        # Takes the whole request, then drops the connection without a word (an app crashing mid-request).
        await request.read()
        assert request.transport is not None
        request.transport.abort()
        raise web.HTTPInternalServerError  # never written: the connection is gone

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        headers = {"Location": "/elsewhere"} if 300 <= code < 400 else {}
        if code in (204, 304):
            return web.Response(status=code, headers=headers)
        return web.Response(status=code, text=f"status {code}", headers=headers)

    async def hop_headers(request: web.Request) -> web.Response:
        return web.Response(
            text="hop",
            headers={
                "Connection": "keep-alive, X-Secret-Hop",
                "X-Secret-Hop": "1",
                "Keep-Alive": "timeout=5",
                "X-Kept": "yes",
            },
        )

    async def set_cookies(request: web.Request) -> web.Response:
        # Each `c` query parameter becomes one Set-Cookie header of the answer, as given.
        response = web.Response(text="cookies")
        for value in request.query.getall("c", []):
            response.headers.add("Set-Cookie", value)
        return response

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("chat.v2", "chat.v1"))
        await ws.prepare(request)
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                if message.data.startswith("close:"):
                    await ws.close(code=int(message.data.split(":")[1]), message=b"bye")
                    break
                await ws.send_str("echo:" + message.data)
            elif message.type == WSMsgType.BINARY:
                await ws.send_bytes(b"echo:" + message.data)
        ws_closes.append(ws.close_code)
        return ws

    app = web.Application(middlewares=[record], client_max_size=0)
    app.router.add_route("*", "/upload", upload)
    app.router.add_get("/download", download)
    app.router.add_get("/slow", slow)
    app.router.add_get("/slow-body", slow_body)
    app.router.add_get("/reset", reset)
    app.router.add_route("*", "/abort", abort)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_get("/hop", hop_headers)
    app.router.add_get("/set-cookie", set_cookies)
    app.router.add_get("/ws", websocket)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def decoded_headers(request: web.Request) -> list[tuple[str, str]]:
    return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in request.raw_headers]


def pattern(size: int) -> bytes:
    return (b"0123456789abcdef" * (size // 16 + 1))[:size]


@asynccontextmanager
async def serve_upstream(host: str = "127.0.0.1") -> AsyncIterator[RunningUpstream]:
    seen: list[Seen] = []
    ws_closes: list[int | None] = []
    abandoned: list[str] = []
    released = asyncio.Event()
    app = make_app(seen, ws_closes, abandoned, released)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield RunningUpstream(f"http://{host}:{port}", port, seen, ws_closes, abandoned, released)
    finally:
        await runner.cleanup()


@dataclass
class RawUpstream:
    """A hand-written upstream for answers aiohttp.web will not produce (trailers, broken framing)."""

    url: str
    port: int
    connections: int = 0
    heads: list[bytes] = field(default_factory=list)  # every request head received, verbatim


@asynccontextmanager
async def serve_raw(reply: bytes | None, host: str = "127.0.0.1") -> AsyncIterator[RawUpstream]:
    """Per connection: read one request head, write `reply` verbatim and close; None closes unanswered."""
    state = RawUpstream(url="", port=0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            state.heads.append(head)
            if reply is not None:
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, 0)
    state.port = server.sockets[0].getsockname()[1]
    state.url = f"http://{host}:{state.port}"
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


def main() -> None:
    """Run standalone (for subprocess tests and the bench): `python -m tests.support.upstream_app PORT`."""
    import sys

    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    web.run_app(make_app([]), host="127.0.0.1", port=port, access_log=None, print=lambda *_: None)


def decode(body: bytes) -> Any:
    return json.loads(body)


if __name__ == "__main__":
    main()
