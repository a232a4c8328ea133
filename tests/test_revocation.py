"""The revocation list on its own: two lists sharing one store stand for two replicas sharing Redis,
and the clock is the test's, so nothing here depends on timing. (Over real sockets, with two sidecar
processes and a real redis-server: tests/e2e/test_revocations.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authcar.errors import Revoked, ServiceUnavailable
from authcar.identity import ANONYMOUS, Identity
from authcar.observe import Metrics
from authcar.redis_url import DEFAULT_TIMEOUT
from authcar.revocation import (
    DEFAULT_EXPIRES_IN,
    KINDS,
    MAX_ENTRIES,
    MAX_VALUE_BYTES,
    POLL_INTERVAL,
    PROMISE,
    SET_KEY,
    Revocation,
    RevocationList,
    entry_of,
    member_of,
    worst_delay,
)
from authcar.store import MAX_MEMBERS, MemoryStore, StoreFull, StoreUnavailable
from authcar.store.base import check_member


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class SwitchableStore:
    """A memory store that can be made unreachable, as Redis is when it is down."""

    def __init__(self, store: MemoryStore) -> None:
        self.inner = store
        self.down = False

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if not callable(attribute):
            return attribute

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                raise StoreUnavailable("connection refused")
            return await attribute(*args, **kwargs)

        return call


def token(source: str = "jwt", **claims: str) -> Identity:
    return Identity(subject=claims.get("sub", "someone"), claims=MappingProxyType(claims), source=source)  # type: ignore[arg-type]


ALICE = token(sub="alice", jti="jti-1", sid="session-1")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def shared(clock: Clock) -> SwitchableStore:
    return SwitchableStore(MemoryStore(clock=clock))


def replica(store: SwitchableStore, clock: Clock, **options: Any) -> RevocationList:
    return RevocationList(store, fail_open=False, clock=clock, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_revocation_made_on_one_replica_refuses_the_token_on_another_at_its_next_poll(
    shared: SwitchableStore, clock: Clock, kind: str
) -> None:
    a, b = replica(shared, clock), replica(shared, clock)
    await b.refresh()
    b.check(ALICE)  # accepted before (a cached token is checked by its identity all the same)
    await a.add(Revocation(kind, ALICE.claims[kind], 60))  # type: ignore[arg-type]
    with pytest.raises(Revoked):
        a.check(ALICE)  # the replica that wrote it refreshed at once
    b.check(ALICE)  # the other has not polled yet
    clock.now += POLL_INTERVAL
    await b.refresh()
    with pytest.raises(Revoked) as refused:
        b.check(ALICE)
    assert (refused.value.status, refused.value.code) == (401, "revoked")
    b.check(token(sub="bob", jti="jti-2", sid="session-2"))  # others are untouched
    await a.remove(kind, ALICE.claims[kind])  # type: ignore[arg-type]
    await b.refresh()
    b.check(ALICE)


async def test_only_the_named_claim_matches(shared: SwitchableStore, clock: Clock) -> None:
    revocations = replica(shared, clock)
    await revocations.add(Revocation("sub", "jti-1"))  # a sub equal to Alice's jti
    revocations.check(ALICE)
    revocations.check(token(sub="alice-2", jti="x"))
    with pytest.raises(Revoked):
        revocations.check(token(sub="jti-1"))


async def test_identities_without_those_claims_or_with_odd_ones_pass(
    shared: SwitchableStore, clock: Clock
) -> None:
    revocations = replica(shared, clock)
    await revocations.add(Revocation("jti", "1"))
    revocations.check(ANONYMOUS)
    revocations.check(Identity(subject="x", claims=MappingProxyType({"jti": 1, "sub": ["1"]}), source="jwt"))
    revocations.check(token(jti="1" * 10_000))


async def test_a_client_certificate_is_refused_by_its_subject(shared: SwitchableStore, clock: Clock) -> None:
    revocations = replica(shared, clock)
    await revocations.add(Revocation("sub", "spiffe://cluster/ns/shop/sa/orders"))
    with pytest.raises(Revoked):
        revocations.check(token("client_certificate", sub="spiffe://cluster/ns/shop/sa/orders"))


async def test_an_entry_expires_locally_between_polls(shared: SwitchableStore, clock: Clock) -> None:
    revocations = replica(shared, clock)
    await revocations.add(Revocation("jti", "jti-1", 10))
    clock.now += 9
    with pytest.raises(Revoked):
        revocations.check(ALICE)
    clock.now += 1.5
    await revocations.refresh()  # the version did not move: no reload, the local deadline decides
    revocations.check(ALICE)
    assert Revocation("jti", "jti-1", 10).expires_in < DEFAULT_EXPIRES_IN


async def test_a_list_not_confirmed_for_the_promise_fails_closed_and_recovers(
    shared: SwitchableStore, clock: Clock
) -> None:
    revocations = replica(shared, clock)
    await revocations.add(Revocation("jti", "jti-1"))
    bob = token(sub="bob", jti="jti-2")
    shared.down = True
    clock.now += PROMISE - 0.01
    with pytest.raises(StoreUnavailable):
        await revocations.refresh()
    await revocations.refresh_quietly()  # as the poll does: logged, counted, the copy kept
    revocations.check(bob)  # still within the promise
    assert revocations.readiness()["current"] is True
    clock.now += 0.01
    with pytest.raises(ServiceUnavailable) as unavailable:
        revocations.check(bob)
    assert (unavailable.value.status, unavailable.value.code) == (503, "revocation_unavailable")
    assert (b"retry-after", b"1") in unavailable.value.extra_headers()
    with pytest.raises(Revoked):
        revocations.check(ALICE)  # what the copy knows is still refused as such
    revocations.check(ANONYMOUS)
    state = revocations.readiness()
    assert (state["ok"], state["current"], state["detail"]) == (True, False, "connection refused")
    shared.down = False
    await revocations.refresh()
    revocations.check(bob)
    assert revocations.readiness()["current"] is True


async def test_fail_open_lets_tokens_through_counted_and_still_refuses_what_it_knows(
    shared: SwitchableStore, clock: Clock
) -> None:
    metrics = Metrics()
    revocations = replica(shared, clock, metrics=metrics)
    revocations.fail_open = True
    await revocations.add(Revocation("sid", "session-1"))
    shared.down = True
    clock.now += PROMISE
    revocations.check(token(sub="bob"))
    revocations.check(token(sub="carol"))
    with pytest.raises(Revoked):
        revocations.check(ALICE)
    counted = metrics.registry.get_sample_value("authcar_store_fail_open_total", {"use": "revocation"})
    assert counted == 2


async def test_a_list_never_confirmed_fails_closed(shared: SwitchableStore, clock: Clock) -> None:
    shared.down = True
    revocations = replica(shared, clock)
    await revocations.refresh_quietly()
    with pytest.raises(ServiceUnavailable):
        revocations.check(ALICE)
    assert "confirmed_seconds_ago" not in revocations.readiness()


def test_the_poll_interval_and_the_store_timeout_keep_the_one_second_promise() -> None:
    # A revocation reaches a replica at the latest one interval (or one slow refresh) plus the
    # refresh that reads it after it was written: two store calls, each bounded by the timeout.
    assert worst_delay(POLL_INTERVAL, DEFAULT_TIMEOUT) <= PROMISE
    assert worst_delay(0.25, 0.25) == 1.0
    assert worst_delay(0.25, 0.3) > PROMISE  # a slower store breaks it: the list then fails closed


async def test_members_this_version_did_not_write_are_ignored(shared: SwitchableStore, clock: Clock) -> None:
    for member in ("sub", "uid:YWxpY2U", "sub:!!!", "sub:", "jti:_w"):  # `_w` decodes to invalid UTF-8
        await shared.add_member(SET_KEY, member, 60)
    await shared.add_member(SET_KEY, member_of("sub", "alice"), 60)
    revocations = replica(shared, clock)
    await revocations.refresh()
    assert revocations.revoked == {("sub", "alice"): pytest.approx(clock.now + 60)}
    assert [(e.kind, e.value) for e in await revocations.listed()] == [("sub", "alice")]


VALUES = st.text(st.characters(codec="utf-8"), min_size=1).filter(
    lambda text: len(text.encode()) <= MAX_VALUE_BYTES
)


@settings(deadline=None)
@given(st.sampled_from(KINDS), VALUES)
def test_every_value_becomes_a_member_the_store_accepts_and_reads_back(kind: str, value: str) -> None:
    member = member_of(kind, value)  # type: ignore[arg-type]
    check_member(member)
    assert entry_of(member) == (kind, value)


def test_the_longest_value_fits_the_store_s_member_rules() -> None:
    check_member(member_of("sub", "\U0001f600" * (MAX_VALUE_BYTES // 4) + "abc"))


async def test_the_list_is_bounded_and_a_full_one_still_takes_new_expiries_for_known_entries(
    shared: SwitchableStore, clock: Clock
) -> None:
    revocations = replica(shared, clock, max_entries=2)
    await revocations.add(Revocation("jti", "one", 10))
    await revocations.add(Revocation("jti", "two", 20))
    with pytest.raises(StoreFull):
        await revocations.add(Revocation("jti", "three"))
    await revocations.add(Revocation("jti", "one", 30))  # known: a new expiry, not a new entry
    assert [(e.value, e.expires_in) for e in await revocations.listed()] == [("two", 20), ("one", 30)]
    assert await revocations.soonest_expiry() == 20
    clock.now += 21
    await revocations.add(Revocation("jti", "three"))  # "two" expired and freed its place
    assert MAX_ENTRIES * 4 <= MAX_MEMBERS  # the store's own bound never decides first


async def test_the_poll_survives_an_outage_and_picks_up_changes_after_it() -> None:
    store = SwitchableStore(MemoryStore())
    writer = RevocationList(store, fail_open=False)  # type: ignore[arg-type]
    reader = RevocationList(store, fail_open=False, poll_interval=0.01)  # type: ignore[arg-type]
    task = asyncio.create_task(reader.run())
    try:
        store.down = True
        await until(lambda: reader.last_error == "connection refused")
        store.down = False
        await writer.add(Revocation("sub", "alice"))
        await until(lambda: ("sub", "alice") in reader.revoked and not reader.last_error)
        assert not task.done()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    """An outcome with a generous bound, never a speed."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)
