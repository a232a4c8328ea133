"""What the store costs per call, and what Redis holds per revocation and per session.

    python3 bench/store.py [--calls 2000] [--members 10000] [--no-cluster]

Starts a redis-server and a three-master Cluster in a temporary directory (tests/support/redis_servers),
then for memory, standalone Redis and the Cluster: the latency of each store call made one at a time
(p50/p99, the client in this process, loopback), the calls per second with 64 in flight and the
client CPU each costs (what a sidecar worker pays). For standalone Redis also the server's own CPU
per call with 64 in flight (`INFO cpu`, user+system, over the batch) and the calls per second that
CPU allows one Redis core (Redis runs commands on one thread): its capacity for that call, if
nothing else were the limit.

Memory, standalone Redis, two ways: `MEMORY USAGE` of one member set of --members jti's (divided)
and of one session record; and `INFO memory` used_memory before and after writing --members
entries of each kind into an empty database, divided by the count, which includes Redis's own
per-key overhead (the keyspace dictionary, expiry entries): revocations (real jti's, written as the
admin API writes them), login sessions (a BrowserSession as authcar/login stores it, with
provider-sized tokens, one user each: the record and the user's index set) and rate-limit states
(one per caller that has not been idle long enough to refill its bucket). Numbers are this
machine's.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from authcar.login.session import BrowserSession  # noqa: E402
from authcar.revocation import SET_KEY, member_of  # noqa: E402
from authcar.store import MemoryStore, Store  # noqa: E402
from authcar.store.redis import RedisOptions, RedisStore  # noqa: E402
from authcar.store.sessions import SessionRecords, digest  # noqa: E402
from tests.support.redis_servers import cluster, standalone  # noqa: E402

CALLS: dict[str, Callable[[Store, int], Awaitable[object]]] = {
    "get": lambda store, i: store.get(f"k{i % 100}"),
    "set": lambda store, i: store.set(f"k{i % 100}", b"x" * 200, 60),
    "incr": lambda store, i: store.incr(f"n{i % 100}", ttl=60),
    "rate_limit": lambda store, i: store.rate_limit(f"client:{i % 100}", rate=1e5, burst=100),
    "members_version": lambda store, i: store.members_version("revocations"),
    "get_sliding": lambda store, i: store.get_sliding(f"s{i % 100}"),
}


ServerCpu = Callable[[], float]


def server_cpu(client: redis.Redis) -> ServerCpu:
    """The server's user+system CPU seconds so far (`INFO cpu`)."""

    def read() -> float:
        info = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    return read


