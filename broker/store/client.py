"""The broker's Redis client: the URL→client factory lives in :mod:`mcp_broker_verifier.redis_client`, which
the verifier shares (it may import nothing from the broker); re-exported here for the store."""

from __future__ import annotations

from mcp_broker_verifier.redis_client import RedisClient, RedisTarget, create_redis, parse_redis_url

__all__ = ["RedisClient", "RedisTarget", "create_redis", "parse_redis_url"]
