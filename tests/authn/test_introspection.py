"""Opaque tokens through RFC 7662 introspection, against the real test provider over sockets and a real
MemoryStore: what is accepted, what is refused and why, what is cached for how long, and how the
provider is spared (single flight, bounded concurrency, negative caching) and survived (down, slow,
garbage, a failing store)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import logging
import math
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from authcar.authn.introspection import Introspector, client_auth_method
from authcar.authn.jwt import TokenRejected
from authcar.authn.keys import discover
from authcar.claims import ClaimMapping
from authcar.store import MemoryStore, StoreUnavailable
from tests.idp import IdP, run_idp
from tests.support.sidecar import start_sidecar
from tests.support.upstream_app import RunningUpstream

MAPPING = ClaimMapping()
LOGGER = "authcar.introspection"


def identify(claims: Any, issuer: str) -> Any:
    return MAPPING.identity(claims, issuer, "introspection")


class FailingStore(MemoryStore):
    """A real MemoryStore with an outage switch: while `down`, reads and writes raise StoreUnavailable."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True
        self.failed_calls = 0

    def check(self) -> None:
        if self.down:
            self.failed_calls += 1
            raise StoreUnavailable("injected outage")

    async def get(self, key: str) -> bytes | None:
        self.check()
        return await super().get(key)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self.check()
        await super().set(key, value, ttl)


@pytest.fixture
async def idp() -> AsyncIterator[IdP]:
    async with run_idp() as provider:
        yield provider


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def calls() -> list[tuple[str, float]]:
    return []


@pytest.fixture
def make(
    idp: IdP, http: httpx.AsyncClient, store: MemoryStore, calls: list[tuple[str, float]]
) -> Callable[..., Any]:
    """An Introspector configured as the wiring does: endpoint and auth methods from discovery."""

    async def build(**overrides: Any) -> Introspector:
        metadata = await discover(http, idp.issuer)
        assert metadata.introspection_endpoint is not None
        options: dict[str, Any] = {
            "http": http,
            "store": store,
            "endpoint": metadata.introspection_endpoint,
            "issuer": idp.issuer,
            "client_id": "authcar",
            "client_secret": "authcar-secret",
            "auth_methods": metadata.introspection_auth_methods,
            "identify": identify,
            "on_call": lambda result, seconds: calls.append((result, seconds)),
        }
        options.update(overrides)
        return Introspector(**options)

    return build


def cache_key(token: str) -> str:
    return "introspect:" + hashlib.sha256(token.encode()).hexdigest()


async def refused(introspector: Introspector, token: str) -> TokenRejected:
    with pytest.raises(TokenRejected) as caught:
        await introspector.verify(token)
    return caught.value


# -- what is accepted


async def test_active_token_gives_identity_and_is_cached_by_hash(
    make: Callable[..., Any], idp: IdP, store: MemoryStore, calls: list[tuple[str, float]]
) -> None:
    introspector = await make()
    token = idp.mint_opaque(sub="bob", roles=["admin", "reader"], groups=["staff"], scope="read write")
    exp = idp.grants[token].claims["exp"]

    verified = await introspector.verify(token)

    identity = verified.identity
    assert (identity.subject, identity.issuer, identity.source) == ("bob", idp.issuer, "introspection")
    assert identity.roles == {"admin", "reader", "staff"}
    assert identity.scopes == {"read", "write"}
    assert "active" not in verified.claims
    assert (verified.issuer, verified.kid, verified.expires, verified.cached) == (idp.issuer, "", exp, False)
    assert idp.introspections == 1
    assert [result for result, _ in calls] == ["active"]
    assert calls[0][1] > 0
    # Stored under the token's hash; neither the key nor the value holds the token itself.
    stored = await store.get(cache_key(token))
    assert stored is not None
    assert token.encode() not in stored
    assert json.loads(stored)["claims"]["sub"] == "bob"


async def test_cache_hit_does_not_ask_the_provider(
    make: Callable[..., Any], idp: IdP, calls: list[tuple[str, float]]
) -> None:
    introspector = await make()
    token = idp.mint_opaque(sub="carol")
    first = await introspector.verify(token)
    second = await introspector.verify(token)
    assert (first.cached, second.cached) == (False, True)
    assert second.identity.subject == "carol"
    assert idp.introspections == 1
    assert len(calls) == 1  # on_call reports provider calls only


