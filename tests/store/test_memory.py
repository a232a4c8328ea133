"""MemoryStore: the shared conformance suite, plus what only an in-process store can show
(a controllable clock, its size bound, its sweep, and that no operation ever yields to the loop)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from authcar.store import MemoryStore, StoreFull, StoreUnavailable
from authcar.store.memory import SWEEP_BATCH
from tests.support.store_conformance import KEYED_CALLS, StoreConformance

T = TypeVar("T")


class TestMemoryStore(StoreConformance):
    @pytest.fixture
    async def store(self) -> AsyncIterator[MemoryStore]:
        store = MemoryStore()
        yield store
        await store.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run_now(call: Awaitable[T]) -> T:
    """Run a store call to completion in one step. It must not suspend: that is what makes
    MemoryStore's operations atomic with respect to the event loop."""
    steps = call.__await__()
    try:
        next(steps)
    except StopIteration as done:
        return done.value
    steps.close()
    raise AssertionError("a MemoryStore operation suspended")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_operations_never_suspend(clock: FakeClock) -> None:
    store = MemoryStore(max_entries=2, clock=clock)
    run_now(store.set("a", b"1", 10))
    run_now(store.set("b", b"2", 20))
    assert run_now(store.set_if_absent("c", b"3", 30)) is True  # evicts "a"
    assert run_now(store.incr("d", ttl=40)) == 1  # evicts "b"
    assert run_now(store.get("a")) is None
    assert run_now(store.take("c")) == b"3"
    assert run_now(store.ttl("d")) == 40
    run_now(store.delete("d"))
    run_now(store.ping())
    run_now(store.close())
    with pytest.raises(StoreUnavailable):
        run_now(store.get("a"))


