"""`authcar demo`: the sidecar in front of a small app on localhost, in one supervised process.

The demo app echoes what it received, so you can see what the application gets: the sidecar's
X-Forwarded-* and X-Request-Id headers, and none of the identity headers a client tried to spoof.
Until authentication lands, the demo runs with AUTHCAR_ALLOW_ANONYMOUS=true.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys

from aiohttp import web

from authcar.config import load_settings
from authcar.observe import configure_logging
from authcar.server import running


def demo_app() -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "app": "authcar demo upstream",
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


async def serve_demo(port: int, admin_port: int, stop: asyncio.Event) -> None:
    runner = web.AppRunner(demo_app(), access_log=None, handle_signals=False)
    await runner.setup()
    app_port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", app_port)
    await site.start()
    settings = load_settings(
        {
            "host": "127.0.0.1",
            "port": port,
            "admin_host": "127.0.0.1",
            "admin_port": admin_port,
            "upstream": f"http://127.0.0.1:{app_port}",
            "allow_anonymous": True,
            "log_format": "text",
        },
        environ={},
    ).settings
    try:
        async with running(settings) as service:
            public = f"http://127.0.0.1:{service.listeners.public_port}"
            admin = f"http://127.0.0.1:{service.listeners.admin_port}"
            print(instructions(public, admin, app_port), flush=True)
            await stop.wait()
            print("\nauthcar demo: stopping", flush=True)
    finally:
        await runner.cleanup()


def instructions(public: str, admin: str, app_port: int) -> str:
    return f"""
authcar demo is running
  sidecar (public)  {public}
  sidecar (admin)   {admin}
  demo app          http://127.0.0.1:{app_port} (localhost only; reach it through the sidecar)

Try:
  curl -s {public}/books/1
      the app's echo: note X-Forwarded-For, X-Forwarded-Proto, X-Request-Id set by the sidecar
  curl -s {public}/books -H 'X-Auth-Request-User: admin' -H 'X_Auth_Request_Groups: admins'
      spoofed identity headers are removed before the app sees the request
  curl -s {admin}/readyz
  curl -s {admin}/metrics | grep authcar_requests

Authentication is not enabled in this build of the demo (AUTHCAR_ALLOW_ANONYMOUS=true).
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
    return 0
