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

Wrong types raise TypeError, out-of-range values ValueError; both are caller bugs, not outages.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

MAX_KEY_BYTES = 512
MAX_VALUE_BYTES = 1024 * 1024
# Longer than any session or token lifetime we expect; bounds what a misconfiguration can pin in memory.
MAX_TTL = 366 * 24 * 3600.0
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


class StoreUnavailable(Exception):
    """The backend is down, slow or closed. Callers fail closed (deny, or 503), never open."""


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


def ttl_millis(ttl: float) -> int:
    """A checked TTL in whole milliseconds, rounded up (Redis PX/PEXPIRE refuse 0)."""
    return max(1, math.ceil(ttl * 1000))
