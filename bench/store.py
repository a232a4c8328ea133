"""What the store costs per call, and what Redis holds per revocation and per session.

    python3 bench/store.py [--calls 2000] [--members 10000]

Starts a redis-server and a three-master Cluster in a temporary directory (tests/support/redis_servers),
then for memory, standalone Redis and the Cluster: the latency of each store call made one at a time
(p50/p99, the client in this process, loopback), the calls per second with 64 in flight and the
client CPU each costs (what a sidecar worker pays; Redis's own CPU is another process), and in
Redis the bytes per revocation (`MEMORY USAGE` of a member set of --members jti's, divided) and per
session (a sliding record with 1 KiB of data plus its index entry). Numbers are this machine's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

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


async def latencies(store: Store, calls: int) -> None:
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
        start, cpu = time.perf_counter(), time.process_time()
        for batch in range(calls // 64):
            await asyncio.gather(*(call(store, batch * 64 + j) for j in range(64)))
        done = (calls // 64) * 64
        rate, cpu_each = done / (time.perf_counter() - start), (time.process_time() - cpu) / done
        print(
            f"  {name:16} p50 {p50 * 1e6:6.0f} µs  p99 {p99 * 1e6:6.0f} µs  {rate:7.0f}/s at 64 in flight,"
            f" {cpu_each * 1e6:4.0f} µs of this process's CPU each"
        )


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


async def main(calls: int, members: int) -> None:
    print("memory")
    await latencies(MemoryStore(), calls)
    with tempfile.TemporaryDirectory() as directory:
        with standalone(Path(directory)) as server:
            store = RedisStore(RedisOptions(server.url, timeout=5))
            print(f"redis standalone ({server.url})")
            await latencies(store, calls)

            def usage(key: str) -> int:
                with server.server.client() as client:
                    return int(client.memory_usage(key, samples=0) or 0)

            await memory_use(store, usage, members)
            await store.close()
        with cluster(Path(directory)) as nodes:
            store = RedisStore(RedisOptions(nodes.url, timeout=5))
            print(f"redis cluster, 3 masters ({nodes.url})")
            await latencies(store, calls)
            await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--members", type=int, default=10_000)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.calls, arguments.members))
