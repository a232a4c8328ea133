"""Running the sidecar: listeners, worker processes, signals and draining.

Both listeners are bound once, by this process, before anything else: port conflicts surface at
start, port 0 works for tests, and with AUTHCAR_WORKERS > 1 the workers inherit the same sockets.

SIGTERM: /readyz starts failing, the public listener keeps serving for AUTHCAR_SHUTDOWN_DELAY (so the
pod leaves the Service endpoints first), then stops accepting, lets in-flight requests finish within
AUTHCAR_SHUTDOWN_GRACE_PERIOD, stops the admin listener, and exits 0. SIGHUP reloads certificates.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Generator
from dataclasses import dataclass

import uvicorn

from authcar.app import Sidecar
from authcar.assertion import new_private_key_pem
from authcar.config import Settings
from authcar.connections import Acceptor, ConnectionLimit
from authcar.observe import configure_logging, drop_intended_aborts
from authcar.protocol import ClientPacing, HeadLimits, http_protocol, websocket_protocol

log = logging.getLogger("authcar")


@dataclass
class Listeners:
    public: socket.socket
    admin: socket.socket

    @property
    def public_port(self) -> int:
        return int(self.public.getsockname()[1])

    @property
    def admin_port(self) -> int:
        return int(self.admin.getsockname()[1])

    def close(self) -> None:
        self.public.close()
        self.admin.close()


def bind(host: str, port: int, backlog: int = 2048) -> socket.socket:
    family = socket.AF_INET6 if is_ipv6(host) else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose listener says
    # so, and without it a response written in two pieces waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def bind_listeners(settings: Settings) -> Listeners:
    public = bind(settings.host, settings.port)
    try:
        admin = bind(settings.admin_host, settings.admin_port)
    except OSError:
        public.close()
        raise
    return Listeners(public, admin)


class QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to us (two servers share one process)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class PublicServer(QuietServer):
    """The public listener: accepts through the connection limit instead of `loop.create_server`."""

    def __init__(self, config: uvicorn.Config, limit: ConnectionLimit, handshake_timeout: float) -> None:
        super().__init__(config)
        self.limit = limit
        self.handshake_timeout = handshake_timeout

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])  # lifespan and state; no listener of uvicorn's own
        config = self.config
        self.limit.connections = self.server_state.connections

        def create_protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state
            )

        for sock in sockets or []:
            acceptor = Acceptor(
                sock, create_protocol, self.limit, tls=config.ssl, handshake_timeout=self.handshake_timeout
            )
            self.servers.append(acceptor)  # type: ignore[arg-type]


def uvicorn_config(
    app: object, settings: Settings, *, public: bool, limit: ConnectionLimit | None = None
) -> uvicorn.Config:
    common = {
        "lifespan": "off",
        "log_config": None,
        "access_log": False,
        "proxy_headers": False,  # X-Forwarded-* trust is the gate's decision, made from trusted_proxies
        "server_header": False,
        "date_header": False,
        "loop": "none",
    }
    head_limits = HeadLimits(settings.max_header_bytes, settings.max_header_count)
    pacing = ClientPacing(
        settings.request_header_timeout,
        settings.request_body_timeout,
        settings.request_body_min_rate,
        settings.response_send_timeout,
    )
    if not public:
        # The probes' listener is paced like the public one: a slow client must not exhaust it either.
        return uvicorn.Config(
            app, http=http_protocol(head_limits, pacing), ws="none", timeout_graceful_shutdown=2, **common
        )
    on_closed = limit.closed if limit is not None else (lambda: None)
    metrics = limit.metrics if limit is not None else None
    config = uvicorn.Config(
        app,
        http=http_protocol(head_limits, pacing, metrics, on_closed),
        ws=websocket_protocol(on_closed),
        ws_max_size=16 * 1024 * 1024,
        timeout_keep_alive=int(settings.keepalive_timeout),
        timeout_graceful_shutdown=int(settings.shutdown_grace_period),
        **common,
    )
    return config


class Service:
    """One process's serving: the sidecar, its two uvicorn servers, and the shutdown sequence."""

    def __init__(
        self, settings: Settings, listeners: Listeners, *, assertion_pem: bytes | None = None
    ) -> None:
        """`assertion_pem`: the supervisor's assertion key, so that every worker signs with one key."""
        self.settings = settings
        self.listeners = listeners
        # Logger filters are process-wide; adding the same function twice is a no-op.
        logging.getLogger("uvicorn.error").addFilter(drop_intended_aborts)
        self.sidecar = Sidecar(settings, assertion_pem=assertion_pem)
        self.connection_limit = ConnectionLimit(settings.max_connections, self.sidecar.metrics)
        public_config = uvicorn_config(
            self.sidecar.public_app, settings, public=True, limit=self.connection_limit
        )
        public_config.load()
        if self.sidecar.tls is not None:
            public_config.ssl = self.sidecar.tls.context  # reloads swap certificates inside this context
        admin_config = uvicorn_config(self.sidecar.admin_app, settings, public=False)
        admin_config.load()
        # A TLS handshake is part of a new connection's head time.
        self.public = PublicServer(public_config, self.connection_limit, settings.request_header_timeout)
        self.admin = QuietServer(admin_config)
        self.stopping = False

    async def run(
        self,
        stop: asyncio.Event | None = None,
        ready: Callable[[], None] | None = None,
        *,
        handle_signals: bool = True,
    ) -> None:
        stop = stop or asyncio.Event()
        if handle_signals:
            self.install_signal_handlers(stop)
        started = time.perf_counter()
        await self.sidecar.start()
        admin_task = asyncio.create_task(self.admin.serve(sockets=[self.listeners.admin]))
        public_task = asyncio.create_task(self.public.serve(sockets=[self.listeners.public]))
        while not (self.public.started and self.admin.started):
            if public_task.done() or admin_task.done():
                break
            await asyncio.sleep(0.01)
        log.info(
            "listening",
            extra={
                "public": f"{'https' if self.sidecar.tls else 'http'}://{self.settings.host}:{self.listeners.public_port}",
                "admin": f"http://{self.settings.admin_host}:{self.listeners.admin_port}",
                "upstream": self.settings.upstream,
                "startup_ms": round((time.perf_counter() - started) * 1000, 1),
                "pid": os.getpid(),
            },
        )
        if ready is not None:
            ready()
        stop_task = asyncio.create_task(stop.wait())
        await asyncio.wait({stop_task, public_task, admin_task}, return_when=asyncio.FIRST_COMPLETED)
        await self.shutdown(public_task, admin_task)
        stop_task.cancel()

    async def shutdown(self, public_task: asyncio.Task[None], admin_task: asyncio.Task[None]) -> None:
        self.sidecar.draining = True
        log.info("draining", extra={"delay_s": self.settings.shutdown_delay})
        if self.settings.shutdown_delay and not public_task.done():
            await asyncio.sleep(self.settings.shutdown_delay)
        self.public.should_exit = True
        await public_task
        self.admin.should_exit = True
        await admin_task
        await self.sidecar.close()
        log.info("stopped")

    def install_signal_handlers(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()

        def terminate(signum: int) -> None:
            if stop.is_set():
                # A second signal: stop waiting for in-flight requests.
                self.public.force_exit = True
                self.admin.force_exit = True
                return
            log.info("signal", extra={"signal": signal.Signals(signum).name})
            stop.set()

        def reload() -> None:
            log.info("signal", extra={"signal": "SIGHUP"})
            self.sidecar.reload()

        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, terminate, signum)
            loop.add_signal_handler(signal.SIGHUP, reload)


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every platform we ship
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def serve_process(settings: Settings, listeners: Listeners, assertion_pem: bytes | None = None) -> None:
    """Run one serving process to completion (the single-worker case, and each worker)."""
    configure_logging(settings.log_format, settings.log_level)
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(Service(settings, listeners, assertion_pem=assertion_pem).run())


