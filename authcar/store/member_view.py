"""A local copy of one member set, kept current by polling its version: how a revocation list is
checked on every request without a store round trip per request.

`refresh()` reads the version (one small read) and reloads the members only when it moved. A
member's expiry is kept as a local deadline, so an expired member drops out between polls too.
`current(within)` tells whether the copy was confirmed less than `within` seconds ago: a caller that
must fail closed refuses when it is not (the store has been unreachable for that long).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from authcar.store.base import Store, StoreUnavailable

DEFAULT_POLL_INTERVAL = 0.5  # with a 1 s promise, one missed poll still keeps it


class MemberView:
    def __init__(
        self,
        store: Store,
        key: str,
        *,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.key = key
        self.poll_interval = poll_interval
        self._clock = clock
        self._deadlines: dict[str, float] = {}  # member -> local time it expires
        self.version: int | None = None  # None until the first successful refresh
        self.confirmed_at: float | None = None  # local time of the last successful refresh
        self.reloads = 0

    def __contains__(self, member: object) -> bool:
        deadline = self._deadlines.get(member) if isinstance(member, str) else None
        return deadline is not None and deadline > self._clock()

    def members(self) -> dict[str, float]:
        """The live members with their remaining seconds, as of now."""
        now = self._clock()
        return {member: at - now for member, at in self._deadlines.items() if at > now}

    def current(self, within: float) -> bool:
        return self.confirmed_at is not None and self._clock() - self.confirmed_at < within

    async def refresh(self) -> bool:
        """Confirm the copy against the store; True if it had to reload. StoreUnavailable keeps the
        last copy (and `confirmed_at`) as it was."""
        started = self._clock()
        version = await self.store.members_version(self.key)
        reloaded = version != self.version
        if reloaded:
            listed = await self.store.members(self.key)
            now = self._clock()
            self._deadlines = {member: now + left for member, left in listed.members.items()}
            self.version = listed.version
            self.reloads += 1
        self.confirmed_at = started  # what was read is at least as new as when the read began
        return reloaded

    async def run(self, on_error: Callable[[StoreUnavailable], None] | None = None) -> None:
        """Refresh every `poll_interval` until cancelled (a background task)."""
        while True:
            try:
                await self.refresh()
            except StoreUnavailable as error:
                if on_error is not None:
                    on_error(error)
            await asyncio.sleep(self.poll_interval)
