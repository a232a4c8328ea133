"""The rate limit across replicas, over real sockets: two `authcar run` processes share one real
redis-server and one limit of 2 requests per hour (a burst of 2), so the third request through
either is refused whatever the machine's speed, and the application saw exactly two. Subjects have
budgets of their own; anonymous callers are counted by the client address the trusted proxy names
(IPv6 by its /64). With Redis stopped requests pass, counted; once it is back the same processes
limit again.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.faults.misbehaving import MisbehavingUpstream, misbehaving_upstream
from tests.faults.support import metric
from tests.idp import IdPClient, idp_process
from tests.support.process import SidecarProcess, start_sidecar_process
from tests.support.redis_servers import Standalone, redis_server_binary, standalone

DEADLINE = 20.0  # an upper bound for an outcome, not a speed
FAIL_OPEN = 'authcar_store_fail_open_total{use="rate_limit"}'


@dataclass
class Replicas:
    idp: IdPClient
    upstream: MisbehavingUpstream
    redis: Standalone
    a: SidecarProcess
    b: SidecarProcess


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    redis_server_binary()  # skips with its reason where redis-server is missing (fails in CI)
    workdir = tmp_path_factory.mktemp("rate-limits")
    with idp_process() as idp, misbehaving_upstream() as upstream, standalone(workdir) as redis:
        env = {
            "AUTHCAR_UPSTREAM": upstream.url,
            "AUTHCAR_OIDC_ISSUER_URL": idp.client.issuer,
            "AUTHCAR_OIDC_AUDIENCE": "api",
            "AUTHCAR_REDIS_URL": redis.url,
            "AUTHCAR_RATE_LIMIT": "2/h",
            "AUTHCAR_RATE_LIMIT_BURST": "2",
            "AUTHCAR_PUBLIC_PATHS": "/public/*",
            "AUTHCAR_TRUSTED_PROXIES": "127.0.0.1/32",
            # Here the rate limit's outage answer is under test, not the revocation list's.
            "AUTHCAR_REVOCATION_FAIL_OPEN": "true",
            "AUTHCAR_SHUTDOWN_GRACE_PERIOD": "1",
            "AUTHCAR_ACCESS_LOG": "false",
        }
        started: list[SidecarProcess] = []
        try:
            for _ in "ab":
                started.append(start_sidecar_process(workdir, env))
            yield Replicas(idp.client, upstream, redis, *started)
        finally:
            for sidecar in started:
                sidecar.stop()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def as_subject(replicas: Replicas, subject: str) -> dict[str, str]:
    return {"authorization": f"Bearer {replicas.idp.mint(sub=subject)}"}


def get(sidecar: SidecarProcess, path: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.get(sidecar.url + path, headers=headers, timeout=10)


def reached(upstream: MisbehavingUpstream, *, subject: str = "", path: str = "") -> int:
    return sum(
        1
        for r in upstream.requests
        if (subject and r.header("x-auth-request-user") == subject) or (path and r.target.startswith(path))
    )


def assert_limited(answer: httpx.Response) -> None:
    assert answer.status_code == 429, (answer.status_code, answer.text[:300])
    body = answer.json()
    assert set(body) == {"error", "error_description", "request_id"}
    assert body["error"] == "rate_limited"
    retry_after = int(answer.headers["retry-after"])
    assert 1 <= retry_after <= 1800  # one request every 1800 s
    assert answer.headers["ratelimit-policy"] == '"default";q=2;w=3600'
    assert answer.headers["ratelimit"] == f'"default";r=0;t={retry_after}'


def test_one_limit_is_shared_by_both_replicas_and_the_refused_request_never_reaches_the_app(
    replicas: Replicas,
) -> None:
    alice = unique("alice")
    bearer = as_subject(replicas, alice)
    assert get(replicas.a, "/orders", bearer).status_code == 200
    assert get(replicas.b, "/orders", bearer).status_code == 200
    assert_limited(get(replicas.a, "/orders", bearer))
    assert_limited(get(replicas.b, "/orders", bearer))
    assert reached(replicas.upstream, subject=alice) == 2
    # A new token of the same subject is the same caller: no fresh budget by asking for a token.
    assert_limited(get(replicas.b, "/orders", as_subject(replicas, alice)))

    bob = unique("bob")  # another subject has a budget of its own
    for sidecar in (replicas.b, replicas.a):
        assert get(sidecar, "/orders", as_subject(replicas, bob)).status_code == 200
    assert_limited(get(replicas.a, "/orders", as_subject(replicas, bob)))
    assert reached(replicas.upstream, subject=bob) == 2


@pytest.mark.parametrize(
    ("first", "second", "other"),
    [
        ("203.0.113.{n}", "203.0.113.{n}", "203.0.113.{m}"),
        ("2001:db8:{n:x}:1::1", "2001:db8:{n:x}:1:ffff::2", "2001:db8:{n:x}:2::1"),  # one /64, the next
    ],
    ids=["ipv4", "ipv6"],
)
def test_anonymous_callers_are_limited_per_client_address_across_replicas(
    replicas: Replicas, first: str, second: str, other: str
) -> None:
    n = uuid.uuid4().int % 250 + 1
    m = n % 250 + 2
    path = "/public/" + unique("anon")

    def via_proxy(address: str) -> dict[str, str]:
        return {"x-forwarded-for": address.format(n=n, m=m)}

    assert get(replicas.a, path, via_proxy(first)).status_code == 200
    assert get(replicas.b, path, via_proxy(second)).status_code == 200
    assert_limited(get(replicas.a, path, via_proxy(second)))
    assert get(replicas.b, path, via_proxy(other)).status_code == 200  # another client
    assert reached(replicas.upstream, path=path) == 3


def test_with_redis_stopped_requests_pass_counted_and_limiting_resumes_once_it_is_back(
    replicas: Replicas,
) -> None:
    before = {
        s.port: metric(httpx.get(s.admin_url + "/metrics", timeout=10).text, FAIL_OPEN)
        for s in (replicas.a, replicas.b)
    }
    replicas.redis.stop()
    try:
        carol = unique("carol")
        bearer = as_subject(replicas, carol)
        for sidecar in (replicas.a, replicas.b, replicas.a, replicas.b):
            assert get(sidecar, "/orders", bearer).status_code == 200  # past the limit of 2: failing open
        assert reached(replicas.upstream, subject=carol) == 4
        for sidecar in (replicas.a, replicas.b):
            counted = metric(httpx.get(sidecar.admin_url + "/metrics", timeout=10).text, FAIL_OPEN)
            assert counted - before[sidecar.port] >= 2
            logged = [e for e in sidecar.events() if e.get("event") == "rate_limit_fail_open"]
            assert 1 <= len(logged) <= 2  # at most one line per interval, not one per request
    finally:
        replicas.redis.server.start()

    # The same processes reconnect on their own: a fresh subject is limited again.
    deadline = time.monotonic() + DEADLINE
    while True:
        dave = unique("dave")
        bearer = as_subject(replicas, dave)
        answers = [get(sidecar, "/orders", bearer) for sidecar in (replicas.a, replicas.b, replicas.a)]
        if answers[2].status_code == 429:
            assert [a.status_code for a in answers[:2]] == [200, 200]
            assert_limited(answers[2])
            assert reached(replicas.upstream, subject=dave) == 2
            break
        assert time.monotonic() < deadline, "the replicas never limited again"
        time.sleep(0.2)
