"""`authcar demo`: the book service behind the sidecar, with a development issuer, in one process.

Three parts run in one event loop as one supervised group:
- the development issuer (authcar/devissuer.py, never for production), the only issuer the sidecar
  trusts, so every request needs one of its tokens;
- the book service (examples/book-service, shipped in the wheel as `book_service`) on 127.0.0.1 and a
  free port, trusting only the sidecar's signed X-Auth-Request-Jwt;
- the sidecar in front of it, authorizing with the book service's policy (the repository's policies/,
  shipped in the wheel as authcar/demo_policy), with browser login on: a page load without a token
  is sent to the issuer's sign-in page (one button per demo user) and comes back with a session,
  while API clients keep presenting tokens. The sidecar is the issuer's one login client, with a
  client secret and a cookie secret made for this run, and plain-HTTP cookies (no Secure flag),
  since everything listens on http://127.0.0.1 only.

Once the sidecar is ready it prints a token per demo role and a walkthrough of curl commands, each
with the status it gets. If any part stops by itself, the others are stopped and the demo exits 1;
Ctrl-C or SIGTERM stops them all and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import secrets
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import TypeVar

import httpx
import uvicorn

from authcar import devissuer
from authcar.config import ConfigError, Settings, load_settings
from authcar.devlogin import LoginClient
from authcar.observe import configure_logging
from authcar.policy import MODEL_FILE, POLICY_FILE, PolicyError
from authcar.server import Listeners, QuietServer, Service, bind, bind_listeners

READY_TIMEOUT = 15.0  # seconds for the parts to start and the sidecar to load the issuer's keys
STOP_TIMEOUT = 2  # seconds in-flight requests get when the demo stops; nothing here is long-running
PUBLIC_PATHS = "GET|HEAD /healthz"  # the book service's probe, also allowed by the policy
SHIPPED_POLICY = "demo_policy"  # the policy's directory inside the installed package
LOGIN_CLIENT_ID = "authcar-demo"  # the sidecar, as the development issuer's login client
BROWSER_PATH = "/books"  # what the demo asks people to open: every demo role may read it

T = TypeVar("T")
Task = asyncio.Task[None]


class DemoError(Exception):
    """The demo could not start or a part of it stopped; the message says why."""


@dataclass(frozen=True)
class Step:
    """One command of the printed walkthrough, and the status it gets."""

    status: int
    says: str
    method: str
    path: str
    role: str | None = None  # whose token; None: no token
    json_body: str | None = None


# Run in this order, they tell the story: each role gets different answers, and the audit trail at the
# end shows only the changes the policy let through.
WALKTHROUGH: tuple[Step, ...] = (
    Step(401, "no token: the sidecar asks for one", "GET", "/books"),
    Step(200, "the health check is public", "GET", "/healthz"),
    Step(200, "reader alice lists the books", "GET", "/books", "reader"),
    Step(
        403,
        "readers may not add books",
        "POST",
        "/books",
        "reader",
        '{"title": "Kindred", "author": "Octavia E. Butler", "year": 1979}',
    ),
    Step(
        201,
        "editor bob adds book 1",
        "POST",
        "/books",
        "editor",
        '{"title": "The Dispossessed", "author": "Ursula K. Le Guin", "year": 1974}',
    ),
    Step(403, "editors may not delete books", "DELETE", "/books/1", "editor"),
    Step(201, "alice reviews book 1 as herself", "PUT", "/books/1/reviews/alice", "reader", '{"rating": 5}'),
    Step(403, "but not in bob's name", "PUT", "/books/1/reviews/bob", "reader", '{"rating": 1}'),
    Step(204, "admin carol deletes book 1", "DELETE", "/books/1", "admin"),
    Step(200, "admin carol reads the audit trail: who changed what", "GET", "/audit", "admin"),
)


def token_variable(role: str) -> str:
    """The shell variable the printed commands read a role's token from."""
    return role.upper()


def curl_command(step: Step, public: str) -> str:
    # -w: the body, then the status, so every command shows what the comment above it promises.
    parts = ["curl -s -w ' %{http_code}\\n'"]
    if step.method not in ("GET", "POST") or (step.method == "POST" and step.json_body is None):
        parts.append(f"-X {step.method}")
    if step.role is not None:
        parts.append(f'-H "Authorization: Bearer ${token_variable(step.role)}"')
    if step.json_body is not None:
        parts.append(f"-H 'Content-Type: application/json' -d '{step.json_body}'")
    parts.append(f"{public}{step.path}")
    return " ".join(parts)


@dataclass(frozen=True)
class DemoUrls:
    public: str
    admin: str
    books: str
    issuer: str


@dataclass
class RunningDemo:
    """The started group: where each part listens, and the tasks the supervisor watches."""

    urls: DemoUrls
    issuer: devissuer.DevIssuer
    sidecar: Service
    books: uvicorn.Server
    parts: Mapping[str, Task]  # part name -> the task that serves it


