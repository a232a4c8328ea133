"""The Python floor: a bare uvicorn + aiohttp pass-through, with no auth, no
logging and no metrics. Anything authcar costs beyond this is authcar's own.

    python bench/bare_proxy.py --port 8002 --upstream http://127.0.0.1:8001
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
import uvicorn
from yarl import URL

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Hop-by-hop headers (RFC 9110 7.6.1) belong to one connection, not the
# message; Host is re-derived by aiohttp from the upstream URL.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_DROP_REQUEST = _HOP_BY_HOP | {b"host"}


class PassThrough:
    """ASGI app forwarding every HTTP request to one upstream over a pooled session."""

    def __init__(self, upstream: str, pool_limit: int) -> None:
        self._upstream = upstream.rstrip("/")
        self._pool_limit = pool_limit
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._proxy(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=self._pool_limit),
                    auto_decompress=False,  # pass bytes through untouched
                    # Only forward what the client sent; no default UA/Accept headers.
                    skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._session is not None:
                    await self._session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self._session is not None, "lifespan startup did not run"
        target = self._upstream + scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        headers = [
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"] if k not in _DROP_REQUEST
        ]
        has_body = any(k in (b"content-length", b"transfer-encoding") for k, _ in scope["headers"])
        started = False
        try:
            async with self._session.request(
                scope["method"],
                URL(target, encoded=True),
                headers=headers,
                data=_request_body(receive) if has_body else None,
                allow_redirects=False,
            ) as resp:
                await send(
                    {
                        "type": "http.response.start",
                        "status": resp.status,
                        "headers": [(k, v) for k, v in resp.raw_headers if k.lower() not in _HOP_BY_HOP],
                    }
                )
                started = True
                async for chunk in resp.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except aiohttp.ClientError:
            if started:
                raise  # mid-body: uvicorn aborts the connection, the honest signal
            await send({"type": "http.response.start", "status": 502, "headers": []})
            await send({"type": "http.response.body", "body": b"bad gateway\n"})


async def _request_body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        if body := message.get("body", b""):
            yield body
        if not message.get("more_body", False):
            return


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:8001")
    parser.add_argument("--pool-limit", type=int, default=256, help="aiohttp TCPConnector(limit=...)")
    args = parser.parse_args()
    uvicorn.run(
        PassThrough(args.upstream, args.pool_limit),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        # The upstream's own Server/Date headers are forwarded; avoid duplicates.
        server_header=False,
        date_header=False,
        backlog=4096,
    )


if __name__ == "__main__":
    main()
