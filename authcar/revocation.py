"""Revocations: tokens refused by their `jti`, `sub` or `sid` on every replica within a second.

The list is one member set in the shared store (`revocations`), each member `<kind>:<value as
base64url>` with its own expiry, so any string a token can carry fits the store's key rules and no
client-chosen text is ever a raw key. Values are at most 255 UTF-8 bytes (OpenID Connect Core §2
caps `sub` at 255 characters); a token whose claim is longer simply matches nothing. At most
MAX_ENTRIES (10,000) live entries: each worker reloads the whole list in one store call whenever it
changes, and that call must fit within AUTHCAR_REDIS_TIMEOUT.

Every worker keeps a local copy (authcar.store.MemberView) that a background task confirms against
the store every POLL_INTERVAL seconds (one small read; the members are reloaded only when the set's
version moved), so the per-request check is a dictionary lookup, never a store round trip. Tokens
already accepted and cached (the connection's token memo, the verified-token and introspection
caches) are checked too: the check reads the Identity those caches hand out.

The promise: a revocation written before the copy's last confirmation is enforced, and a copy that
was last confirmed PROMISE (1 s) ago or longer is not trusted. Then, by default, every request
with an identity gets 503 `revocation_unavailable` (fail closed); with AUTHCAR_REVOCATION_FAIL_OPEN
it passes on the last copy, counted in `authcar_store_fail_open_total{use="revocation"}` and logged
at most once per 10 s. What the copy already holds is enforced either way.

Identities checked: bearer JWTs and introspected tokens (their `jti`, `sub` and `sid` claims as
the token states them, not the configured subject claim), and client certificates through `sub`
(their URI SAN or CN, as the identity names it). Anonymous requests (public paths) carry nothing
to revoke and are never refused here.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from authcar.errors import Revoked, ServiceUnavailable
from authcar.identity import Identity
from authcar.loglimit import LogLimiter
from authcar.observe import Metrics
from authcar.store import MAX_TTL, Store, StoreFull, StoreUnavailable
from authcar.store.member_view import MemberView

log = logging.getLogger("authcar.revocation")

Kind = Literal["jti", "sub", "sid"]
KINDS: tuple[Kind, ...] = ("jti", "sub", "sid")
SET_KEY = "revocations"
MAX_VALUE_BYTES = 255
# Without `expires_in`: a day, longer than the access tokens and sessions authcar accepts by default
# (AUTHCAR_SESSION_MAX_AGE is 86400); at most the store's own bound on any entry's lifetime.
DEFAULT_EXPIRES_IN = 24 * 3600.0
MAX_EXPIRES_IN = MAX_TTL
# How old a revocation may be before every replica enforces it, and how often the copy is confirmed.
# A revocation is seen by the first refresh that starts after it was written: at most
# max(POLL_INTERVAL, refresh) + refresh later, a refresh taking at most two store calls.
# Live entries the admin API adds up to. Every worker reloads the whole list whenever it changes,
# in one store call under AUTHCAR_REDIS_TIMEOUT: at 10,000 entries that read takes ~80 ms from a
# local Redis (and the copy ~3.3 MB per worker), at 100,000 (the store's own bound) ~0.75 s, past
# the default timeout, so the list could never load again and every request would fail closed.
MAX_ENTRIES = 10_000
PROMISE = 1.0
POLL_INTERVAL = 0.25
STORE_CALLS_PER_REFRESH = 2


def worst_delay(poll_interval: float, store_timeout: float) -> float:
    """The longest a revocation can take to reach a replica whose polls keep succeeding."""
    refresh = STORE_CALLS_PER_REFRESH * store_timeout
    return max(poll_interval, refresh) + refresh


def member_of(kind: Kind, value: str) -> str:
    encoded = base64.urlsafe_b64encode(value.encode("utf-8")).rstrip(b"=").decode("ascii")
    return f"{kind}:{encoded}"


def entry_of(member: str) -> tuple[Kind, str] | None:
    """The (kind, value) a member names; None for anything this version did not write."""
    kind, _, encoded = member.partition(":")
    if kind not in KINDS:
        return None
    try:
        value = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return (kind, value) if value else None  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class Revocation:
    """One entry: a token is refused while its `kind` claim equals `value`."""

    kind: Kind
    value: str
    expires_in: float = DEFAULT_EXPIRES_IN


class RevocationList:
    """The store's revocation set and this worker's copy of it (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        *,
        fail_open: bool,
        metrics: Metrics | None = None,
        poll_interval: float = POLL_INTERVAL,
        promise: float = PROMISE,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.fail_open = fail_open
        self.metrics = metrics
        self.poll_interval = poll_interval
        self.promise = promise
        self.max_entries = max_entries
        self.clock = clock
        self.view = MemberView(store, SET_KEY, poll_interval=poll_interval, clock=clock)
        self.revoked: dict[tuple[str, str], float] = {}  # (kind, value) -> local time it expires
        self.last_error = ""
        self.quiet = LogLimiter(clock=clock)

    # --- the per-request check ------------------------------------------------------------------

    def check(self, identity: Identity) -> None:
        """Revoked (401) or ServiceUnavailable (503) for an identity this list refuses."""
        if identity.is_anonymous:
            return
        revoked = self.revoked
        if revoked:
            claims = identity.claims
            for kind in KINDS:
                value = claims.get(kind)
                if isinstance(value, str):
                    deadline = revoked.get((kind, value))
                    if deadline is not None and deadline > self.clock():
                        raise Revoked()
        if not self.view.current(self.promise):
            self.not_current()

    def not_current(self) -> None:
        if not self.fail_open:
            raise ServiceUnavailable("revocations cannot be checked right now", code="revocation_unavailable")
        if self.metrics is not None:
            self.metrics.store_fail_open.labels(use="revocation").inc()
        left_out = self.quiet("fail_open")
        if left_out is not None:
            log.warning(
                "revocation_fail_open",
                extra={"error": self.last_error or "not yet loaded", "suppressed": left_out},
            )

    # --- keeping the copy current ---------------------------------------------------------------

    async def refresh(self) -> None:
        """Confirm the copy against the store (StoreUnavailable: the copy stays as it was)."""
        if await self.view.refresh():
            now = self.clock()
            revoked = {}
            for member, left in self.view.members().items():
                entry = entry_of(member)
                if entry is not None:
                    revoked[entry] = now + left
            self.revoked = revoked
            if self.metrics is not None:
                self.metrics.revocations.set(len(revoked))
        if self.last_error:
            log.info("revocations_current", extra={"after_error": self.last_error})
            self.last_error = ""

    async def run(self) -> None:
        """Refresh every `poll_interval` seconds from the start of the previous one, until cancelled."""
        due = time.monotonic()
        while True:
            try:
                await self.refresh()
            except StoreUnavailable as error:
                self.refresh_failed(error)
            due += self.poll_interval
            delay = due - time.monotonic()
            if delay < 0:  # a slow refresh: start the next at once, without a burst to catch up
                due, delay = time.monotonic(), 0.0
            await asyncio.sleep(delay)

    def refresh_failed(self, error: StoreUnavailable) -> None:
        first = not self.last_error
        self.last_error = str(error) or type(error).__name__
        if self.metrics is not None:
            self.metrics.revocation_refresh_failures.inc()
        left_out = self.quiet("refresh_failed")
        if first or left_out is not None:
            log.error(
                "revocations_unavailable", extra={"error": self.last_error, "suppressed": left_out or 0}
            )

    def readiness(self) -> dict[str, object]:
        """The `revocations` entry of /readyz. Never failing (a shared store's outage would take
        every replica out at once; requests get their own answer), but saying how current it is."""
        confirmed = self.view.confirmed_at
        state: dict[str, object] = {
            "ok": True,
            "current": self.view.current(self.promise),
            "entries": len(self.revoked),
            "fail_open": self.fail_open,
        }
        if confirmed is not None:
            state["confirmed_seconds_ago"] = round(self.clock() - confirmed, 3)
        if self.last_error:
            state["detail"] = self.last_error
        return state

    # --- the admin API's operations -------------------------------------------------------------

    async def add(self, revocation: Revocation) -> None:
        """Write the entry (StoreUnavailable; StoreFull at `max_entries`, as this worker's current
        copy counts them), then refresh this worker's copy at once."""
        await self.refresh()
        now = self.clock()
        live = sum(1 for deadline in self.revoked.values() if deadline > now)
        known = self.revoked.get((revocation.kind, revocation.value), now) > now
        if not known and live >= self.max_entries:
            raise StoreFull(f"the revocation list holds {live} live entries")
        await self.store.add_member(
            SET_KEY, member_of(revocation.kind, revocation.value), revocation.expires_in
        )
        await self.refresh_quietly()

    async def remove(self, kind: Kind, value: str) -> None:
        await self.store.remove_member(SET_KEY, member_of(kind, value))
        await self.refresh_quietly()

    async def listed(self) -> list[Revocation]:
        """Every live entry as the store holds it now, soonest expiry first."""
        found = await self.store.members(SET_KEY)
        entries = []
        for member, left in found.members.items():
            entry = entry_of(member)
            if entry is not None:
                entries.append(Revocation(entry[0], entry[1], left))
        entries.sort(key=lambda entry: (entry.expires_in, entry.kind, entry.value))
        return entries

    async def soonest_expiry(self) -> float:
        """Seconds until the first entry expires (when the list is full: when a place frees)."""
        found = await self.store.members(SET_KEY)
        return min(found.members.values(), default=1.0)

    async def refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except StoreUnavailable as error:
            self.refresh_failed(error)


def retry_after(seconds: float) -> int:
    return max(1, math.ceil(seconds))
