"""The key-value store interface shared state goes through, and the input rules every backend enforces.

The interface is written for a remote store (Redis): every call is async and may raise
`StoreUnavailable`; keys are `str`, values `bytes`, TTLs seconds. Nothing may assume the store is
local. Every entry expires: there is no way to write a key without a TTL, so nothing a client can
make the sidecar write (a rate-limit counter per address, a replay marker per token) lives forever.

Input rules, identical in every backend (they run before any I/O, so a bad call never reaches Redis):

- key: a non-empty `str` of at most `MAX_KEY_BYTES` UTF-8 bytes, printable, without whitespace or
  control characters. Callers namespace keys (`"introspect:<sha256 hex>"`) and hash any part that a
  client controls, so these rules never reject a request-dependent key.
- value: `bytes` of at most `MAX_VALUE_BYTES`. `b""` is a value, distinct from absence (`None`).
- ttl: seconds, `0 < ttl <= MAX_TTL`, int or float. Redis keeps milliseconds, so TTLs are rounded up
  to the next millisecond there (`ttl_millis`).
- incr amount, and every counter value: a signed 64-bit integer (Redis's range). A counter is stored
  as its ASCII decimal (`b"42"`), so `get` reads it and `set(k, b"41")` followed by `incr(k)` gives 42.

Beyond single keys, three structures the shared uses need, each one atomic step per call, each with
a namespace of its own (a plain key, a rate limit, a member set and a sliding record named alike are
four different things):

- `rate_limit`: one step of GCRA (the generic cell rate algorithm, ITU-T I.371; a token bucket that
  stores one timestamp). In Redis the time is the server's (`TIME`), so replicas whose clocks
  disagree still share one limit.
- member sets (`add_member`, `remove_member`, `members`, `members_version`): named sets of strings,
  each member with its own expiry, at most `MAX_MEMBERS` live ones. Every change moves the set's
  version, so a local copy stays current by reading the version (one small read per poll, not per
  request) and reloading only when it moved. Versions only grow while the store keeps its data, and
  differ from every earlier one even after it lost them (Redis restarted without persistence).
- sliding records (`set_sliding`, `get_sliding`, `delete_sliding`): a value that ends after `idle`
  seconds without a read and at the latest `max_age` seconds after it was written; each read
  renews the idle time, never past the absolute end (sessions).

Member rules are key rules (a member is a key in its set). Rates and bursts have finite bounds
(`check_rate`). Wrong types raise TypeError, out-of-range values ValueError; both are caller bugs,
not outages. A member set that is full refuses a new member with `StoreFull`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

MAX_KEY_BYTES = 512
MAX_VALUE_BYTES = 1024 * 1024
# Longer than any session or token lifetime we expect; bounds what a misconfiguration can pin in memory.
MAX_TTL = 366 * 24 * 3600.0
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# Live members one member set holds: a revocation list far beyond any real incident's.
MAX_MEMBERS = 100_000
# Rate limits: at most a million a second (GCRA's interval stays at least a microsecond in Redis).
MAX_RATE = 1_000_000.0
MAX_BURST = 1_000_000


@dataclass(frozen=True, slots=True)
class RateDecision:
    """One GCRA step: whether this request passes, and what the RateLimit headers report."""

    allowed: bool
    retry_after: float  # seconds until a request would pass; 0 when this one did
    remaining: int  # requests that would pass right now, after this one
    reset: float  # seconds until the whole burst is available again


@dataclass(frozen=True, slots=True)
class Members:
    """A member set as read at one moment: its version and each live member's remaining seconds."""

    version: int
    members: Mapping[str, float]


class StoreUnavailable(Exception):
    """The backend is down, slow or closed. Each use decides its answer: revocation and sessions
    fail closed, rate limiting open (docs/decisions.md, "The shared store")."""


class StoreFull(ValueError):
    """A member set already holds MAX_MEMBERS live members; the new one was not added."""


