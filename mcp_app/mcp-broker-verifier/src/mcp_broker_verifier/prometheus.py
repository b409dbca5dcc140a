"""The verifier's cache counted in Prometheus: the ``metrics`` extra
(``pip install 'mcp-broker-verifier[metrics]'``), the one module that imports prometheus_client.

``protect(server, ..., metrics=PrometheusCacheMetrics())`` counts every verification into
``mcpb_verification_cache_total{result="hit"|"miss"}`` on prometheus_client's default registry;
the server exposes it as it exposes its other metrics (e.g. ``prometheus_client.start_http_server``).
prometheus_client chooses its multiprocess storage when first imported, so a server running
several worker processes imports this module only after setting ``PROMETHEUS_MULTIPROC_DIR``.
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
