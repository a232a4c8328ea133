"""`authcar demo`: a development issuer, a small app, and the sidecar in front of it, in one process.

Authentication is real: the sidecar trusts only the built-in development issuer (authcar/devissuer.py,
never for production), so a request needs a bearer token from it. Ready-to-paste curl commands, with
a token for each demo role, are printed once the sidecar has loaded the issuer's keys.

The demo app echoes what it received, so you can see what the application gets: the sidecar's
X-Forwarded-* and X-Request-Id headers, and none of the identity headers a client tried to spoof. It
counts the requests it has seen, so a refused request visibly never reached it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator

import httpx
from aiohttp import web

from authcar import devissuer
from authcar.config import load_settings
from authcar.observe import configure_logging
from authcar.server import bind, running

READY_TIMEOUT = 15.0  # seconds for the sidecar to load the issuer's keys


class DemoError(Exception):
    """The demo could not start; the message says why."""


def demo_app() -> web.Application:
    seen = itertools.count(1)  # per app, not per module: each demo app counts its own requests

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "app": "authcar demo upstream",
                "requests_seen": next(seen),
                "method": request.method,
                "path": request.raw_path,
                "headers_received": {name: value for name, value in request.headers.items()},
                "body_bytes": len(body),
            }
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.asynccontextmanager
async def serving_demo_app() -> AsyncIterator[str]:
    """The echo app on a free localhost port; yields its URL."""
    sock = bind("127.0.0.1", 0)
    runner = web.AppRunner(demo_app(), access_log=None, handle_signals=False)
    try:
        await runner.setup()
        await web.SockSite(runner, sock).start()
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()
        sock.close()


async def wait_ready(admin: str, stop: asyncio.Event) -> bool:
    """Poll /readyz until 200 (keys loaded, app reachable); False if stopped first."""
    deadline = time.monotonic() + READY_TIMEOUT
    detail = "no answer"
    async with httpx.AsyncClient(timeout=2.0, trust_env=False) as http:  # loopback: no proxies
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError):
                answer = await http.get(f"{admin}/readyz")
                if answer.status_code == 200:
                    return True
                detail = answer.text
            if time.monotonic() > deadline:
                raise DemoError(f"the sidecar did not become ready: {detail}")
            await asyncio.sleep(0.05)
    return False


async def serve_demo(port: int, admin_port: int, stop: asyncio.Event) -> None:
    async with devissuer.serving() as issuer, serving_demo_app() as app_url:
        settings = load_settings(
            {
                "host": "127.0.0.1",
                "port": port,
                "admin_host": "127.0.0.1",
                "admin_port": admin_port,
                "upstream": app_url,
                "oidc_issuer_url": issuer.url,
                "oidc_audience": issuer.audience,
                "log_format": "text",
            },
            environ={},
        ).settings
        async with running(settings) as service:
            public = f"http://127.0.0.1:{service.listeners.public_port}"
            admin = f"http://127.0.0.1:{service.listeners.admin_port}"
            if await wait_ready(admin, stop):
                print(instructions(public, admin, app_url, issuer), flush=True)
                await stop.wait()
            print("\nauthcar demo: stopping", flush=True)


def instructions(public: str, admin: str, app_url: str, issuer: devissuer.DevIssuer) -> str:
    tokens = {role: issuer.mint(role) for role in devissuer.DEMO_CLIENTS}
    as_roles = "\n".join(
        f"  # {role} ({client.subject}, scope {client.scope!r})\n"
        f"  curl -s {public}/books/1 -H 'Authorization: Bearer {tokens[role]}'"
        for role, client in devissuer.DEMO_CLIENTS.items()
    )
    secret = devissuer.DEMO_SECRET
    return f"""
authcar demo is running
  sidecar (public)  {public}
  sidecar (admin)   {admin}
  demo app          {app_url} (localhost only; reach it through the sidecar)
  dev issuer        {issuer.url} (DEVELOPMENT ONLY: a token for anyone with the demo secret)

Without a token the sidecar answers 401 and the app sees nothing:
  curl -si {public}/books/1

With a token (minted now, valid for 1 hour), as each demo role; the app echoes what it received:
{as_roles}

A fresh token from the dev issuer (clients {", ".join(devissuer.DEMO_CLIENTS)}; secret {secret}):
  curl -s -u reader:{secret} -d grant_type=client_credentials {issuer.token_endpoint}

Spoofed identity headers are removed before the app sees the request:
  curl -s {public}/books -H 'Authorization: Bearer {tokens["reader"]}' -H 'X-Auth-Request-User: carol'

Probes and metrics:
  curl -s {admin}/readyz
  curl -s {admin}/metrics | grep authcar_requests

Press Ctrl-C to stop.
"""


def run_demo(port: int = 4180, admin_port: int = 9901) -> int:
    configure_logging("text", "warning")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(signum, stop.set)
        await serve_demo(port, admin_port, stop)

    try:
        asyncio.run(main())
    except OSError as exc:
        print(f"authcar demo: {exc.strerror or exc} (try --port/--admin-port)", file=sys.stderr)
        return 1
    except DemoError as exc:
        print(f"authcar demo: {exc}", file=sys.stderr)
        return 1
    return 0