async def test_cache_is_shared_through_the_store(make: Callable[..., Any], idp: IdP) -> None:
    """Two sidecars (two Introspectors) on one store: the second never asks the provider."""
    token = idp.mint_opaque()
    await (await make()).verify(token)
    verified = await (await make()).verify(token)
    assert verified.cached
    assert idp.introspections == 1


async def test_subject_falls_back_to_client_id(make: Callable[..., Any], idp: IdP) -> None:
    introspector = await make()
    machine = idp.mint_opaque(client_id="billing-service", omit=["sub"])
    assert (await introspector.verify(machine)).identity.subject == "billing-service"
    # No subject and no client id: nothing to name the caller by.
    nameless = idp.mint_opaque(omit=["sub", "azp"])
    assert (await refused(introspector, nameless)).reason == "missing_claim"


async def test_claims_that_would_smuggle_headers_are_refused(make: Callable[..., Any], idp: IdP) -> None:
    introspector = await make()
    for token in (idp.mint_opaque(sub="bob\r\nX-Auth-Request-User: admin"), idp.mint_opaque(roles=["a\nb"])):
        assert (await refused(introspector, token)).reason == "invalid_claim"


async def test_issuer_is_compared_exactly(make: Callable[..., Any], idp: IdP) -> None:
    introspector = await make()
    assert (await introspector.verify(idp.mint_opaque(omit=["iss"]))).issuer == idp.issuer  # absent: fine
    for issuer in (idp.issuer + "/", idp.issuer + "x", idp.issuer[:-1], "https://evil.example/realms/test"):
        rejection = await refused(introspector, idp.mint_opaque(claims={"iss": issuer}))
        assert rejection.reason == "wrong_issuer", issuer


async def test_audience_must_match_when_configured_and_present(make: Callable[..., Any], idp: IdP) -> None:
    checking = await make(audiences=frozenset({"api"}))
    assert (await checking.verify(idp.mint_opaque(aud=["other", "api"]))).identity.subject == "alice"
    # RFC 7662 makes `aud` optional and providers leave it out: absent is accepted.
    assert (await checking.verify(idp.mint_opaque(aud=None))).identity.subject == "alice"
    for audience in ("other", ["other", "more"], "apix"):
        rejection = await refused(checking, idp.mint_opaque(aud=audience))
        assert rejection.reason == "wrong_audience", audience
    lenient = await make()
    assert (await lenient.verify(idp.mint_opaque(aud="other"))).identity.subject == "alice"


# -- what is refused


@pytest.mark.parametrize("active", ["true", 1, None])
async def test_active_must_be_json_true(make: Callable[..., Any], idp: IdP, active: Any) -> None:
    introspector = await make()
    token = idp.mint_opaque(claims={"active": active})  # the provider's answer carries this `active`
    assert (await refused(introspector, token)).reason == "inactive"


async def test_unknown_token_is_inactive(
    make: Callable[..., Any], idp: IdP, calls: list[tuple[str, float]]
) -> None:
    introspector = await make()
    rejection = await refused(introspector, "never-issued-token")
    assert (rejection.reason, rejection.description) == ("inactive", "the token is not active")
    assert [result for result, _ in calls] == ["inactive"]


async def test_refresh_tokens_are_not_access_tokens(make: Callable[..., Any], idp: IdP) -> None:
    introspector = await make()
    token = idp.mint_opaque(claims={"typ": "Refresh"})  # introspected with token_type "Refresh"
    assert (await refused(introspector, token)).reason == "wrong_token_type"


async def test_size_and_syntax_are_checked_before_anything_else(
    make: Callable[..., Any], idp: IdP, store: MemoryStore
) -> None:
    introspector = await make(max_token_bytes=64)
    assert (await refused(introspector, "a" * 65)).reason == "too_large"
    for token in ("", "two words", "line\r\nbreak", 'quote"d', "tab\t", "üñí"):
        assert (await refused(introspector, token)).reason == "malformed", token
    assert idp.introspections == 0
    assert len(store) == 0


