"""MemberView: a replica's local copy of a member set sees another replica's change at its next
refresh, reads only the version while nothing changed, and says how current it is."""

from __future__ import annotations

import asyncio
import time

import pytest

from authcar.store import MemoryStore, StoreUnavailable
from authcar.store.member_view import MemberView
from tests.store.conftest import StoreFactory


async def test_a_change_on_one_replica_is_seen_by_another_at_its_next_refresh(
    shared_store: StoreFactory,
) -> None:
    writer, reader = shared_store(), shared_store()
    view = MemberView(reader, "revocations")
    assert await view.refresh() is True  # the first one loads
    assert "jti:a" not in view
    await writer.add_member("revocations", "jti:a", 60)
    assert await view.refresh() is True
    assert "jti:a" in view
    assert await view.refresh() is False  # nothing moved: only the version was read
    assert view.reloads == 2
    await writer.remove_member("revocations", "jti:a")
    assert await view.refresh() is True
    assert "jti:a" not in view


async def test_the_background_poll_keeps_the_view_current(shared_store: StoreFactory) -> None:
    writer, reader = shared_store(), shared_store()
    view = MemberView(reader, "revocations", poll_interval=0.05)
    task = asyncio.create_task(view.run())
    try:
        await writer.add_member("revocations", "sub:alice", 60)
        deadline = time.monotonic() + 10  # generous: the promise is one poll, this only stops a hang
        while "sub:alice" not in view:
            assert time.monotonic() < deadline, "the view never saw the change"
            await asyncio.sleep(0.01)
    finally:
        task.cancel()


async def test_members_expire_locally_between_polls(shared_store: StoreFactory) -> None:
    writer = shared_store()
    await writer.add_member("revocations", "jti:short", 0.5)
    await writer.add_member("revocations", "jti:long", 60)
    view = MemberView(shared_store(), "revocations")
    await view.refresh()
    assert "jti:long" in view
    if "jti:short" not in view:
        pytest.skip("this machine stalled past the member's 0.5 s before the view loaded it")
    deadline = time.monotonic() + 10
    while "jti:short" in view:  # no refresh: the local deadline alone ends it
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert set(view.members()) == {"jti:long"}


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_current_says_how_long_ago_the_copy_was_confirmed() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    view = MemberView(store, "revocations", clock=clock)
    assert not view.current(within=1)
    await store.add_member("revocations", "jti:x", 30)
    await view.refresh()
    assert view.current(within=1)
    clock.now += 0.9
    assert view.current(within=1)
    clock.now += 0.2
    assert not view.current(within=1)
    await store.close()  # the store is now unavailable
    with pytest.raises(StoreUnavailable, match="closed"):
        await view.refresh()
    assert not view.current(within=1)
    assert "jti:x" in view  # the last copy is kept for whoever decides to fail open
    clock.now += 30
    assert "jti:x" not in view
