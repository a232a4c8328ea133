"""RedisStore when Redis fails: down, silent, restarting, failing over, refusing the password.

Every failure is StoreUnavailable within the call's deadline (asserted with a generous bound, not a
stopwatch), and the same store object works again once Redis does, without being rebuilt."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from authcar.store import StoreFull, StoreUnavailable
from authcar.store.redis import RedisOptions, RedisStore
from tests.support.redis_servers import (
    FAILOVER_TIMEOUT,
    HOST,
    SentinelSet,
    TlsFiles,
    cluster,
    sentinel_set,
    standalone,
)
from tests.support.tls_material import CertAuthority

# The default deadline, where the deadline is what is tested. Tests whose store must first succeed
# use SETUP_TIMEOUT: a loaded machine can take longer than 0.25 s to connect (a Cluster client's
# first call also reads the slot map), which would fail the set-up, not the behaviour under test.
TIMEOUT = 0.25
SETUP_TIMEOUT = 2.0
# A failed call must end near its deadline; this bound only catches a call that hangs.
HANG = TIMEOUT + 10.0


async def unavailable_within(store: RedisStore, bound: float = HANG) -> StoreUnavailable:
    start = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        await store.get("k")
    assert time.monotonic() - start < bound
    return caught.value


async def until_available(store: RedisStore, key: str, bound: float = FAILOVER_TIMEOUT) -> bytes | None:
    """Poll `get` until the store answers again (StoreUnavailable counts as not yet)."""
    deadline = time.monotonic() + bound
    while True:
        try:
            return await store.get(key)
        except StoreUnavailable:
            assert time.monotonic() < deadline, "the store did not come back"
            await asyncio.sleep(0.05)


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A TCP server that accepts connections and never answers: a Redis that hangs."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, HOST, 0)
    yield server.sockets[0].getsockname()[1]
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize("scheme", ["redis", "redis+sentinel", "redis+cluster"])
async def test_a_server_that_never_answers_is_unavailable_within_the_timeout(
    silent_port: int, scheme: str
) -> None:
    path = "/mymaster" if scheme == "redis+sentinel" else ""
    store = RedisStore(RedisOptions(f"{scheme}://{HOST}:{silent_port}{path}", timeout=TIMEOUT))
    try:
        error = await unavailable_within(store)
        assert f"took more than {TIMEOUT:g}s" in str(error)
        await unavailable_within(store)  # and again: nothing was left waiting
        with pytest.raises(StoreUnavailable):
            await store.ping()
    finally:
        await store.close()


@pytest.mark.parametrize("scheme", ["redis", "redis+sentinel", "redis+cluster"])
async def test_nothing_listening_is_unavailable(scheme: str, tmp_path: Path) -> None:
    with standalone(tmp_path) as server:
        port = server.server.port
    path = "/mymaster" if scheme == "redis+sentinel" else ""
    store = RedisStore(RedisOptions(f"{scheme}://{HOST}:{port}{path}", timeout=TIMEOUT))
    try:
        for call in (store.get("k"), store.set("k", b"v", 1), store.incr("n", ttl=1), store.take("k")):
            with pytest.raises(StoreUnavailable):
                await call
    finally:
        await store.close()


async def test_a_restarted_server_is_used_again_by_the_same_store(tmp_path: Path) -> None:
    with standalone(tmp_path) as server:
        store = RedisStore(RedisOptions(server.url, timeout=SETUP_TIMEOUT))
        try:
            # Several pooled connections, all of which the restart breaks.
            await asyncio.gather(*(store.set(f"k{i}", b"before", 60) for i in range(20)))
            server.server.stop()
            await unavailable_within(store)
            server.server.start()  # same port, empty (no persistence)
            assert await until_available(store, "k0", bound=30) is None
            # Every later call works: no stale connection is left in the pool to fail once.
            results = await asyncio.gather(*(store.incr(f"n{i}", ttl=60) for i in range(20)))
            assert results == [1] * 20
        finally:
            await store.close()


async def test_a_killed_server_is_unavailable_and_then_used_again(tmp_path: Path) -> None:
    with standalone(tmp_path) as server:
        store = RedisStore(RedisOptions(server.url, timeout=SETUP_TIMEOUT))
        try:
            await store.set("k", b"v", 60)
            server.server.kill()
            await unavailable_within(store)
            server.server.start()
            assert await until_available(store, "k", bound=30) is None
            await store.set("k", b"after", 60)
            assert await store.get("k") == b"after"
        finally:
            await store.close()


@pytest.fixture
def failing_over(tmp_path: Path) -> Iterator[SentinelSet]:
    with sentinel_set(tmp_path, sentinels=1, down_after_ms=500) as group:
        yield group


async def test_the_store_follows_a_sentinel_failover(failing_over: SentinelSet) -> None:
    group = failing_over
    store = RedisStore(RedisOptions(group.url, timeout=SETUP_TIMEOUT))
    try:
        await store.set("survives", b"replicated", 300)
        with group.master.client() as client:
            assert client.wait(1, 10_000) == 1  # the replica has it before the master dies
        old_port = group.master.port
        group.master.kill()
        assert await until_available(store, "survives") == b"replicated"
        assert group.master_port() == group.replica.port != old_port
        await store.set("written-after", b"v", 60)  # writes reach the new master
        with group.replica.client() as client:
            assert client.get("authcar:v1:written-after") == b"v"
            assert client.info("replication")["role"] == "master"
    finally:
        await store.close()


async def test_a_stopped_cluster_node_fails_its_keys_and_comes_back(tmp_path: Path) -> None:
    with cluster(tmp_path) as group:
        store = RedisStore(RedisOptions(group.url, timeout=SETUP_TIMEOUT))
        try:
            keys = [f"key{i}" for i in range(30)]  # spread over the three masters' slots
            await asyncio.gather(*(store.set(key, b"v", 300) for key in keys))
            group.nodes[1].stop()  # its cluster config file is kept: it rejoins with its slots
            outcomes = await asyncio.gather(*(store.get(key) for key in keys), return_exceptions=True)
            assert any(isinstance(outcome, StoreUnavailable) for outcome in outcomes)
            others = [outcome for outcome in outcomes if not isinstance(outcome, StoreUnavailable | bytes)]
            assert not others, [f"{type(other).__name__}: {other!r}" for other in others]
            group.nodes[1].start()
            for key in keys:
                assert await until_available(store, key) in (b"v", None)  # the restarted node is empty
        finally:
            await store.close()


async def test_password_from_the_url_or_the_override(tmp_path: Path) -> None:
    with standalone(tmp_path, password="s3cret-pass") as server:
        port = server.server.port
        right = RedisStore(RedisOptions(f"redis://:s3cret-pass@{HOST}:{port}", timeout=5))
        overridden = RedisStore(
            RedisOptions(f"redis://:wrong@{HOST}:{port}", password="s3cret-pass", timeout=5)
        )
        refused = RedisStore(
            RedisOptions(f"redis://:s3cret-pass@{HOST}:{port}", password="nope-nope", timeout=5)
        )
        missing = RedisStore(RedisOptions(f"redis://{HOST}:{port}", timeout=5))
        try:
            await right.set("k", b"v", 60)
            assert await overridden.get("k") == b"v"
            for store in (refused, missing):
                with pytest.raises(StoreUnavailable) as caught:
                    await store.get("k")
                message = str(caught.value)
                assert "s3cret-pass" not in message
                assert "nope-nope" not in message
            assert "s3cret-pass" not in repr(right)
            assert "***" in repr(right)
        finally:
            for store in (right, overridden, refused, missing):
                await store.close()


async def test_keys_are_prefixed_and_versioned(tmp_path: Path) -> None:
    with standalone(tmp_path) as server:
        store = RedisStore(RedisOptions(server.url, key_prefix="team-a/", timeout=5))
        try:
            await store.set("introspect:abc", b"v", 60)
            await store.incr("n", ttl=60)
            with server.server.client() as client:
                assert sorted(client.keys("*")) == [b"team-a/v1:introspect:abc", b"team-a/v1:n"]
                assert all(0 < client.pttl(key) <= 60_000 for key in client.keys("*"))
        finally:
            await store.close()


async def test_bad_input_is_refused_before_any_io(silent_port: int) -> None:
    # Against a server that never answers, a bad call fails at once with the caller's error, not
    # with StoreUnavailable after the deadline.
    store = RedisStore(RedisOptions(f"redis://{HOST}:{silent_port}", timeout=30))
    try:
        start = time.monotonic()
        with pytest.raises(ValueError, match="store key"):
            await store.get("a b")
        with pytest.raises(TypeError, match="store value"):
            await store.set("k", "text", 10)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="ttl"):
            await store.incr("k", ttl=0)
        assert time.monotonic() - start < 30
    finally:
        await store.close()


def tls_files(workdir: Path, ca: CertAuthority) -> TlsFiles:
    issued = ca.issue_server(hostname="localhost")  # also names 127.0.0.1
    files = TlsFiles(workdir / "cert.pem", workdir / "key.pem", workdir / "ca.pem")
    files.cert.write_bytes(issued.cert_pem)
    files.key.write_bytes(issued.key_pem)
    files.ca.write_bytes(ca.cert_pem)
    return files


async def test_rediss_verifies_the_server_against_the_ca_file(tmp_path: Path) -> None:
    files = tls_files(tmp_path, CertAuthority("redis-ca"))
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(CertAuthority("not-the-redis-ca").cert_pem)
    with standalone(tmp_path, tls=files) as server:
        assert server.url.startswith("rediss://")
        trusted = RedisStore(RedisOptions(server.url, ca_file=files.ca, timeout=5))
        untrusted = RedisStore(RedisOptions(server.url, ca_file=other_ca, timeout=5))
        system_cas = RedisStore(RedisOptions(server.url, timeout=5))
        plain = RedisStore(RedisOptions(server.url.replace("rediss://", "redis://"), timeout=TIMEOUT))
        try:
            await trusted.set("k", b"over tls", 60)
            assert await trusted.get("k") == b"over tls"
            for store in (untrusted, system_cas, plain):
                with pytest.raises(StoreUnavailable):
                    await store.get("k")
        finally:
            for store in (trusted, untrusted, system_cas, plain):
                await store.close()


async def test_structures_are_namespaced_tagged_and_expire(tmp_path: Path) -> None:
    with standalone(tmp_path) as server:
        store = RedisStore(RedisOptions(server.url, timeout=5))
        try:
            await store.rate_limit("client:abc", rate=1, burst=5)
            await store.add_member("revocations", "jti:x", 60)
            await store.set_sliding("session:1", b"v", idle=30, max_age=60)
            with server.server.client() as client:
                keys = sorted(client.keys("*"))
                assert keys == [
                    b"authcar:v1/members:{revocations}",
                    b"authcar:v1/members:{revocations}:version",
                    b"authcar:v1/rate:client:abc",
                    b"authcar:v1/sliding:session:1",
                ]
                assert all(client.pttl(key) > 0 for key in keys)
                assert client.pttl(b"authcar:v1/rate:client:abc") <= 1000  # one of five used: 1 s to refill
                assert (
                    client.pttl(b"authcar:v1/sliding:session:1") <= 30_000
                )  # the idle time, not the max age
        finally:
            await store.close()


async def test_a_full_member_set_refuses_new_members(tmp_path: Path) -> None:
    with standalone(tmp_path) as server:
        calls: list[tuple[str, str]] = []
        store = RedisStore(
            RedisOptions(server.url, timeout=5, max_members=3),
            on_call=lambda op, result, _: calls.append((op, result)),
        )
        try:
            for member in ("a", "b", "c"):
                await store.add_member("set", member, 60)
            version = await store.members_version("set")
            with pytest.raises(StoreFull, match="3 members"):
                await store.add_member("set", "d", 60)
            assert await store.members_version("set") == version  # nothing changed
            assert calls[-2:] == [("add_member", "refused"), ("members_version", "ok")]
            await store.add_member("set", "a", 120)  # a present member may be renewed
            await store.remove_member("set", "b")
            await store.add_member("set", "d", 60)
            assert set((await store.members("set")).members) == {"a", "c", "d"}
        finally:
            await store.close()


async def test_member_versions_never_repeat_after_redis_lost_its_data(tmp_path: Path) -> None:
    # A local view at version v must see a change after a restart without persistence, even though
    # the counter started again: versions come from the server's clock.
    with standalone(tmp_path) as server:
        store = RedisStore(RedisOptions(server.url, timeout=5))
        try:
            before = await store.add_member("revocations", "jti:x", 60)
            server.server.restart()
            assert await until_available(store, "k", bound=30) is None
            assert await store.members_version("revocations") == 0
            assert await store.add_member("revocations", "jti:y", 60) > before
        finally:
            await store.close()


async def test_a_client_library_failure_of_any_kind_is_unavailability(tmp_path: Path) -> None:
    """An exception that is no RedisError (the Cluster client failed this way while rebuilding its
    slot table) still takes the caller's unavailability path, and the store keeps working."""
    with standalone(tmp_path) as server:
        store = RedisStore(RedisOptions(server.url, timeout=SETUP_TIMEOUT))
        try:
            await store.set("k", b"v", 60)
            client = store._client
            original = client.get

            async def broken(*args: object, **kwargs: object) -> object:
                raise AttributeError("'NoneType' object has no attribute 'read_response'")

            client.get = broken  # type: ignore[method-assign]
            with pytest.raises(StoreUnavailable, match="AttributeError"):
                await store.get("k")
            client.get = original  # type: ignore[method-assign]
            assert await store.get("k") == b"v"
        finally:
            await store.close()
