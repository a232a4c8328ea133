"""Forward-auth behind a real nginx: nginx (`auth_request`) in front of the recording upstream, with
authcar (a process, with the test identity provider's real tokens and tests/security/policy: readers
may use /api/*, nobody /admin/*, anyone GET /public/*) as its auth server, trusting 127.0.0.1/32.

Allowed requests reach the upstream once, from nginx, with the identity headers authcar returned
(`auth_request_set` + `proxy_set_header`); denied and anonymous ones get 403/401 through nginx and
reach nothing; path tricks in the URI nginx describes are refused; and authcar answers a forward-auth
request from a peer outside its trusted proxies with 403, whatever it describes.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.support.nginx import RunningNginx, main_conf, running_nginx
from tests.support.property_stack import ThreadedStack, threaded_stack
from tests.support.rawhttp import RawResponse, request_bytes, send_raw
from tests.support.recording_upstream import ReceivedRequest

LOG_WAIT = 10.0  # generous upper bound for the sidecar's access line to follow its answer
IDENTITY = ("user", "groups", "email", "preferred-username", "jwt")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gateway_conf(prefix: Path, port: int, sidecar_port: int, upstream_port: int) -> str:
    """The README's nginx example: ask authcar, copy each identity header it returned."""
    copied = ""
    for name in IDENTITY:
        variable = name.replace("-", "_")
        copied += f"      auth_request_set $authcar_{variable} $upstream_http_x_auth_request_{variable};\n"
        copied += f"      proxy_set_header X-Auth-Request-{name} $authcar_{variable};\n"
    return main_conf(
        prefix,
        "  server {\n"
        f"    listen 127.0.0.1:{port};\n"
        "    location = /_authcar {\n"
        "      internal;\n"
        f"      proxy_pass http://127.0.0.1:{sidecar_port}/oauth2/auth;\n"
        "      proxy_pass_request_body off;\n"
        '      proxy_set_header Content-Length "";\n'
        "      proxy_set_header X-Original-URI $request_uri;\n"
        "      proxy_set_header X-Original-Method $request_method;\n"
        "      proxy_set_header X-Forwarded-Host $host;\n"
        "      proxy_set_header X-Forwarded-Proto $scheme;\n"
        "      proxy_set_header X-Forwarded-For $remote_addr;\n"
        "    }\n"
        "    location / {\n"
        "      auth_request /_authcar;\n"
        f"{copied}"
        f"      proxy_pass http://127.0.0.1:{upstream_port};\n"
        "    }\n"
        "  }\n",
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedStack]:
    with threaded_stack(tmp_path_factory.mktemp("fwdauth"), {"AUTHCAR_TRUSTED_PROXIES": "127.0.0.1/32"}) as s:
        yield s


@pytest.fixture(scope="module")
def nginx(stack: ThreadedStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNginx]:
    port = free_port()
    conf = gateway_conf(tmp_path_factory.mktemp("nginx"), port, stack.stack.port, stack.stack.upstream.port)
    with running_nginx(tmp_path_factory.mktemp("nginx-prefix"), conf, port) as running:
        yield running


def token(stack: ThreadedStack, **claims: Any) -> str:
    tokens = stack.stack.tokens
    return tokens.signed(claims=tokens.claims(**claims))


def through(
    stack: ThreadedStack,
    nginx: RunningNginx,
    method: str,
    target: str,
    headers: list[tuple[str, str]] | None = None,
) -> tuple[RawResponse, list[ReceivedRequest]]:
    """One request to nginx, written as given; its answer, and what reached the upstream for it."""
    stack.run(stack.stack.upstream.quiet())
    stack.stack.upstream.reset()
    stack.log_offset = stack.stack.log_size()
    response = stack.run(send_raw(nginx.port, request_bytes(method, target, headers, host="books.test")))
    stack.run(stack.stack.upstream.quiet(grace=0.05))
    assert not stack.stack.upstream.problems(), stack.stack.upstream.describe()
    return response, stack.stack.upstream.requests()


def sidecar_line(stack: ThreadedStack, request_id: str) -> dict[str, Any]:
    """The sidecar's access line for the forward-auth request nginx made for `request_id`."""
    deadline = time.monotonic() + LOG_WAIT
    while True:
        for line in stack.stack.log_since(stack.log_offset).splitlines():
            if line.startswith("{") and request_id in line:
                entry = json.loads(line)
                if entry.get("request_id") == request_id and "event" not in entry:
                    return dict(entry)
        assert time.monotonic() < deadline, f"no access line for {request_id}"
        time.sleep(0.02)


