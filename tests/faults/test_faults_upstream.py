"""The application misbehaves under a running sidecar: refuses, hangs, resets, sends broken answers.

One sidecar process (authcar run, a token from a static JWKS) sits in front of one MisbehavingUpstream
for the whole module; each test switches the upstream into a fault, checks the documented answer
(README's error table, the Upstream* types in authcar/errors.py), that no POST was sent twice and
no error leaks the caller's identity, then switches the fault off and checks the *same* process
serves again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.faults.misbehaving import Behaviour, MisbehavingUpstream, misbehaving_upstream
from tests.faults.support import (
    Caller,
    assert_error,
    assert_no_identity,
    caller_of,
    readiness,
    send,
    tracebacks,
)
from tests.idp import IdP
from tests.support.process import SidecarProcess, start_sidecar_process

READ_TIMEOUT = "0.5"  # short, so a hanging upstream is answered soon; waits stay generous


@dataclass
class Stack:
    upstream: MisbehavingUpstream
    sidecar: SidecarProcess
    caller: Caller
    pid: int
    events_before: int = 0  # events logged before the current test began


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("upstream-faults")
    idp = IdP("http://127.0.0.1:9")  # only mints: the sidecar reads its keys from a file
    jwks = directory / "jwks.json"
    jwks.write_text(json.dumps(idp.keys))
    with misbehaving_upstream() as upstream:
        env = {
            "AUTHCAR_UPSTREAM": upstream.url,
            "AUTHCAR_OIDC_ISSUER_URL": idp.issuer,
            "AUTHCAR_OIDC_AUDIENCE": "api",
            "AUTHCAR_OIDC_JWKS_FILE": str(jwks),
            "AUTHCAR_UPSTREAM_READ_TIMEOUT": READ_TIMEOUT,
            "AUTHCAR_UPSTREAM_CONNECT_TIMEOUT": "1",
            "AUTHCAR_SHUTDOWN_GRACE_PERIOD": "1",
        }
        sidecar = start_sidecar_process(directory, env)
        try:
            yield Stack(upstream, sidecar, caller_of(idp, expires_in=3600), sidecar.process.pid)
        finally:
            sidecar.stop()


@pytest.fixture
def faulty(stack: Stack) -> Iterator[Stack]:
    stack.upstream.behave("ok")
    stack.upstream.requests.clear()
    stack.events_before = len(stack.sidecar.events())
    yield stack
    stack.upstream.behave("ok")


async def recovered(stack: Stack) -> None:
    """The fault is gone: the same process answers from the application again, and is ready."""
    stack.upstream.behave("ok")
    stack.upstream.requests.clear()
    for method in ("GET", "POST"):
        answer = await send(stack.sidecar.port, method, "/after", token=stack.caller.token, body=b"{}")
        assert answer.status == 200, (answer.status, answer.body[:200])
        assert json.loads(answer.body)["ok"] is True
        assert answer.header("x-smuggled") is None
    assert stack.upstream.methods() == ["GET", "POST"]
    assert stack.sidecar.process.poll() is None
    assert stack.sidecar.process.pid == stack.pid
    status, _ = await readiness(stack.sidecar)
    assert status == 200
    assert tracebacks(stack.sidecar, since=stack.events_before) == []


# behaviour -> (status, code) of the error the client gets before any answer has started
ERRORS: dict[Behaviour, tuple[int, str]] = {
    "refuse": (502, "upstream_unavailable"),
    "hang": (504, "upstream_timeout"),
    "close_before_answer": (502, "upstream_reset"),
    "malformed_status": (502, "upstream_protocol_error"),
    "invalid_header_bytes": (502, "upstream_protocol_error"),
}


@pytest.mark.parametrize("behaviour", list(ERRORS))
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_broken_exchange_gets_the_documented_error_and_posts_are_never_retried(
    faulty: Stack, behaviour: Behaviour, method: str
) -> None:
    faulty.upstream.behave(behaviour)
    status, code = ERRORS[behaviour]
    body = b'{"order": 1}' if method == "POST" else b""
    answer = await send(faulty.sidecar.port, method, "/orders", token=faulty.caller.token, body=body)
    assert_error(answer, status, code, faulty.caller)
    seen = faulty.upstream.methods()
    if behaviour == "refuse":
        assert seen == []
    elif method == "POST":
        assert seen == ["POST"]  # sent once: a POST is never repeated, whatever went wrong
    else:
        assert set(seen) == {"GET"}
        assert len(seen) <= 2
    await recovered(faulty)


async def test_a_refusing_application_fails_readiness_until_it_listens_again(faulty: Stack) -> None:
    faulty.upstream.behave("refuse")
    status, body = await readiness(faulty.sidecar)
    assert status == 503
    assert body["checks"]["upstream"]["ok"] is False  # type: ignore[index]
    await recovered(faulty)


async def test_a_reset_in_the_middle_of_the_request_body_is_502_and_not_retried(faulty: Stack) -> None:
    faulty.upstream.behave("reset_mid_request")
    upload = bytes(1024 * 1024)  # larger than any buffer in between: still being sent when reset
    answer = await send(faulty.sidecar.port, "POST", "/upload", token=faulty.caller.token, body=upload)
    assert_error(answer, 502, "upstream_reset", faulty.caller)
    assert faulty.upstream.methods() == ["POST"]
    assert not faulty.upstream.requests[0].complete
    await recovered(faulty)


@pytest.mark.parametrize("behaviour", ["reset_mid_response", "short_body"])
async def test_an_answer_cut_short_reaches_the_client_cut_short(faulty: Stack, behaviour: Behaviour) -> None:
    # The status line is out when the upstream fails: the only honest signal is an incomplete body.
    faulty.upstream.behave(behaviour)
    for method in ("GET", "POST"):
        faulty.upstream.requests.clear()
        answer = await send(faulty.sidecar.port, method, "/report", token=faulty.caller.token, body=b"x")
        assert answer.status == 200
        assert not answer.complete, answer.body[:100]
        assert_no_identity(answer, faulty.caller)
        assert faulty.upstream.methods() == [method]
    await recovered(faulty)


@pytest.mark.parametrize("behaviour", ["oversized_head", "too_many_fields"])
async def test_an_oversized_response_head_is_502(faulty: Stack, behaviour: Behaviour) -> None:
    # 1 MiB of fields, over AUTHCAR_UPSTREAM_MAX_HEADER_BYTES (64 KiB); or 5,000 fields, over 1,000
    faulty.upstream.behave(behaviour)
    answer = await send(faulty.sidecar.port, "POST", "/big-head", token=faulty.caller.token, body=b"x")
    assert_error(answer, 502, "upstream_header_too_large", faulty.caller)
    assert faulty.upstream.methods() == ["POST"]
    await recovered(faulty)


async def test_bytes_after_the_declared_length_never_answer_another_request(faulty: Stack) -> None:
    # The application answers with more bytes than its Content-Length: the rest looks like a second
    # response. It must never be taken as the answer to anyone's next request on that connection.
    faulty.upstream.behave("long_body")
    first = await send(faulty.sidecar.port, "GET", "/first", token=faulty.caller.token)
    assert first.status == 200
    assert first.body == b"ok"
    assert first.header("x-smuggled") is None
    await recovered(faulty)


WEBSOCKET_HEADERS = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
]


@pytest.mark.parametrize(
    ("behaviour", "status", "code"),
    [
        ("refuse", 502, "upstream_unavailable"),
        ("close_before_answer", 502, "upstream_reset"),
        ("malformed_status", 502, "upstream_protocol_error"),
        ("hang", 504, "upstream_timeout"),
    ],
)
async def test_a_websocket_handshake_to_a_broken_application_gets_the_documented_error(
    faulty: Stack, behaviour: Behaviour, status: int, code: str
) -> None:
    faulty.upstream.behave(behaviour)
    answer = await send(
        faulty.sidecar.port, "GET", "/ws", token=faulty.caller.token, headers=WEBSOCKET_HEADERS, wait=30
    )
    assert_error(answer, status, code, faulty.caller)
    await recovered(faulty)