def demo_policy_dir() -> Path:
    """The book service's policy: installed with the package, or the checkout's policies/."""
    package = Path(__file__).resolve().parent
    candidates = [package / SHIPPED_POLICY]
    if (package.parent / "pyproject.toml").is_file():
        # A source checkout (editable install): the repository's policies/, the one source of truth.
        candidates.append(package.parent / "policies")
    for candidate in candidates:
        if (candidate / MODEL_FILE).is_file() and (candidate / POLICY_FILE).is_file():
            return candidate
    raise DemoError("the demo policy is missing from this installation of authcar; reinstall it")


def import_book_service() -> ModuleType:
    try:
        return importlib.import_module("book_service")
    except ModuleNotFoundError as exc:
        if exc.name != "book_service":
            raise
        raise DemoError(
            "the book service is not installed with authcar; reinstall it (from a checkout: pip install -e .)"
        ) from None


def login_client(public: str) -> LoginClient:
    """The sidecar as the issuer's one login client: a secret made for this run, and exactly the
    callback and post-logout URL of this run's public listener."""
    return LoginClient(
        client_id=LOGIN_CLIENT_ID,
        secret=secrets.token_urlsafe(32),
        redirect_uris=(f"{public}/oauth2/callback",),
        post_logout_redirect_uris=(f"{public}{BROWSER_PATH}",),
    )


def sidecar_settings(
    port: int,
    admin_port: int,
    books_url: str,
    issuer: devissuer.DevIssuer,
    policy_dir: Path,
    login: LoginClient,
) -> Settings:
    try:
        return load_settings(
            {
                "host": "127.0.0.1",
                "port": port,
                "admin_host": "127.0.0.1",
                "admin_port": admin_port,
                "upstream": books_url,
                "oidc_issuer_url": issuer.url,
                "oidc_audience": issuer.audience,
                "public_paths": PUBLIC_PATHS,
                "policy_dir": str(policy_dir),
                "shutdown_grace_period": STOP_TIMEOUT,
                "log_format": "text",
                # Browser login: page loads without a token sign in at the issuer's page. Plain-HTTP
                # cookies (no Secure), since the demo serves http://127.0.0.1 only.
                "login": True,
                "oidc_client_id": login.client_id,
                "oidc_client_secret": login.secret,
                "oidc_redirect_url": login.redirect_uris[0],
                "post_logout_redirect_url": login.post_logout_redirect_uris[0],
                "cookie_secret": secrets.token_urlsafe(32),  # per run: sessions end with the demo
                "cookie_secure": False,
            },
            environ={},  # the demo is the same everywhere: AUTHCAR_* variables do not change it
        ).settings
    except ConfigError as error:
        raise DemoError("; ".join(error.messages)) from None


@contextlib.asynccontextmanager
async def serving_books(
    book_service: ModuleType, sock: socket.socket, jwks_url: str
) -> AsyncIterator[tuple[uvicorn.Server, Task]]:
    """The book service (in-memory database) on a bound localhost socket; yields its server and task."""
    settings = book_service.Settings(port=sock.getsockname()[1], jwks_url=jwks_url, log_level="warning")
    if problems := settings.problems():
        raise DemoError(f"book service: {'; '.join(problems)}")
    config = uvicorn.Config(
        book_service.build_app(settings),
        lifespan="on",
        log_config=None,
        access_log=False,  # the sidecar's access log already has a line per request
        server_header=False,
        proxy_headers=True,
        forwarded_allow_ips="127.0.0.1",
        timeout_graceful_shutdown=STOP_TIMEOUT,
        loop="none",
    )
    server = QuietServer(config)  # signals are the demo's, not each part's
    task = asyncio.create_task(server.serve(sockets=[sock]), name="book service")
    try:
        while not server.started:
            if task.done():
                raise DemoError(f"the book service did not start{cause(task)}")
            await asyncio.sleep(0.01)
        yield server, task
    finally:
        server.should_exit = True
        await finish(task)


@contextlib.asynccontextmanager
async def serving_sidecar(settings: Settings, listeners: Listeners) -> AsyncIterator[tuple[Service, Task]]:
    """The sidecar on its bound listeners; yields the service and the task that runs it."""
    try:
        service = Service(settings, listeners)
    except PolicyError as error:
        raise DemoError(f"the demo policy is unusable: {'; '.join(error.problems)}") from None
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(service.run(stop, ready.set, handle_signals=False), name="sidecar")
    try:
        await first_of(task, ready.wait())
        if task.done():
            raise DemoError(f"the sidecar did not start{cause(task)}")
        yield service, task
    finally:
        stop.set()
        await finish(task)