async def test_expired_by_our_clock_is_refused_and_remembered(make: Callable[..., Any], idp: IdP) -> None:
    # Our clock two minutes ahead of the provider's: it still says active, exp says otherwise.
    introspector = await make(clock=lambda: time.time() + 120)
    token = idp.mint_opaque(expires_in=60)
    assert (await refused(introspector, token)).reason == "expired"
    assert (await refused(introspector, token)).reason == "expired"
    assert idp.introspections == 1  # negatively cached


async def test_not_yet_valid_is_refused(make: Callable[..., Any], idp: IdP) -> None:
    introspector = await make(clock=lambda: time.time() - 120)
    assert (await refused(introspector, idp.mint_opaque())).reason == "not_yet_valid"


# -- how long answers are kept


async def test_revoked_token_is_accepted_until_its_cache_entry_ends(
    make: Callable[..., Any], idp: IdP
) -> None:
    """The documented trade-off: revocation reaches a cached token after at most cache_ttl."""
    introspector = await make(cache_ttl=0.5)
    token = idp.mint_opaque()
    await introspector.verify(token)
    idp.revoke(token)
    assert (await introspector.verify(token)).cached  # still accepted from the cache
    await asyncio.sleep(0.6)
    assert (await refused(introspector, token)).reason == "inactive"
    assert idp.introspections == 2


async def test_cache_ttl_zero_asks_every_time(make: Callable[..., Any], idp: IdP, store: MemoryStore) -> None:
    introspector = await make(cache_ttl=0)
    token = idp.mint_opaque()
    await introspector.verify(token)
    assert await store.get(cache_key(token)) is None
    idp.revoke(token)
    assert (await refused(introspector, token)).reason == "inactive"  # revocation is immediate
    assert idp.introspections == 2


async def test_cache_never_outlives_the_token(make: Callable[..., Any], idp: IdP, store: MemoryStore) -> None:
    introspector = await make(cache_ttl=300)
    token = idp.mint_opaque(expires_in=2)
    exp = idp.grants[token].claims["exp"]
    assert not (await introspector.verify(token)).cached
    before = time.time()  # read before the TTL, so the time the read takes cannot count against it
    ttl = await store.ttl(cache_key(token))
    assert ttl is not None
    assert ttl <= exp - before + 0.05  # the margin: the store's monotonic clock against wall time
    await asyncio.sleep(max(0.0, exp - time.time()) + 0.1)
    assert (await refused(introspector, token)).reason == "inactive"  # the provider was asked again
    assert idp.introspections == 2


async def test_token_without_exp_is_cached_for_cache_ttl(
    make: Callable[..., Any], idp: IdP, store: MemoryStore
) -> None:
    introspector = await make(cache_ttl=42)
    token = idp.mint_opaque(omit=["exp"])
    assert (await introspector.verify(token)).expires == math.inf
    ttl = await store.ttl(cache_key(token))
    assert ttl is not None
    assert 41 < ttl <= 42


async def test_refusals_are_cached_for_negative_ttl(make: Callable[..., Any], idp: IdP) -> None:
    introspector = await make(negative_ttl=0.5)
    for _ in range(5):
        assert (await refused(introspector, "flooded-bad-token")).reason == "inactive"
    assert idp.introspections == 1
    await asyncio.sleep(0.6)
    assert (await refused(introspector, "flooded-bad-token")).reason == "inactive"
    assert idp.introspections == 2


# -- sparing the provider


async def test_single_flight_for_one_token(make: Callable[..., Any], idp: IdP) -> None:
    introspector = await make()
    idp.set_mode("slow", ["introspect"], delay=0.3)
    token = idp.mint_opaque(sub="dave")
    results = await asyncio.gather(*(introspector.verify(token) for _ in range(50)))
    assert {verified.identity.subject for verified in results} == {"dave"}
    assert idp.introspections == 1
    assert idp.peak_introspections == 1


async def test_a_cancelled_request_does_not_cancel_the_others(make: Callable[..., Any], idp: IdP) -> None:
    introspector = await make()
    idp.set_mode("slow", ["introspect"], delay=0.3)
    token = idp.mint_opaque(sub="erin")
    first = asyncio.create_task(introspector.verify(token))
    second = asyncio.create_task(introspector.verify(token))
    await asyncio.sleep(0.1)
    first.cancel()
    assert (await second).identity.subject == "erin"
    assert first.cancelled()
    assert idp.introspections == 1


