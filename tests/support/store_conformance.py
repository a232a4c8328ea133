"""The behaviour every `authcar.store.Store` backend must have, as a reusable test class.

A backend's test module subclasses `StoreConformance` (its name must start with `Test` for pytest to
collect it) and provides a `store` fixture that yields an open, empty store and closes it afterwards:

    class TestRedisStore(StoreConformance):
        @pytest.fixture
        async def store(self, redis_server) -> AsyncIterator[Store]:
            ...

Everything here goes through the public interface with real time: expiry tests use short TTLs and
bounded polling, so they hold for a remote store with its own clock. Clock-driven tests belong in the
backend's own module.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

import pytest

from authcar.store import MAX_KEY_BYTES, MAX_TTL, MAX_VALUE_BYTES, Store, StoreUnavailable

SHORT_TTL = 0.25
# How long a short-TTL key may outlive its TTL before the test fails (a loaded CI machine is slow).
EXPIRY_GRACE = 10.0
# Tolerance for clock granularity (Redis keeps milliseconds) when checking a key did not expire early.
CLOCK_SLACK = 0.02

Call = Callable[[Store], Awaitable[object]]

# One call of every operation that takes a key, for tests that must hold for all of them.
KEYED_CALLS: dict[str, Callable[[Store, str], Awaitable[object]]] = {
    "get": lambda store, key: store.get(key),
    "set": lambda store, key: store.set(key, b"v", 10),
    "set_if_absent": lambda store, key: store.set_if_absent(key, b"v", 10),
    "delete": lambda store, key: store.delete(key),
    "take": lambda store, key: store.take(key),
    "incr": lambda store, key: store.incr(key, ttl=10),
    "ttl": lambda store, key: store.ttl(key),
}
TTL_CALLS: dict[str, Callable[[Store, object], Awaitable[object]]] = {
    "set": lambda store, ttl: store.set("k", b"v", ttl),  # type: ignore[arg-type]
    "set_if_absent": lambda store, ttl: store.set_if_absent("k", b"v", ttl),  # type: ignore[arg-type]
    "incr": lambda store, ttl: store.incr("k", ttl=ttl),  # type: ignore[arg-type]
}
VALUE_CALLS: dict[str, Callable[[Store, object], Awaitable[object]]] = {
    "set": lambda store, value: store.set("k", value, 10),  # type: ignore[arg-type]
    "set_if_absent": lambda store, value: store.set_if_absent("k", value, 10),  # type: ignore[arg-type]
}
ALL_CALLS: dict[str, Call] = {
    **{name: (lambda store, call=call: call(store, "k")) for name, call in KEYED_CALLS.items()},
    "rate_limit": lambda store: store.rate_limit("k", rate=1, burst=1),
    "add_member": lambda store: store.add_member("k", "m", 10),
    "remove_member": lambda store: store.remove_member("k", "m"),
    "members": lambda store: store.members("k"),
    "members_version": lambda store: store.members_version("k"),
    "set_sliding": lambda store: store.set_sliding("k", b"v", idle=1, max_age=2),
    "get_sliding": lambda store: store.get_sliding("k"),
    "delete_sliding": lambda store: store.delete_sliding("k"),
    "ping": lambda store: store.ping(),
}

BINARY_VALUES = {
    "empty": b"",
    "nul": b"\x00",
    "all-bytes": bytes(range(256)),
    "all-bytes-reversed": bytes(range(255, -1, -1)) * 4,
    "protocol-lookalike": b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n",
    "not-utf8": b"\xff\xfe\xc3\x28" * 100,
}
BAD_KEYS = {
    "empty": "",
    "space": "a b",
    "leading-space": " a",
    "tab": "a\tb",
    "newline": "a\nb",
    "crlf": "a\r\n",
    "nul": "a\x00b",
    "del": "a\x7fb",
    "nbsp": "a\u00a0b",
    "zero-width-space": "a\u200bb",
    "line-separator": "a\u2028b",
    "lone-surrogate": "a\ud800b",
    "too-long": "k" * (MAX_KEY_BYTES + 1),
    "too-long-utf8": "é" * (MAX_KEY_BYTES // 2) + "x",
}
BAD_TTLS = {"zero": 0, "negative": -1, "tiny-negative": -1e-9, "nan": math.nan, "inf": math.inf}
BAD_TTLS["too-long"] = MAX_TTL * 2
# Values Redis's INCRBY refuses as integers; the memory backend must refuse the same ones.
NOT_COUNTERS = {
    "empty": b"",
    "word": b"abc",
    "float": b"1.5",
    "leading-space": b" 1",
    "trailing-space": b"1 ",
    "plus": b"+1",
    "leading-zero": b"01",
    "minus-zero": b"-0",
    "nul": b"1\x00",
    "above-int64": b"9223372036854775808",
    "below-int64": b"-9223372036854775809",
}


def assert_remaining(remaining: float | None, ttl: float, since: float) -> None:
    """`remaining` is what a `ttl` set at `since` (time.monotonic) has left: it lost at most the time
    that has passed, whatever this machine's speed."""
    assert remaining is not None
    assert ttl - (time.monotonic() - since) - CLOCK_SLACK <= remaining <= ttl