def test_expiry_is_exact_on_the_clock(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    run_now(store.set("k", b"v", 10))
    clock.now += 9.5
    assert run_now(store.ttl("k")) == pytest.approx(0.5)
    assert run_now(store.get("k")) == b"v"
    clock.now += 0.5  # an entry lives for exactly ttl seconds
    assert run_now(store.get("k")) is None
    assert run_now(store.ttl("k")) is None
    assert len(store) == 0


def test_incr_window_on_the_clock(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    assert run_now(store.incr("rl", ttl=60)) == 1
    clock.now += 59
    assert run_now(store.incr("rl", 2, ttl=60)) == 3
    clock.now += 1
    assert run_now(store.incr("rl", ttl=60)) == 1
    assert run_now(store.ttl("rl")) == 60


def test_sweep_removes_expired_entries_without_reads(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    for i in range(1000):
        run_now(store.set(f"old:{i}", b"v", 1 + i / 1000))
    run_now(store.set("keep", b"v", 100))
    clock.now += 5
    writes = 0
    while len(store) > 2:
        run_now(store.set("writer", b"v", 100))  # never touches the expired keys
        writes += 1
        assert writes <= 1000 // SWEEP_BATCH + 1, "the sweep is not keeping up"
    assert run_now(store.get("keep")) == b"v"
    assert store.evictions == 0


@pytest.mark.parametrize(
    ("operation", "expected"),
    [("get", None), ("ttl", None), ("take", None), ("set_if_absent", True), ("incr", 1)],
)
def test_expired_entries_the_sweep_has_not_reached_read_as_absent(
    clock: FakeClock, operation: str, expected: object
) -> None:
    store = MemoryStore(clock=clock)
    for i in range(10 * SWEEP_BATCH):
        run_now(store.set(f"k{i}", b"v", 1 + i / 1000))
    clock.now += 5
    last = f"k{10 * SWEEP_BATCH - 1}"  # expires last, so the sweep reaches it last
    assert run_now(KEYED_CALLS[operation](store, last)) == expected
    assert len(store) > SWEEP_BATCH  # the sweep did not do the work


def test_sweep_costs_each_call_a_bounded_amount(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    for i in range(1000):
        run_now(store.set(f"old:{i}", b"v", 1))
    clock.now += 5
    run_now(store.ping())
    assert len(store) == 1000 - SWEEP_BATCH


def test_full_store_evicts_the_entry_closest_to_expiry(clock: FakeClock) -> None:
    store = MemoryStore(max_entries=5, clock=clock)
    for ttl in (50, 10, 40, 20, 30):
        run_now(store.set(f"ttl:{ttl}", b"v", ttl))
    run_now(store.set("new", b"v", 100))
    assert run_now(store.get("ttl:10")) is None
    run_now(store.set("newer", b"v", 1))  # shortest of all, yet not its own victim
    assert run_now(store.get("ttl:20")) is None
    assert run_now(store.get("newer")) == b"v"
    assert store.evictions == 2
    assert len(store) == 5
    # Overwriting a present key needs no room.
    run_now(store.set("ttl:50", b"w", 5))
    assert len(store) == 5
    assert store.evictions == 2


def test_full_store_drops_expired_entries_before_live_ones(clock: FakeClock) -> None:
    store = MemoryStore(max_entries=3, clock=clock)
    run_now(store.set("live", b"v", 5))
    run_now(store.set("dead", b"v", 100))
    run_now(store.set("also-live", b"v", 500))
    clock.now += 100
    run_now(store.set("new", b"v", 500))
    assert run_now(store.get("live")) is None  # expired entries are dropped, never evicted
    assert run_now(store.get("also-live")) == b"v"
    assert store.evictions == 0


def test_overwrites_do_not_grow_the_expiry_heap(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    for i in range(10_000):
        run_now(store.set("hot", b"%d" % i, 10 + i))
        run_now(store.set_if_absent(f"once:{i % 10}", b"v", 10))
        run_now(store.delete(f"once:{(i + 5) % 10}"))
    assert len(store._expiries) <= 2 * len(store) + 64 + 1
    assert run_now(store.get("hot")) == b"9999"


def test_flood_of_distinct_keys_stays_bounded(clock: FakeClock) -> None:
    store = MemoryStore(max_entries=100, clock=clock)
    for i in range(20_000):
        run_now(store.set(f"flood:{i}", b"x" * 16, 1 + (i * 7919) % 600))
        assert len(store) <= 100
    assert store.evictions > 0


def test_max_entries_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        MemoryStore(max_entries=0)


# --- model-based: arbitrary operation sequences against a dict model -----------------------------------

KEYS = st.sampled_from([f"k{i}" for i in range(8)])
VALUES = st.sampled_from([b"0", b"7", b"-3", b"01", b"-0", b"x", b""]) | st.binary(max_size=4)
TTLS = st.sampled_from([0.5, 1, 2, 5, 30])


def as_counter(value: bytes) -> int | None:
    """The model's reading of a counter: canonical decimal only, as Redis's INCRBY."""
    try:
        number = int(value)
    except ValueError:
        return None
    return number if str(number).encode() == value else None


class MemoryStoreMachine(RuleBasedStateMachine):
    """Random calls against a small MemoryStore and a dict model with the same clock. Evictions are
    the only way the store may lose a live entry. After every write the model compares itself with
    the store's dict: the live entries the store dropped must be exactly as many as the evictions
    that write counted, each no further from expiry than any live entry kept (the one just written
    is never its own victim), and only to make room. Every answer must match the model exactly: no
    expired or stale value, exact TTLs, and never more than max_entries held."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.store = MemoryStore(max_entries=1, clock=self.clock)
        self.model: dict[str, tuple[bytes, float]] = {}  # key -> (value, expires_at)
        self.evictions_seen = 0  # of self.store: the count belongs to the store it was read from

    @precondition(lambda self: not self.model and self.store.max_entries == 1)
    @rule(max_entries=st.integers(min_value=1, max_value=10))
    def resize(self, max_entries: int) -> None:
        self.store = MemoryStore(max_entries=max_entries, clock=self.clock)
        self.evictions_seen = 0

    def expected(self, key: str) -> tuple[bytes, float] | None:
        """The model's live entry for `key` (expired ones are forgotten)."""
        entry = self.model.get(key)
        if entry is not None and entry[1] <= self.clock.now:
            del self.model[key]
            return None
        return entry

    def account_for_evictions(self, written: str) -> None:
        """After a write of `written`: the live entries it made the store drop are its evictions."""
        now, held = self.clock.now, self.store._entries
        live = {key: entry for key, entry in self.model.items() if entry[1] > now}
        lost = {key: live[key] for key in live if key not in held}
        new_evictions = self.store.evictions - self.evictions_seen
        assert len(lost) == new_evictions, f"lost {sorted(lost)} with {new_evictions} eviction(s)"
        assert written not in lost, f"{written} was evicted by its own write"
        if lost:  # only to make room: the write filled the store again
            assert len(held) == self.store.max_entries, f"evicted {sorted(lost)} from a store not full"
        kept = [entry[1] for key, entry in live.items() if key not in lost and key != written]
        for key, (_, expires_at) in lost.items():
            assert all(expires_at <= other for other in kept), f"{key} was not the closest to expiry"
            del self.model[key]
        self.evictions_seen = self.store.evictions

    @rule(seconds=st.sampled_from([0.25, 0.5, 1, 3, 10]))
    def advance(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        entry = self.expected(key)
        assert run_now(self.store.get(key)) == (None if entry is None else entry[0])

    @rule(key=KEYS, value=VALUES, ttl=TTLS)
    def set(self, key: str, value: bytes, ttl: float) -> None:
        run_now(self.store.set(key, value, ttl))
        self.model[key] = (value, self.clock.now + ttl)
        self.account_for_evictions(key)

    @rule(key=KEYS, value=VALUES, ttl=TTLS)
    def set_if_absent(self, key: str, value: bytes, ttl: float) -> None:
        entry = self.expected(key)
        assert run_now(self.store.set_if_absent(key, value, ttl)) is (entry is None)
        if entry is None:
            self.model[key] = (value, self.clock.now + ttl)
        self.account_for_evictions(key)

    @rule(key=KEYS)
    def take(self, key: str) -> None:
        entry = self.expected(key)
        assert run_now(self.store.take(key)) == (None if entry is None else entry[0])
        self.model.pop(key, None)

    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        run_now(self.store.delete(key))
        self.model.pop(key, None)

    @rule(key=KEYS, amount=st.integers(min_value=-5, max_value=5), ttl=TTLS)
    def incr(self, key: str, amount: int, ttl: float) -> None:
        entry = self.expected(key)
        if entry is None:
            assert run_now(self.store.incr(key, amount, ttl=ttl)) == amount
            self.model[key] = (str(amount).encode(), self.clock.now + ttl)
            self.account_for_evictions(key)
            return
        current = as_counter(entry[0])
        if current is None:
            with pytest.raises(ValueError, match="not a 64-bit decimal integer"):
                run_now(self.store.incr(key, amount, ttl=ttl))
            return
        assert run_now(self.store.incr(key, amount, ttl=ttl)) == current + amount
        self.model[key] = (str(current + amount).encode(), entry[1])

    @rule(key=KEYS)
    def ttl(self, key: str) -> None:
        entry = self.expected(key)
        assert run_now(self.store.ttl(key)) == (None if entry is None else entry[1] - self.clock.now)

    @invariant()
    def bounded(self) -> None:
        assert len(self.store) <= self.store.max_entries


MemoryStoreMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
TestMemoryStoreMachine = MemoryStoreMachine.TestCase


def test_the_model_counts_evictions_per_store() -> None:
    # Replays the sequence that once failed: an eviction in the first store, a resize, and an eviction
    # in the new one, whose count starts again at zero.
    machine = MemoryStoreMachine()
    machine.set(key="k0", value=b"0", ttl=0.5)
    machine.set(key="k1", value=b"0", ttl=0.5)  # evicts k0
    machine.delete(key="k1")
    machine.resize(max_entries=1)
    machine.set(key="k2", value=b"0", ttl=0.5)
    machine.set(key="k0", value=b"0", ttl=0.5)  # evicts k2
    machine.get(key="k2")
    assert machine.store.evictions == 1
    machine.teardown()


# --- the structures, on a controlled clock -------------------------------------------------------------


def test_gcra_exactly(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    step = [run_now(store.rate_limit("k", rate=2, burst=2)) for _ in range(3)]  # 0.5 s apart on average
    assert [(d.allowed, d.remaining) for d in step] == [(True, 1), (True, 0), (False, 0)]
    assert step[2].retry_after == pytest.approx(0.5)
    assert step[2].reset == pytest.approx(1.0)
    clock.now += 0.5
    assert run_now(store.rate_limit("k", rate=2, burst=2)).allowed
    clock.now += 10  # full again, and its state expired
    assert run_now(store.rate_limit("k", rate=2, burst=2)).remaining == 1
    assert len(store) == 1


def test_rate_limit_state_is_bounded_like_any_entry(clock: FakeClock) -> None:
    store = MemoryStore(max_entries=10, clock=clock)
    for i in range(1000):  # a flood of client addresses
        run_now(store.rate_limit(f"ip:{i}", rate=1, burst=1))
        assert len(store) <= 10


def test_sliding_record_exactly(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    run_now(store.set_sliding("s", b"v", idle=10, max_age=25))
    for _ in range(2):
        clock.now += 9.9
        assert run_now(store.get_sliding("s")) == b"v"
    clock.now += 5.3  # 25.1 s after it was written, 5.3 s after the last read
    assert run_now(store.get_sliding("s")) is None
    run_now(store.set_sliding("s", b"w", idle=10, max_age=25))
    clock.now += 10
    assert run_now(store.get_sliding("s")) is None


def test_member_set_exactly(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock, max_members=2)
    run_now(store.add_member("set", "a", 10))
    run_now(store.add_member("set", "b", 20))
    with pytest.raises(StoreFull):
        run_now(store.add_member("set", "c", 5))
    clock.now += 10  # "a" expires exactly now
    assert dict(run_now(store.members("set")).members) == {"b": 10}
    run_now(store.add_member("set", "c", 5))
    clock.now += 20
    assert dict(run_now(store.members("set")).members) == {}
    assert store._sets == {}  # an emptied set leaves nothing behind but its version
    assert run_now(store.members_version("set")) > 0


def test_adding_to_a_large_member_set_does_not_rescan_it(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    for i in range(20_000):  # quadratic, this would take minutes
        run_now(store.add_member("set", f"m{i}", 100 + i))
    assert len(run_now(store.members("set")).members) == 20_000


@settings(deadline=None)
@given(
    now=st.floats(0, 1e9, allow_nan=False),
    count=st.integers(1, 1_000_000),
    period=st.sampled_from([1, 60, 3600]),
    burst=st.integers(1, 10),
)
def test_a_fresh_rate_limit_key_lets_its_whole_burst_through_at_any_time(
    now: float, count: int, period: int, burst: int
) -> None:
    """Floating-point rounding once put a fresh key's first request a hair in the future, refusing it
    at a burst of 1 (seen with 1/3600: `(now + 3600) - 3600 > now` for some `now`)."""
    clock = FakeClock()
    clock.now = now
    store = MemoryStore(clock=clock)
    for _ in range(burst):
        assert run_now(store.rate_limit("k", rate=count / period, burst=burst)).allowed
