"""The rate-limit stage alone and in the gate: its keys (bounded whatever a client sends), its
headers' syntax, its answers on the memory store, and failing open when the store fails.

The gate is driven as in tests/test_gate.py (stand-in authentication, policy and upstream, the real
header rules, metrics and access log); the limiter and the memory store are the real ones.
"""

from __future__ import annotations

import ipaddress
import logging
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authcar.errors import RateLimited
from authcar.identity import ANONYMOUS, Identity
from authcar.observe import Metrics
from authcar.rate_limit import RateLimiter, address_key, limit_key, whole_seconds
from authcar.rate_spec import RateSpec
from authcar.store import MemoryStore, RateDecision, StoreUnavailable
from authcar.store.base import check_key
from authcar.types import Scope
from tests.test_gate import ALICE, call, rig, scope_for

BOB = Identity(subject="bob", issuer="https://idp.example", source="jwt")
# RFC 9651 (Structured Fields) for the two fields: a one-member List of an sf-string Item with
# integer parameters, as draft-ietf-httpapi-ratelimit-headers-10 §3-4 define them.
SF_ITEM = r'"[\x20\x21\x23-\x5b\x5d-\x7e]*"(;[a-z][a-z0-9_.*-]*=-?[0-9]{1,15})*'
POLICY_FIELD = re.compile(r'"default";q=[0-9]+;w=[0-9]+')
LIMIT_FIELD = re.compile(r'"default";r=[0-9]+;t=[0-9]+')


def limiter(
    count: int = 2, period: int = 60, burst: int = 2, store: MemoryStore | None = None
) -> RateLimiter:
    return RateLimiter(RateSpec(count, period, burst), store or MemoryStore(), Metrics())


# --- keys ---------------------------------------------------------------------------------------


@settings(deadline=None)
@given(subject=st.text(), issuer=st.text())
def test_any_subject_and_issuer_give_a_short_key_the_store_accepts(subject: str, issuer: str) -> None:
    key = limit_key(Identity(subject=subject, issuer=issuer, source="jwt"), "192.0.2.1")
    check_key(key)  # raises if the store would refuse it
    assert re.fullmatch(r"sub:[0-9a-f]{32}", key)


@settings(deadline=None)
@given(client=st.one_of(st.ip_addresses().map(str), st.text()))
def test_any_client_address_or_garbage_gives_a_short_key_the_store_accepts(client: str) -> None:
    key = address_key(client)
    check_key(key)
    assert len(key) <= max(len("ip6:ffff:ffff:ffff:ffff::/64"), len("addr:") + 32)


def test_subjects_are_told_apart_by_issuer_and_never_by_a_separator_trick() -> None:
    def key(issuer: str, subject: str) -> str:
        return limit_key(Identity(subject=subject, issuer=issuer, source="jwt"), "")

    assert key("https://a", "alice") != key("https://b", "alice")
    assert key("a", "b\0c") != key("a\0b", "c")
    assert key("1:a", "b") != key("1", ":ab")
    assert key("https://a", "alice") == key("https://a", "alice")
    assert key("https://a", "\ud800") != key("https://a", "\ud801")  # a lone surrogate is a subject too


def test_an_identified_caller_is_counted_by_subject_wherever_it_comes_from() -> None:
    assert limit_key(ALICE, "192.0.2.1") == limit_key(ALICE, "198.51.100.9")
    assert limit_key(ALICE, "192.0.2.1") != limit_key(BOB, "192.0.2.1")


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff"),  # one /64: one host
        ("2001:db8:1:2::1", "2001:DB8:1:2:0:0:0:7"),  # any spelling
        ("fe80::1%eth0", "fe80::2"),  # a zone says nothing about who
        ("::ffff:192.0.2.1", "192.0.2.1"),  # a dual-stack socket's IPv4 client
    ],
)
def test_addresses_of_one_client_share_a_key(one: str, other: str) -> None:
    assert address_key(one) == address_key(other)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("2001:db8:1:2::1", "2001:db8:1:3::1"),  # the next /64
        ("192.0.2.1", "192.0.2.2"),  # IPv4: each address its own
        ("192.0.2.1", "::ffff:192.0.2.2"),
        ("", "192.0.2.1"),
    ],
)
def test_addresses_of_different_clients_do_not(one: str, other: str) -> None:
    assert address_key(one) != address_key(other)


