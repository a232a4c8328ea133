"""Session records for browser login: each a sliding record (ends after `idle` seconds unused, and
`max_age` after it began, whatever happens), indexed by subject, so one back-channel logout ends
every session of a user on every replica.

Keys hold digests, never the session id or subject themselves: both come from outside (a cookie, a
logout token) and a session id is a bearer secret. `session:<sha256(sid)>` is the record, its value
`<sha256(sub)> <data>`; `sessions-of:<sha256(sub)>` is a member set of the subject's session
digests, and `sessions-of-sid:<sha256(provider sid)>` the same for the provider's session id (the ID
token's `sid`, what a back-channel logout names). The indexes are written before the record, so a
record is never missing from them; an index entry whose record is gone is harmless (ending it is a
no-op) and expires with the session's `max_age`. Ending a live session also leaves
`session-ended:<digest>` for `max_age`, written before the record is deleted (only for a record that
exists: an id from a cookie never becomes a key by itself): a refresh that was at the provider meanwhile
writes the record back, then finds the marker and deletes it again, so no ended session comes back.
Every call may raise StoreUnavailable: sessions fail closed.
"""

from __future__ import annotations

import hashlib

from authcar.store.base import Store


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class SessionRecords:
    def __init__(self, store: Store, *, idle: float, max_age: float) -> None:
        self.store = store
        self.idle = idle
        self.max_age = max_age

    async def create(self, sid: str, sub: str, data: bytes, *, provider_sid: str | None = None) -> None:
        session, subject = digest(sid), digest(sub)
        await self.store.add_member(f"sessions-of:{subject}", session, self.max_age)
        if provider_sid is not None:
            await self.store.add_member(f"sessions-of-sid:{digest(provider_sid)}", session, self.max_age)
        value = subject.encode() + b" " + data
        await self.store.set_sliding(f"session:{session}", value, idle=self.idle, max_age=self.max_age)

    async def load(self, sid: str) -> bytes | None:
        """The session's data, renewing its idle time; None if it ended or never was."""
        value = await self.store.get_sliding(f"session:{digest(sid)}")
        return None if value is None else value.partition(b" ")[2]

    async def end(self, sid: str) -> None:
        session = digest(sid)
        value = await self.store.get_sliding(f"session:{session}")
        if value is None:
            return  # nothing to end (nor to mark: a cookie of any value must not become a key)
        await self.store.set(f"session-ended:{session}", b"", self.max_age)
        await self.store.delete_sliding(f"session:{session}")
        await self.store.remove_member(f"sessions-of:{value.partition(b' ')[0].decode()}", session)

    async def end_subject(self, sub: str) -> int:
        """End every session of `sub` (back-channel logout by subject); how many were live."""
        return await self.end_indexed(f"sessions-of:{digest(sub)}")

    async def end_provider_session(self, provider_sid: str) -> int:
        """End every session made under the provider's session `provider_sid` (back-channel logout
        by `sid`); how many were live."""
        return await self.end_indexed(f"sessions-of-sid:{digest(provider_sid)}")

    async def knows_provider_session(self, provider_sid: str) -> bool:
        """Whether a session made under the provider's session `provider_sid` is indexed (live or
        ended here since, e.g. by sign-out), i.e. the provider's `sid` is one its ID tokens named."""
        return bool((await self.store.members(f"sessions-of-sid:{digest(provider_sid)}")).members)

    async def end_indexed(self, index: str) -> int:
        sessions = list((await self.store.members(index)).members)
        live = 0
        for session in sessions:
            if await self.store.get_sliding(f"session:{session}") is not None:
                live += 1
                await self.store.set(f"session-ended:{session}", b"", self.max_age)
                await self.store.delete_sliding(f"session:{session}")
            await self.store.remove_member(index, session)
        return live

    async def replace(self, sid: str, sub: str, data: bytes, *, max_age: float) -> bool:
        """New data for a live session (a refresh), ending `max_age` from now: the caller passes
        what is left of the session's absolute lifetime, so a refresh never extends it. False (and
        no record) when the session ended meanwhile (sign-out, back-channel logout)."""
        session = digest(sid)
        value = digest(sub).encode() + b" " + data
        await self.store.set_sliding(
            f"session:{session}", value, idle=self.idle, max_age=min(max_age, self.max_age)
        )
        # Checked after the write: an end() that deleted the record before it had left its marker.
        if await self.store.get(f"session-ended:{session}") is not None:
            await self.store.delete_sliding(f"session:{session}")
            return False
        return True
