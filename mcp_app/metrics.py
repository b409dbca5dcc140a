"""Prometheus metrics of the demo MCP server's verifier: the verifier distribution's own
(its ``metrics`` extra), under the broker's metric names.

prometheus_client picks its multiprocess storage when first imported, so import this module only
after :func:`broker.metrics_env.prepare` has run (``mcp-app serve`` does, before loading the app).
"""

from __future__ import annotations

from mcp_broker_verifier.prometheus import VERIFY_CACHE, PrometheusCacheMetrics

__all__ = ["VERIFY_CACHE", "PrometheusCacheMetrics"]
