"""Prometheus metrics of the demo MCP server's verifier, under the broker's metric names.

prometheus_client picks its multiprocess storage when first imported, so import this module only
after :func:`broker.metrics_env.prepare` has run (``mcp-app serve`` does, before loading the app).
"""

from __future__ import annotations

from prometheus_client import Counter

VERIFY_CACHE = Counter("mcpb_verification_cache", "Access-token verifications by cache outcome", ["result"])


class PrometheusCacheMetrics:
    """:class:`mcp_broker_verifier.cache_metrics.CacheMetrics` counting into ``mcpb_verification_cache``."""

    def __init__(self) -> None:
        self._hit = VERIFY_CACHE.labels("hit")
        self._miss = VERIFY_CACHE.labels("miss")

    def hit(self) -> None:
        self._hit.inc()

    def miss(self) -> None:
        self._miss.inc()