def test_address_keys_read_as_addresses() -> None:
    assert address_key("192.0.2.1") == "ip:192.0.2.1"
    assert address_key("2001:db8:1:2:3:4:5:6") == "ip6:2001:db8:1:2::/64"
    assert address_key("") == "addr:none"
    assert re.fullmatch(r"addr:[0-9a-f]{32}", address_key("not an address"))
    ipaddress.ip_network(address_key("2001:db8::1").removeprefix("ip6:"))  # a real network


# --- the answer when limited ---------------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "expected"), [(0.0001, 1), (0.5, 1), (1.0, 1), (1.01, 2), (29.99, 30)])
def test_retry_after_is_whole_seconds_rounded_up_and_never_zero(seconds: float, expected: int) -> None:
    assert whole_seconds(seconds) == expected


@settings(deadline=None)
@given(
    count=st.integers(1, 1_000_000),
    period=st.sampled_from([1, 60, 3600]),
    remaining=st.integers(0, 1_000_000),
    reset=st.integers(1, 10**9),
)
def test_the_fields_are_structured_field_items(count: int, period: int, remaining: int, reset: int) -> None:
    limit = limiter(count, period, count)
    headers = dict(limit.fields(RateDecision(False, 1.0, remaining, 2.0), reset))
    policy, current = headers[b"ratelimit-policy"].decode(), headers[b"ratelimit"].decode()
    assert re.fullmatch(SF_ITEM, policy)
    assert re.fullmatch(SF_ITEM, current)
    assert policy == f'"default";q={count};w={period}'
    assert current == f'"default";r={remaining};t={reset}'


async def test_the_third_request_within_a_burst_of_two_is_refused_with_when_to_come_back() -> None:
    limit = limiter(2, 60, 2)
    await limit.admit(ALICE, "192.0.2.1")
    await limit.admit(ALICE, "192.0.2.1")
    with pytest.raises(RateLimited) as refused:
        await limit.admit(ALICE, "192.0.2.1")
    error = refused.value
    assert (error.status, error.code) == (429, "rate_limited")
    headers = dict(error.extra_headers())
    assert 1 <= int(headers[b"retry-after"]) <= 30  # one request every 30 s
    assert headers[b"ratelimit-policy"] == b'"default";q=2;w=60'
    assert headers[b"ratelimit"] == b'"default";r=0;t=' + headers[b"retry-after"]


async def test_subjects_have_separate_budgets_and_anonymous_callers_one_per_address() -> None:
    limit = limiter(1, 3600, 1)
    await limit.admit(ALICE, "192.0.2.1")
    await limit.admit(BOB, "192.0.2.1")  # same address, another subject
    await limit.admit(ANONYMOUS, "192.0.2.1")  # the address itself, anonymously
    await limit.admit(ANONYMOUS, "2001:db8:1:2::1")
    for identity, client in [
        (ALICE, "198.51.100.1"),
        (ANONYMOUS, "192.0.2.1"),
        (ANONYMOUS, "2001:db8:1:2::9"),
    ]:
        with pytest.raises(RateLimited):
            await limit.admit(identity, client)
    await limit.admit(ANONYMOUS, "2001:db8:1:3::1")  # another /64


# --- failing open --------------------------------------------------------------------------------


class DownStore(MemoryStore):
    """A store whose rate_limit fails as a lost Redis does."""

    async def rate_limit(self, key: str, *, rate: float, burst: int) -> RateDecision:
        raise StoreUnavailable("redis 127.0.0.1:1: rate limit failed: ConnectionError")