def jwks(stack: ThreadedStack) -> dict[str, Any]:
    response = httpx.get(f"{stack.stack.sidecar.url}/.well-known/authcar/jwks.json", timeout=10)
    return response.json()  # type: ignore[no-any-return]


def assertion_claims(stack: ThreadedStack, token_text: bytes) -> dict[str, Any]:
    kid = jwt.get_unverified_header(token_text)["kid"]
    key = jwt.PyJWKSet.from_dict(jwks(stack))[kid]
    return jwt.decode(token_text, key.key, algorithms=["ES256"], audience="upstream", issuer="authcar")


# --- through nginx --------------------------------------------------------------------------------


def test_an_allowed_request_reaches_the_upstream_once_with_the_identity_authcar_returned(
    stack: ThreadedStack, nginx: RunningNginx
) -> None:
    headers = [
        ("Authorization", f"Bearer {token(stack)}"),
        ("X-Auth-Request-User", "mallory"),  # forged: nginx's proxy_set_header replaces it
        ("X-Request-Id", "fa-allowed-1"),
    ]
    response, seen = through(stack, nginx, "DELETE", "/api/books//7?force=1", headers)

    assert response.status == 200, response.body
    [request] = seen  # nginx's, and nothing from the sidecar
    assert (request.method, request.target) == ("DELETE", b"/api/books//7?force=1")
    assert request.all("x-auth-request-user") == [b"alice"]
    assert request.header("x-auth-request-groups") == b"reader"
    assert request.header("x-auth-request-email") == b"alice@example.com"
    claims = assertion_claims(stack, request.header("x-auth-request-jwt") or b"")
    # Bound to the request nginx described, in the normalised form the proxy listener would forward.
    assert (claims["sub"], claims["method"], claims["path"]) == ("alice", "DELETE", "/api/books/7")
    line = sidecar_line(stack, "fa-allowed-1")
    assert {k: line[k] for k in ("method", "path", "status", "decision", "subject", "forward_auth")} == {
        "method": "DELETE",
        "path": "/api/books/7",
        "status": 200,
        "decision": "allow",
        "subject": "alice",
        "forward_auth": "x-original",
    }
    assert line["client"] == "127.0.0.1"


def test_a_denied_caller_gets_403_through_nginx_and_nothing_reaches_the_upstream(
    stack: ThreadedStack, nginx: RunningNginx
) -> None:
    headers = [("Authorization", f"Bearer {token(stack)}"), ("X-Request-Id", "fa-denied-1")]
    response, seen = through(stack, nginx, "GET", "/admin/users", headers)
    assert response.status == 403
    assert seen == []
    line = sidecar_line(stack, "fa-denied-1")
    assert (line["decision"], line["path"], line["reason"]) == ("deny", "/admin/users", "denied_by_rule")


def test_an_anonymous_caller_gets_401_with_the_challenge_and_a_public_path_passes_without_identity(
    stack: ThreadedStack, nginx: RunningNginx
) -> None:
    response, seen = through(stack, nginx, "GET", "/api/books")
    assert response.status == 401
    assert response.header("www-authenticate") == 'Bearer realm="authcar"'  # nginx passes it on
    assert seen == []

    response, seen = through(stack, nginx, "GET", "/public/about", [("X-Auth-Request-User", "admin")])
    assert response.status == 200
    [request] = seen
    assert request.header("x-auth-request-user") is None  # the forged one is gone, none was vouched for
    claims = assertion_claims(stack, request.header("x-auth-request-jwt") or b"")
    assert (claims["src"], claims["path"]) == ("anonymous", "/public/about")


def test_a_bad_token_gets_401_through_nginx(stack: ThreadedStack, nginx: RunningNginx) -> None:
    response, seen = through(
        stack, nginx, "GET", "/api/books", [("Authorization", f"Bearer {token(stack, aud='other')}")]
    )
    assert response.status == 401
    assert 'error="invalid_token"' in (response.header("www-authenticate") or "")
    assert seen == []


