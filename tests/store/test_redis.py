"""RedisStore: the shared conformance suite against a real server, a Sentinel set and a Cluster,
plus what only a remote store has: keys under a versioned prefix, and what the URL says."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from authcar.store.redis import RedisOptions, RedisStore
from tests.support.redis_servers import Cluster, SentinelSet, Standalone
from tests.support.store_conformance import StoreConformance

TOPOLOGIES = ["redis_server", "redis_sentinel", "redis_cluster"]


@pytest.fixture(params=TOPOLOGIES, ids=["standalone", "sentinel", "cluster"])
def topology(request: pytest.FixtureRequest) -> Standalone | SentinelSet | Cluster:
    servers: Standalone | SentinelSet | Cluster = request.getfixturevalue(request.param)
    servers.flush()
    return servers


class TestRedisStore(StoreConformance):
    @pytest.fixture
    async def store(self, topology: Standalone | SentinelSet | Cluster) -> AsyncIterator[RedisStore]:
        # Generous: the suite checks behaviour, not this machine's latency under load.
        store = RedisStore(RedisOptions(topology.url, timeout=5))
        yield store
        await store.close()
