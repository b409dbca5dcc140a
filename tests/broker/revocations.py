"""A resource server's view of revocation in tests: the verifier mcp_app runs, and how long it
takes to refuse a token the broker revoked (SCIM deprovisioning, back-channel logout)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from broker.devstack import RedisServer
from mcp_broker_verifier.redis_client import create_redis
from mcp_broker_verifier.revocations import RevocationWatcher
from mcp_broker_verifier.verifier import BrokerTokenVerifier, JwksCache
from tests.broker.flows import RESOURCE, Broker


@asynccontextmanager
async def verifier_for(broker: Broker, redis_server: RedisServer) -> AsyncIterator[BrokerTokenVerifier]:
    """What mcp_app runs: the broker's JWKS and its revocation announcements on Redis."""
    redis = create_redis(redis_server.url)
    watcher = RevocationWatcher(redis, key_prefix=broker.config.redis.key_prefix)
    await watcher.start()
    async with httpx.AsyncClient() as http:
        jwks = JwksCache(f"{broker.base}/jwks.json", http)
        yield BrokerTokenVerifier(issuer=broker.base, resource=RESOURCE, jwks=jwks, revocations=watcher)
    await watcher.stop()
    await redis.aclose()


async def refused_within(verifier: BrokerTokenVerifier, token: str, bound: float) -> float:
    """Seconds until ``verifier`` refuses ``token``; fails the test after ``bound`` seconds."""
    started = time.perf_counter()
    while await verifier.verify_token(token) is not None:
        assert time.perf_counter() - started < bound, "the verifier still accepts the token"
        await asyncio.sleep(0.005)
    return time.perf_counter() - started
