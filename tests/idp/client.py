"""Driving a provider that runs as its own process (`python -m tests.idp`) through its admin endpoints."""

from __future__ import annotations

import re
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import load_pem_private_key

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_LINE = re.compile(r"idp listening on (http://\S+)")


class AdminError(Exception):
    """The provider refused an admin call (bad arguments, unknown kid or mode)."""


class IdPClient:
    """The IdP handle's API, over HTTP. Methods take the same keyword arguments as the IdP's."""

    def __init__(self, base_url: str, *, timeout: float = 10) -> None:
        self.http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout)
        where = self.call("describe")
        self.url: str = where["url"]
        self.issuer: str = where["issuer"]
        self.jwks_uri: str = where["jwks_uri"]
        self.token_endpoint: str = where["token_endpoint"]
        self.introspection_endpoint: str = where["introspection_endpoint"]
        self.authorization_endpoint: str = where["authorization_endpoint"]
        self.end_session_endpoint: str = where["end_session_endpoint"]
        self.userinfo_endpoint: str = where["userinfo_endpoint"]

    def call(self, name: str, **arguments: Any) -> Any:
        response = self.http.post(f"/_idp/{name}", json=arguments)
        if response.status_code != 200:
            raise AdminError(f"{name}: {response.status_code} {response.text}")
        return response.json()

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> IdPClient:
        return self

    def __exit__(self, *exc_info: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def mint(self, claims: dict[str, Any] | None = None, **options: Any) -> str:
        return str(self.call("mint", claims=claims, **options))

    def mint_opaque(self, claims: dict[str, Any] | None = None, **options: Any) -> str:
        return str(self.call("mint_opaque", claims=claims, **options))

    def revoke(self, token: str) -> None:
        self.call("revoke", token=token)

    def rotate(self, alg: str = "RS256") -> str:
        return str(self.call("rotate", alg=alg))

    def retire(self, kid: str) -> None:
        self.call("retire", kid=kid)

    @property
    def keys(self) -> dict[str, Any]:
        return dict(self.call("keys"))

    def private_key(self, kid: str) -> PrivateKeyTypes:
        return load_pem_private_key(str(self.call("private_key", kid=kid)).encode(), password=None)

    def register_client(self, client_id: str, secret: str | None, **options: Any) -> dict[str, Any]:
        return dict(self.call("register_client", client_id=client_id, secret=secret, **options))

    def login_as(self, sub: str | None, **options: Any) -> None:
        self.call("login_as", sub=sub, **options)

    def logout_token(self, client_id: str = "authcar", **options: Any) -> str:
        return str(self.call("logout_token", client_id=client_id, **options))

    def backchannel_logout(self, client_id: str = "authcar", **options: Any) -> dict[str, Any]:
        """The provider POSTs a logout token to the client; the client's answer (IdP.backchannel_logout)."""
        return dict(self.call("backchannel_logout", client_id=client_id, **options))

    def refreshes(self, sid: str) -> int:
        """Successful refresh grants in the session `sid`."""
        return int(self.call("describe")["refreshes"].get(sid, 0))

    def sessions_of(self, sub: str) -> list[str]:
        return list(self.call("sessions_of", sub=sub))

    @property
    def backchannel_deliveries(self) -> list[tuple[str, int | None]]:
        return [(uri, status) for uri, status in self.call("describe")["backchannel_deliveries"]]

    def set_mode(
        self, mode: str, endpoints: list[str] | tuple[str, ...] = (), *, delay: float | None = None
    ) -> None:
        self.call("set_mode", mode=mode, endpoints=list(endpoints), delay=delay)

    def configure(self, **settings: Any) -> None:
        """Set delay, token_lifetime, refresh_lifetime, discovery_overrides, introspection_auth_methods,
        interactive (the authorization endpoint shows the sign-in page), reused_refresh_ends_session or
        backchannel_on_logout."""
        self.call("configure", **settings)

    @property
    def mode(self) -> str:
        return str(self.call("describe")["mode"])

    @mode.setter
    def mode(self, mode: str) -> None:
        self.set_mode(mode)

    @property
    def delay(self) -> float:
        return float(self.call("describe")["delay"])

    @delay.setter
    def delay(self, seconds: float) -> None:
        self.configure(delay=seconds)

    def count(self, endpoint: str) -> int:
        """Requests the provider received on an endpoint (a key of ENDPOINTS), in any mode."""
        return int(self.call("describe")["counts"].get(endpoint, 0))

    @property
    def jwks_fetches(self) -> int:
        return self.count("jwks")

    @property
    def introspections(self) -> int:
        return self.count("introspect")

    @property
    def token_requests(self) -> int:
        return self.count("token")

    @property
    def peak_introspections(self) -> int:
        """The most introspection requests the provider was answering at the same time."""
        return int(self.call("describe")["peak_in_flight"].get("introspect", 0))

    def reset_counters(self) -> None:
        self.call("reset_counters")


@dataclass
class IdPProcess:
    process: subprocess.Popen[str]
    client: IdPClient

    @property
    def url(self) -> str:
        return self.client.url


@contextmanager
def idp_process(
    *, port: int = 0, issuer_path: str = "/realms/test", ready_timeout: float = 20
) -> Iterator[IdPProcess]:
    """`python -m tests.idp` as a child process, ready when it has printed its line; terminated at the end."""
    command = [sys.executable, "-m", "tests.idp", "--port", str(port), "--issuer-path", issuer_path]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        url = wait_for_ready_line(process, ready_timeout)
        with IdPClient(url) as client:
            yield IdPProcess(process, client)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        assert process.stdout is not None
        process.stdout.close()


def wait_for_ready_line(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while (remaining := deadline - time.monotonic()) > 0:
            if selector.select(remaining):
                line = process.stdout.readline()
                if not line:
                    raise RuntimeError(
                        f"the identity provider exited with {process.wait()} before it was ready"
                    )
                if match := READY_LINE.fullmatch(line.strip()):
                    return match.group(1)
    raise RuntimeError(f"the identity provider printed no ready line within {timeout} s")
