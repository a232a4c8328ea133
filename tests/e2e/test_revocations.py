"""Revocations across replicas, over real sockets: two `authcar run` processes (and a third that fails
open) share one real redis-server; a token is revoked through one replica's admin API and the other
refuses it, a token it had already accepted and cached included; deleting the entry lets it through
again. With Redis stopped, tokens get 503 revocation_unavailable (or pass, counted, where the
operator chose to fail open), and once Redis is back the same processes recover.

Waits are generous upper bounds for an outcome (10 s), never speed assertions: that the configured
poll keeps the one-second promise is tests/test_revocation.py's
test_the_poll_interval_and_the_store_timeout_keep_the_one_second_promise.
"""

from __future__ import annotations

import base64
import json
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

ADMIN_TOKEN = "e2e-admin-" + "t" * 40
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
DEADLINE = 10.0  # an upper bound for an outcome, not a speed


@dataclass
class Replicas:
    idp: IdPClient
    upstream: MisbehavingUpstream
    redis: Standalone
    a: SidecarProcess  # fail closed, admin API on
    b: SidecarProcess  # fail closed, admin API on, two workers (each with its own copy)
    open: SidecarProcess  # AUTHCAR_REVOCATION_FAIL_OPEN, no admin token


def env(idp: IdPClient, upstream: MisbehavingUpstream, redis: Standalone, **extra: str) -> dict[str, str]:
    return {
        "AUTHCAR_UPSTREAM": upstream.url,
        "AUTHCAR_OIDC_ISSUER_URL": idp.issuer,
        "AUTHCAR_OIDC_AUDIENCE": "api",
        "AUTHCAR_OIDC_CLIENT_ID": "authcar",
        "AUTHCAR_OIDC_CLIENT_SECRET": "authcar-secret",
        "AUTHCAR_REDIS_URL": redis.url,
        "AUTHCAR_SHUTDOWN_GRACE_PERIOD": "1",
        "AUTHCAR_ACCESS_LOG": "false",
        **extra,
    }


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    redis_server_binary()  # skips with its reason where redis-server is missing (fails in CI)
    workdir = tmp_path_factory.mktemp("revocations")
    with idp_process() as idp, misbehaving_upstream() as upstream, standalone(workdir) as redis:
        base = env(idp.client, upstream, redis)
        started: list[SidecarProcess] = []
        try:
            for extra in (
                {"AUTHCAR_ADMIN_TOKEN": ADMIN_TOKEN},
                {"AUTHCAR_ADMIN_TOKEN": ADMIN_TOKEN, "AUTHCAR_WORKERS": "2"},
                {"AUTHCAR_REVOCATION_FAIL_OPEN": "true"},
            ):
                started.append(start_sidecar_process(workdir, {**base, **extra}))
            yield Replicas(idp.client, upstream, redis, *started)
        finally:
            for sidecar in started:
                sidecar.stop()