async def test_concurrent_provider_calls_are_bounded(make: Callable[..., Any], idp: IdP) -> None:
    introspector = await make(max_concurrency=4, timeout=20)
    idp.set_mode("slow", ["introspect"], delay=0.1)
    tokens = [idp.mint_opaque(sub=f"user{i}") for i in range(40)]
    results = await asyncio.gather(*(introspector.verify(token) for token in tokens))
    assert [verified.identity.subject for verified in results] == [f"user{i}" for i in range(40)]
    assert idp.introspections == 40
    assert idp.peak_introspections == 4


async def test_waiting_for_a_turn_counts_against_the_timeout(
    make: Callable[..., Any], idp: IdP, calls: list[tuple[str, float]]
) -> None:
    introspector = await make(max_concurrency=1, timeout=0.5)
    idp.set_mode("slow", ["introspect"], delay=10)
    callers = 10
    started = time.monotonic()
    outcomes = await asyncio.gather(
        *(introspector.verify(idp.mint_opaque()) for _ in range(callers)), return_exceptions=True
    )
    # Each gave up within its own 0.5 s budget, its wait for a turn included. Were the wait not
    # counted, the calls would take turns of a whole budget each, the last ending no sooner than
    # 10 x 0.5 s after the start; counted, all end after about 0.5 s. (A bound on the outcome,
    # generous for a loaded machine; which callers got a sliver of a turn is up to the scheduler.)
    assert time.monotonic() - started < callers * 0.5
    assert all(isinstance(outcome, TokenRejected) for outcome in outcomes)
    reasons = {outcome.reason for outcome in outcomes if isinstance(outcome, TokenRejected)}
    assert reasons <= {"introspection_busy", "introspection_unavailable"}
    assert calls  # the first caller at least reached the provider
    assert all(result == "error" for result, _ in calls)  # and nobody waited it out


# -- surviving the provider


@pytest.mark.parametrize("mode", ["down", "garbage", "slow", "reset"])
async def test_provider_failures_deny_and_are_not_cached(
    make: Callable[..., Any],
    idp: IdP,
    store: MemoryStore,
    calls: list[tuple[str, float]],
    caplog: pytest.LogCaptureFixture,
    mode: str,
) -> None:
    introspector = await make(timeout=0.5)
    idp.set_mode(mode, ["introspect"], delay=2)
    token = idp.mint_opaque(sub="frank")
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        rejection = await refused(introspector, token)
    assert (rejection.reason, rejection.description) == (
        "introspection_unavailable",
        "the token cannot be verified now",
    )
    assert await store.get(cache_key(token)) is None
    assert [record.getMessage() for record in caplog.records] == ["introspection_failed"]
    idp.mode = "normal"
    verified = await introspector.verify(token)  # provider back: accepted at once
    assert (verified.identity.subject, verified.cached) == ("frank", False)
    assert [result for result, _ in calls] == ["error", "active"]


async def test_unreachable_provider_denies(make: Callable[..., Any], idp: IdP) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: connections are refused
    introspector = await make(endpoint=f"http://127.0.0.1:{port}/introspect")
    assert (await refused(introspector, idp.mint_opaque())).reason == "introspection_unavailable"


