"""The embedded store: a dict in this process, for one replica or for tests.

Atomicity: no method awaits anything, so each runs to completion without the event loop switching
to another task; that is what makes `set_if_absent`, `take` and `incr` atomic here.

Expiry is lazy (an expired entry reads as absent and is dropped when touched) plus an incremental
sweep: every call first removes up to `SWEEP_BATCH` entries whose time has passed, taken from a heap
ordered by expiry time, so expired entries do not pile up while nothing reads them, and no call pays
for more than a few.

Rate limits and sliding records are entries too (under internal names no caller key can take, as
keys cannot hold control characters), so the same bound, sweep and eviction cover them. Member sets
live apart: few, named by code, each bounded by MAX_MEMBERS.

When `max_entries` is reached, the entry closest to expiry is evicted (Redis's `volatile-ttl`), not
the least recently used one. Much of what lives here is a write-once security marker (a revocation,
a used token id, a consumed code) that is rarely read again; LRU would evict exactly those first.
The entry closest to expiry is the one whose protection would end soonest anyway, and expired
entries are, by that order, evicted before any live one. A new entry is never its own victim.
"""

from __future__ import annotations

import heapq
import math
import re
import struct
import time
from collections.abc import Callable

from authcar.store.base import (
    INT64_MAX,
    INT64_MIN,
    MAX_MEMBERS,
    Members,
    RateDecision,
    StoreFull,
    StoreUnavailable,
    check_amount,
    check_key,
    check_member,
    check_rate,
    check_sliding,
    check_ttl,
    check_value,
)

# Entries examined per call by the sweep; Redis samples 20 keys per expiry cycle.
SWEEP_BATCH = 16
# The same integer syntax Redis's INCRBY accepts: no sign but '-', no leading zeros, no spaces, no "-0".
_COUNTER = re.compile(rb"0|-?[1-9][0-9]{0,18}")
# Internal entry names: a control character cannot start a caller's key.
_RATE = "\x00rate:"
_SLIDING = "\x00sliding:"
# A sliding record's entry: idle seconds and absolute end, then the value.
_SLIDING_HEAD = struct.Struct("!dd")


