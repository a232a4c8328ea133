"""`shared_store`: a factory of store objects that share one backend, as replicas do: the memory
store itself (one object), or new RedisStore objects on one real server or one Cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from authcar.store import MemoryStore, Store
from authcar.store.redis import RedisOptions, RedisStore

StoreFactory = Callable[[], Store]


@pytest.fixture(params=["memory", "redis_server", "redis_cluster"], ids=["memory", "standalone", "cluster"])
async def shared_store(request: pytest.FixtureRequest) -> AsyncIterator[StoreFactory]:
    opened: list[Store] = []
    if request.param == "memory":
        memory = MemoryStore()
        opened.append(memory)

        def factory() -> Store:
            return memory

    else:
        servers = request.getfixturevalue(request.param)
        servers.flush()

        def factory() -> Store:
            store = RedisStore(RedisOptions(servers.url, timeout=5))
            opened.append(store)
            return store

    yield factory
    for store in opened:
        await store.close()
