"""What the request head must be before anything is forwarded: a served HTTP version and a valid Host."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authcar.errors import BadRequest
from authcar.headers import check_host
from tests.support.rawhttp import send_raw
from tests.support.sidecar import RunningSidecar
from tests.support.upstream_app import RunningUpstream


def request(line: bytes, host: bytes | None) -> bytes:
    host_line = b"" if host is None else b"Host: " + host + b"\r\n"
    return line + b"\r\n" + host_line + b"Connection: close\r\n\r\n"


@pytest.mark.parametrize("version", [b"2.0", b"1.2", b"0.9", b"3.0", b"1.10", b"11.1", b"9.9"])
async def test_only_http_1_0_and_1_1_are_served(
    sidecar: RunningSidecar, upstream: RunningUpstream, version: bytes
) -> None:
    response = await send_raw(sidecar.port, request(b"GET / HTTP/" + version, b"app.example"))
    assert response.status == 400
    assert response.json()["error"] in ("unsupported_http_version", "malformed_request")
    assert upstream.seen == []


async def test_http_1_1_without_host_is_refused(sidecar: RunningSidecar, upstream: RunningUpstream) -> None:
    response = await send_raw(sidecar.port, request(b"GET / HTTP/1.1", None))
    assert response.status == 400
    assert response.json()["error"] == "missing_host"
    assert upstream.seen == []


async def test_http_1_0_without_host_is_served_with_the_upstreams_host(
    sidecar: RunningSidecar, upstream: RunningUpstream
) -> None:
    response = await send_raw(sidecar.port, request(b"GET /old HTTP/1.0", None))
    assert response.status == 200
    (seen,) = upstream.seen
    assert len(seen.all("host")) == 1
    assert seen.all("x-forwarded-host") == []


BAD_HOSTS = [
    b"app/admin",
    b"app\\admin",
    b"app?x",
    b"app#x",
    b"user@app",
    b"a b",
    b"app,evil",
    b"app;evil",
    b"app%2fadmin",
    b"app:",
    b"app:99999",
    b"app:0",
    b"app:80:80",
    b"app:http",
    b"[::1",
    b"[zz::1]",
    b"[fe80::1%25eth0]",
    b"[v1.x]",
    b"",
    b"a" * 254,
    "app\u00e9".encode(),
    b"app\x00",
]


@pytest.mark.parametrize("host", BAD_HOSTS)
async def test_invalid_host_is_refused_before_upstream(
    sidecar: RunningSidecar, upstream: RunningUpstream, host: bytes
) -> None:
    response = await send_raw(sidecar.port, request(b"GET / HTTP/1.1", host))
    assert response.status == 400
    assert response.json()["error"] in ("bad_host", "malformed_request")
    assert upstream.seen == []


@pytest.mark.parametrize(
    "host", [b"app.example", b"app.example:8443", b"127.0.0.1:4180", b"[::1]:80", b"[::1]"]
)
async def test_valid_host_is_forwarded_as_sent(
    sidecar: RunningSidecar, upstream: RunningUpstream, host: bytes
) -> None:
    response = await send_raw(sidecar.port, request(b"GET / HTTP/1.1", host))
    assert response.status == 200
    (seen,) = upstream.seen
    assert seen.all("host") == [host.decode()]
    assert seen.all("x-forwarded-host") == [host.decode()]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_a_host_is_accepted_only_if_it_is_a_plain_host_and_port(value: bytes) -> None:
    """Whatever is accepted cannot carry a path, a user, a query, spaces or list separators."""
    refused = ""
    try:
        check_host(value)
    except BadRequest as error:
        refused = error.code
    if refused:
        assert refused == "bad_host"
        return
    assert value
    assert not set(value) & set(b"/\\?#@ ,;%\t\r\n\x00")
    assert all(0x21 <= b < 0x7F for b in value)
