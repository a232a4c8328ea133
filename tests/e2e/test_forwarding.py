"""The forwarding path over real sockets: bodies, header rules, upstream failures, reserved paths.

Requests that a client library would normalise (duplicate headers, odd framing, Connection tricks)
are written by hand with tests.support.rawhttp. Security-relevant tests assert both what the client got and
what the upstream saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.support.rawhttp import parse_response, read_until_closed, request_bytes, send_raw
from tests.support.sidecar import RunningSidecar, start_sidecar
from tests.support.upstream_app import RunningUpstream, pattern, serve_raw

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
ERROR_KEYS = {"error", "error_description", "request_id"}


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, str]:
    """The sidecar's own error answer: this status, JSON with exactly the three keys, the id echoed."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == ERROR_KEYS
    assert body["error"] == code
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def echoed(response: httpx.Response) -> dict[str, object]:
    assert response.status_code == 200, response.text
    return response.json()


def header_names(headers: list[tuple[str, str]]) -> set[str]:
    return {name.lower() for name, _ in headers}


async def random_chunks(total: int, size: int = 65536) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        chunk = os.urandom(min(size, total - sent))
        sent += len(chunk)
        yield chunk


@contextlib.asynccontextmanager
async def sidecar_client(upstream_url: str, **overrides: object) -> AsyncIterator[httpx.AsyncClient]:
    """A sidecar with these settings in front of `upstream_url`, and an httpx client for it."""
    async with (
        start_sidecar(upstream_url, **overrides) as sidecar,
        httpx.AsyncClient(base_url=sidecar.url, timeout=10) as client,
    ):
        yield client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- bodies ------------------------------------------------------------------------------------