@contextlib.asynccontextmanager
async def running_demo(port: int, admin_port: int) -> AsyncIterator[RunningDemo]:
    """Start the issuer, the book service and the sidecar; stop them in reverse order on exit."""
    policy_dir = demo_policy_dir()
    book_service = import_book_service()  # before anything starts, not halfway
    async with contextlib.AsyncExitStack() as stack:
        # Bound first, so a taken port fails before anything starts (or warns), and port 0 works:
        # the book service must know the sidecar's URL, where it fetches the keys of X-Auth-Request-Jwt.
        listeners = bind_listeners(
            Settings(host="127.0.0.1", port=port, admin_host="127.0.0.1", admin_port=admin_port)
        )
        stack.callback(listeners.close)
        public = f"http://127.0.0.1:{listeners.public_port}"
        login = login_client(public)
        issuer = await stack.enter_async_context(devissuer.serving(login_clients=[login]))
        books_socket = stack.enter_context(contextlib.closing(bind("127.0.0.1", 0)))
        books_url = f"http://127.0.0.1:{books_socket.getsockname()[1]}"
        settings = sidecar_settings(port, admin_port, books_url, issuer, policy_dir, login)
        books, books_task = await stack.enter_async_context(
            serving_books(book_service, books_socket, f"{public}/.well-known/authcar/jwks.json")
        )
        sidecar, sidecar_task = await stack.enter_async_context(serving_sidecar(settings, listeners))
        yield RunningDemo(
            urls=DemoUrls(public, f"http://127.0.0.1:{listeners.admin_port}", books_url, issuer.url),
            issuer=issuer,
            sidecar=sidecar,
            books=books,
            parts=MappingProxyType({"sidecar": sidecar_task, "book service": books_task}),
        )


async def first_of(*waits: Awaitable[object]) -> None:
    """Return as soon as one of `waits` is done; the others are cancelled unless they are tasks."""
    futures = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future, wait in zip(futures, waits, strict=True):
            if future is not wait:  # ours to cancel; a task passed in belongs to its owner
                future.cancel()


async def supervise(parts: Mapping[str, Task], goal: Awaitable[T]) -> T:
    """Await `goal` while the parts run; DemoError naming the first part that stops before it."""
    pending = asyncio.ensure_future(goal)
    try:
        await asyncio.wait({pending, *parts.values()}, return_when=asyncio.FIRST_COMPLETED)
        for name, task in parts.items():
            if task.done():
                raise DemoError(f"the {name} stopped unexpectedly{cause(task)}")
        return pending.result()
    finally:
        pending.cancel()


def cause(task: Task) -> str:
    """`: <the exception>` when the task failed, else nothing."""
    if task.cancelled():
        return " (cancelled)"
    error = task.exception()
    return f": {error.__class__.__name__}: {error}" if error is not None else ""


async def finish(task: Task) -> None:
    """Wait for a part's task to end; a failure was reported when it happened, not again at exit."""
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await task


async def wait_ready(admin: str, stop: asyncio.Event) -> bool:
    """Poll /readyz until 200 (issuer keys loaded, policy loaded, book service reachable); False if
    stopped first."""
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
    async with running_demo(port, admin_port) as demo:
        if await supervise(demo.parts, wait_ready(demo.urls.admin, stop)):
            print(instructions(demo.urls, demo.issuer), flush=True)
            await supervise(demo.parts, stop.wait())
        # The access lines of the requests served so far belong before the goodbye, not after it.
        demo.sidecar.sidecar.access_log.flush()
        print("\nauthcar demo: stopping", flush=True)


def instructions(urls: DemoUrls, issuer: devissuer.DevIssuer) -> str:
    tokens = "\n".join(
        f"  {token_variable(role)}={issuer.mint(role)}  # {client.subject}"
        for role, client in devissuer.DEMO_CLIENTS.items()
    )
    walkthrough = "\n".join(
        f"  # {step.status} {step.says}\n  {curl_command(step, urls.public)}" for step in WALKTHROUGH
    )
    secret = devissuer.DEMO_SECRET
    people = ", ".join(f"{person.subject}: {person.role}" for person in devissuer.DEMO_PEOPLE)
    return f"""
authcar demo is running
  sidecar           {urls.public}  (admin: {urls.admin})
  book service      {urls.books}  (localhost only: reach it through the sidecar)
  dev issuer        {urls.issuer}  (DEVELOPMENT ONLY: tokens for anyone with the demo secret,
                    and a sign-in page without passwords)

In a browser: open {urls.public}{BROWSER_PATH} and choose a demo user on the sign-in page
({people}); you come back to the book list, signed in as that user.
  {urls.public}/oauth2/userinfo   who you are signed in as
  {urls.public}/oauth2/sign_out   sign out (the next page load asks who you are again)

With curl:
1. Paste a token per demo role into your shell (minted now, valid for an hour):
{tokens}

2. Then run these in order; each prints the answer, then its status (expected: the number above it):
{walkthrough}

A fresh token (clients {", ".join(devissuer.DEMO_CLIENTS)}; secret {secret}):
  curl -s -u reader:{secret} -d grant_type=client_credentials {issuer.token_endpoint}

Probes and metrics:
  curl -s {urls.admin}/readyz
  curl -s {urls.admin}/metrics | grep '^authcar_requests_total'

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
        print(f"authcar demo: {exc}; everything is stopped", file=sys.stderr)
        return 1
    return 0
