"""Redis in its three shapes for the store tests: the session's standalone server, and a Sentinel
set-up and a three-node Cluster started once per test session (per xdist worker)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator

import pytest

from broker.devstack import RedisServer
from broker.store.client import create_redis
from broker.store.keys import Keys
from broker.store.redis_store import RedisStore
from tests.services import ClusterSetup, SentinelSetup, start_cluster, start_sentinel

BACKENDS = ("standalone", "sentinel", "cluster")


@pytest.fixture(scope="session")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSetup]:
    setup = start_sentinel(tmp_path_factory.mktemp("sentinel"))
    yield setup
    setup.stop()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSetup]:
    setup = start_cluster(tmp_path_factory.mktemp("cluster"))
    yield setup
    setup.stop()


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    """A store on one backend, under a key prefix of its own (the servers are shared)."""
    if request.param == "standalone":
        client = create_redis(redis_server.url)
    elif request.param == "sentinel":
        setup: SentinelSetup = request.getfixturevalue("sentinel")
        client = create_redis(setup.url, password=setup.master.password)
    else:
        nodes: ClusterSetup = request.getfixturevalue("cluster")
        client = create_redis(nodes.url, password=nodes.password)
    # Connect before the checks fire commands concurrently: redis-py's asyncio RedisCluster, when
    # its first commands arrive together, may reset connections under them while it initializes
    # and retry them, running a script twice (seen here: 7 in 30 fresh clients miscounted ten
    # concurrent sign-in attempts; none once connected).
    await client.ping()
    yield RedisStore(client, Keys(f"c{secrets.token_hex(4)}"))
    await client.aclose()
