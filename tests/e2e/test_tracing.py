"""OpenTelemetry traces from a real sidecar process to a real OTLP receiver (tests/support/
otlp_receiver.py decodes what arrives with opentelemetry-proto), over HTTP and gRPC:

- one SERVER span per request that continues the client's `traceparent`, with children for
  authentication (and, inside it, the introspection call to the provider), the policy decision
  (rule and policy version) and the exchange with the application;
- the application gets a `traceparent` naming that exchange's span, in the client's trace, and the
  client's own trace headers never pass unchanged;
- the access line carries the trace id; a refused request has no upstream span and reaches nothing;
- a collector that does not answer slows no request, and a full export queue drops spans with a
  metric.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.faults.misbehaving import MisbehavingUpstream, misbehaving_upstream
from tests.idp import IdPClient, idp_process
from tests.support.otlp_receiver import Receiver, otlp_grpc_receiver, otlp_http_receiver
from tests.support.process import SidecarProcess, start_sidecar_process

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
TRACEPARENT_FORMAT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")


@pytest.fixture(scope="module")
def idp() -> Iterator[IdPClient]:
    with idp_process() as running:
        yield running.client


@pytest.fixture(scope="module")
def upstream() -> Iterator[MisbehavingUpstream]:
    with misbehaving_upstream() as running:
        yield running


def sidecar_env(idp: IdPClient, upstream: MisbehavingUpstream, endpoint: str, **extra: str) -> dict[str, str]:
    return {
        "AUTHCAR_UPSTREAM": upstream.url,
        "AUTHCAR_OIDC_ISSUER_URL": idp.issuer,
        "AUTHCAR_OIDC_AUDIENCE": "api",
        "AUTHCAR_OIDC_CLIENT_ID": "authcar",
        "AUTHCAR_OIDC_CLIENT_SECRET": "authcar-secret",
        "AUTHCAR_SHUTDOWN_GRACE_PERIOD": "1",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "50",  # ms: the test's spans leave soon, not after 5 s
        **extra,
    }


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with otlp_http_receiver() as running:
        yield running


@pytest.fixture(scope="module")
def sidecar(
    tmp_path_factory: pytest.TempPathFactory,
    idp: IdPClient,
    upstream: MisbehavingUpstream,
    receiver: Receiver,
) -> Iterator[SidecarProcess]:
    running = start_sidecar_process(
        tmp_path_factory.mktemp("tracing"), sidecar_env(idp, upstream, receiver.url)
    )
    try:
        yield running
    finally:
        running.stop()


def access_line(sidecar: SidecarProcess, request_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in sidecar.log_path.read_text().splitlines():
            if request_id in line and line.startswith("{"):
                entry = json.loads(line)
                if entry.get("request_id") == request_id and "event" not in entry:
                    return dict(entry)
        time.sleep(0.02)
    raise AssertionError(f"no access line for {request_id}")


def test_a_request_continues_the_clients_trace_through_every_stage_to_the_application(
    sidecar: SidecarProcess, idp: IdPClient, upstream: MisbehavingUpstream, receiver: Receiver
) -> None:
    upstream.requests.clear()
    headers = {
        "Authorization": f"Bearer {idp.mint()}",
        "traceparent": TRACEPARENT,
        "tracestate": "vendor=opaque",
        "X-Request-Id": "trace-1",
    }
    answer = httpx.get(sidecar.url + "/books/./7?sort=title", headers=headers, timeout=10)
    assert answer.status_code == 200
    spans = receiver.wait_for(lambda s: len([x for x in s if x.trace_id == CLIENT_TRACE]) >= 4)
    mine = [span for span in spans if span.trace_id == CLIENT_TRACE]
    [server] = [s for s in mine if s.kind == "SERVER"]
    assert server.parent_span_id == CLIENT_SPAN
    assert server.name == "GET"
    assert server.service == "authcar"
    assert server.attributes["http.request.method"] == "GET"
    assert server.attributes["url.path"] == "/books/7"  # the normalised path that was checked
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["authcar.decision"] == "allow"
    assert server.attributes["authcar.request_id"] == "trace-1"
    children = {s.name: s for s in mine if s.parent_span_id == server.span_id}
    assert set(children) == {"authenticate", "authorize", "GET"}
    assert children["authenticate"].attributes["authcar.auth.source"] == "jwt"
    assert children["authorize"].attributes["authcar.decision"] == "allow"
    assert children["authorize"].attributes["authcar.policy.version"]
    exchange = children["GET"]
    assert exchange.kind == "CLIENT"
    assert exchange.attributes["url.full"] == upstream.url + "/books/7"
    assert exchange.attributes["http.response.status_code"] == 200
    for child in children.values():
        assert server.start_ns <= child.start_ns <= child.end_ns <= server.end_ns
    # The application is told the trace, as a child of the exchange's span: once, ours.
    [request] = upstream.requests
    [traceparent] = [v for k, v in request.headers if k.lower() == "traceparent"]
    match = TRACEPARENT_FORMAT.fullmatch(traceparent)
    assert match is not None
    assert match.groups() == (CLIENT_TRACE, exchange.span_id)
    assert [v for k, v in request.headers if k.lower() == "tracestate"] == ["vendor=opaque"]
    assert access_line(sidecar, "trace-1")["trace_id"] == CLIENT_TRACE


def test_without_a_traceparent_a_new_trace_begins_and_reaches_the_application(
    sidecar: SidecarProcess, idp: IdPClient, upstream: MisbehavingUpstream, receiver: Receiver
) -> None:
    upstream.requests.clear()
    headers = {"Authorization": f"Bearer {idp.mint()}", "X-Request-Id": "trace-2"}
    assert httpx.get(sidecar.url + "/x", headers=headers, timeout=10).status_code == 200
    [request] = upstream.requests
    [traceparent] = [v for k, v in request.headers if k.lower() == "traceparent"]
    match = TRACEPARENT_FORMAT.fullmatch(traceparent)
    assert match is not None
    trace_id = match.group(1)
    spans = receiver.wait_for(lambda s: any(x.trace_id == trace_id and x.kind == "SERVER" for x in s))
    [server] = [s for s in spans if s.trace_id == trace_id and s.kind == "SERVER"]
    assert server.parent_span_id == ""
    assert access_line(sidecar, "trace-2")["trace_id"] == trace_id


@pytest.mark.parametrize(
    "traceparent", ["garbage", f"00-{'0' * 32}-{CLIENT_SPAN}-01", "ff-" + TRACEPARENT[3:]]
)
def test_a_malformed_traceparent_starts_a_new_trace_and_never_reaches_the_application(
    sidecar: SidecarProcess, idp: IdPClient, upstream: MisbehavingUpstream, traceparent: str
) -> None:
    upstream.requests.clear()
    headers = {"Authorization": f"Bearer {idp.mint()}", "traceparent": traceparent}
    assert httpx.get(sidecar.url + "/x", headers=headers, timeout=10).status_code == 200
    [request] = upstream.requests
    [forwarded] = [v for k, v in request.headers if k.lower() == "traceparent"]
    assert forwarded != traceparent
    assert TRACEPARENT_FORMAT.fullmatch(forwarded)


def test_a_refused_request_has_no_upstream_span_and_reaches_nothing(
    sidecar: SidecarProcess, upstream: MisbehavingUpstream, receiver: Receiver
) -> None:
    upstream.requests.clear()
    trace_id = "a" * 32
    answer = httpx.get(
        sidecar.url + "/x", headers={"traceparent": f"00-{trace_id}-{CLIENT_SPAN}-01"}, timeout=10
    )
    assert answer.status_code == 401
    spans = receiver.wait_for(lambda s: any(x.trace_id == trace_id and x.kind == "SERVER" for x in s))
    mine = [s for s in spans if s.trace_id == trace_id]
    [server] = [s for s in mine if s.kind == "SERVER"]
    assert server.attributes["http.response.status_code"] == 401
    assert server.status != "ERROR"  # a 4xx is the client's, not the server's failure
    assert not [s for s in mine if s.kind == "CLIENT"]
    assert upstream.requests == []


def test_an_introspection_call_is_a_client_span_inside_authentication(
    sidecar: SidecarProcess, idp: IdPClient, receiver: Receiver
) -> None:
    trace_id = "b" * 32
    headers = {
        "Authorization": f"Bearer {idp.mint_opaque()}",
        "traceparent": f"00-{trace_id}-{CLIENT_SPAN}-01",
    }
    assert httpx.get(sidecar.url + "/x", headers=headers, timeout=10).status_code == 200
    spans = receiver.wait_for(lambda s: len([x for x in s if x.trace_id == trace_id]) >= 5)
    mine = {s.span_id: s for s in spans if s.trace_id == trace_id}
    [authenticate] = [s for s in mine.values() if s.name == "authenticate"]
    [call] = [s for s in mine.values() if s.parent_span_id == authenticate.span_id]
    assert call.kind == "CLIENT"
    assert call.name == "POST"
    assert call.attributes["url.full"].endswith("/token/introspect")
    assert call.attributes["http.response.status_code"] == 200


def test_spans_go_over_grpc_when_asked(tmp_path: Path, idp: IdPClient, upstream: MisbehavingUpstream) -> None:
    with otlp_grpc_receiver() as receiver:
        env = sidecar_env(idp, upstream, receiver.url, OTEL_EXPORTER_OTLP_PROTOCOL="grpc")
        sidecar = start_sidecar_process(tmp_path, env)
        try:
            headers = {"Authorization": f"Bearer {idp.mint()}", "traceparent": TRACEPARENT}
            assert httpx.get(sidecar.url + "/x", headers=headers, timeout=10).status_code == 200
            spans = receiver.wait_for(lambda s: any(x.kind == "SERVER" for x in s))
        finally:
            sidecar.stop()
    [server] = [s for s in spans if s.kind == "SERVER"]
    assert server.trace_id == CLIENT_TRACE


def test_a_collector_that_never_answers_slows_nothing_and_a_full_queue_is_counted(
    tmp_path: Path, idp: IdPClient, upstream: MisbehavingUpstream
) -> None:
    # A listener that accepts and never answers: the exporter's thread waits out its own timeout.
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        env = sidecar_env(
            idp, upstream, endpoint, OTEL_BSP_MAX_QUEUE_SIZE="4", OTEL_BSP_MAX_EXPORT_BATCH_SIZE="4"
        )
        sidecar = start_sidecar_process(tmp_path, env)
        try:
            token = idp.mint()
            with httpx.Client(timeout=10) as http:
                for _ in range(30):  # four spans each: the queue of four overflows at once
                    assert (
                        http.get(sidecar.url + "/x", headers={"Authorization": f"Bearer {token}"}).status_code
                        == 200
                    )
            metrics = httpx.get(sidecar.admin_url + "/metrics", timeout=10).text
        finally:
            sidecar.stop()
    [dropped] = [
        line for line in metrics.splitlines() if line.startswith("authcar_trace_spans_dropped_total")
    ]
    assert float(dropped.split()[-1]) > 0
    # The SDK's queue warnings ("Queue full, dropping Span." or, in older releases, "Queue is full,
    # likely spans will be dropped.") come once, or not at all: never one per dropped span.
    log = sidecar.log_path.read_text()
    assert log.count("Queue") <= 2


def test_an_unsampled_request_exports_nothing_and_the_application_still_learns_the_trace(
    tmp_path: Path, idp: IdPClient, upstream: MisbehavingUpstream
) -> None:
    with otlp_http_receiver() as receiver:
        env = sidecar_env(idp, upstream, receiver.url, OTEL_TRACES_SAMPLER="always_off")
        sidecar = start_sidecar_process(tmp_path, env)
        try:
            upstream.requests.clear()
            headers = {"Authorization": f"Bearer {idp.mint()}", "traceparent": TRACEPARENT}
            assert httpx.get(sidecar.url + "/x", headers=headers, timeout=10).status_code == 200
            [request] = upstream.requests
            [forwarded] = [v for k, v in request.headers if k.lower() == "traceparent"]
            # The same trace, not sampled: the application's own tracer can follow the decision.
            match = TRACEPARENT_FORMAT.fullmatch(forwarded)
            assert match is not None
            assert match.group(1) == CLIENT_TRACE
            assert forwarded.endswith("-00")
        finally:
            sidecar.stop()  # flushes whatever was queued
        assert receiver.spans == []


def test_a_clients_malformed_tracestate_is_dropped_without_a_log_line_per_request(
    sidecar: SidecarProcess, idp: IdPClient, upstream: MisbehavingUpstream
) -> None:
    # The SDK warns about a bad tracestate member quoting it (and about too many members, too long a
    # header): without a check of our own, any client could write a line of its choosing into the
    # sidecar's log with every request.
    upstream.requests.clear()
    marker = "client-chosen-log-text"
    token = idp.mint()

    def sdk_lines() -> list[str]:
        return [line for line in sidecar.log_path.read_text().splitlines() if '"opentelemetry' in line]

    before = len(sdk_lines())
    bent = [
        f"ok=1,{marker} is not a member",
        ",".join(f"k{index}=v" for index in range(33)),
        "k="
        + "v" * 255
        + ","
        + ",".join(f"k{index}=" + "v" * 250 for index in range(31))
        + ",x="
        + "y" * 250,
        "dup=1,dup=2",
    ]
    for index in range(20):
        headers = {
            "Authorization": f"Bearer {token}",
            "traceparent": TRACEPARENT if index % 5 else TRACEPARENT + "-" + "x" * 600,
            "tracestate": bent[index % len(bent)],
        }
        assert httpx.get(sidecar.url + "/x", headers=headers, timeout=10).status_code == 200
    assert len(upstream.requests) == 20
    for request in upstream.requests:
        # Dropped whole, as the SDK does: the application gets our traceparent and no tracestate.
        assert [v for k, v in request.headers if k.lower() == "tracestate"] == []
        assert len([v for k, v in request.headers if k.lower() == "traceparent"]) == 1
    time.sleep(0.2)
    assert sdk_lines()[before:] == []
