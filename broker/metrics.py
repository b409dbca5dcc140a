"""Prometheus metrics for the broker and mcp_app, on a port of their own (the verifier's cache
counter, ``mcpb_verification_cache``, is in :mod:`mcp_app.metrics`: the verifier imports nothing
from the broker).

uvicorn may run several worker processes, so metrics use prometheus_client's multiprocess
mode: each worker writes to ``PROMETHEUS_MULTIPROC_DIR`` and one exporter thread in the
parent aggregates them. :func:`broker.metrics_env.prepare` must run before prometheus_client
is first imported (it picks its storage then); :func:`serve` starts the exporter.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess, start_http_server

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HTTP_REQUESTS = Counter("mcpb_http_requests", "HTTP requests", ["app", "method", "route", "status"])
HTTP_DURATION = Histogram(
    "mcpb_http_request_duration_seconds", "HTTP request latency", ["app", "route"], buckets=_LATENCY_BUCKETS
)
TOKENS_ISSUED = Counter("mcpb_tokens_issued", "Access tokens issued at code exchange and for redeemed ID-JAGs")
TOKENS_REFRESHED = Counter("mcpb_tokens_refreshed", "Refresh grants completed")
TOKENS_REVOKED = Counter("mcpb_tokens_revoked", "Grants revoked", ["reason"])
REFRESH_REUSE = Counter("mcpb_refresh_reuse_detected", "Rotated refresh tokens reused after the grace window")
LOGINS = Counter("mcpb_logins", "Sign-in outcomes", ["provider", "outcome"])
UPSTREAM_LATENCY = Histogram(
    "mcpb_upstream_latency_seconds",
    "Time spent in upstream identity providers",
    ["provider", "operation"],
    buckets=_LATENCY_BUCKETS,
)

TOKEN_EXCHANGES = Histogram(
    "mcpb_token_exchange_seconds",
    "Delegated-access token exchanges by target and outcome (issued, cached, refused, interaction, unavailable)",
    ["target", "outcome"],
    buckets=_LATENCY_BUCKETS,
)


SIGNALS = Counter(
    "mcpb_signals",
    "Upstream signals (SCIM, back-channel logout, Shared Signals) by source and stage",
    ["source", "stage"],
)
SIGNAL_TO_REVOCATION = Histogram(
    "mcpb_signal_to_revocation_seconds",
    "From an upstream signal's arrival to the last revocation it caused being announced",
    ["source"],
    buckets=_LATENCY_BUCKETS,
)


def serve(port: int, host: str = "0.0.0.0") -> Any:
    """Start the exporter thread: GET /metrics on ``host:port`` with every worker's samples.
    Needs ``PROMETHEUS_MULTIPROC_DIR`` set (see :func:`broker.metrics_env.prepare`)."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return start_http_server(port, addr=host, registry=registry)
