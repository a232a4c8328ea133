"""Upstream failures are types: each with the status, code, metric kind and headers documented for it.

The pool (authcar/http1.py) raises them where it finds a failure; `upstream_failure` names what aiohttp
(WebSockets) and anything else raise. What the client gets is the type's fixed description, never the
detail, which can name addresses and the upstream's bytes.
"""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path

import aiohttp
import pytest

from authcar.errors import (
    BadGateway,
    GatewayError,
    GatewayTimeout,
    ServiceUnavailable,
    UpstreamConnectFailed,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamFailed,
    UpstreamHeaderTooLarge,
    UpstreamPoolExhausted,
    UpstreamProtocolError,
    UpstreamReset,
    UpstreamTimeout,
    UpstreamWebSocketRejected,
    error_body,
    error_headers,
)
from authcar.upstream import upstream_failure

ROOT = Path(__file__).resolve().parents[1]

# The wire contract (README's error table, docs/operations.md's authcar_upstream_errors_total kinds).
DOCUMENTED: dict[type[UpstreamError], tuple[type[GatewayError], int, str, str]] = {
    UpstreamConnectFailed: (BadGateway, 502, "upstream_unavailable", "connect_failed"),
    UpstreamConnectTimeout: (BadGateway, 502, "upstream_connect_timeout", "connect_timeout"),
    UpstreamPoolExhausted: (ServiceUnavailable, 503, "upstream_pool_exhausted", "pool_exhausted"),
    UpstreamTimeout: (GatewayTimeout, 504, "upstream_timeout", "read_timeout"),
    UpstreamReset: (BadGateway, 502, "upstream_reset", "reset"),
    UpstreamProtocolError: (BadGateway, 502, "upstream_protocol_error", "protocol"),
    UpstreamHeaderTooLarge: (BadGateway, 502, "upstream_header_too_large", "header_too_large"),
    UpstreamFailed: (BadGateway, 502, "upstream_error", "other"),
}


def all_subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= all_subclasses(sub)
    return found


def test_every_upstream_failure_type_is_listed_here() -> None:
    """A new failure type must be given its documented answer above (and in the docs)."""
    assert all_subclasses(UpstreamError) == set(DOCUMENTED) | {UpstreamWebSocketRejected}


@pytest.mark.parametrize("failure_type", list(DOCUMENTED), ids=lambda t: t.__name__)
def test_each_failure_answers_its_documented_status_code_and_kind(failure_type: type[UpstreamError]) -> None:
    family, status, code, kind = DOCUMENTED[failure_type]
    failure = failure_type("cannot connect to 10.9.8.7:8080: [Errno 111] Connection refused")
    assert isinstance(failure, family)
    assert (failure.status, failure.code, failure.kind, type(failure).kind) == (status, code, kind, kind)
    body = error_body(failure, "rid-1")
    assert b"10.9.8.7" not in body  # the detail is not the client's to see
    assert b"Errno" not in body
    assert failure.detail.startswith("cannot connect to 10.9.8.7")
    headers = dict(error_headers(failure, body, "rid-1"))
    assert (headers.get(b"retry-after") == b"1") is (status == 503)
    assert b"www-authenticate" not in headers


def test_a_full_pool_is_not_a_connect_timeout_in_any_sense() -> None:
    """Matched by type, a full pool must not be caught as the application's connect timeout, nor
    as any 502: it is the sidecar's passing limit."""
    exhausted = UpstreamPoolExhausted()
    assert not isinstance(exhausted, UpstreamConnectTimeout | BadGateway)
    assert not issubclass(UpstreamConnectTimeout, ServiceUnavailable)


def test_a_rejected_websocket_names_the_status_and_nothing_else() -> None:
    rejected = UpstreamWebSocketRejected(403)
    assert isinstance(rejected, BadGateway)
    assert (rejected.status, rejected.code, rejected.kind) == (
        502,
        "websocket_rejected",
        "websocket_rejected",
    )
    assert rejected.description == "the application refused the WebSocket (status 403)"


def test_every_kind_is_a_documented_metric_label() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    (row,) = [
        line for line in operations.splitlines() if line.startswith("| `authcar_upstream_errors_total`")
    ]
    labels = set(re.findall(r"`([a-z_]+)`", row))
    kinds = {t.kind for t in all_subclasses(UpstreamError)}
    assert kinds <= labels


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        pytest.param(aiohttp.ConnectionTimeoutError(), UpstreamConnectTimeout, id="aiohttp-connect-timeout"),
        pytest.param(aiohttp.ServerTimeoutError(), UpstreamTimeout, id="aiohttp-read-timeout"),
        pytest.param(TimeoutError(), UpstreamTimeout, id="timeout"),
        pytest.param(aiohttp.ServerDisconnectedError(), UpstreamReset, id="server-disconnected"),
        pytest.param(aiohttp.ClientOSError(104, "reset by peer"), UpstreamReset, id="client-os-error"),
        pytest.param(ConnectionResetError(), UpstreamReset, id="connection-reset"),
        pytest.param(aiohttp.ClientPayloadError("cut"), UpstreamReset, id="payload-cut"),
        pytest.param(RuntimeError("a bug"), UpstreamFailed, id="anything-else"),
    ],
)
def test_foreign_exceptions_become_the_most_specific_failure_type(
    raised: BaseException, expected: type[UpstreamError]
) -> None:
    failure = upstream_failure(raised)
    assert type(failure) is expected
    assert type(raised).__name__ in failure.detail


def test_a_typed_failure_passes_through_as_itself() -> None:
    reset = UpstreamReset("the upstream closed the connection")
    assert upstream_failure(reset) is reset


async def test_aiohttp_refused_by_a_closed_port_is_connect_failed() -> None:
    """A real refusal, not a constructed one: aiohttp's connector error is also an OSError, and must
    not be taken for a reset."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientError) as refused:
                await asyncio.wait_for(session.ws_connect(f"http://127.0.0.1:{port}/ws"), 10)
    assert isinstance(refused.value, aiohttp.ClientConnectorError)
    assert type(upstream_failure(refused.value)) is UpstreamConnectFailed
