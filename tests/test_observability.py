"""Admin listener, metrics and logs, as an operator reads them."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re

import httpx

from authcar.observe import AccessEntry, AccessLog, JsonFormatter, TextFormatter
from tests.support.sidecar import RunningSidecar, start_sidecar
from tests.support.upstream_app import RunningUpstream


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (labels in any order)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if found == labels:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}{labels}")


async def test_healthz_and_readyz_report_each_dependency(sidecar: RunningSidecar) -> None:
    async with httpx.AsyncClient(base_url=sidecar.admin_url) as admin:
        assert (await admin.get("/healthz")).json() == {"status": "ok"}
        ready = await admin.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"]["upstream"] == {"ok": True}
        assert ready.json()["checks"]["config"] == {"ok": True}
        assert (await admin.get("/nothing")).status_code == 404


async def test_readyz_fails_with_a_reason_when_the_upstream_is_down() -> None:
    async with start_sidecar("http://127.0.0.1:9") as sidecar, httpx.AsyncClient() as client:
        ready = await client.get(sidecar.admin_url + "/readyz")
        assert ready.status_code == 503
        assert ready.json()["ready"] is False
        assert "cannot connect" in ready.json()["checks"]["upstream"]["detail"]
        # Liveness does not depend on the upstream: a restart would not fix it.
        assert (await client.get(sidecar.admin_url + "/healthz")).status_code == 200


async def test_metrics_count_requests_errors_and_latency(upstream: RunningUpstream) -> None:
    async with (
        # Long enough that the three answers never time out on a loaded machine; /slow never answers.
        start_sidecar(upstream.url, upstream_read_timeout=2) as sidecar,
        httpx.AsyncClient() as client,
    ):
        for _ in range(3):
            assert (await client.get(sidecar.url + "/ok")).status_code == 200
        # Far beyond the read timeout: a 504 however loaded the machine (the upstream stops waiting
        # when the sidecar drops the connection).
        assert (await client.get(sidecar.url + "/slow", params={"delay": "60"})).status_code == 504
        text = (await client.get(sidecar.admin_url + "/metrics")).text
    assert metric(text, "authcar_requests_total", decision="anonymous", status="200") == 3
    assert metric(text, "authcar_requests_total", decision="error", status="504") == 1
    assert metric(text, "authcar_upstream_errors_total", kind="read_timeout") == 1
    assert metric(text, "authcar_request_duration_seconds_count") == 4
    assert metric(text, "authcar_upstream_response_seconds_count") == 3
    assert metric(text, "authcar_in_flight_requests") == 0
    assert metric(text, "authcar_build_info", version="0.1.0") == 1


async def test_unauthenticated_requests_count_as_denied(upstream: RunningUpstream) -> None:
    async with start_sidecar(upstream.url, allow_anonymous=False) as sidecar, httpx.AsyncClient() as client:
        assert (await client.get(sidecar.url + "/private")).status_code == 401
        text = (await client.get(sidecar.admin_url + "/metrics")).text
    assert metric(text, "authcar_requests_total", decision="deny", status="401") == 1
    assert upstream.seen == []


async def test_access_log_has_one_json_line_per_request(upstream: RunningUpstream) -> None:
    stream = io.StringIO()
    async with start_sidecar(upstream.url, access_log=True) as sidecar:
        sidecar.service.sidecar.access_log.stream = stream
        async with httpx.AsyncClient(base_url=sidecar.url) as client:
            ok = await client.post("/items?token=secret", content=b"12345", headers={"X-Request-Id": "req-1"})
            missing = await client.get("/status/404")
        sidecar.service.sidecar.access_log.flush()
    assert ok.status_code == 200
    assert missing.status_code == 404
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert first["request_id"] == "req-1"
    assert first["method"] == "POST"
    assert first["path"] == "/items"  # the query string may carry secrets: never logged
    assert first["status"] == 200
    assert first["bytes_in"] == 5
    assert first["bytes_out"] > 0
    assert first["client"] == "127.0.0.1"
    assert first["decision"] == "anonymous"
    assert first["duration_ms"] >= first["upstream_ms"] > 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert lines[1]["status"] == 404


def entry(**overrides: object) -> AccessEntry:
    fields: dict[str, object] = {
        "time": 1795348800.25,  # 2026-11-22T12:00:00.250Z
        "request_id": "abc",
        "client": "10.0.0.1",
        "method": "GET",
        "path": "/x",
        "status": 200,
        "bytes_in": 0,
        "bytes_out": 12,
        "duration": 0.0015,
        "upstream": 0.001,
        "decision": "allow",
        "subject": "",
        "upstream_error": "",
        "client_cert": "",
    }
    fields.update(overrides)
    return AccessEntry(**fields)  # type: ignore[arg-type]


def test_text_access_log_is_one_readable_line() -> None:
    stream = io.StringIO()
    AccessLog(True, "text", stream).write(entry(subject="alice"))
    assert stream.getvalue() == (
        "2026-11-22T12:00:00.250Z 10.0.0.1 GET /x 200 12B 1.500ms id=abc decision=allow subject=alice\n"
    )


def test_json_access_lines_stay_valid_json_whatever_the_path_or_subject() -> None:
    stream = io.StringIO()
    hostile = '/a"b\\c\u2028\x00%22\n'
    AccessLog(True, "json", stream).write(
        entry(path=hostile, subject='bob","admin":true', client_cert='CN="x"', upstream_error="reset")
    )
    line = json.loads(stream.getvalue())
    assert line["path"] == hostile
    assert line["subject"] == 'bob","admin":true'
    assert "admin" not in line
    assert line["client_cert"] == 'CN="x"'
    assert line["upstream_error"] == "reset"
    assert line["duration_ms"] == 1.5
    assert line["time"] == "2026-11-22T12:00:00.250Z"


def test_the_peer_is_logged_only_when_a_trusted_proxy_named_another_client() -> None:
    stream = io.StringIO()
    log = AccessLog(True, "text", stream)
    log.write(entry(client="203.0.113.9", peer="10.0.0.1"))
    log.write(entry())
    behind, direct = stream.getvalue().splitlines()
    assert behind.startswith("2026-11-22T12:00:00.250Z 203.0.113.9 GET /x ")
    assert behind.endswith(" peer=10.0.0.1")
    assert "peer=" not in direct
    stream = io.StringIO()
    log = AccessLog(True, "json", stream)
    log.write(entry(client="203.0.113.9", peer="10.0.0.1"))
    log.write(entry())
    behind, direct = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (behind["client"], behind["peer"]) == ("203.0.113.9", "10.0.0.1")
    assert "peer" not in direct


async def test_the_access_log_names_the_client_a_trusted_proxy_forwarded_for(
    upstream: RunningUpstream,
) -> None:
    stream = io.StringIO()
    async with start_sidecar(upstream.url, access_log=True, trusted_proxies=("127.0.0.0/8",)) as sidecar:
        sidecar.service.sidecar.access_log.stream = stream
        async with httpx.AsyncClient(base_url=sidecar.url) as client:
            await client.get("/via-proxy", headers={"X-Forwarded-For": "203.0.113.9, 127.0.0.2"})
            await client.get("/direct")
        sidecar.service.sidecar.access_log.flush()
    via_proxy, direct = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (via_proxy["client"], via_proxy["peer"]) == ("203.0.113.9", "127.0.0.1")
    assert direct["client"] == "127.0.0.1"
    assert "peer" not in direct


def test_event_logs_are_structured() -> None:
    record = logging.LogRecord("authcar", logging.INFO, __file__, 1, "tls_reloaded", None, None)
    record.subject = "CN=svc"
    entry = json.loads(JsonFormatter().format(record))
    assert entry["event"] == "tls_reloaded"
    assert entry["level"] == "info"
    assert entry["subject"] == "CN=svc"
    assert TextFormatter().format(record).endswith("authcar: tls_reloaded subject=CN=svc")


async def test_a_client_leaving_mid_upload_is_not_an_upstream_error(upstream: RunningUpstream) -> None:
    async with start_sidecar(upstream.url) as sidecar, httpx.AsyncClient() as client:
        _, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
        writer.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000)
        await writer.drain()
        await upstream.until_seen(1)  # the upload is under way
        writer.close()  # gone, 95 kB short
        for _ in range(400):  # a generous bound: it is counted within milliseconds
            text = (await client.get(sidecar.admin_url + "/metrics")).text
            if 'status="499"' in text:
                break
            await asyncio.sleep(0.05)
    assert metric(text, "authcar_requests_total", decision="error", status="499") == 1
    assert "authcar_upstream_errors_total{" not in text


async def test_request_counts_reach_the_counters_without_a_scrape(
    sidecar: RunningSidecar, client: httpx.AsyncClient
) -> None:
    """Per-request counts are batched; the periodic flush adds them even if nobody scrapes."""
    for _ in range(3):
        assert (await client.get("/counted")).status_code == 200
    counter = sidecar.service.sidecar.metrics.requests.labels(status="200", decision="anonymous")
    for _ in range(100):
        if counter._value.get() >= 3:
            break
        await asyncio.sleep(0.05)
    assert counter._value.get() == 3


async def test_answers_the_sidecar_gives_itself_log_the_bytes_they_send(upstream: RunningUpstream) -> None:
    stream = io.StringIO()
    async with start_sidecar(upstream.url, access_log=True) as sidecar:
        sidecar.service.sidecar.access_log.stream = stream
        async with httpx.AsyncClient(base_url=sidecar.url) as client:
            jwks = await client.get("/.well-known/authcar/jwks.json")
            reserved = await client.get("/.well-known/authcar/nothing-here")
        sidecar.service.sidecar.access_log.flush()
    assert (jwks.status_code, reserved.status_code) == (200, 404)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["status"], line["decision"]) for line in lines] == [(200, "sidecar"), (404, "sidecar")]
    assert [line["bytes_out"] for line in lines] == [len(jwks.content), len(reserved.content)]
    assert upstream.seen == []