async def test_content_length_upload_arrives_same_length_and_digest_not_chunked(
    client: httpx.AsyncClient, upstream: RunningUpstream
) -> None:
    body = os.urandom(3 * 1024 * 1024 + 17)
    answer = echoed(await client.post("/upload-echo", content=body))
    assert answer["body_bytes"] == len(body)
    assert answer["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert answer["chunked"] is False
    (seen,) = upstream.seen
    assert seen.all("content-length") == [str(len(body))]
    assert seen.all("transfer-encoding") == []


async def test_chunked_upload_is_reframed_chunked_and_intact(
    client: httpx.AsyncClient, upstream: RunningUpstream
) -> None:
    digest = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        async for chunk in random_chunks(2 * 1024 * 1024 + 5, size=50_000):
            digest.update(chunk)
            yield chunk

    answer = echoed(await client.post("/upload-echo", content=body()))
    assert answer["body_bytes"] == 2 * 1024 * 1024 + 5
    assert answer["body_sha256"] == digest.hexdigest()
    assert answer["chunked"] is True
    (seen,) = upstream.seen
    assert seen.all("content-length") == []
    assert [v.lower() for v in seen.all("transfer-encoding")] == ["chunked"]


async def test_download_with_content_length_arrives_intact(client: httpx.AsyncClient) -> None:
    size = 5 * 1024 * 1024 + 3
    response = await client.get(f"/download?size={size}&chunk=65536&length=1")
    assert response.status_code == 200
    assert response.headers["content-length"] == str(size)
    assert "transfer-encoding" not in response.headers
    assert response.content == (pattern(65536) * (size // 65536 + 1))[:size]


async def test_chunked_download_arrives_intact(client: httpx.AsyncClient) -> None:
    size = 5 * 1024 * 1024 + 3
    response = await client.get(f"/download?size={size}&chunk=10000")
    assert response.status_code == 200
    assert response.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in response.headers
    assert response.content == (pattern(10000) * (size // 10000 + 1))[:size]


async def test_head_gets_upstream_headers_and_no_body(
    sidecar: RunningSidecar, upstream: RunningUpstream
) -> None:
    response = await send_raw(sidecar.port, request_bytes("HEAD", "/download?size=12345&length=1"), head=True)
    assert response.status == 200
    assert response.header("content-length") == "12345"
    assert response.rest == b""  # nothing after the head, although the upstream's GET body has 12345 bytes
    assert [s.method for s in upstream.seen] == ["HEAD"]


@pytest.mark.parametrize("status", [204, 304])
async def test_no_body_statuses_have_no_body(sidecar: RunningSidecar, status: int) -> None:
    response = await send_raw(sidecar.port, request_bytes("GET", f"/status/{status}"))
    assert response.status == status
    assert response.rest == b""
    assert response.header("transfer-encoding") is None


@pytest.mark.parametrize("status", [204, 304])
async def test_no_body_status_with_content_length_keeps_client_connection(status: int) -> None:
    # A 304 may carry the Content-Length of the representation (RFC 9110 §8.6): the answer has no
    # body all the same, and the client's keep-alive connection must survive it.
    reply = f'HTTP/1.1 {status} X\r\nContent-Length: 1234\r\nETag: "v1"\r\n\r\n'.encode()
    async with serve_raw(reply) as raw, sidecar_client(raw.url) as client:
        first = await client.get("/x")
        second = await client.get("/y")
    assert first.status_code == second.status_code == status
    assert first.content == b""
    assert first.headers["etag"] == '"v1"'
    assert first.extensions["network_stream"] is second.extensions["network_stream"]  # same connection
    assert len(raw.heads) == 2


async def test_expect_100_continue_is_answered_by_sidecar_and_not_forwarded(
    sidecar: RunningSidecar, upstream: RunningUpstream
) -> None:
    body = os.urandom(200_000)
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    try:
        head = request_bytes(
            "POST", "/upload-echo", [("Content-Length", str(len(body))), ("Expect", "100-continue")]
        )
        writer.write(head)
        await writer.drain()
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100 ")
        writer.write(body)
        await writer.drain()
        response = parse_response(await read_until_closed(reader))
    finally:
        writer.close()
    assert response.status == 200
    answer = response.json()
    assert answer["body_bytes"] == len(body)
    assert answer["body_sha256"] == hashlib.sha256(body).hexdigest()
    (seen,) = upstream.seen
    assert seen.all("expect") == []


async def test_upstream_trailers_are_dropped_not_turned_into_headers() -> None:
    reply = (
        b"HTTP/1.1 200 OK\r\n"
        b"Transfer-Encoding: chunked\r\n"
        b"Trailer: X-Checksum, X-Auth-Request-User\r\n"
        b"\r\n"
        b"5\r\nhello\r\n"
        b"6\r\n world\r\n"
        b"0\r\n"
        b"X-Checksum: abc123\r\n"
        b"X-Auth-Request-User: admin\r\n"
        b"\r\n"
    )
    async with serve_raw(reply) as raw, start_sidecar(raw.url) as sidecar:
        response = await send_raw(sidecar.port, request_bytes("GET", "/trailers"))
    assert response.status == 200
    assert response.complete
    assert response.body == b"hello world"
    names = header_names(response.headers)
    assert not names & {"trailer", "x-checksum", "x-auth-request-user"}
    assert response.trailers == []
    assert b"abc123" not in response.rest


async def test_empty_bodies_are_framed_once(client: httpx.AsyncClient, upstream: RunningUpstream) -> None:
    assert (await client.get("/get")).status_code == 200
    assert (await client.post("/post", content=b"")).status_code == 200
    get, post = upstream.seen
    assert get.all("content-length") == []
    assert get.all("transfer-encoding") == []
    assert post.all("content-length") == ["0"]
    assert post.all("transfer-encoding") == []


async def test_upstream_answering_before_reading_the_upload(client: httpx.AsyncClient) -> None:
    # /status/201 never reads the body: the answer is relayed and the client connection stays usable.
    response = await client.post("/status/201", content=os.urandom(8 * 1024 * 1024))
    assert response.status_code == 201
    assert response.text == "status 201"
    assert (await client.get("/next")).status_code == 200


async def test_client_leaving_mid_download_ends_the_exchange(
    sidecar: RunningSidecar, client: httpx.AsyncClient
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    # 1 TiB: a stream that ran on for nobody would not end within the generous bound below.
    writer.write(request_bytes("GET", f"/download?size={1024**4}&chunk=65536"))
    await writer.drain()
    assert (await reader.readexactly(1024 * 1024))[:15] == b"HTTP/1.1 200 OK"
    writer.transport.abort()
    in_flight = sidecar.service.sidecar.metrics.in_flight
    for _ in range(1000):  # the stream stops instead of running on for nobody
        if in_flight._value.get() == 0:
            break
        await asyncio.sleep(0.02)
    assert in_flight._value.get() == 0
    assert (await client.get("/next")).status_code == 200


@pytest.mark.parametrize(
    ("target", "forwarded"),
    [
        ("/caf%C3%A9?q=a%20b&c=%2F&d=/../x", "/caf%C3%A9?q=a%20b&c=%2F&d=/../x"),
        ("/books/1?x=%zz", "/books/1?x=%zz"),  # the query is the app's business: never rewritten
        ("//double//slash", "/double/slash"),
        ("/%7euser", "/~user"),  # encoded unreserved characters are decoded
        ("/caf%c3%a9", "/caf%C3%A9"),  # other encodings are kept, hex upper-cased
    ],
)
async def test_the_normalised_path_and_the_query_are_forwarded_byte_for_byte(
    sidecar: RunningSidecar, upstream: RunningUpstream, target: str, forwarded: str
) -> None:
    response = await send_raw(sidecar.port, request_bytes("GET", target))
    assert response.status == 200
    assert upstream.paths() == [forwarded]


@pytest.mark.parametrize(
    "target", ["/a/../b", "/a/%2e%2e/b", "/a/./b", "/x;jsessionid=1/y", "/%2F..%2Fadmin", "/a%00b"]
)
async def test_ambiguous_paths_are_refused_not_forwarded(
    sidecar: RunningSidecar, upstream: RunningUpstream, target: str
) -> None:
    response = await send_raw(sidecar.port, request_bytes("GET", target))
    assert response.status == 400
    assert response.json()["error"] in {
        "dot_segment",
        "path_parameter",
        "encoded_slash",
        "encoded_control",
        "ambiguous_path",
    }
    assert await upstream.seen_before_marker(sidecar.port) == []


# -- request headers -------------------------------------------------------------------------


async def test_hop_by_hop_request_headers_are_removed(
    sidecar: RunningSidecar, upstream: RunningUpstream
) -> None:
    headers = [
        ("Connection", "keep-alive, X-Custom-Hop"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"),
        ("Proxy-Authorization", "Basic c2VjcmV0OnNlY3JldA=="),
        ("TE", "trailers"),
        ("Trailer", "X-Checksum"),
        ("Upgrade", "h2c"),
        ("X-Custom-Hop", "drop me"),
        ("X-Normal", "keep me"),
    ]
    response = await send_raw(sidecar.port, request_bytes("GET", "/hop-req", headers))
    assert response.status == 200
    (seen,) = upstream.seen
    names = header_names(seen.headers)
    assert not names & {
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
        "x-custom-hop",
    }
    # aiohttp announces its own keep-alive hop; it must not carry the client's tokens.
    assert all("x-custom-hop" not in v.lower() for v in seen.all("connection"))
    assert seen.all("x-normal") == ["keep me"]


async def test_upgrade_to_unknown_protocol_is_forwarded_as_plain_http(
    sidecar: RunningSidecar, upstream: RunningUpstream
) -> None:
    headers = [
        ("Connection", "Upgrade, HTTP2-Settings, close"),
        ("Upgrade", "h2c"),
        ("HTTP2-Settings", "AAMAAABkAAQAAP__"),
    ]
    response = await send_raw(sidecar.port, request_bytes("GET", "/h2c", headers, close=False))
    assert response.status == 200
    (seen,) = upstream.seen
    assert not header_names(seen.headers) & {"upgrade", "http2-settings"}


async def test_connection_header_cannot_remove_what_the_sidecar_sets(
    sidecar: RunningSidecar, upstream: RunningUpstream
) -> None:
    # Traefik CVE-2024-45410: hop-by-hop names must not strip headers the proxy adds itself.
    named = "close, X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, X-Request-Id, Host, X-Real-Ip"
    headers = [("Connection", named), ("X-Request-Id", "client-id-1")]
    response = await send_raw(sidecar.port, request_bytes("GET", "/conn", headers, close=False))
    assert response.status == 200
    assert response.header("x-request-id") == "client-id-1"
    (seen,) = upstream.seen
    assert seen.all("x-forwarded-for") == ["127.0.0.1"]
    assert seen.all("x-forwarded-proto") == ["http"]
    assert seen.all("x-forwarded-host") == ["sidecar.test"]
    assert seen.all("x-request-id") == ["client-id-1"]
    assert seen.all("host") == ["sidecar.test"]


async def test_response_hop_by_hop_headers_are_removed(client: httpx.AsyncClient) -> None:
    response = await client.get("/hop")
    assert response.status_code == 200
    assert response.text == "hop"
    assert response.headers["x-kept"] == "yes"
    assert "x-secret-hop" not in response.headers  # named in the upstream's Connection header
    assert "keep-alive" not in response.headers
    assert "connection" not in response.headers


IDENTITY_SPOOFS = [
    ("X-Auth-Request-User", "admin"),
    ("x-auth-request-user", "admin2"),
    ("X-AUTH-REQUEST-USER", "admin3"),
    ("x_auth_request_user", "admin4"),
    ("X.Auth.Request.Email", "admin@example.com"),
    ("X-Auth-Request_Groups", "admins"),
    ("X-Auth-Request-Jwt", "eyJhbGciOiJub25lIn0.e30."),
    ("X-Auth-Request-User", "admin5"),
    ("X-Authcar-Anything", "1"),
    ("X-Forwarded-User", "admin"),
    ("X-Forwarded-Email", "admin@example.com"),
    ("X_Forwarded_Groups", "admins"),
    ("X-Remote-User", "admin"),
    ("Remote-User", "admin"),
    ("X-Original-URL", "/admin"),
    ("X-Rewrite-URL", "/admin"),
    ("X-Forwarded-Uri", "/admin"),
    ("x.original.uri", "/admin"),
    ("X-Forwarded-Prefix", "/admin"),
    ("X-HTTP-Method-Override", "DELETE"),
    ("X-Method-Override", "DELETE"),
    ("X-Original-Method", "DELETE"),
]


async def test_client_identity_headers_never_reach_the_upstream(
    sidecar: RunningSidecar, upstream: RunningUpstream
) -> None:
    headers = [*IDENTITY_SPOOFS, ("X-Normal", "kept")]
    response = await send_raw(sidecar.port, request_bytes("GET", "/me", headers))
    assert response.status == 200
    (seen,) = upstream.seen
    # The sidecar's own assertion is the one identity header the app receives for an anonymous caller.
    leaked = [
        (n, v)
        for n, v in seen.headers
        if n.lower() != "x-auth-request-jwt"
        and (
            re.sub(r"[_.]", "-", n.lower()).startswith(("x-auth-request-", "x-authcar-"))
            or re.sub(r"[_.]", "-", n.lower())
            in {
                "x-forwarded-user",
                "x-forwarded-email",
                "x-forwarded-groups",
                "x-remote-user",
                "remote-user",
                "x-original-url",
                "x-rewrite-url",
                "x-forwarded-uri",
                "x-original-uri",
                "x-forwarded-prefix",
                "x-http-method-override",
                "x-method-override",
                "x-original-method",
            }
        )
    ]
    assert leaked == []
    assert len(seen.all("x-auth-request-jwt")) == 1
    assert seen.all("x-auth-request-jwt") != ["eyJhbGciOiJub25lIn0.e30."]
    assert seen.all("x-normal") == ["kept"]
    assert not any("admin" in v for _, v in seen.headers)


async def test_forwarded_headers_from_untrusted_peer_are_replaced(
    sidecar: RunningSidecar, upstream: RunningUpstream
) -> None:
    headers = [
        ("X-Forwarded-For", "1.2.3.4"),
        ("X-Forwarded-For", "5.6.7.8"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "evil.example"),
        ("Forwarded", "for=1.2.3.4;proto=https"),
        ("X-Real-IP", "1.2.3.4"),
    ]
    response = await send_raw(sidecar.port, request_bytes("GET", "/xff", headers, host="app.example"))
    assert response.status == 200
    (seen,) = upstream.seen
    assert seen.all("x-forwarded-for") == ["127.0.0.1"]
    assert seen.all("x-forwarded-proto") == ["http"]
    assert seen.all("x-forwarded-host") == ["app.example"]
    assert seen.all("host") == ["app.example"]
    assert seen.all("forwarded") == []
    assert seen.all("x-real-ip") == []


FORWARDING_SPOOFS = [
    ("X-Forwarded-Port", "443"),
    ("X-Forwarded-Ssl", "on"),
    ("X-Forwarded-Scheme", "https"),
    ("X-Forwarded-Server", "evil.example"),
    ("True-Client-IP", "10.0.0.1"),
    ("CF-Connecting-IP", "10.0.0.1"),
    ("X-Client-IP", "10.0.0.1"),
    ("X-Cluster-Client-IP", "10.0.0.1"),
    ("Front-End-Https", "on"),
    ("X_Forwarded_For", "10.6.6.6"),
    ("x.forwarded.proto", "https"),
    ("X_Real_IP", "10.6.6.6"),
    ("X_Request_Id", "spoofed-id"),
    ("X-Scheme", "https"),
    ("X-Forwarded", "for=10.0.0.1"),
    ("X-Host", "evil.example"),
    ("X-Original-Host", "evil.example"),
    ("X-Original-Forwarded-For", "10.0.0.1"),
    ("X-ProxyUser-Ip", "10.0.0.1"),
    ("X-Envoy-Internal", "true"),
    ("X-Envoy-External-Address", "10.0.0.1"),
    ("X-SSL", "on"),
]


async def test_forwarding_family_and_client_ip_headers_from_untrusted_peer_are_dropped(
    sidecar: RunningSidecar, upstream: RunningUpstream
) -> None:
    response = await send_raw(sidecar.port, request_bytes("GET", "/xff", FORWARDING_SPOOFS))
    assert response.status == 200
    (seen,) = upstream.seen
    sent = {n.lower() for n, _ in FORWARDING_SPOOFS}
    assert not header_names(seen.headers) & sent
    spoofed = (
        "10.0.0.1",
        "10.6.6.6",
        "https",
        "on",
        "443",
        "spoofed-id",
        "true",
        "evil.example",
        "for=10.0.0.1",
    )
    assert not any(v in spoofed for _, v in seen.headers)
    assert seen.all("x-forwarded-for") == ["127.0.0.1"]


# Every family of client-certificate header a front proxy writes, in the spellings apps read.
CLIENT_CERT_SPOOFS = [
    ("X-SSL-Client-Verify", "SUCCESS"),
    ("X-SSL-Client-S-DN", "CN=admin"),
    ("X-SSL-Client-I-DN", "CN=Corp CA"),
    ("X-SSL-Client-Cert", "-----BEGIN%20CERTIFICATE-----"),
    ("X-SSL-Cert", "forged"),
    ("X-Client-Cert", "forged"),
    ("X-Client-Verify", "SUCCESS"),
    ("X-Client-DN", "CN=admin"),
    ("X-Forwarded-Client-Cert", "By=spiffe://a;URI=spiffe://cluster.local/ns/x/sa/admin"),
    ("X-Forwarded-Tls-Client-Cert", "forged"),
    ("X-Forwarded-Tls-Client-Cert-Info", "Subject=CN=admin"),
    ("X-Amzn-Mtls-Clientcert", "forged"),
    ("X-Amzn-Mtls-Clientcert-Subject", "CN=admin"),
    ("X-ARR-ClientCert", "forged"),
    ("Client-Cert", ":Zm9yZ2Vk:"),
    ("Client-Cert-Chain", ":Zm9yZ2Vk:"),
    ("SSL_CLIENT_S_DN", "CN=admin"),
    ("SSL-Client-Verify", "SUCCESS"),
    ("x_ssl_client_s_dn", "CN=admin"),
    ("X.Client.Cert", "forged"),
]


@pytest.mark.parametrize("trusted", [(), ("127.0.0.0/8",)], ids=["untrusted", "trusted-proxy"])
async def test_client_certificate_headers_never_reach_the_upstream(
    upstream: RunningUpstream, trusted: tuple[str, ...]
) -> None:
    headers = [*CLIENT_CERT_SPOOFS, ("Connection", "X-Auth-Request-Jwt")]
    async with start_sidecar(upstream.url, trusted_proxies=trusted) as sidecar:
        response = await send_raw(sidecar.port, request_bytes("GET", "/cert", headers))
    assert response.status == 200
    (seen,) = upstream.seen
    sent = {n.lower() for n, _ in CLIENT_CERT_SPOOFS}
    assert not header_names(seen.headers) & sent
    assert not any("admin" in v or "forged" in v or v == "SUCCESS" for _, v in seen.headers)
    assert len(seen.all("x-auth-request-jwt")) == 1


async def test_forwarding_family_from_trusted_proxy_passes_but_odd_spellings_and_identity_do_not(
    upstream: RunningUpstream,
) -> None:
    headers = [*FORWARDING_SPOOFS, ("X-Forwarded-User", "admin"), ("X-Forwarded-Prefix", "/admin")]
    async with start_sidecar(upstream.url, trusted_proxies=("127.0.0.0/8",)) as sidecar:
        response = await send_raw(sidecar.port, request_bytes("GET", "/xff", headers))
    assert response.status == 200
    (seen,) = upstream.seen
    assert seen.all("x-forwarded-port") == ["443"]
    assert seen.all("x-forwarded-ssl") == ["on"]
    assert seen.all("true-client-ip") == ["10.0.0.1"]
    names = header_names(seen.headers)
    assert not names & {"x_forwarded_for", "x.forwarded.proto", "x_real_ip", "x_request_id"}
    assert not names & {"x-forwarded-user", "x-forwarded-prefix"}
    assert seen.all("x-forwarded-for") == ["127.0.0.1"]


async def test_forwarded_headers_from_trusted_proxy_are_extended(upstream: RunningUpstream) -> None:
    headers = [
        ("X-Forwarded-For", "203.0.113.9, 10.1.2.3"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "public.example"),
    ]
    async with start_sidecar(upstream.url, trusted_proxies=("127.0.0.0/8",)) as sidecar:
        response = await send_raw(sidecar.port, request_bytes("GET", "/xff", headers, host="internal:4180"))
    assert response.status == 200
    (seen,) = upstream.seen
    assert seen.all("x-forwarded-for") == ["203.0.113.9, 10.1.2.3, 127.0.0.1"]
    assert seen.all("x-forwarded-proto") == ["https"]
    assert seen.all("x-forwarded-host") == ["public.example"]


async def test_well_formed_request_id_is_kept_and_returned(
    client: httpx.AsyncClient, upstream: RunningUpstream
) -> None:
    request_id = "abc-123_DEF.456:789"
    response = await client.get("/rid", headers={"X-Request-Id": request_id})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == request_id
    assert upstream.seen[0].all("x-request-id") == [request_id]


async def test_missing_request_id_is_generated_and_returned(
    client: httpx.AsyncClient, upstream: RunningUpstream
) -> None:
    response = await client.get("/rid")
    generated = response.headers["x-request-id"]
    assert UUID.fullmatch(generated)
    assert upstream.seen[0].all("x-request-id") == [generated]


async def test_upstream_request_id_does_not_replace_ours() -> None:
    reply = b"HTTP/1.1 200 OK\r\nX-Request-Id: upstream-made-this-up\r\nContent-Length: 2\r\n\r\nok"
    async with serve_raw(reply) as raw, start_sidecar(raw.url) as sidecar:
        response = await send_raw(sidecar.port, request_bytes("GET", "/", [("X-Request-Id", "mine-1")]))
    assert response.all("x-request-id") == ["mine-1"]


@pytest.mark.parametrize(
    "bad_id",
    [
        "x" * 129,
        "has space",
        "semi;colon",
        "tab\there",
        'quote"d',
        "caf\xe9",
        "<script>",
    ],
    ids=["too-long", "space", "semicolon", "tab", "quote", "latin1", "markup"],
)
async def test_malformed_request_id_is_replaced(
    sidecar: RunningSidecar, upstream: RunningUpstream, bad_id: str
) -> None:
    response = await send_raw(sidecar.port, request_bytes("GET", "/rid", [("X-Request-Id", bad_id)]))
    assert response.status == 200
    returned = response.header("x-request-id")
    assert returned is not None
    assert UUID.fullmatch(returned)
    assert upstream.seen[0].all("x-request-id") == [returned]


async def test_request_id_with_bare_cr_is_refused_before_upstream(
    sidecar: RunningSidecar, upstream: RunningUpstream
) -> None:
    request = b"GET /rid HTTP/1.1\r\nHost: x\r\nX-Request-Id: abc\rX-Auth-Request-User: admin\r\n\r\n"
    response = await send_raw(sidecar.port, request)
    assert response.status == 400
    body = response.json()
    assert set(body) == ERROR_KEYS
    assert body["error"] == "malformed_request"
    assert response.header("x-request-id") == body["request_id"]
    assert UUID.fullmatch(body["request_id"])
    assert await upstream.seen_before_marker(sidecar.port) == []


async def test_request_id_is_returned_on_sidecar_errors(upstream: RunningUpstream) -> None:
    async with sidecar_client(upstream.url, max_body_bytes=10) as client:
        too_large = await client.post("/x", content=b"y" * 11, headers={"X-Request-Id": "req-413"})
        reserved = await client.get("/oauth2/nothing", headers={"X-Request-Id": "req-404"})
        malformed = await client.post("/x", content=b"y" * 11, headers={"X-Request-Id": "bad id"})
    assert assert_error(too_large, 413, "body_too_large")["request_id"] == "req-413"
    assert reserved.status_code == 404
    assert reserved.headers["x-request-id"] == "req-404"
    assert reserved.json()["request_id"] == "req-404"
    assert UUID.fullmatch(assert_error(malformed, 413, "body_too_large")["request_id"])
    assert upstream.seen == []


async def test_request_id_is_returned_on_upstream_errors() -> None:
    async with sidecar_client(f"http://127.0.0.1:{free_port()}") as client:
        response = await client.get("/", headers={"X-Request-Id": "req-502"})
    assert assert_error(response, 502, "upstream_unavailable")["request_id"] == "req-502"


@pytest.mark.parametrize(
    "lengths",
    [("5", "6"), ("5", "5"), ("5, 6", None), ("5,5", None)],
    ids=["differ", "same", "list", "list-same"],
)
async def test_duplicate_content_length_is_refused_before_upstream(
    sidecar: RunningSidecar, upstream: RunningUpstream, lengths: tuple[str, str | None]
) -> None:
    headers = [("Content-Length", value) for value in lengths if value is not None]
    response = await send_raw(sidecar.port, request_bytes("POST", "/cl", headers, b"hello!"))
    assert response.status == 400
    assert response.json()["error"] in ("malformed_request", "bad_content_length")
    assert response.header("connection") == "close"
    assert await upstream.seen_before_marker(sidecar.port) == []


SMUGGLING_HEADS = {
    "cl-te": [("Content-Length", "6"), ("Transfer-Encoding", "chunked")],
    "te-cl": [("Transfer-Encoding", "chunked"), ("Content-Length", "6")],
    "te-gzip-chunked-cl": [("Transfer-Encoding", "gzip, chunked"), ("Content-Length", "6")],
    "te-not-chunked-last": [("Transfer-Encoding", "chunked, identity")],
    "te-unknown": [("Transfer-Encoding", "xchunked")],
    "te-space-before-colon": [("Transfer-Encoding ", "chunked")],
    "cl-negative": [("Content-Length", "-1")],
    "cl-plus": [("Content-Length", "+6")],
    "cl-hex": [("Content-Length", "0x6")],
}


@pytest.mark.parametrize("headers", list(SMUGGLING_HEADS.values()), ids=list(SMUGGLING_HEADS))
async def test_ambiguous_body_framing_is_refused_before_upstream(
    sidecar: RunningSidecar, upstream: RunningUpstream, headers: list[tuple[str, str]]
) -> None:
    body = b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    response = await send_raw(sidecar.port, request_bytes("POST", "/cl", headers, body))
    assert response.status == 400
    assert set(response.json()) == ERROR_KEYS
    assert response.header("connection") == "close"
    assert await upstream.seen_before_marker(sidecar.port) == []


async def test_obs_fold_transfer_encoding_is_refused(
    sidecar: RunningSidecar, upstream: RunningUpstream
) -> None:
    request = (
        b"POST /cl HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding:\r\n chunked\r\n\r\n"
        b"0\r\n\r\nX"
    )
    response = await send_raw(sidecar.port, request)
    assert response.status == 400
    assert await upstream.seen_before_marker(sidecar.port) == []


async def test_bad_chunk_framing_gets_400_and_close(
    sidecar: RunningSidecar, upstream: RunningUpstream
) -> None:
    request = request_bytes(
        "POST", "/chunks", [("Transfer-Encoding", "chunked")], b"zz\r\nhello\r\n0\r\n\r\n"
    )
    response = await send_raw(sidecar.port, request)
    assert response.status == 400
    assert response.json()["error"] == "malformed_request"
    # The head may have been forwarded before the body turned out bad; never a complete request.
    assert all(s.raw_path == "/chunks" for s in await upstream.seen_before_marker(sidecar.port))


async def test_asterisk_form_target_is_refused(sidecar: RunningSidecar, upstream: RunningUpstream) -> None:
    response = await send_raw(sidecar.port, b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert response.status == 400
    assert response.json()["error"] == "bad_request_target"
    assert await upstream.seen_before_marker(sidecar.port) == []


async def test_absolute_form_target_is_forwarded_as_its_path(
    sidecar: RunningSidecar, upstream: RunningUpstream
) -> None:
    request = b"GET http://App.Example/p?x=1 HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n"
    response = await send_raw(sidecar.port, request)
    assert response.status == 200
    (seen,) = upstream.seen
    assert seen.raw_path == "/p?x=1"
    assert seen.all("host") == ["app.example"]


@pytest.mark.parametrize(
    "target",
    [b"http://evil.example/p", b"http://app.example:8080/p", b"http://user@app.example/p", b"http://[::1]/p"],
)
async def test_absolute_form_naming_another_host_is_refused(
    sidecar: RunningSidecar, upstream: RunningUpstream, target: bytes
) -> None:
    """RFC 9112 3.2.2: the target's authority is the host; two different hosts are one too many."""
    request = b"GET " + target + b" HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n"
    response = await send_raw(sidecar.port, request)
    assert response.status == 400
    assert response.json()["error"] == "bad_host"
    assert upstream.seen == []


async def test_two_host_headers_are_refused(sidecar: RunningSidecar, upstream: RunningUpstream) -> None:
    request = b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n"
    response = await send_raw(sidecar.port, request)
    assert response.status == 400
    assert response.json()["error"] == "bad_host"
    assert await upstream.seen_before_marker(sidecar.port) == []


# -- upstream failures -----------------------------------------------------------------------


async def test_upstream_down_gives_502_upstream_unavailable() -> None:
    async with sidecar_client(f"http://127.0.0.1:{free_port()}") as client:
        response = await client.get("/anything")
        post = await client.post("/anything", content=b"data")
    assert_error(response, 502, "upstream_unavailable")
    assert_error(post, 502, "upstream_unavailable")


# The upstream takes far longer than the configured 0.5 s read timeout (and than the clients' own
# 5-10 s timeouts), so only the sidecar's timer can produce these outcomes: no wall-clock window to
# hit, only the lower bound that it did not give up before the configured timeout. The upstream
# notes when the sidecar drops the connection, so the handler never outlives the test.
NEVER_IN_TIME = 60


async def test_slow_upstream_gives_504_within_read_timeout(upstream: RunningUpstream) -> None:
    target = f"/slow?delay={NEVER_IN_TIME}"
    async with sidecar_client(upstream.url, upstream_read_timeout=0.5) as client:
        started = time.monotonic()
        response = await client.get(target)
        elapsed = time.monotonic() - started
        # The connection in doubt is closed, not pooled; the upstream never got to answer.
        assert await upstream.until_abandoned(1) == [target]
    body = assert_error(response, 504, "upstream_timeout")
    assert elapsed >= 0.5
    assert "late" not in json.dumps(body)
    assert upstream.paths() == [target]


async def test_silent_upstream_body_truncates_the_response(upstream: RunningUpstream) -> None:
    target = f"/slow-body?delay={NEVER_IN_TIME}"
    async with start_sidecar(upstream.url, upstream_read_timeout=0.5) as sidecar:
        # send_raw raises unless the sidecar closes the connection within its 5 s wait.
        response = await send_raw(sidecar.port, request_bytes("GET", target))
        async with httpx.AsyncClient(base_url=sidecar.url, timeout=10) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get(target)
        assert await upstream.until_abandoned(2) == [target, target]
    assert response.status == 200
    assert response.body == b"first"
    assert not response.complete  # no last chunk: the client can tell the body was cut short


async def test_upstream_reset_mid_stream_breaks_the_client_read(
    client: httpx.AsyncClient, upstream: RunningUpstream
) -> None:
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        await client.get("/reset")
    # The sidecar itself is fine: the next request on a new connection goes through.
    response = await client.get("/after-reset")
    assert response.status_code == 200
    assert upstream.paths() == ["/reset", "/after-reset"]


async def test_upstream_reset_mid_stream_raw_client_sees_short_body(sidecar: RunningSidecar) -> None:
    response = await send_raw(sidecar.port, request_bytes("GET", "/reset"))
    assert response.status == 200
    assert response.header("content-length") == "1000000"
    assert not response.complete
    assert 0 < len(response.body) < 1_000_000


INVALID_RESPONSES = {
    "bad-content-length": b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\nSECRET-SESSION-abc123",
    "te-and-cl": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nSECRET\r\n0\r\n\r\n"
    ),
    "control-in-value": b"HTTP/1.1 200 OK\r\nX-Session: SECRET\x01\r\nContent-Length: 2\r\n\r\nok",
    "nul-in-value": b"HTTP/1.1 200 OK\r\nX-Session: SECRET\x00x\r\nContent-Length: 2\r\n\r\nok",
    "del-in-value": b"HTTP/1.1 200 OK\r\nX-Session: SECRET\x7f\r\nContent-Length: 2\r\n\r\nok",
    "space-in-name": b"HTTP/1.1 200 OK\r\nX Session: SECRET\r\nContent-Length: 2\r\n\r\nok",
    "switching-protocols": (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\nSECRET"
    ),
    "status-600": b"HTTP/1.1 600 SECRET\r\nContent-Length: 2\r\n\r\nok",
    # A coding the sidecar cannot undo would reach the client as if it were the body itself.
    "te-gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nSECRET",
    "te-gzip-chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n6\r\nSECRET\r\n0\r\n\r\n",
    "te-twice": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"6\r\nSECRET\r\n0\r\n\r\n"
    ),
    "status-999": b"HTTP/1.1 999 SECRET\r\nContent-Length: 2\r\n\r\nok",
    "not-http": b"SECRET-SESSION-abc123\r\n\r\n",
}


@pytest.mark.parametrize("reply", list(INVALID_RESPONSES.values()), ids=list(INVALID_RESPONSES))
async def test_invalid_upstream_response_gives_502_without_upstream_data(reply: bytes) -> None:
    async with serve_raw(reply) as raw, sidecar_client(raw.url) as client:
        response = await client.get("/broken", headers={"X-Request-Id": "req-broken"})
        after = await client.get("/again")  # the client's connection is still good
    body = assert_error(response, 502, "upstream_protocol_error")
    assert body["request_id"] == "req-broken"
    assert "SECRET" not in response.text
    assert "SECRET" not in str(response.headers)
    assert after.status_code == 502


async def test_interim_1xx_answers_from_upstream_are_absorbed() -> None:
    reply = (
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    async with serve_raw(reply) as raw, start_sidecar(raw.url) as sidecar:
        response = await send_raw(sidecar.port, request_bytes("GET", "/hints"))
    assert response.interim == []
    assert response.status == 200
    assert response.body == b"ok"


async def test_upstream_body_until_close_is_rechunked_for_the_client() -> None:
    reply = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody until the upstream closes"
    async with serve_raw(reply) as raw, start_sidecar(raw.url) as sidecar:
        response = await send_raw(sidecar.port, request_bytes("GET", "/eof"))
    assert response.status == 200
    assert response.header("transfer-encoding") == "chunked"
    assert response.complete
    assert response.body == b"body until the upstream closes"


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirects_are_passed_to_the_client_not_followed(
    client: httpx.AsyncClient, upstream: RunningUpstream, status: int
) -> None:
    response = await client.post(f"/status/{status}", content=b"body")
    assert response.status_code == status
    assert response.headers["location"] == "/elsewhere"
    assert upstream.paths() == [f"/status/{status}"]


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_non_idempotent_request_to_resetting_upstream_is_not_retried(
    client: httpx.AsyncClient, upstream: RunningUpstream, method: str
) -> None:
    warm = await client.get("/warm")  # leaves a pooled keep-alive connection behind
    assert warm.status_code == 200
    response = await client.request(method, "/abort", content=b"pay once")
    assert_error(response, 502, "upstream_reset")
    assert upstream.paths() == ["/warm", "/abort"]


async def test_upstream_closing_without_answer_gives_502() -> None:
    async with serve_raw(None) as raw, sidecar_client(raw.url) as client:
        post = await client.post("/x", content=b"once")
        assert raw.connections == 1  # not retried
        get = await client.get("/y")
        # aiohttp retries an idempotent request once (RFC 9112 §9.3.1 allows it), never more.
        assert raw.connections - 1 <= 2
    assert_error(post, 502, "upstream_reset")
    assert_error(get, 502, "upstream_reset")


async def test_keepalive_pooling_reuses_upstream_connections(
    client: httpx.AsyncClient, upstream: RunningUpstream
) -> None:
    for i in range(50):
        response = await client.get(f"/pooled/{i}")
        assert response.status_code == 200
    assert len(upstream.seen) == 50
    assert len(upstream.connections()) <= 2


# -- reserved paths and default deny ---------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/oauth2/anything", "/oauth2/", "/oauth2/start?rd=/admin", "/.well-known/authcar/x", "/%6Fauth2/x"],
)
async def test_reserved_paths_answer_json_404_from_the_sidecar(
    client: httpx.AsyncClient, upstream: RunningUpstream, path: str
) -> None:
    response = await client.get(path)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    assert response.json()["request_id"] == response.headers["x-request-id"]
    assert upstream.seen == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        *[(method, "/oauth2/nothing") for method in ("GET", "POST", "DELETE", "PUT")],
        *[(method, "/.well-known/authcar/jwks.json") for method in ("POST", "DELETE", "PUT")],
    ],
)
async def test_a_reserved_404_is_the_sidecars_error_body_byte_for_byte(
    upstream: RunningUpstream, method: str, path: str
) -> None:
    """Unknown paths and other methods on known ones (Starlette's 404 and 405) answer the same JSON
    404, rendered by authcar.errors: exact body, one request id, no challenge, never cached."""
    async with start_sidecar(upstream.url) as sidecar:
        response = await send_raw(
            sidecar.port,
            request_bytes(method, path, [("X-Request-Id", "trace-42"), ("Content-Length", "0")]),
        )
    assert response.status == 404
    assert response.body == (
        b'{"error":"not_found","error_description":"no such sidecar endpoint","request_id":"trace-42"}'
    )
    assert response.all("x-request-id") == ["trace-42"]
    assert response.header("content-type") == "application/json"
    assert response.header("cache-control") == "no-store"
    assert response.header("www-authenticate") is None
    assert upstream.seen == []


@pytest.mark.parametrize(
    "path", ["/oauth2", "/oauth2x", "/oauth2x/y", "/.well-known/authcarx", "/api/oauth2/x"]
)
async def test_paths_next_to_reserved_ones_are_forwarded(
    client: httpx.AsyncClient, upstream: RunningUpstream, path: str
) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert upstream.paths() == [path]


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE", "OPTIONS"])
async def test_default_deny_answers_401_without_error_attribute(
    upstream: RunningUpstream, method: str
) -> None:
    async with sidecar_client(upstream.url, allow_anonymous=False) as client:
        response = await client.request(method, "/private", content=b"x" if method == "POST" else None)
    assert_error(response, 401, "no_credentials")
    assert response.headers["www-authenticate"] == 'Bearer realm="authcar"'
    assert upstream.seen == []


async def test_sidecar_keeps_serving_after_client_aborts_mid_upload(
    sidecar: RunningSidecar, client: httpx.AsyncClient, upstream: RunningUpstream
) -> None:
    _reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    writer.write(request_bytes("POST", "/upload", [("Content-Length", "1000000")], b"x" * 1000))
    await writer.drain()
    await upstream.until_seen(1)  # the upload is under way
    writer.transport.abort()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    metrics = sidecar.service.sidecar.metrics
    for _ in range(1000):  # a generous bound: it ends within milliseconds
        if metrics.in_flight._value.get() == 0:
            break
        await asyncio.sleep(0.02)
    # Counted as the client's doing (499), not as a failure of the application.
    metrics.flush()
    assert metrics.requests.labels(status="499", decision="error")._value.get() == 1
    response = await client.get("/still-alive")
    assert response.status_code == 200
    assert upstream.paths() == ["/upload", "/still-alive"]


async def test_slow_client_upload_is_not_cut_by_the_upstream_read_timeout(upstream: RunningUpstream) -> None:
    # The read timeout is for the application's silence, not for a client that uploads slowly
    # (pauses longer than it; the timeout itself long enough for the answer on a loaded machine).
    async def trickle() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"t" * 1000
            await asyncio.sleep(1.2)

    async with sidecar_client(upstream.url, upstream_read_timeout=1) as client:
        response = await client.post("/upload", content=trickle())
    assert response.status_code == 200
    assert response.json()["bytes"] == 3000


async def test_concurrent_requests_are_all_answered_correctly(
    client: httpx.AsyncClient, upstream: RunningUpstream
) -> None:
    bodies = [os.urandom(1000 + i * 97) for i in range(100)]
    responses = await asyncio.gather(*(client.post(f"/c/{i}", content=b) for i, b in enumerate(bodies)))
    for i, (body, response) in enumerate(zip(bodies, responses, strict=True)):
        answer = echoed(response)
        assert answer["raw_path"] == f"/c/{i}"
        assert answer["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert len(upstream.seen) == 100


@pytest.mark.parametrize("method", ["TRACE", "CONNECT"])
async def test_trace_and_connect_are_refused_before_upstream(
    sidecar: RunningSidecar, upstream: RunningUpstream, method: str
) -> None:
    # TRACE would echo the identity headers the sidecar adds back to the caller (cross-site tracing).
    target = "127.0.0.1:443" if method == "CONNECT" else "/echo"
    response = await send_raw(sidecar.port, request_bytes(method, target))
    assert response.status in (400, 405)
    assert set(response.json()) == ERROR_KEYS
    if method == "TRACE":
        assert response.status == 405
        assert response.json()["error"] == "method_not_allowed"
    assert await upstream.seen_before_marker(sidecar.port) == []


async def test_a_deliberate_mid_stream_abort_is_not_logged_as_an_error(
    sidecar: RunningSidecar, upstream: RunningUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    async with httpx.AsyncClient(base_url=sidecar.url, timeout=5) as client:
        with pytest.raises(httpx.HTTPError):
            await client.get("/reset")
        assert (await client.get("/after-reset")).status_code == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and "ASGI callable" in r.getMessage()]


async def test_a_bug_in_the_gate_is_a_502_and_a_flood_of_them_logs_one_traceback(
    sidecar: RunningSidecar, upstream: RunningUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    """Stands in for a bug after the policy allowed: the answer is a JSON 502, nothing is forwarded."""

    def broken(*_: object) -> list[tuple[bytes, bytes]]:
        raise RuntimeError("a bug")

    sidecar.service.sidecar.identity_headers.headers_for = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="authcar.gate"):
        answers = [await send_raw(sidecar.port, request_bytes("GET", f"/bug/{n}", [])) for n in range(5)]
    assert [a.status for a in answers] == [502] * 5
    assert {a.json()["error"] for a in answers} == {"internal_error"}
    assert all("a bug" not in a.body.decode() for a in answers)
    assert upstream.seen == []
    logged = [r for r in caplog.records if r.getMessage() == "unhandled error in the gate"]
    assert len(logged) == 1
    assert logged[0].exc_info is not None


async def test_a_pool_held_busy_is_503_pool_exhausted_not_a_connect_timeout(
    upstream: RunningUpstream,
) -> None:
    """The sidecar's own limit, not the application's failure: 503 with Retry-After, never queued forever."""
    async with sidecar_client(
        upstream.url, upstream_max_connections=1, upstream_connect_timeout=0.5
    ) as client:
        held = asyncio.create_task(client.get("/slow", params={"delay": "60"}))
        await upstream.until_seen(1)
        response = await client.get("/next")
        assert_error(response, 503, "upstream_pool_exhausted")
        assert response.headers["retry-after"] == "1"
        assert upstream.paths() == ["/slow?delay=60"]  # the refused request never reached the app
        held.cancel()
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await held