def jwt_payload(token: str) -> dict[str, object]:
    """The claims the provider chose (the jti), read without verifying: the sidecar verifies."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))  # type: ignore[no-any-return]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def reached(upstream: MisbehavingUpstream, subject: str) -> int:
    return sum(1 for r in upstream.requests if r.header("x-auth-request-user") == subject)


def admin(sidecar: SidecarProcess, method: str, body: object = None, **headers: str) -> httpx.Response:
    content = None if body is None else json.dumps(body).encode()
    return httpx.request(
        method,
        sidecar.admin_url + "/api/v1/revocations",
        content=content,
        headers=headers or ADMIN,
        timeout=10,
    )


def eventually(check: object, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {DEADLINE:g} s")
        time.sleep(0.05)


def assert_refused(answer: httpx.Response, status: int, code: str) -> None:
    assert answer.status_code == status, (answer.status_code, answer.text[:300])
    body = answer.json()
    assert set(body) == {"error", "error_description", "request_id"}
    assert body["error"] == code


@pytest.mark.parametrize("kind", ["jti", "sub", "sid"])
def test_a_revocation_through_one_replica_is_enforced_by_the_other_even_for_a_cached_token(
    replicas: Replicas, kind: str
) -> None:
    subject, session = unique("revoked-user"), unique("session")
    token = replicas.idp.mint({"sid": session}, sub=subject)
    claims = {"jti": jwt_payload(token)["jti"], "sub": subject, "sid": session}
    # One kept-alive connection to B: its first request verifies the token and caches it (the
    # connection's memo and the verified-token cache); the later ones are answered from the cache.
    with httpx.Client(base_url=replicas.b.url, timeout=10) as b:
        bearer = {"authorization": f"Bearer {token}"}
        for _ in range(3):
            assert b.get("/orders", headers=bearer).status_code == 200
        assert reached(replicas.upstream, subject) == 3

        created = admin(replicas.a, "POST", {kind: claims[kind], "expires_in": 600})
        assert created.status_code == 201, created.text
        assert (created.json()["kind"], created.json()["value"]) == (kind, claims[kind])

        def b_refuses() -> bool:
            answer = b.get("/orders", headers=bearer)
            if answer.status_code == 200:
                return False
            assert_refused(answer, 401, "revoked")
            assert answer.headers["www-authenticate"].startswith(
                'Bearer realm="authcar", error="invalid_token"'
            )
            return True

        eventually(b_refuses, "replica B refuses the token revoked through A")

        def every_worker_refuses() -> bool:
            # New connections, whichever of B's workers takes each: every one polls for itself.
            answers = [
                httpx.get(replicas.b.url + "/orders", headers={**bearer, "connection": "close"}, timeout=10)
                for _ in range(8)
            ]
            return all(answer.status_code == 401 for answer in answers)

        eventually(every_worker_refuses, "both of B's workers refuse it")
        passed_before = reached(replicas.upstream, subject)
        for method in ("GET", "POST", "DELETE"):
            assert_refused(b.request(method, "/orders", headers=bearer, content=b"{}"), 401, "revoked")
        with httpx.Client(base_url=replicas.a.url, timeout=10) as a:  # and A, on a new connection
            assert_refused(a.get("/orders", headers=bearer), 401, "revoked")
        for _ in range(8):
            fresh = httpx.get(
                replicas.b.url + "/orders", headers={**bearer, "connection": "close"}, timeout=10
            )
            assert_refused(fresh, 401, "revoked")
        assert reached(replicas.upstream, subject) == passed_before  # nothing refused reached the app

        other = replicas.idp.mint({"sid": unique("session")}, sub=unique("other-user"))
        assert b.get("/orders", headers={"authorization": f"Bearer {other}"}).status_code == 200

        listed = admin(replicas.b, "GET").json()["revocations"]
        assert {"kind": kind, "value": claims[kind]} in [
            {"kind": e["kind"], "value": e["value"]} for e in listed
        ]

        assert admin(replicas.b, "DELETE", {kind: claims[kind]}).status_code == 204
        eventually(lambda: b.get("/orders", headers=bearer).status_code == 200, "B accepts it again")
        with httpx.Client(base_url=replicas.a.url, timeout=10) as a:
            eventually(lambda: a.get("/orders", headers=bearer).status_code == 200, "A accepts it again")


def test_an_introspected_token_is_revoked_by_its_sid_on_the_other_replica(replicas: Replicas) -> None:
    subject, session = unique("opaque-user"), unique("opaque-session")
    token = replicas.idp.mint_opaque({"sid": session}, sub=subject)
    bearer = {"authorization": f"Bearer {token}"}
    with httpx.Client(base_url=replicas.b.url, timeout=10) as b:
        assert b.get("/orders", headers=bearer).status_code == 200  # introspected, and cached
        assert admin(replicas.a, "POST", {"sid": session}).status_code == 201
        eventually(lambda: b.get("/orders", headers=bearer).status_code == 401, "B refuses the opaque token")
        passed_before = reached(replicas.upstream, subject)
        assert_refused(b.get("/orders", headers=bearer), 401, "revoked")
        assert reached(replicas.upstream, subject) == passed_before
    assert admin(replicas.a, "DELETE", {"sid": session}).status_code == 204


def test_the_admin_api_needs_its_token_and_is_absent_where_none_is_configured(replicas: Replicas) -> None:
    for headers in ({"x-nothing": "1"}, {"authorization": "Bearer " + ADMIN_TOKEN[:-1] + "u"}):
        for method in ("GET", "POST", "DELETE"):
            answer = admin(replicas.a, method, {"jti": "x"}, **headers)
            assert answer.status_code == 401
            assert answer.headers["www-authenticate"].startswith('Bearer realm="authcar"')
    assert_refused(admin(replicas.a, "POST", {"jti": "x", "sid": "y"}), 400, "several_kinds")
    assert_refused(admin(replicas.a, "POST", {"jti": "x", "expires_in": -1}), 400, "invalid_expires_in")
    without = admin(replicas.open, "GET")
    assert_refused(without, 404, "not_found")
    assert httpx.get(replicas.open.admin_url + "/healthz", timeout=10).status_code == 200


def test_with_redis_down_tokens_fail_closed_or_open_as_configured_and_recover_without_a_restart(
    replicas: Replicas,
) -> None:
    subject = unique("outage-user")
    bearer = {"authorization": f"Bearer {replicas.idp.mint(sub=subject)}"}
    pids = [sidecar.process.pid for sidecar in (replicas.a, replicas.b, replicas.open)]
    for sidecar in (replicas.a, replicas.b, replicas.open):
        assert httpx.get(sidecar.url + "/orders", headers=bearer, timeout=10).status_code == 200
    fail_open_before = metric(
        httpx.get(replicas.open.admin_url + "/metrics", timeout=10).text,
        'authcar_store_fail_open_total{use="revocation"}',
    )
    reached_before = reached(replicas.upstream, subject)

    replicas.redis.server.stop()
    try:
        for sidecar in (replicas.a, replicas.b):

            def unavailable(sidecar: SidecarProcess = sidecar) -> bool:
                answer = httpx.get(sidecar.url + "/orders", headers=bearer, timeout=10)
                if answer.status_code == 200:
                    return False
                assert_refused(answer, 503, "revocation_unavailable")
                assert answer.headers["retry-after"] == "1"
                return True

            eventually(unavailable, "a fail-closed replica answers 503 while Redis is down")
        reached_while_down = reached(replicas.upstream, subject)
        assert_refused(
            httpx.get(replicas.a.url + "/orders", headers=bearer, timeout=10), 503, "revocation_unavailable"
        )
        assert reached(replicas.upstream, subject) == reached_while_down

        ready = httpx.get(replicas.a.admin_url + "/readyz", timeout=10)
        assert ready.status_code == 200  # every replica shares Redis: readiness never takes them all out
        state = ready.json()["checks"]["revocations"]
        assert (state["ok"], state["current"]) == (True, False)
        assert_refused(admin(replicas.a, "POST", {"jti": "during-outage"}), 503, "store_unavailable")

        def counted() -> bool:
            answer = httpx.get(replicas.open.url + "/orders", headers=bearer, timeout=10)
            assert answer.status_code == 200  # fail open: through on the last known list
            text = httpx.get(replicas.open.admin_url + "/metrics", timeout=10).text
            return metric(text, 'authcar_store_fail_open_total{use="revocation"}') > fail_open_before

        eventually(counted, "the fail-open replica counts what it lets through")
        assert reached(replicas.upstream, subject) > reached_while_down
    finally:
        replicas.redis.server.start()  # the same port: the sidecars reconnect on their own

    def recovered(sidecar: SidecarProcess) -> bool:
        # Each worker reconnects on its own; new connections reach either of B's two.
        for _ in range(4):
            if (
                httpx.get(
                    sidecar.url + "/orders", headers={**bearer, "connection": "close"}, timeout=10
                ).status_code
                != 200
            ):
                return False
            state = httpx.get(sidecar.admin_url + "/readyz", timeout=10).json()["checks"]["revocations"]
            if state["current"] is not True:
                return False
        return True

    for sidecar in (replicas.a, replicas.b):
        eventually(
            lambda sidecar=sidecar: recovered(sidecar), "a replica is current and accepts tokens again"
        )
    assert [sidecar.process.pid for sidecar in (replicas.a, replicas.b, replicas.open)] == pids
    assert all(sidecar.process.poll() is None for sidecar in (replicas.a, replicas.b, replicas.open))
    assert reached(replicas.upstream, subject) > reached_before