async def gone_after(store: Store, key: str, start: float) -> float:
    """Poll until `key` reads as absent; return the seconds since `start` (time.monotonic)."""
    while await store.get(key) is not None:
        assert time.monotonic() - start < SHORT_TTL + EXPIRY_GRACE, f"{key!r} did not expire"
        await asyncio.sleep(0.01)
    return time.monotonic() - start


class StoreConformance:
    """Subclass with a `store` fixture; every test here then runs against that backend."""

    async def test_is_a_store(self, store: Store) -> None:
        assert isinstance(store, Store)
        assert store.name in ("memory", "redis")
        await store.ping()

    # --- values -----------------------------------------------------------------------------------

    async def test_absent_key_reads_as_none(self, store: Store) -> None:
        assert await store.get("missing") is None
        assert await store.ttl("missing") is None
        assert await store.take("missing") is None

    @pytest.mark.parametrize("value", list(BINARY_VALUES.values()), ids=list(BINARY_VALUES))
    async def test_binary_values_roundtrip(self, store: Store, value: bytes) -> None:
        await store.set("bin", value, 10)
        got = await store.get("bin")
        assert type(got) is bytes
        assert got == value

    async def test_every_single_byte_roundtrips(self, store: Store) -> None:
        await asyncio.gather(*(store.set(f"byte:{b}", bytes([b]), 10) for b in range(256)))
        got = await asyncio.gather(*(store.get(f"byte:{b}") for b in range(256)))
        assert got == [bytes([b]) for b in range(256)]

    async def test_limits_are_inclusive(self, store: Store) -> None:
        big = bytes(range(256)) * (MAX_VALUE_BYTES // 256)
        assert len(big) == MAX_VALUE_BYTES
        await store.set("big", big, 10)
        assert await store.get("big") == big
        for key in ("k" * MAX_KEY_BYTES, "é" * (MAX_KEY_BYTES // 2), "ns:ключ:鍵:" + "0" * 64):
            await store.set(key, b"long", 10)
            assert await store.get(key) == b"long"
        await store.set("max-ttl", b"v", MAX_TTL)
        remaining = await store.ttl("max-ttl")
        assert remaining is not None
        assert MAX_TTL - 60 < remaining <= MAX_TTL

    async def test_keys_are_distinct_and_case_sensitive(self, store: Store) -> None:
        await store.set("a:key", b"lower", 10)
        await store.set("A:KEY", b"upper", 10)
        assert await store.get("a:key") == b"lower"
        assert await store.get("A:KEY") == b"upper"
        assert await store.get("a:ke") is None

    # --- set and TTLs -----------------------------------------------------------------------------

    async def test_entry_expires_after_its_ttl(self, store: Store) -> None:
        start = time.monotonic()
        await store.set("short", b"v", SHORT_TTL)
        assert await store.get("short") == b"v"
        assert await gone_after(store, "short", start) >= SHORT_TTL - CLOCK_SLACK
        assert await store.ttl("short") is None
        assert await store.take("short") is None
        assert await store.set_if_absent("short", b"again", 10)
        assert await store.get("short") == b"again"

    async def test_set_overwrites_value_and_resets_ttl(self, store: Store) -> None:
        await store.set("k", b"first", SHORT_TTL)
        since = time.monotonic()
        await store.set("k", b"second", 30)
        assert_remaining(await store.ttl("k"), 30, since)
        await asyncio.sleep(SHORT_TTL + 0.15)
        assert await store.get("k") == b"second"

    async def test_set_can_shorten_ttl(self, store: Store) -> None:
        await store.set("k", b"long", 30)
        start = time.monotonic()
        await store.set("k", b"short", SHORT_TTL)
        assert await gone_after(store, "k", start) >= SHORT_TTL - CLOCK_SLACK

    async def test_ttl_reports_remaining_seconds(self, store: Store) -> None:
        since = time.monotonic()
        await store.set("k", b"v", 10)
        first = await store.ttl("k")
        assert isinstance(first, float)
        assert_remaining(first, 10, since)
        await asyncio.sleep(0.2)
        later = await store.ttl("k")
        assert_remaining(later, 10, since)
        assert later is not None
        assert later <= first - 0.15
        # Fractions are kept: 5.5 s, not 5 or 6 (seen as such unless this machine stalls 0.5 s).
        since = time.monotonic()
        await store.set("sub-second", b"v", 5.5)
        assert_remaining(await store.ttl("sub-second"), 5.5, since)

    # --- set_if_absent ----------------------------------------------------------------------------

    async def test_set_if_absent_keeps_existing_value_and_ttl(self, store: Store) -> None:
        assert await store.set_if_absent("nonce", b"first", 30) is True
        assert await store.set_if_absent("nonce", b"second", 300) is False
        assert await store.get("nonce") == b"first"
        remaining = await store.ttl("nonce")
        assert remaining is not None
        assert remaining <= 30
        await store.delete("nonce")
        assert await store.set_if_absent("nonce", b"third", 30) is True
        assert await store.get("nonce") == b"third"

    async def test_set_if_absent_has_exactly_one_winner(self, store: Store) -> None:
        results = await asyncio.gather(*(store.set_if_absent("jti", b"%d" % i, 30) for i in range(100)))
        assert results.count(True) == 1
        assert await store.get("jti") == b"%d" % results.index(True)

    # --- take ---------------------------------------------------------------------------------------

    async def test_take_returns_the_value_once(self, store: Store) -> None:
        await store.set("code", b"\x00secret", 30)
        assert await store.take("code") == b"\x00secret"
        assert await store.get("code") is None
        assert await store.take("code") is None
        assert await store.set_if_absent("code", b"new", 30) is True

    async def test_take_has_exactly_one_winner(self, store: Store) -> None:
        await store.set("code", b"single-use", 30)
        results = await asyncio.gather(*(store.take("code") for _ in range(100)))
        assert [r for r in results if r is not None] == [b"single-use"]

    @pytest.mark.parametrize("operation", ["get", "ttl", "take", "set_if_absent", "incr"])
    async def test_expired_entry_is_absent_to_every_operation(self, store: Store, operation: str) -> None:
        # No read in between: the first operation to touch the key is the one under test.
        await store.set("k", b"v", SHORT_TTL)
        await asyncio.sleep(SHORT_TTL + 0.1)
        expected = {"get": None, "ttl": None, "take": None, "set_if_absent": True, "incr": 1}
        assert await KEYED_CALLS[operation](store, "k") == expected[operation]

    # --- delete -------------------------------------------------------------------------------------

    async def test_delete(self, store: Store) -> None:
        await store.delete("never-set")
        await store.set("k", b"v", 10)
        await store.set("other", b"v", 10)
        await store.delete("k")
        assert await store.get("k") is None
        assert await store.ttl("k") is None
        await store.delete("k")
        assert await store.get("other") == b"v"

    # --- incr ---------------------------------------------------------------------------------------

    async def test_incr_counts_and_stores_decimal(self, store: Store) -> None:
        assert await store.incr("n", ttl=30) == 1
        assert await store.incr("n", 5, ttl=30) == 6
        assert await store.incr("n", -10, ttl=30) == -4
        assert await store.incr("n", 0, ttl=30) == -4
        assert await store.get("n") == b"-4"
        assert await store.incr("zero", 0, ttl=30) == 0
        assert await store.get("zero") == b"0"

    async def test_incr_of_existing_key_keeps_its_ttl(self, store: Store) -> None:
        since = time.monotonic()
        await store.incr("n", ttl=30)
        await store.incr("n", ttl=1000)
        assert_remaining(await store.ttl("n"), 30, since)
        since = time.monotonic()
        await store.set("m", b"41", 20)
        assert await store.incr("m", ttl=1000) == 42
        assert await store.get("m") == b"42"
        assert_remaining(await store.ttl("m"), 20, since)

    async def test_incr_window_expires_and_restarts(self, store: Store) -> None:
        start = time.monotonic()
        assert await store.incr("window", ttl=SHORT_TTL) == 1
        assert await store.incr("window", ttl=30) == 2  # the window is not extended
        assert await gone_after(store, "window", start) >= SHORT_TTL - CLOCK_SLACK
        assert await store.incr("window", ttl=30) == 1

    async def test_incr_is_atomic_under_concurrency(self, store: Store) -> None:
        results = await asyncio.gather(*(store.incr("hits", ttl=30) for _ in range(1000)))
        assert sorted(results) == list(range(1, 1001))
        assert await store.get("hits") == b"1000"

    @pytest.mark.parametrize("value", list(NOT_COUNTERS.values()), ids=list(NOT_COUNTERS))
    async def test_incr_refuses_non_integer_value(self, store: Store, value: bytes) -> None:
        await store.set("n", value, 30)
        with pytest.raises(ValueError):  # noqa: PT011 - the message is the backend's own
            await store.incr("n", ttl=30)
        assert await store.get("n") == value

    @pytest.mark.parametrize(
        ("start", "amount", "expected"),
        [
            (b"0", 1, 1),
            (b"-1", 1, 0),
            (b"9223372036854775806", 1, 2**63 - 1),
            (b"-9223372036854775807", -1, -(2**63)),
        ],
    )
    async def test_incr_accepts_the_full_int64_range(
        self, store: Store, start: bytes, amount: int, expected: int
    ) -> None:
        await store.set("n", start, 30)
        assert await store.incr("n", amount, ttl=30) == expected
        assert await store.get("n") == str(expected).encode()

    @pytest.mark.parametrize(
        ("start", "amount"), [(b"9223372036854775807", 1), (b"-9223372036854775808", -1)]
    )
    async def test_incr_refuses_overflow(self, store: Store, start: bytes, amount: int) -> None:
        await store.set("n", start, 30)
        with pytest.raises(ValueError):  # noqa: PT011
            await store.incr("n", amount, ttl=30)
        assert await store.get("n") == start

    # --- input checks -------------------------------------------------------------------------------

    @pytest.mark.parametrize("key", list(BAD_KEYS.values()), ids=list(BAD_KEYS))
    @pytest.mark.parametrize("operation", list(KEYED_CALLS))
    async def test_bad_key_is_refused(self, store: Store, operation: str, key: str) -> None:
        with pytest.raises(ValueError, match="store key"):
            await KEYED_CALLS[operation](store, key)

    @pytest.mark.parametrize("key", [b"bytes", 1, None], ids=["bytes", "int", "none"])
    @pytest.mark.parametrize("operation", list(KEYED_CALLS))
    async def test_non_str_key_is_refused(self, store: Store, operation: str, key: object) -> None:
        with pytest.raises(TypeError, match="store key"):
            await KEYED_CALLS[operation](store, key)  # type: ignore[arg-type]

    @pytest.mark.parametrize("ttl", list(BAD_TTLS.values()), ids=list(BAD_TTLS))
    @pytest.mark.parametrize("operation", list(TTL_CALLS))
    async def test_bad_ttl_is_refused(self, store: Store, operation: str, ttl: float) -> None:
        with pytest.raises(ValueError, match="ttl"):
            await TTL_CALLS[operation](store, ttl)
        assert await store.get("k") is None

    @pytest.mark.parametrize("ttl", ["1", None, True], ids=["str", "none", "bool"])
    @pytest.mark.parametrize("operation", list(TTL_CALLS))
    async def test_non_number_ttl_is_refused(self, store: Store, operation: str, ttl: object) -> None:
        with pytest.raises(TypeError, match="ttl"):
            await TTL_CALLS[operation](store, ttl)
        assert await store.get("k") is None

    @pytest.mark.parametrize("operation", list(VALUE_CALLS))
    async def test_oversized_value_is_refused(self, store: Store, operation: str) -> None:
        with pytest.raises(ValueError, match="store value"):
            await VALUE_CALLS[operation](store, b"x" * (MAX_VALUE_BYTES + 1))
        assert await store.get("k") is None

    @pytest.mark.parametrize(
        "value",
        ["text", bytearray(b"v"), memoryview(b"v"), None],
        ids=["str", "bytearray", "memoryview", "none"],
    )
    @pytest.mark.parametrize("operation", list(VALUE_CALLS))
    async def test_non_bytes_value_is_refused(self, store: Store, operation: str, value: object) -> None:
        with pytest.raises(TypeError, match="store value"):
            await VALUE_CALLS[operation](store, value)
        assert await store.get("k") is None

    @pytest.mark.parametrize(
        ("amount", "error"),
        [
            (1.0, TypeError),
            (True, TypeError),
            ("1", TypeError),
            (2**63, ValueError),
            (-(2**63) - 1, ValueError),
        ],
    )
    async def test_bad_incr_amount_is_refused(
        self, store: Store, amount: object, error: type[Exception]
    ) -> None:
        with pytest.raises(error, match="amount"):
            await store.incr("n", amount, ttl=30)  # type: ignore[arg-type]
        assert await store.get("n") is None

    # --- lifecycle ----------------------------------------------------------------------------------

    @pytest.mark.parametrize("operation", list(ALL_CALLS))
    async def test_closed_store_is_unavailable(self, store: Store, operation: str) -> None:
        await store.set("k", b"v", 10)
        await store.close()
        with pytest.raises(StoreUnavailable):
            await ALL_CALLS[operation](store)
        await store.close()  # idempotent

    # --- rate limits (GCRA) -------------------------------------------------------------------------

    async def test_rate_limit_passes_the_burst_then_refuses(self, store: Store) -> None:
        # 0.1/s: a request every 10 s on average, three at once.
        since = time.monotonic()
        decisions = [await store.rate_limit("client", rate=0.1, burst=3) for _ in range(4)]
        elapsed = time.monotonic() - since
        assert [d.allowed for d in decisions] == [True, True, True, False]
        assert [d.remaining for d in decisions] == [2, 1, 0, 0]
        assert [d.retry_after for d in decisions[:3]] == [0, 0, 0]
        refused = decisions[3]
        assert 10 - elapsed - CLOCK_SLACK <= refused.retry_after <= 10 + CLOCK_SLACK
        assert 30 - elapsed - CLOCK_SLACK <= refused.reset <= 30 + CLOCK_SLACK
        assert 10 - elapsed - CLOCK_SLACK <= decisions[0].reset <= 10 + CLOCK_SLACK
        # A refused request is not counted: the next one is refused for the same reason, not later.
        again = await store.rate_limit("client", rate=0.1, burst=3)
        assert not again.allowed
        assert again.retry_after <= refused.retry_after + CLOCK_SLACK
        assert (await store.rate_limit("other-client", rate=0.1, burst=3)).allowed

    async def test_rate_limit_refills_at_the_steady_rate(self, store: Store) -> None:
        interval = 0.05  # 20/s, one at a time
        first = time.monotonic()
        assert (await store.rate_limit("steady", rate=20, burst=1)).allowed
        while True:
            decision = await store.rate_limit("steady", rate=20, burst=1)
            if decision.allowed:
                break
            assert 0 < decision.retry_after <= interval + CLOCK_SLACK
            assert time.monotonic() - first < interval + EXPIRY_GRACE, "the limit never refilled"
            await asyncio.sleep(0.005)
        assert time.monotonic() - first >= interval - CLOCK_SLACK

    async def test_rate_limit_is_atomic_under_concurrency(self, store: Store) -> None:
        decisions = await asyncio.gather(
            *(store.rate_limit("crowd", rate=0.01, burst=10) for _ in range(100))
        )
        assert sum(d.allowed for d in decisions) == 10
        assert sorted(d.remaining for d in decisions if d.allowed) == list(range(10))

    async def test_rate_limits_have_their_own_namespace(self, store: Store) -> None:
        await store.rate_limit("shared-name", rate=1, burst=1)
        assert await store.get("shared-name") is None
        await store.set("shared-name", b"plain", 10)
        assert (await store.rate_limit("shared-name", rate=1, burst=1)).allowed is False
        assert await store.get("shared-name") == b"plain"

    @pytest.mark.parametrize(
        ("rate", "burst", "error"),
        [
            (0, 1, ValueError),
            (-1, 1, ValueError),
            (math.nan, 1, ValueError),
            (math.inf, 1, ValueError),
            (2_000_000, 1, ValueError),
            (1, 0, ValueError),
            (1, 2_000_000, ValueError),
            (1e-9, 1, ValueError),  # refills in 31 years
            ("1", 1, TypeError),
            (True, 1, TypeError),
            (1, 1.5, TypeError),
            (1, True, TypeError),
        ],
    )
    async def test_bad_rate_limit_is_refused(
        self, store: Store, rate: object, burst: object, error: type[Exception]
    ) -> None:
        with pytest.raises(error, match=r"rate|burst"):
            await store.rate_limit("k", rate=rate, burst=burst)  # type: ignore[arg-type]

    # --- member sets --------------------------------------------------------------------------------

    async def test_members_with_their_expiry_and_version(self, store: Store) -> None:
        empty = await store.members("revoked")
        assert (empty.version, dict(empty.members)) == (0, {})
        assert await store.members_version("revoked") == 0
        since = time.monotonic()
        first = await store.add_member("revoked", "jti:abc", 30)
        second = await store.add_member("revoked", "sub:ключ", 300)
        assert 0 < first < second
        listed = await store.members("revoked")
        assert listed.version == second == await store.members_version("revoked")
        assert set(listed.members) == {"jti:abc", "sub:ключ"}
        assert_remaining(listed.members["jti:abc"], 30, since)
        assert_remaining(listed.members["sub:ключ"], 300, since)
        third = await store.remove_member("revoked", "jti:abc")
        assert third > second
        assert set((await store.members("revoked")).members) == {"sub:ключ"}
        assert await store.remove_member("revoked", "never-added") > third  # a change all the same
        assert (await store.members("other-set")).members == {}

    async def test_re_adding_a_member_takes_the_new_expiry(self, store: Store) -> None:
        await store.add_member("set", "m", 300)
        since = time.monotonic()
        await store.add_member("set", "m", 20)
        listed = await store.members("set")
        assert list(listed.members) == ["m"]
        assert_remaining(listed.members["m"], 20, since)

    async def test_a_member_expires_after_its_ttl(self, store: Store) -> None:
        start = time.monotonic()
        await store.add_member("set", "short", SHORT_TTL)
        await store.add_member("set", "long", 30)
        while "short" in (await store.members("set")).members:
            assert time.monotonic() - start < SHORT_TTL + EXPIRY_GRACE, "the member did not expire"
            await asyncio.sleep(0.01)
        assert time.monotonic() - start >= SHORT_TTL - CLOCK_SLACK
        assert set((await store.members("set")).members) == {"long"}
        # The set survives its expired members, and accepts them again.
        assert await store.add_member("set", "short", 30) > 0
        assert set((await store.members("set")).members) == {"short", "long"}

    async def test_every_change_gets_its_own_version(self, store: Store) -> None:
        versions = await asyncio.gather(*(store.add_member("crowd", f"m{i}", 30) for i in range(50)))
        assert len(set(versions)) == 50
        listed = await store.members("crowd")
        assert len(listed.members) == 50
        assert listed.version == max(versions)

    async def test_member_sets_have_their_own_namespace(self, store: Store) -> None:
        await store.add_member("name", "m", 30)
        assert await store.get("name") is None
        await store.set("name", b"plain", 30)
        assert list((await store.members("name")).members) == ["m"]

    @pytest.mark.parametrize("member", list(BAD_KEYS.values()), ids=list(BAD_KEYS))
    async def test_bad_member_is_refused(self, store: Store, member: str) -> None:
        with pytest.raises(ValueError, match="set member"):
            await store.add_member("set", member, 30)
        with pytest.raises(ValueError, match="set member"):
            await store.remove_member("set", member)
        assert await store.members_version("set") == 0

    async def test_bad_member_set_input_is_refused(self, store: Store) -> None:
        with pytest.raises(TypeError, match="set member"):
            await store.add_member("set", b"bytes", 30)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="store key"):
            await store.members("a b")
        with pytest.raises(ValueError, match="store key"):
            await store.members_version("")
        with pytest.raises(ValueError, match="ttl"):
            await store.add_member("set", "m", 0)
        assert await store.members_version("set") == 0

    # --- sliding records ----------------------------------------------------------------------------

    async def test_sliding_record_roundtrips_and_ends(self, store: Store) -> None:
        assert await store.get_sliding("session") is None
        await store.set_sliding("session", bytes(range(256)), idle=30, max_age=300)
        assert await store.get_sliding("session") == bytes(range(256))
        await store.set_sliding("session", b"", idle=30, max_age=300)  # replaces
        assert await store.get_sliding("session") == b""
        await store.delete_sliding("session")
        assert await store.get_sliding("session") is None
        await store.delete_sliding("session")

    async def test_sliding_record_ends_when_not_read_for_its_idle_time(self, store: Store) -> None:
        await store.set_sliding("idle", b"v", idle=SHORT_TTL, max_age=30)
        await asyncio.sleep(SHORT_TTL + 0.15)
        assert await store.get_sliding("idle") is None

    async def test_reading_renews_the_idle_time(self, store: Store) -> None:
        idle = 1.0
        created = last_read = time.monotonic()
        await store.set_sliding("busy", b"v", idle=idle, max_age=60)
        while time.monotonic() - created < 2.5 * idle:
            await asyncio.sleep(idle / 5)
            value = await store.get_sliding("busy")
            now = time.monotonic()
            if now - last_read < idle - CLOCK_SLACK:  # a stall longer than that may end it, rightly
                assert value == b"v", "a record read within its idle time ended"
            if value is None:
                pytest.skip("this machine stalled longer than the idle time")
            last_read = now

    async def test_sliding_record_ends_at_its_max_age_however_often_read(self, store: Store) -> None:
        start = time.monotonic()
        await store.set_sliding("capped", b"v", idle=30, max_age=SHORT_TTL)
        while await store.get_sliding("capped") is not None:
            assert time.monotonic() - start < SHORT_TTL + EXPIRY_GRACE, "the record outlived its max age"
            await asyncio.sleep(0.01)
        assert time.monotonic() - start >= SHORT_TTL - CLOCK_SLACK

    async def test_sliding_records_have_their_own_namespace(self, store: Store) -> None:
        await store.set_sliding("name", b"sliding", idle=30, max_age=60)
        assert await store.get("name") is None
        await store.set("name", b"plain", 30)
        await store.delete("name")
        assert await store.get_sliding("name") == b"sliding"

    @pytest.mark.parametrize(
        ("idle", "max_age", "match"),
        [
            (0, 10, "idle"),
            (-1, 10, "idle"),
            (math.nan, 10, "idle"),
            (10, 0, "max_age"),
            (10, MAX_TTL * 2, "max_age"),
        ],
    )
    async def test_bad_sliding_times_are_refused(
        self, store: Store, idle: float, max_age: float, match: str
    ) -> None:
        with pytest.raises(ValueError, match=match):
            await store.set_sliding("k", b"v", idle=idle, max_age=max_age)
        assert await store.get_sliding("k") is None

    async def test_bad_sliding_input_is_refused(self, store: Store) -> None:
        with pytest.raises(TypeError, match="store value"):
            await store.set_sliding("k", "text", idle=1, max_age=2)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="store value"):
            await store.set_sliding("k", b"x" * (MAX_VALUE_BYTES + 1), idle=1, max_age=2)
        with pytest.raises(ValueError, match="store key"):
            await store.get_sliding("a\nb")
        with pytest.raises(ValueError, match="store key"):
            await store.delete_sliding("")