async def test_when_the_store_fails_requests_pass_counted_and_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    limit = RateLimiter(RateSpec(1, 3600, 1), DownStore(), metrics)
    with caplog.at_level(logging.WARNING, logger="authcar.rate_limit"):
        for _ in range(5):
            await limit.admit(ALICE, "192.0.2.1")  # never refused
    sample = metrics.registry.get_sample_value
    assert sample("authcar_store_fail_open_total", {"use": "rate_limit"}) == 5
    lines = [r for r in caplog.records if r.getMessage() == "rate_limit_fail_open"]
    assert len(lines) == 1
    assert "ConnectionError" in lines[0].error  # type: ignore[attr-defined]


# --- in the gate ---------------------------------------------------------------------------------


async def test_in_the_gate_a_refused_request_is_429_never_forwarded_and_logged_as_such() -> None:
    r = rig()
    r.gate.rate_limit = limiter(1, 3600, 1)
    headers = [(b"authorization", b"Bearer alice")]
    assert (await call(r.gate, scope_for("GET", "/items", headers))).status == 200
    answer = await call(r.gate, scope_for("GET", "/items", headers))
    assert answer.status == 429
    assert answer.json()["error"] == "rate_limited"
    assert {b"retry-after", b"ratelimit-policy", b"ratelimit"} <= set(answer.headers)
    assert LIMIT_FIELD.fullmatch(answer.headers[b"ratelimit"].decode())
    assert POLICY_FIELD.fullmatch(answer.headers[b"ratelimit-policy"].decode())
    assert len(r.upstream.seen) == 1  # only the first
    line = r.log_lines()[-1]
    assert (line["status"], line["decision"], line["subject"]) == (429, "rate_limited", "alice")
    assert r.requests_counted(429, "rate_limited") == 1


async def test_in_the_gate_anonymous_callers_are_limited_by_the_address_trusted_proxies_name() -> None:
    r = rig(trusted_proxies=("192.0.2.0/24",))
    r.gate.rate_limit = limiter(1, 3600, 1)

    def via_proxy(client: bytes) -> Scope:
        return scope_for("GET", "/public", [(b"x-forwarded-for", client)])

    assert (await call(r.gate, via_proxy(b"203.0.113.5"))).status == 200
    assert (await call(r.gate, via_proxy(b"203.0.113.6"))).status == 200  # another client, same proxy
    assert (await call(r.gate, via_proxy(b"203.0.113.5"))).status == 429
    # An untrusted peer cannot name another address to get a fresh budget.
    spoofing = scope_for(
        "GET", "/public", [(b"x-forwarded-for", b"203.0.113.77")], client=("198.51.100.3", 1)
    )
    assert (await call(r.gate, spoofing)).status == 200
    spoofing = scope_for(
        "GET", "/public", [(b"x-forwarded-for", b"203.0.113.78")], client=("198.51.100.3", 1)
    )
    assert (await call(r.gate, spoofing)).status == 429
    assert len(r.upstream.seen) == 3


async def test_in_the_gate_a_refused_websocket_handshake_is_429_too() -> None:
    r = rig()
    r.gate.rate_limit = limiter(1, 3600, 1)
    headers = [(b"authorization", b"Bearer alice")]
    await call(r.gate, scope_for("GET", "/ws", headers, kind="websocket"))
    answer = await call(r.gate, scope_for("GET", "/ws", headers, kind="websocket"))
    assert answer.messages[0]["type"] == "websocket.http.response.start"
    assert answer.status == 429
    assert b"ratelimit" in answer.headers
    assert len(r.upstream.seen) == 1


async def test_the_sidecars_own_endpoints_and_refused_tokens_spend_no_budget() -> None:
    r = rig()
    r.gate.rate_limit = limiter(1, 3600, 1)
    await call(r.gate, scope_for("GET", "/.well-known/authcar/jwks.json"))
    assert (await call(r.gate, scope_for("GET", "/items", [(b"authorization", b"Bearer bad")]))).status == 401
    # The peer's budget is untouched by both: its first anonymous request passes.
    assert (await call(r.gate, scope_for("GET", "/public"))).status == 200
