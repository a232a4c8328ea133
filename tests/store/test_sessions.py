"""SessionRecords: a session written on one replica is read on another; it ends when unused, at its
max age, by id, or with every other session of its subject."""

from __future__ import annotations

import asyncio

from authcar.store.sessions import SessionRecords, digest
from tests.store.conftest import StoreFactory


async def test_a_session_written_by_one_replica_is_read_by_another(shared_store: StoreFactory) -> None:
    one = SessionRecords(shared_store(), idle=60, max_age=600)
    other = SessionRecords(shared_store(), idle=60, max_age=600)
    await one.create("sid-1", "alice", b'{"access_token": "..."}')
    assert await other.load("sid-1") == b'{"access_token": "..."}'
    assert await other.load("sid-unknown") is None


async def test_ending_a_session_by_id(shared_store: StoreFactory) -> None:
    sessions = SessionRecords(shared_store(), idle=60, max_age=600)
    await sessions.create("sid-1", "alice", b"one")
    await sessions.create("sid-2", "alice", b"two")
    await SessionRecords(shared_store(), idle=60, max_age=600).end("sid-1")
    assert await sessions.load("sid-1") is None
    assert await sessions.load("sid-2") == b"two"
    index = (await sessions.store.members(f"sessions-of:{digest('alice')}")).members
    assert list(index) == [digest("sid-2")]
    await sessions.end("sid-1")  # again: nothing to do


async def test_back_channel_logout_ends_every_session_of_the_subject(shared_store: StoreFactory) -> None:
    sessions = SessionRecords(shared_store(), idle=60, max_age=600)
    await asyncio.gather(*(sessions.create(f"alice-{i}", "alice", b"a") for i in range(5)))
    await sessions.create("bob-1", "bob", b"b")
    logout = SessionRecords(shared_store(), idle=60, max_age=600)  # on another replica
    assert await logout.end_subject("alice") == 5
    assert [await sessions.load(f"alice-{i}") for i in range(5)] == [None] * 5
    assert await sessions.load("bob-1") == b"b"
    assert await logout.end_subject("alice") == 0


async def test_back_channel_logout_by_provider_sid_ends_only_that_provider_session(
    shared_store: StoreFactory,
) -> None:
    sessions = SessionRecords(shared_store(), idle=60, max_age=600)
    await sessions.create("laptop-1", "alice", b"l1", provider_sid="idp-laptop")
    await sessions.create("laptop-2", "alice", b"l2", provider_sid="idp-laptop")  # signed in again
    await sessions.create("phone", "alice", b"p", provider_sid="idp-phone")
    await sessions.create("no-sid", "alice", b"n")
    logout = SessionRecords(shared_store(), idle=60, max_age=600)  # on another replica
    assert await logout.end_provider_session("idp-laptop") == 2
    assert await sessions.load("laptop-1") is None
    assert await sessions.load("laptop-2") is None
    assert await sessions.load("phone") == b"p"
    assert await sessions.load("no-sid") == b"n"
    assert await logout.end_provider_session("idp-laptop") == 0
    # Ended by id first: the sid index still names it, and ending it again counts nothing.
    await sessions.end("phone")
    assert await logout.end_provider_session("idp-phone") == 0


async def test_an_unused_session_ends_after_its_idle_time(shared_store: StoreFactory) -> None:
    sessions = SessionRecords(shared_store(), idle=0.2, max_age=600)
    await sessions.create("sid", "alice", b"v")
    await asyncio.sleep(0.35)
    assert await sessions.load("sid") is None


async def test_ids_and_subjects_from_outside_never_become_keys(shared_store: StoreFactory) -> None:
    # A cookie or a logout token may carry anything: spaces, control characters, lone surrogates,
    # kilobytes. Each becomes a fixed-size digest, so no key rule refuses it.
    sessions = SessionRecords(shared_store(), idle=60, max_age=600)
    for odd in ("a b", "\x00\r\n", "\ud800", "{tag}", "x" * 10_000):
        await sessions.create(odd, odd, b"v")
        assert await sessions.load(odd) == b"v"
        assert await sessions.end_subject(odd) == 1


async def test_a_refresh_written_after_the_session_ended_does_not_bring_it_back(
    shared_store: StoreFactory,
) -> None:
    sessions = SessionRecords(shared_store(), idle=60, max_age=600)
    other = SessionRecords(shared_store(), idle=60, max_age=600)  # on another replica
    await sessions.create("by-id", "alice", b"v1", provider_sid="idp-1")
    await sessions.create("by-sid", "alice", b"v1", provider_sid="idp-2")
    await sessions.create("by-sub", "alice", b"v1", provider_sid="idp-3")
    await sessions.create("live", "bob", b"v1")
    await other.end("by-id")
    await other.end_provider_session("idp-2")
    await other.end_subject("alice")
    for sid in ("by-id", "by-sid", "by-sub"):
        assert await sessions.replace(sid, "alice", b"v2", max_age=600) is False
        assert await sessions.load(sid) is None
    assert await sessions.replace("live", "bob", b"v2", max_age=600) is True
    assert await sessions.load("live") == b"v2"
    assert await other.knows_provider_session("idp-1")  # ended by id: still indexed
    assert not await other.knows_provider_session("idp-2")  # its logout emptied the index
    assert not await other.knows_provider_session("never-seen")


async def test_ending_a_session_that_never_was_writes_nothing(shared_store: StoreFactory) -> None:
    # Sign-out and the callback end whatever id the cookie holds: a client choosing ids must not be
    # able to make the store keep a key per id.
    sessions = SessionRecords(shared_store(), idle=60, max_age=600)
    for made_up in ("never-made", "x" * 4000):
        await sessions.end(made_up)
        assert await sessions.store.get(f"session-ended:{digest(made_up)}") is None
    await sessions.create("real", "alice", b"v")
    await sessions.end("real")
    assert await sessions.store.get(f"session-ended:{digest('real')}") is not None