async def test_oversized_answer_is_a_provider_failure(
    make: Callable[..., Any], idp: IdP, store: MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    introspector = await make()
    token = idp.mint_opaque(claims={"padding": "x" * 70_000})
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        assert (await refused(introspector, token)).reason == "introspection_unavailable"
    assert "larger than 65536 bytes" in caplog.records[0].error  # type: ignore[attr-defined]
    assert await store.get(cache_key(token)) is None


async def test_wrong_client_secret_is_unavailable_and_clearly_logged(
    make: Callable[..., Any], idp: IdP, caplog: pytest.LogCaptureFixture
) -> None:
    introspector = await make(client_secret="not-the-secret")
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        rejection = await refused(introspector, idp.mint_opaque())
    assert (rejection.reason, rejection.description) == (
        "introspection_unavailable",
        "the token cannot be verified now",
    )
    [record] = caplog.records
    error = record.error  # type: ignore[attr-defined]
    assert "refused authcar's client credentials" in error
    assert "HTTP 401 invalid_client" in error
    assert "not-the-secret" not in caplog.text
    assert "not-the-secret" not in rejection.description


async def test_failures_are_logged_at_a_trickle(
    make: Callable[..., Any], idp: IdP, caplog: pytest.LogCaptureFixture
) -> None:
    introspector = await make()
    idp.set_mode("down", ["introspect"])
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        for i in range(5):
            await refused(introspector, idp.mint_opaque(sub=f"u{i}"))
    assert idp.introspections == 5
    assert [record.getMessage() for record in caplog.records] == ["introspection_failed"]


def active_answer(idp: IdP, **raw: str) -> bytes:
    """What the provider says of an active token, with members whose JSON text is given as written."""
    now = int(time.time())
    claims = {"active": True, "iss": idp.issuer, "sub": "grace", "exp": now + 300, "token_type": "Bearer"}
    claims = {name: value for name, value in claims.items() if name not in raw}
    return (json.dumps(claims)[:-1] + "".join(f', "{k}": {v}' for k, v in raw.items()) + "}").encode()


UNACCEPTABLE_ANSWERS: dict[str, Callable[[IdP], bytes]] = {
    "too_deep": lambda idp: active_answer(idp, x="[" * 5000 + "]" * 5000),
    "too_deep unclosed": lambda idp: b'{"active": true, "x": ' + b"{" * 20_000,
    "number_too_large exp": lambda idp: active_answer(idp, exp=str(10**400)),
    "number_too_large float": lambda idp: active_answer(idp, exp="1e400"),
    "number_too_large claim": lambda idp: active_answer(idp, level="9" * 30),
    "not_a_number": lambda idp: active_answer(idp, nbf="NaN"),
    "repeated_name": lambda idp: b'{"active": false, ' + active_answer(idp)[1:],
    "string_too_long": lambda idp: active_answer(idp, sub=json.dumps("x" * 9000)),
    "too_many_members": lambda idp: active_answer(idp, groups=json.dumps(["g"] * 1001)),
    "invalid_string": lambda idp: active_answer(idp, sub='"\\udfff"'),
    "not_utf8": lambda idp: active_answer(idp).decode().encode("utf-16"),
    "not_an_object": lambda idp: b"[true]",
    "not_json": lambda idp: b"\x00garbage{",
}


@pytest.mark.parametrize("name", sorted(UNACCEPTABLE_ANSWERS))
async def test_an_unacceptable_answer_is_a_provider_failure(
    make: Callable[..., Any],
    idp: IdP,
    store: MemoryStore,
    calls: list[tuple[str, float]],
    caplog: pytest.LogCaptureFixture,
    name: str,
) -> None:
    introspector = await make()
    token = idp.mint_opaque(sub="grace")
    idp.raw_answers["introspect"] = UNACCEPTABLE_ANSWERS[name](idp)
    with caplog.at_level(logging.INFO, logger="authcar"):
        for _ in range(3):
            rejection = await refused(introspector, token)
            assert (rejection.reason, rejection.description) == (
                "introspection_unavailable",
                "the token cannot be verified now",
            )
    assert await store.get(cache_key(token)) is None  # never cached: the next answer may be good
    assert idp.introspections == 3
    [record] = caplog.records  # once per interval, and never a traceback
    assert record.getMessage() == "introspection_failed"
    assert record.exc_info is None
    assert f"({name.split()[0]})" in record.error  # type: ignore[attr-defined]
    assert [result for result, _ in calls] == ["error"] * 3
    del idp.raw_answers["introspect"]
    assert (await introspector.verify(token)).identity.subject == "grace"


async def test_through_the_sidecar_an_unacceptable_answer_is_a_401_and_nothing_is_forwarded(
    idp: IdP, upstream: RunningUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        start_sidecar(
            upstream.url,
            allow_anonymous=False,
            oidc_issuer_url=idp.issuer,
            oidc_audience=("api",),
            oidc_client_id="authcar",
            oidc_client_secret="authcar-secret",
        ) as sidecar,
        httpx.AsyncClient(base_url=sidecar.url, timeout=10) as client,
    ):
        with caplog.at_level(logging.INFO, logger="authcar"):
            for name in sorted(UNACCEPTABLE_ANSWERS):
                idp.raw_answers["introspect"] = UNACCEPTABLE_ANSWERS[name](idp)
                token = idp.mint_opaque(sub="grace")
                response = await client.get("/books", headers={"Authorization": f"Bearer {token}"})
                assert response.status_code == 401, (name, response.text)
                assert response.json()["error"] == "introspection_unavailable"
                assert response.headers["www-authenticate"].startswith(
                    'Bearer realm="authcar", error="invalid_token"'
                )
        assert upstream.seen == []
        assert [record for record in caplog.records if record.exc_info] == []
        del idp.raw_answers["introspect"]
        token = idp.mint_opaque(sub="grace")
        response = await client.get("/books", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200
        assert [seen.header("x-auth-request-user") for seen in upstream.seen] == ["grace"]


async def test_an_answer_at_the_limits_is_accepted_and_read_back_from_the_cache(
    make: Callable[..., Any], idp: IdP
) -> None:
    """The stored entry wraps the claims one level deeper and re-encodes them: still readable."""
    introspector = await make()
    deepest = "[" * 31 + "]" * 31  # the answer object is the 32nd level
    longest = json.dumps("é" * 8192, ensure_ascii=False)  # each one escaped to six characters when stored
    idp.raw_answers["introspect"] = active_answer(idp, deep=deepest, note=longest, n=str(-(10**19)))
    token = idp.mint_opaque()
    first = await introspector.verify(token)
    again = await introspector.verify(token)
    assert (first.cached, again.cached) == (False, True)
    assert again.claims == first.claims
    assert idp.introspections == 1


async def test_numbers_within_the_limits_are_accepted(make: Callable[..., Any], idp: IdP) -> None:
    introspector = await make()
    idp.raw_answers["introspect"] = active_answer(idp, exp=f"{int(time.time()) + 300}.25", level=str(2**63))
    verified = await introspector.verify(idp.mint_opaque())
    assert (verified.identity.subject, verified.claims["level"]) == ("grace", 2**63)


async def test_a_compressed_answer_is_a_provider_failure(
    make: Callable[..., Any], idp: IdP, caplog: pytest.LogCaptureFixture
) -> None:
    """authcar asks for `identity`: a provider that compresses anyway could send a decompression bomb."""
    answer = gzip.compress(active_answer(idp))

    async def compressing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(answer), answer)
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(compressing, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        introspector = await make(endpoint=f"http://127.0.0.1:{port}/introspect")
        with caplog.at_level(logging.ERROR, logger=LOGGER):
            assert (await refused(introspector, "opaque-token")).reason == "introspection_unavailable"
    finally:
        server.close()
    assert "compressed" in caplog.records[0].error  # type: ignore[attr-defined]


# -- client authentication


async def test_client_secret_post_when_it_is_all_the_provider_accepts(
    make: Callable[..., Any], idp: IdP
) -> None:
    idp.introspection_auth_methods = ["client_secret_post"]  # advertised, and enforced
    introspector = await make()
    assert introspector.auth_method == "client_secret_post"
    assert (await introspector.verify(idp.mint_opaque(sub="gina"))).identity.subject == "gina"
    # The provider really refuses the other method: Basic is not sent when it is not advertised.
    basic = await make(auth_methods=["client_secret_basic"])
    assert (await refused(basic, idp.mint_opaque())).reason == "introspection_unavailable"


async def test_basic_credentials_are_form_encoded(make: Callable[..., Any], idp: IdP) -> None:
    idp.introspection_auth_methods = ["client_secret_basic"]
    idp.register_client("svc:one", "p@ss w+rd:%/é")
    introspector = await make(client_id="svc:one", client_secret="p@ss w+rd:%/é")
    assert introspector.auth_method == "client_secret_basic"
    assert (await introspector.verify(idp.mint_opaque(sub="hank"))).identity.subject == "hank"


def test_client_auth_method_follows_the_advertised_list() -> None:
    assert client_auth_method([]) == "client_secret_basic"
    assert client_auth_method(["client_secret_post", "client_secret_basic"]) == "client_secret_basic"
    assert client_auth_method(["private_key_jwt", "client_secret_post"]) == "client_secret_post"
    with pytest.raises(ValueError, match="client_secret_basic, client_secret_post"):
        client_auth_method(["private_key_jwt", "tls_client_auth"])


async def test_unsupported_auth_methods_fail_at_construction(make: Callable[..., Any], idp: IdP) -> None:
    idp.introspection_auth_methods = ["private_key_jwt"]
    with pytest.raises(ValueError, match="private_key_jwt"):
        await make()


# -- surviving the store


async def test_failing_store_still_answers_correctly(
    make: Callable[..., Any], idp: IdP, caplog: pytest.LogCaptureFixture
) -> None:
    failing = FailingStore()
    introspector = await make(store=failing)
    token = idp.mint_opaque(sub="ivan")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(3):
            verified = await introspector.verify(token)
            assert (verified.identity.subject, verified.cached) == ("ivan", False)
        for _ in range(2):
            assert (await refused(introspector, "unknown-token")).reason == "inactive"
    assert idp.introspections == 5  # no cache: every request asked the provider, none failed open
    assert failing.failed_calls >= 5
    assert [record.getMessage() for record in caplog.records] == ["introspection_cache_unavailable"]
    failing.down = False  # the store recovers: caching resumes without a restart
    await introspector.verify(token)
    assert (await introspector.verify(token)).cached
    assert idp.introspections == 6


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'{"v": 1, "claims": "alice"}',
        b'{"v": 2, "claims": {"sub": "mallory"}}',
        b'{"v": 1, "reason": "inactive\\nX-Injected: 1", "description": "x"}',
        b'{"v": 1, "reason": "inactive", "description": "line\\r\\nbreak"}',
        b'{"v": 1, "claims": {"sub": "mallory", "exp": "soon"}}',
        b'{"v": 1, "v": 1, "claims": {"sub": "mallory"}}',
        b"\xff\xfe",
        b'{"v": 1, "claims": ' + b"[" * 50_000 + b"}",
        b'{"v": 1, "claims": {"sub": "mallory", "exp": 1' + b"0" * 400 + b"}}",
        b'{"v": 1, "claims": {"sub": "mallory", "exp": 1e400}}',
    ],
)
async def test_corrupt_cache_entries_are_misses(
    make: Callable[..., Any], idp: IdP, store: MemoryStore, raw: bytes
) -> None:
    introspector = await make()
    token = idp.mint_opaque(sub="judy")
    await store.set(cache_key(token), raw, 60)
    verified = await introspector.verify(token)
    assert (verified.identity.subject, verified.cached) == ("judy", False)
    assert idp.introspections == 1
    assert (await introspector.verify(token)).cached  # replaced by a good entry


