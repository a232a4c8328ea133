"""The security corpus: every case in tests/security/payloads/, sent byte for byte through the real sidecar.

One sidecar process (with a real identity provider process) guards the recording upstream for the
whole module. For each case:
1. its bytes are written on a new connection and the answers read (tests/security/wire.py);
2. each answer has the case's status, and an error answer is the JSON error with the case's code;
3. once the upstream is quiet, it received exactly what the case says: nothing, or that many
   requests, each passing every invariant in tests/security/expect.py and the case's own checks,
   with no leftover bytes and no parse error on any connection;
4. the sidecar is still healthy: a valid request on a new connection is answered by the
   application with *its own* echo (no answer left over from the case), /healthz is 200, and the
   sidecar logged no traceback.
The protocol cases run twice: against an upstream that closes after each answer (every upstream
connection carries exactly one exchange, so "quiet" is exact), and against one that keeps
connections alive, so that the sidecar's pool reuses them and a poisoned one would show.

Cases marked `xfail` in a payload file await a fix named there; they are strict, so when the fix
lands the case passes, the run fails, and the marker must go.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from tests.security.corpus import Case, load_cases
from tests.security.expect import expectation_problems, invariant_problems
from tests.security.stack import HOST, Stack, running_stack
from tests.security.wire import Exchange, exchange
from tests.support.recording_upstream import CONNECT_GRACE

pytestmark = pytest.mark.asyncio(loop_scope="module")

CASES = load_cases()
FOLLOW_UP_IDS = itertools.count(1)
ERROR_KEYS = {"error", "error_description", "request_id"}
POOLED_CLASSES = frozenset({"protocol-and-resources"})


def params(classes: frozenset[str] | None = None) -> list[object]:
    out = []
    for case in CASES:
        if classes is not None and case.klass not in classes:
            continue
        marks = []
        if case.skip:
            marks.append(pytest.mark.skip(reason=case.skip))
        if case.xfail:
            marks.append(pytest.mark.xfail(strict=True, reason=f"awaits {case.xfail}"))
        out.append(pytest.param(case, id=case.name, marks=marks))
    return out


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    log_dir: Path = tmp_path_factory.mktemp("corpus")
    async with running_stack(log_dir) as running:
        yield running


def fill_for(stack: Stack) -> Callable[[str], str]:
    def fill(name: str) -> str:
        if name == "canary":
            return stack.upstream.url
        kind, _, argument = name.partition(":")
        assert kind == "token", name
        return stack.tokens.build(argument)

    return fill


def answer_problems(case: Case, result: Exchange) -> list[str]:
    problems: list[str] = []
    if result.error:
        problems.append(result.error)
    statuses = result.statuses()
    if len(statuses) != len(case.statuses) or any(
        status not in allowed for status, allowed in zip(statuses, case.statuses, strict=False)
    ):
        expected = ["|".join(map(str, allowed)) for allowed in case.statuses]
        problems.append(f"answers {statuses}, expected {expected}; raw: {result.raw[:600]!r}")
    for answer in result.answers:
        if answer.status >= 400:
            body = answer.json()
            if not isinstance(body, dict) or set(body) != ERROR_KEYS:
                problems.append(f"{answer.status} without the JSON error body: {answer.body[:300]!r}")
            elif (
                case.code is not None
                and (len(case.statuses) == 1 or case.pipeline > 1)
                and body["error"] != case.code
            ):
                problems.append(f"error code {body['error']!r}, expected {case.code!r}")
    return problems


def upstream_problems(case: Case, stack: Stack) -> list[str]:
    upstream = stack.upstream
    problems = [f"desync on the upstream side:\n{p}" for p in upstream.problems()]
    received = upstream.requests()
    expected = case.expected
    if len(received) != expected.requests:
        problems.append(f"the upstream received {len(received)} requests, expected {expected.requests}")
    if expected.requests == 0 and any(c.raw for c in upstream.connections):
        problems.append("bytes reached the upstream")
    for index, request in enumerate(received):
        for problem in invariant_problems(request) + expectation_problems(request, expected):
            problems.append(f"request {index}: {problem}")
    if problems:
        problems.append("what the upstream received:\n" + upstream.describe())
    return problems


async def health_problems(stack: Stack, log_offset: int) -> list[str]:
    """A valid request on a new connection must be answered with its own echo; /healthz 200."""
    request_id = f"follow-up-{next(FOLLOW_UP_IDS)}"
    token = stack.tokens.build("valid")
    request = (
        f"GET /api/follow-up HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {token}\r\n"
        f"X-Request-Id: {request_id}\r\nConnection: close\r\n\r\n"
    ).encode()
    result = await exchange(stack.port, request)
    problems = []
    echo = result.answers[0].json() if len(result.answers) == 1 else None
    if result.statuses() != [200] or not isinstance(echo, dict):
        problems.append(f"follow-up got {result.statuses()}: {result.raw[:300]!r}")
    elif (echo.get("target"), echo.get("request_id")) != ("/api/follow-up", request_id):
        problems.append(f"follow-up got someone else's answer: {echo}")
    await stack.upstream.quiet()
    received = stack.upstream.requests()
    if len(received) != 1 or stack.upstream.problems():
        problems.append("follow-up not forwarded as one clean request:\n" + stack.upstream.describe())
    stack.upstream.reset()
    if await stack.healthz() != 200:
        problems.append("/healthz is not 200")
    logged = stack.log_since(log_offset)
    if "Traceback" in logged or "unhandled error" in logged:
        problems.append(f"the sidecar logged a traceback:\n{logged[-2000:]}")
    return problems


@pytest.mark.parametrize("case", params())
async def test_case(stack: Stack, case: Case) -> None:
    await run_case(stack, case)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pooled_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    log_dir: Path = tmp_path_factory.mktemp("corpus-pooled")
    async with running_stack(log_dir, keep_alive=True) as running:
        yield running


@pytest.mark.parametrize("case", params(POOLED_CLASSES))
async def test_case_on_pooled_connections(pooled_stack: Stack, case: Case) -> None:
    """The protocol cases again, with an upstream that keeps connections open: the sidecar's pool
    reuses them, so a connection left in doubt by a case would hand the follow-up a wrong answer."""
    await run_case(pooled_stack, case)


async def run_case(stack: Stack, case: Case) -> None:
    stack.upstream.reset()
    log_offset = stack.log_size()
    fetches = await asyncio.to_thread(stack.idp.count, "jwks") if case.jwks_fetches is not None else 0
    data = case.render(fill_for(stack))
    result = await exchange(stack.port, data, responses=len(case.statuses))
    await stack.upstream.quiet(grace=CONNECT_GRACE)
    problems = answer_problems(case, result) + upstream_problems(case, stack)
    if case.jwks_fetches is not None:
        fetched = await asyncio.to_thread(stack.idp.count, "jwks") - fetches
        if fetched > case.jwks_fetches:
            problems.append(f"the JWKS was fetched {fetched} times, at most {case.jwks_fetches} allowed")
    stack.upstream.reset()
    problems += await health_problems(stack, log_offset)
    assert not problems, f"{case.name} ({case.why or case.klass}):\n" + "\n".join(problems)
