"""The optional metrics hook of the verifiers: told of every verification-cache hit and miss.

A verifier given none counts nothing, so it needs no metrics library;
:mod:`mcp_broker_verifier.prometheus` (the ``metrics`` extra) has a Prometheus one.
"""

from __future__ import annotations

from typing import Protocol


class CacheMetrics(Protocol):
    def hit(self) -> None:
        """A token answered from the verifier's cache."""

    def miss(self) -> None:
        """A token checked afresh (signature and claims, or the broker's introspection)."""