async def latencies(store: Store, calls: int, cpu_of_server: ServerCpu | None = None) -> None:
    for i in range(100):
        await store.set_sliding(f"s{i}", b"x" * 1024, idle=600, max_age=3600)
    for name, call in CALLS.items():
        samples = []
        for i in range(calls):
            start = time.perf_counter()
            await call(store, i)
            samples.append(time.perf_counter() - start)
        samples.sort()
        p50, p99 = statistics.median(samples), samples[int(len(samples) * 0.99)]
        server_before = cpu_of_server() if cpu_of_server else 0.0
        start, cpu = time.perf_counter(), time.process_time()
        for batch in range(calls // 64):
            await asyncio.gather(*(call(store, batch * 64 + j) for j in range(64)))
        done = (calls // 64) * 64
        rate, cpu_each = done / (time.perf_counter() - start), (time.process_time() - cpu) / done
        line = (
            f"  {name:16} p50 {p50 * 1e6:6.0f} µs  p99 {p99 * 1e6:6.0f} µs  {rate:7.0f}/s at 64 in flight,"
            f" {cpu_each * 1e6:4.0f} µs of this process's CPU each"
        )
        if cpu_of_server is not None:
            # INFO's CPU figures have microsecond resolution; the INFO call itself is in the window.
            server_each = (cpu_of_server() - server_before) / done
            line += (
                f"; server {server_each * 1e6:4.1f} µs CPU each = {1 / server_each:9,.0f}/s per Redis core"
            )
        print(line)


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def login_session(i: int) -> BrowserSession:
    """A session as a Keycloak-like provider fills it: JWT-sized tokens (access ~1.2 KB, refresh
    ~0.7 KB, ID ~1.3 KB), the ID token's claims with a few groups."""

    def token(size: int) -> str:
        return secrets.token_urlsafe(size * 3 // 4)[:size]

    now = time.time()
    claims = {
        "sub": str(uuid.UUID(int=i)),
        "email": f"user{i}@example.com",
        "email_verified": True,
        "name": f"User Number {i}",
        "preferred_username": f"user{i}",
        "groups": ["books-readers", "books-editors", "staff"],
        "iss": "https://keycloak.example.com/realms/books",
        "aud": "book-service",
        "iat": int(now),
        "exp": int(now) + 300,
        "auth_time": int(now),
        "sid": str(uuid.uuid4()),
    }
    return BrowserSession(
        subject=claims["sub"],
        issuer=claims["iss"],
        claims=claims,
        access_token=token(1200),
        refresh_token=token(700),
        id_token=token(1300),
        obtained_at=now,
        expires_at=now + 300,
        provider_sid=claims["sid"],
        signed_in_at=now,
    )


async def per_entry(
    client: redis.Redis, count: int, what: str, write: Callable[[int], Awaitable[object]]
) -> None:
    """used_memory grown by `count` writes, per write, from an empty database."""
    client.flushdb()
    before = used_memory(client)
    for start in range(0, count, 500):
        await asyncio.gather(*(write(i) for i in range(start, min(start + 500, count))))
    grown = used_memory(client) - before
    print(f"  {what}: {grown / count:,.0f} bytes each (used_memory +{grown / 2**20:.1f} MiB for {count:,})")


async def memory_deltas(store: RedisStore, client: redis.Redis, count: int) -> None:
    jtis = [str(uuid.uuid4()) for _ in range(count)]
    await per_entry(
        client,
        count,
        "revocation (a jti, one member set)",
        lambda i: store.add_member(SET_KEY, member_of("jti", jtis[i]), 86400),
    )
    sessions = SessionRecords(store, idle=3600, max_age=86400)
    size = len(login_session(0).to_bytes())

    async def create(i: int) -> None:
        session = login_session(i)
        await sessions.create(secrets.token_urlsafe(32), session.subject, session.to_bytes())

    await per_entry(client, count, f"login session ({size:,}-byte record, its user's index set)", create)
    await per_entry(
        client,
        count,
        "rate-limit state (one caller)",
        # A state lasts until the caller's bucket is full again: one request a day keeps it a day.
        lambda i: store.rate_limit(f"sub:{i:032x}", rate=1 / 86400, burst=1),
    )
    client.flushdb()


async def memory_use(store: RedisStore, admin: Callable[[str], int], members: int) -> None:
    for start in range(0, members, 500):
        await asyncio.gather(
            *(store.add_member("revocations", f"jti:{i:032x}", 86400) for i in range(start, start + 500))
        )
    per_member = admin(store._member_keys("revocations")[0]) / members
    print(f"  revocation (jti of 36 chars): {per_member:.0f} bytes each, {members} in one set")
    sessions = SessionRecords(store, idle=3600, max_age=86400)
    await sessions.create("sid-example", "alice", b"x" * 1024)
    record = admin(store._structures + "sliding:session:" + digest("sid-example"))
    print(f"  session (1 KiB of data): {record} bytes for the record, plus one index entry")


async def main(calls: int, members: int, with_cluster: bool) -> None:
    print("memory")
    await latencies(MemoryStore(), calls)
    with tempfile.TemporaryDirectory() as directory:
        with standalone(Path(directory)) as server, server.server.client() as client:
            store = RedisStore(RedisOptions(server.url, timeout=5))
            print(f"redis standalone ({server.url})")
            await latencies(store, calls, server_cpu(client))

            def usage(key: str) -> int:
                return int(client.memory_usage(key, samples=0) or 0)

            await memory_use(store, usage, members)
            print("redis standalone, used_memory deltas")
            await memory_deltas(store, client, members)
            await store.close()
        if not with_cluster:
            return
        with cluster(Path(directory)) as nodes:
            store = RedisStore(RedisOptions(nodes.url, timeout=5))
            print(f"redis cluster, 3 masters ({nodes.url})")
            await latencies(store, calls)
            await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--no-cluster", action="store_true", help="skip the three-master Cluster")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.calls, arguments.members, not arguments.no_cluster))
