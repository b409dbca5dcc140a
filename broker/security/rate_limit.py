"""A fixed-window request limit per client address, counted in the shared store (so by every replica).

Used where an unauthenticated request creates state: dynamic client registration (RFC 7591 §3
leaves abuse to the server; RFC 9700 §4.15 and the MCP security best practices ask for limits).
"""

from __future__ import annotations

from broker.security.throttle import Verdict
from broker.store.base import Store


class RateLimit:
    def __init__(self, store: Store, *, name: str, limit: int, window: int) -> None:
        self.store = store
        self.name = name
        self.limit = limit
        self.window = window

    async def hit(self, subject: str) -> Verdict:
        """Count one request by ``subject`` (a client IP); refused once the window's limit is passed."""
        counted = await self.store.count_request(self.name, subject, window=self.window)
        if counted.count > self.limit:
            return Verdict(False, max(counted.retry_after, 1))
        return Verdict(True)