@runtime_checkable
class Store(Protocol):
    """An async key-value store with mandatory TTLs. Each operation is atomic on its own."""

    name: str  # "memory" | "redis": for logs, metrics and readiness messages

    async def get(self, key: str) -> bytes | None:
        """The value, or None if the key is absent or expired."""
        ...

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """Store `value` for `ttl` seconds, replacing any previous value and its TTL."""
        ...

    async def set_if_absent(self, key: str, value: bytes, ttl: float) -> bool:
        """Store only if absent (an expired key is absent); True if stored. For single-use markers:
        of any number of concurrent callers, exactly one gets True."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the key; removing an absent key is not an error."""
        ...

    async def take(self, key: str) -> bytes | None:
        """Get and delete in one step: of concurrent callers at most one gets the value."""
        ...

    async def incr(self, key: str, amount: int = 1, *, ttl: float) -> int:
        """Add `amount` to the counter and return the new value. An absent key is created as `amount`
        with `ttl` (a fixed window); an existing key keeps its value's TTL. ValueError if the stored
        value is not a decimal integer or the result leaves the signed 64-bit range."""
        ...

    async def ttl(self, key: str) -> float | None:
        """Remaining lifetime in seconds, None if absent or expired."""
        ...

    async def rate_limit(self, key: str, *, rate: float, burst: int) -> RateDecision:
        """One request against the limit `key`: `rate` requests per second on average, `burst` at
        once. A passing request is counted; a refused one is not. The state expires once the bucket
        is full again."""
        ...

    async def add_member(self, key: str, member: str, ttl: float) -> int:
        """Add `member` to the set for `ttl` seconds (a present member takes the new expiry); the
        set's new version. StoreFull if the set holds MAX_MEMBERS other live members."""
        ...

    async def remove_member(self, key: str, member: str) -> int:
        """Remove `member` (absent is not an error); the set's new version."""
        ...

    async def members(self, key: str) -> Members:
        """The live members with their remaining seconds, and the version they belong to."""
        ...

    async def members_version(self, key: str) -> int:
        """The set's version (0 if it was never written): cheap, for polling."""
        ...

    async def set_sliding(self, key: str, value: bytes, *, idle: float, max_age: float) -> None:
        """Store `value` until `idle` seconds pass without a `get_sliding`, and at most `max_age`
        seconds from now; replaces any previous record."""
        ...

    async def get_sliding(self, key: str) -> bytes | None:
        """The record, renewing its idle time (never past its absolute end); None if it ended."""
        ...

    async def delete_sliding(self, key: str) -> None:
        """End the record; ending an absent one is not an error."""
        ...

    async def ping(self) -> None:
        """Return if the store answers (readiness); raise StoreUnavailable otherwise."""
        ...

    async def close(self) -> None:
        """Release resources. Idempotent; every later call except close raises StoreUnavailable."""
        ...


def check_key(key: str) -> None:
    if not isinstance(key, str):
        raise TypeError(f"store key must be str, not {type(key).__name__}")
    # isprintable() is False for control, format and separator characters except the ASCII space.
    if not key or not key.isprintable() or " " in key:
        raise ValueError(f"store key must be non-empty, printable, without whitespace: {key[:64]!r}")
    size = len(key) if key.isascii() else len(key.encode())
    if size > MAX_KEY_BYTES:
        raise ValueError(f"store key is {size} bytes, more than {MAX_KEY_BYTES}: {key[:64]!r}...")


def check_value(value: bytes) -> None:
    # Only immutable bytes: a bytearray could change after being stored in memory.
    if not isinstance(value, bytes):
        raise TypeError(f"store value must be bytes, not {type(value).__name__}")
    if len(value) > MAX_VALUE_BYTES:
        raise ValueError(f"store value is {len(value)} bytes, more than {MAX_VALUE_BYTES}")


def check_ttl(ttl: float) -> None:
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise TypeError(f"ttl must be a number of seconds, not {type(ttl).__name__}")
    if not (0 < ttl <= MAX_TTL):  # also refuses NaN
        raise ValueError(f"ttl must be more than 0 and at most {MAX_TTL:g} seconds, not {ttl!r}")


def check_amount(amount: int) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise TypeError(f"incr amount must be int, not {type(amount).__name__}")
    if not INT64_MIN <= amount <= INT64_MAX:
        raise ValueError(f"incr amount {amount} is outside the signed 64-bit range")


def check_member(member: str) -> None:
    try:
        check_key(member)
    except (TypeError, ValueError) as error:
        raise type(error)(str(error).replace("store key", "set member", 1)) from None


def check_rate(rate: float, burst: int) -> None:
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        raise TypeError(f"rate must be a number of requests per second, not {type(rate).__name__}")
    if not (0 < rate <= MAX_RATE):  # also refuses NaN
        raise ValueError(f"rate must be more than 0 and at most {MAX_RATE:g} per second, not {rate!r}")
    if isinstance(burst, bool) or not isinstance(burst, int):
        raise TypeError(f"burst must be int, not {type(burst).__name__}")
    if not 1 <= burst <= MAX_BURST:
        raise ValueError(f"burst must be from 1 to {MAX_BURST}, not {burst}")
    if burst / rate > MAX_TTL:
        raise ValueError(f"a burst of {burst} at {rate:g}/s takes longer than {MAX_TTL:g} seconds to refill")


def check_sliding(idle: float, max_age: float) -> None:
    for name, seconds in (("idle", idle), ("max_age", max_age)):
        try:
            check_ttl(seconds)
        except (TypeError, ValueError) as error:
            raise type(error)(f"{name} {error}") from None


def ttl_millis(ttl: float) -> int:
    """A checked TTL in whole milliseconds, rounded up (Redis PX/PEXPIRE refuse 0)."""
    return max(1, math.ceil(ttl * 1000))
