"""Serving the provider with uvicorn on a socket of our own, inside the caller's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Generator

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tests.idp.app import build_app
from tests.idp.provider import IdP


class QuietServer(uvicorn.Server):
    """A uvicorn server for tests: signals are left to its host, and it stops at once when asked.

    uvicorn polls should_exit every 0.1 s and sleeps another 0.1 s while shutting down; with a provider per
    test that is most of a test's time, so this one wakes on stop() and skips the grace sleep.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.stopping = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    def stop(self) -> None:
        self.should_exit = True
        self.stopping.set()

    async def main_loop(self) -> None:
        counter = 0
        while not await self.on_tick(counter):  # a tick a second keeps the Date header fresh
            counter = (counter + 10) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=1)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()  # idle keep-alive connections close now, busy ones after their answer
        tasks = list(self.server_state.tasks)
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self.config.timeout_graceful_shutdown)
            for task in late:
                task.cancel()


class ResettableProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, letting the app drop a connection unanswered (mode "reset")."""

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {"idp.reset": self.reset}  # type: ignore[dict-item]

    def reset(self) -> None:
        sock = self.transport.get_extra_info("socket")
        with contextlib.suppress(OSError, AttributeError):
            # Linger 0: close with RST, as a crashed or firewalled provider would, not a polite FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()
        if self.cycle is not None:
            self.cycle.disconnected = True  # else uvicorn would try to answer 500 on the dead connection


def bind(host: str, port: int) -> socket.socket:
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say so, and without it every
    # answer written in two pieces (head, body) waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    return sock


@contextlib.asynccontextmanager
async def run_idp(
    *, issuer_path: str = "/realms/test", host: str = "127.0.0.1", port: int = 0, fresh_keys: bool = False
) -> AsyncIterator[IdP]:
    """A provider listening on `host`:`port` (0: a free port) until the block ends."""
    sock = bind(host, port)
    idp = IdP(f"http://{host}:{sock.getsockname()[1]}", issuer_path, fresh_keys=fresh_keys)
    app = build_app(idp)
    config = uvicorn.Config(
        app,
        http=ResettableProtocol,
        ws="none",
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=1,
    )
    server = QuietServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the identity provider stopped while starting")
            await asyncio.sleep(0.005)
        yield idp
    finally:
        app.close()  # slow-mode answers still waiting drop their connections
        server.stop()
        await task
        sock.close()