class MemoryStore:
    name = "memory"

    def __init__(
        self,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        max_members: int = MAX_MEMBERS,
    ) -> None:
        if max_entries < 1 or max_members < 1:
            raise ValueError("max_entries and max_members must be at least 1")
        self.max_entries = max_entries
        self.max_members = max_members
        self._clock = clock
        self._entries: dict[str, tuple[bytes, float]] = {}  # key -> (value, expires_at)
        # (expires_at, key) for every entry, plus stale pairs left by overwrites and deletes; a pair is
        # current iff the entry still has that expires_at. Rebuilt when stale pairs dominate.
        self._expiries: list[tuple[float, str]] = []
        self._sets: dict[str, dict[str, float]] = {}  # set key -> member -> expires_at
        self._set_expiries: dict[str, float] = {}  # set key -> no member expires before this
        self._versions: dict[str, int] = {}  # set key -> its version, kept when the set empties
        self._version_clock = 0  # every change of any set takes the next number
        self._closed = False
        self.evictions = 0  # live entries dropped because the store was full

    def __len__(self) -> int:
        """Entries held, including expired ones not yet swept."""
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        check_key(key)
        now = self._begin()
        entry = self._live(key, now)
        return None if entry is None else entry[0]

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        check_key(key)
        check_value(value)
        check_ttl(ttl)
        now = self._begin()
        self._put(key, value, now + ttl, now)

    async def set_if_absent(self, key: str, value: bytes, ttl: float) -> bool:
        check_key(key)
        check_value(value)
        check_ttl(ttl)
        now = self._begin()
        if self._live(key, now) is not None:
            return False
        self._put(key, value, now + ttl, now)
        return True

    async def delete(self, key: str) -> None:
        check_key(key)
        self._begin()
        self._entries.pop(key, None)

    async def take(self, key: str) -> bytes | None:
        check_key(key)
        now = self._begin()
        entry = self._live(key, now)
        if entry is None:
            return None
        del self._entries[key]
        return entry[0]

    async def incr(self, key: str, amount: int = 1, *, ttl: float) -> int:
        check_key(key)
        check_amount(amount)
        check_ttl(ttl)
        now = self._begin()
        entry = self._live(key, now)
        if entry is None:
            self._put(key, str(amount).encode(), now + ttl, now)
            return amount
        value, expires_at = entry
        if _COUNTER.fullmatch(value) is None or not INT64_MIN <= int(value) <= INT64_MAX:
            raise ValueError(f"value of {key!r} is not a 64-bit decimal integer")
        result = int(value) + amount
        if not INT64_MIN <= result <= INT64_MAX:
            raise ValueError(f"incr of {key!r} by {amount} would overflow 64 bits")
        self._entries[key] = (str(result).encode(), expires_at)  # same expiry: the heap pair stays current
        return result

    async def ttl(self, key: str) -> float | None:
        check_key(key)
        now = self._begin()
        entry = self._live(key, now)
        return None if entry is None else entry[1] - now

    async def rate_limit(self, key: str, *, rate: float, burst: int) -> RateDecision:
        check_key(key)
        check_rate(rate, burst)
        now = self._begin()
        entry = self._live(_RATE + key, now)
        interval = 1 / rate
        tat = max(float(entry[0]) if entry else now, now)  # theoretical arrival time
        new_tat = tat + interval
        allowed_from = new_tat - burst * interval
        # Float rounding (half an ulp per step that moved `tat`, one more for `burst * interval`) can
        # put a request that is exactly due a hair in the future: a fresh key refused at a burst of 1.
        if allowed_from - now > (burst + 2) * math.ulp(new_tat):
            return RateDecision(False, allowed_from - now, 0, tat - now)
        self._put(_RATE + key, repr(new_tat).encode(), new_tat, now)
        remaining = max(0, math.floor((now - allowed_from) / interval + 1e-9))
        return RateDecision(True, 0.0, remaining, new_tat - now)

    async def add_member(self, key: str, member: str, ttl: float) -> int:
        check_key(key)
        check_member(member)
        check_ttl(ttl)
        now = self._begin()
        live = self._live_members(key, now)
        if member not in live and len(live) >= self.max_members:
            raise StoreFull(f"member set {key!r} holds {self.max_members} members")
        self._sets[key] = live
        live[member] = now + ttl
        self._set_expiries[key] = min(self._set_expiries.get(key, math.inf), now + ttl)
        return self._bump(key)

    async def remove_member(self, key: str, member: str) -> int:
        check_key(key)
        check_member(member)
        now = self._begin()
        live = self._live_members(key, now)
        live.pop(member, None)
        if not live:
            self._sets.pop(key, None)
            self._set_expiries.pop(key, None)
        return self._bump(key)

    async def members(self, key: str) -> Members:
        check_key(key)
        now = self._begin()
        live = self._live_members(key, now)
        return Members(self._versions.get(key, 0), {m: at - now for m, at in live.items()})

    async def members_version(self, key: str) -> int:
        check_key(key)
        self._begin()
        return self._versions.get(key, 0)

    async def set_sliding(self, key: str, value: bytes, *, idle: float, max_age: float) -> None:
        check_key(key)
        check_value(value)
        check_sliding(idle, max_age)
        now = self._begin()
        ends = now + max_age
        self._put(_SLIDING + key, _SLIDING_HEAD.pack(idle, ends) + value, min(now + idle, ends), now)

    async def get_sliding(self, key: str) -> bytes | None:
        check_key(key)
        now = self._begin()
        entry = self._live(_SLIDING + key, now)
        if entry is None:
            return None
        idle, ends = _SLIDING_HEAD.unpack_from(entry[0])
        self._put(_SLIDING + key, entry[0], min(now + idle, ends), now)  # present: evicts nothing
        return entry[0][_SLIDING_HEAD.size :]

    async def delete_sliding(self, key: str) -> None:
        check_key(key)
        self._begin()
        self._entries.pop(_SLIDING + key, None)

    async def ping(self) -> None:
        self._begin()

    async def close(self) -> None:
        self._closed = True
        self._entries.clear()
        self._expiries.clear()
        self._sets.clear()
        self._set_expiries.clear()

    def _live_members(self, key: str, now: float) -> dict[str, float]:
        members = self._sets.get(key, {})
        # Scan only once the earliest expiry has passed: adding to a large set stays cheap.
        if members and self._set_expiries.get(key, math.inf) <= now:
            members = {member: at for member, at in members.items() if at > now}
            if members:
                self._sets[key] = members
                self._set_expiries[key] = min(members.values())
            else:
                del self._sets[key]
                del self._set_expiries[key]
        return members

    def _bump(self, key: str) -> int:
        self._version_clock += 1
        self._versions[key] = self._version_clock
        return self._version_clock

    def _begin(self) -> float:
        """Every operation's prologue: refuse if closed, sweep a little, return the time."""
        if self._closed:
            raise StoreUnavailable("memory store is closed")
        now = self._clock()
        expiries, entries = self._expiries, self._entries
        for _ in range(SWEEP_BATCH):
            if not expiries or expiries[0][0] > now:
                break
            expires_at, key = heapq.heappop(expiries)
            entry = entries.get(key)
            if entry is not None and entry[1] == expires_at:
                del entries[key]
        return now

    def _live(self, key: str, now: float) -> tuple[bytes, float] | None:
        entry = self._entries.get(key)
        if entry is not None and entry[1] <= now:
            del self._entries[key]  # its heap pair turns stale and is dropped when reached
            return None
        return entry

    def _put(self, key: str, value: bytes, expires_at: float, now: float) -> None:
        entries = self._entries
        if key not in entries:
            while len(entries) >= self.max_entries:
                self._evict_one(now)
        entries[key] = (value, expires_at)
        heapq.heappush(self._expiries, (expires_at, key))
        # Overwrites and deletes leave stale pairs; rebuild before they outnumber the entries.
        if len(self._expiries) > 2 * len(entries) + 64:
            self._expiries = [(entry_expiry, k) for k, (_, entry_expiry) in entries.items()]
            heapq.heapify(self._expiries)

    def _evict_one(self, now: float) -> None:
        """Drop the entry closest to expiry (an expired one if any). Only called with entries present,
        and every entry has a current heap pair, so this finds one."""
        while True:
            expires_at, key = heapq.heappop(self._expiries)
            entry = self._entries.get(key)
            if entry is not None and entry[1] == expires_at:
                del self._entries[key]
                if expires_at > now:
                    self.evictions += 1
                return
