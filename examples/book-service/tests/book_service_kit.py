"""Test parts, all real: a JWKS server and the book service on their own sockets, and an assertion
minter that plays the sidecar (or an attacker imitating it)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import uvicorn
from book_service import Settings, build_app
from book_service.keys import thumbprint
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.applications import Starlette

ASSERTION = "X-Auth-Request-Jwt"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class SidecarKey:
    """An EC P-256 key as the sidecar holds it: kid is the RFC 7638 thumbprint of the public JWK."""

    private: ec.EllipticCurvePrivateKey
    kid: str
    jwk: Mapping[str, Any]

    @classmethod
    def generate(cls) -> SidecarKey:
        private = ec.generate_private_key(ec.SECP256R1())
        body = jwt.get_algorithm_by_name("ES256").to_jwk(private.public_key(), as_dict=True)
        kid = thumbprint(body)
        return cls(private=private, kid=kid, jwk={**body, "kid": kid, "use": "sig", "alg": "ES256"})


def claims_for(
    method: str,
    path: str,
    *,
    sub: str | None = "alice",
    roles: tuple[str, ...] = ("reader",),
    aud: str = "upstream",
    lifetime: float = 60,
) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "authcar",
        "aud": aud,
        "roles": list(roles),
        "src": "jwt",
        "method": method,
        "path": path,
        "iat": now,
        "exp": int(now + lifetime),
    }
    if sub is not None:
        claims["sub"] = sub
    return claims


def mint(key: SidecarKey, claims: Mapping[str, Any], *, kid: str | None = None, **header: Any) -> str:
    """What the sidecar sends: an ES256 JWT whose kid is the key's thumbprint."""
    return jwt.encode(dict(claims), key.private, algorithm="ES256", headers={"kid": kid or key.kid, **header})


def raw_jws(header: Mapping[str, Any], claims: Mapping[str, Any], signature: bytes = b"") -> str:
    """A JWS with any header and any signature bytes: for what pyjwt refuses to write."""
    head = b64url(json.dumps(header).encode())
    body = b64url(json.dumps(claims).encode())
    return f"{head}.{body}.{b64url(signature)}"


def hmac_jws(header: Mapping[str, Any], claims: Mapping[str, Any], secret: bytes) -> str:
    unsigned = raw_jws(header, claims).rsplit(".", 1)[0]
    signature = hmac.new(secret, unsigned.encode(), hashlib.sha256).digest()
    return f"{unsigned}.{b64url(signature)}"


class JwksServer:
    """The sidecar's /.well-known/authcar/jwks.json, on its own thread; counts every fetch."""

    PATH = "/.well-known/authcar/jwks.json"

    def __init__(self, keys: list[SidecarKey]) -> None:
        self.keys = list(keys)
        self.available = True
        self.fetches = 0
        self._lock = threading.Lock()
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with jwks._lock:
                    jwks.fetches += 1
                    available, document = jwks.available, {"keys": [dict(k.jwk) for k in jwks.keys]}
                if self.path != JwksServer.PATH or not available:
                    self.send_response(404 if available else 503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps(document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{self.PATH}"
        # A short poll interval: shutdown() waits for the next poll.
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    def publish(self, *keys: SidecarKey) -> None:
        with self._lock:
            self.keys = list(keys)

    def fetch_count(self) -> int:
        with self._lock:
            return self.fetches

    @contextmanager
    def running(self) -> Iterator[JwksServer]:
        self.thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()


@dataclass
class RunningService:
    url: str
    app: Starlette
    db_path: Path
    key: SidecarKey
    http: httpx.Client = field(repr=False)

    def call(
        self,
        method: str,
        path: str,
        *,
        sub: str | None = "alice",
        roles: tuple[str, ...] = ("reader",),
        json_body: Any = None,
        assertion: str | None = None,
        claims: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """A request as the sidecar forwards it: with an assertion minted for this method and path."""
        if assertion is None:
            asserted_path = path.partition("?")[0]
            assertion = mint(self.key, claims or claims_for(method, asserted_path, sub=sub, roles=roles))
        sent = {ASSERTION: assertion, **(headers or {})}
        return self.http.request(method, path, json=json_body, headers=sent)

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table, read through a connection of our own."""
        with sqlite3.connect(self.db_path) as db:
            return {
                table: db.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()  # noqa: S608
                for table in ("books", "reviews", "audit")
            }


ServiceFactory = Callable[..., AbstractContextManager[RunningService]]


def free_socket() -> socket.socket:
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only when the listener
    # says TCP; without it every keep-alive response waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def serving(settings: Settings, key: SidecarKey, db_path: Path) -> Iterator[RunningService]:
    """The book service under uvicorn, in a thread with its own event loop, on a free port."""
    app = build_app(settings)
    sock = free_socket()
    config = uvicorn.Config(app, log_level="error", http="httptools", ws="none", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the book service did not start")
        time.sleep(0.01)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        with httpx.Client(base_url=url, timeout=10) as http:
            yield RunningService(url=url, app=app, db_path=db_path, key=key, http=http)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
