"""AUTHCAR_MAX_CONNECTIONS: one worker holds at most so many client connections; more wait their turn.

uvicorn's own `limit_concurrency` does not bound this. It counts connections and tasks only when a
request head completes, and then answers 503: a connection that never completes a head is never
refused, and every connection is accepted (and holds memory) however many arrive. Here the
listening socket is read only while the worker holds fewer connections than the limit (as HAProxy's
`maxconn` does). Past it, new connections wait in the kernel's listen backlog, or are taken by
another worker, and are served as soon as a held connection closes; nobody is answered with an
error for arriving at a busy moment, and the slow-client timeouts make sure held connections do
close.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable, Collection

from authcar.observe import Metrics


class ConnectionLimit:
    """Counts one worker's client connections against the limit; wakes the accept loops on a close."""

    def __init__(self, limit: int, metrics: Metrics | None = None) -> None:
        self.limit = limit
        self.metrics = metrics
        self.connections: Collection[object] = ()  # uvicorn's server_state.connections once serving
        self.handshaking = 0  # accepted, TLS handshake under way: not yet a protocol
        self.room = asyncio.Event()

    def held(self) -> int:
        return len(self.connections) + self.handshaking

    def closed(self) -> None:
        """A connection ended (the protocols call this)."""
        self.room.set()

    async def wait_for_room(self) -> None:
        if self.held() < self.limit:
            return
        if self.metrics is not None:
            self.metrics.connection_limit_reached.inc()
        while self.held() >= self.limit:
            self.room.clear()
            await self.room.wait()


class Acceptor:
    """Accepts from one listening socket while the limit allows; for uvicorn it stands in for the
    asyncio.Server that `loop.create_server` would return (`close`, `wait_closed`)."""

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        limit: ConnectionLimit,
        *,
        tls: ssl.SSLContext | None,
        handshake_timeout: float,
    ) -> None:
        self.sock = sock
        self.protocol_factory = protocol_factory
        self.limit = limit
        self.tls = tls
        self.handshake_timeout = handshake_timeout
        self.loop = asyncio.get_running_loop()
        sock.setblocking(False)
        self.task = self.loop.create_task(self.run(), name="authcar-accept")

    async def run(self) -> None:
        limit = self.limit
        while True:
            await limit.wait_for_room()
            try:
                conn, _ = await self.loop.sock_accept(self.sock)
            except OSError:
                # EMFILE, ECONNABORTED and the like: the next accept may succeed; don't spin.
                await asyncio.sleep(0.1)
                continue
            self.admit(conn)
            # Connections already queued are taken without another trip through the loop.
            while limit.held() < limit.limit:
                try:
                    conn, _ = self.sock.accept()
                except OSError:  # BlockingIOError: the backlog is empty
                    break
                self.admit(conn)

    def admit(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.limit.handshaking += 1
        self.loop.create_task(self.connect(conn))

    async def connect(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(
                self.protocol_factory,
                conn,
                ssl=self.tls,
                ssl_handshake_timeout=self.handshake_timeout if self.tls is not None else None,
            )
        except (OSError, ssl.SSLError, TimeoutError):
            conn.close()  # a failed or timed-out TLS handshake
        finally:
            self.limit.handshaking -= 1
            self.limit.closed()

    def close(self) -> None:
        """Stop accepting; like asyncio.Server.close, this closes the listening socket (this
        process's copy), so that new connections are refused rather than left in the backlog."""
        self.task.cancel()
        self.task.add_done_callback(lambda _: self.sock.close())

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