async def test_cached_entries_are_checked_again_on_every_hit(
    make: Callable[..., Any], idp: IdP, store: MemoryStore
) -> None:
    """An entry written by a replica with other settings (or before exp passed) is judged by ours."""
    introspector = await make(audiences=frozenset({"api"}))
    now = int(time.time())
    entries = {
        "other-audience": ({"sub": "kim", "aud": "other", "exp": now + 60}, "wrong_audience"),
        "expired-since": ({"sub": "kim", "exp": now - 60}, "expired"),
        "other-issuer": ({"sub": "kim", "iss": "https://evil.example", "exp": now + 60}, "wrong_issuer"),
    }
    for token, (claims, reason) in entries.items():
        await store.set(cache_key(token), json.dumps({"v": 1, "claims": claims}).encode(), 60)
        assert (await refused(introspector, token)).reason == reason
    assert idp.introspections == 0


async def test_close_cancels_calls_under_way(make: Callable[..., Any], idp: IdP) -> None:
    introspector = await make()
    idp.set_mode("slow", ["introspect"], delay=2)
    waiting = asyncio.create_task(introspector.verify(idp.mint_opaque()))
    await asyncio.sleep(0.1)
    await introspector.close()
    with pytest.raises(TokenRejected) as caught:
        await waiting  # the request is denied, not cancelled: it was not the one going away
    assert caught.value.reason == "introspection_unavailable"
    assert introspector.inflight == {}