@pytest.mark.parametrize(
    ("target", "code"),
    [
        ("/public/%2e%2e/admin/users", "dot_segment"),
        ("/public/..%2Fadmin/users", "encoded_slash"),
        ("/public/..%5Cadmin/users", "encoded_slash"),
        ("/public/%EF%BC%8E%EF%BC%8E/admin/users", "dot_segment"),
        ("/public;x=1/../admin/users", "path_parameter"),
        ("/public/%252e%252e/admin/users", "double_encoding"),
        ("/public/x/../../admin/users", "dot_segment"),  # nginx itself routes it as /admin/users
        ("/public/%C0%AE%C0%AE/admin", "invalid_percent_encoding"),
        ("/public/%EF%BD%81dmin", "unicode_lookalike"),
    ],
)
def test_path_tricks_in_the_uri_nginx_describes_are_refused(
    stack: ThreadedStack, nginx: RunningNginx, target: str, code: str
) -> None:
    request_id = f"fa-trick-{abs(hash(target))}"
    response, seen = through(stack, nginx, "GET", target, [("X-Request-Id", request_id)])
    assert response.status == 403, response.body
    assert seen == []
    line = sidecar_line(stack, request_id)
    assert (line["status"], line["reason"], line["forward_auth"]) == (403, code, "refused")


def test_a_clients_own_description_headers_cannot_replace_the_one_nginx_sets(
    stack: ThreadedStack, nginx: RunningNginx
) -> None:
    # nginx passes the client's headers to the subrequest: a forged X-Forwarded-Uri next to
    # nginx's X-Original-URI is a second description, and refused rather than believed.
    for forged in [
        ("X-Forwarded-Uri", "/public/about"),
        ("X-Original-URL", "http://books.test/public/about"),
    ]:
        response, seen = through(stack, nginx, "GET", "/api/books", [forged, ("X-Request-Id", "fa-forged")])
        assert response.status == 403
        assert seen == []
        assert sidecar_line(stack, "fa-forged")["reason"] == "forward_auth_conflict"
    # The method nginx describes is its own, whatever the client claims.
    headers = [("Authorization", f"Bearer {token(stack)}"), ("X-Original-Method", "GET")]
    response, seen = through(stack, nginx, "DELETE", "/admin/users", headers)
    assert response.status == 403
    assert seen == []


# --- authcar called directly ---------------------------------------------------------------------


def direct(
    stack: ThreadedStack, path: str, headers: dict[str, str], *, local_address: str, method: str = "GET"
) -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=local_address)
    with httpx.Client(transport=transport, timeout=10) as client:
        return client.request(method, f"http://127.0.0.1:{stack.stack.port}{path}", headers=headers)


def test_forward_auth_from_a_peer_outside_the_trusted_proxies_is_refused(stack: ThreadedStack) -> None:
    described = {
        "Authorization": f"Bearer {token(stack)}",
        "X-Original-Method": "GET",
        "X-Original-URI": "/api/books",
    }
    stack.run(stack.stack.upstream.quiet())
    stack.stack.upstream.reset()
    # 127.0.0.2 is this host too, but not 127.0.0.1/32: the same request, trusted and not.
    for path, headers in (
        ("/oauth2/auth", described),
        ("/oauth2/auth/api/books", {"Authorization": described["Authorization"]}),
    ):
        refused = direct(stack, path, headers, local_address="127.0.0.2")
        assert refused.status_code == 403
        assert refused.json()["error"] == "forward_auth_untrusted_peer"
        assert "x-auth-request-jwt" not in refused.headers
        allowed = direct(stack, path, headers, local_address="127.0.0.1")
        assert allowed.status_code == 200
        assert allowed.content == b""
        assert allowed.headers["cache-control"] == "no-store"
        assert allowed.headers["x-auth-request-user"] == "alice"
    stack.run(stack.stack.upstream.quiet(grace=0.05))
    assert stack.stack.upstream.requests() == []  # forward-auth forwards nothing


def test_envoy_style_path_prefix_asks_with_its_own_method(stack: ThreadedStack) -> None:
    headers = {"Authorization": f"Bearer {token(stack)}"}
    answer = direct(stack, "/oauth2/auth/api/books/7", headers, local_address="127.0.0.1", method="PUT")
    assert answer.status_code == 200
    claims = assertion_claims(stack, answer.headers["x-auth-request-jwt"].encode())
    assert (claims["method"], claims["path"]) == ("PUT", "/api/books/7")
    denied = direct(stack, "/oauth2/auth/admin/x", headers, local_address="127.0.0.1", method="PUT")
    assert denied.status_code == 403
    assert denied.json()["error"] == "policy_denied"