def worker_main(
    settings: Settings, public: socket.socket, admin: socket.socket, assertion_pem: bytes | None
) -> None:
    serve_process(settings, Listeners(public, admin), assertion_pem)


def run(settings: Settings) -> int:
    """`authcar run`: bind, then serve in this process or supervise workers. Returns the exit code."""
    configure_logging(settings.log_format, settings.log_level)
    try:
        listeners = bind_listeners(settings)
    except OSError as exc:
        log.error("startup failed", extra={"error": str(exc.strerror or exc)})
        return 1
    try:
        if settings.workers == 1:
            serve_process(settings, listeners)
            return 0
        return supervise(settings, listeners)
    finally:
        listeners.close()


def supervise(settings: Settings, listeners: Listeners) -> int:
    """Start the workers, restart any that die, forward SIGTERM/SIGINT, and wait for them to drain."""
    owned_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Metrics of all workers meet in files here; any worker's /metrics adds them up.
        owned_dir = tempfile.mkdtemp(prefix="authcar-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = owned_dir
    context = multiprocessing.get_context("spawn")
    workers: dict[int, multiprocessing.process.BaseProcess] = {}
    stopping = False
    # Without a key file each process would generate its own assertion key, and an application
    # holding one worker's JWKS would refuse the others' assertions: one key, made here, for all
    # workers (replacements included). It reaches them through the spawn pipe, never the disk.
    assertion_pem = new_private_key_pem() if settings.assertion_key_file is None else None

    def start_worker() -> None:
        process = context.Process(
            target=worker_main,
            args=(settings, listeners.public, listeners.admin, assertion_pem),
            name="authcar-worker",
        )
        process.start()
        assert process.pid is not None
        workers[process.pid] = process

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for process in workers.values():
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        for _ in range(settings.workers):
            start_worker()
        log.info("workers started", extra={"workers": settings.workers, "pids": list(workers)})
        while workers:
            time.sleep(0.2)
            for pid, process in list(workers.items()):
                if process.is_alive():
                    continue
                del workers[pid]
                mark_dead(pid)
                if not stopping:
                    log.error(
                        "worker died; starting another", extra={"pid": pid, "exitcode": process.exitcode}
                    )
                    time.sleep(0.5)  # a worker that dies at start must not turn into a fork storm
                    if not stopping:  # a SIGTERM during the pause: nobody would signal the new one
                        start_worker()
        return 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if owned_dir is not None:
            shutil.rmtree(owned_dir, ignore_errors=True)


def mark_dead(pid: int) -> None:
    from prometheus_client import multiprocess

    with contextlib.suppress(Exception):
        multiprocess.mark_process_dead(pid)


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Service]:
    """Serve in the current event loop (for tests and embedding); stops and drains on exit."""
    listeners = bind_listeners(settings)
    service = Service(settings, listeners)
    stop = asyncio.Event()
    ready = asyncio.Event()
    task = asyncio.create_task(service.run(stop=stop, ready=ready.set, handle_signals=False))
    ready_wait = asyncio.create_task(ready.wait())
    await asyncio.wait({task, ready_wait}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready_wait.cancel()
        task.result()
    try:
        yield service
    finally:
        stop.set()
        await task
        listeners.close()
