"""Constant-time comparison of a presented secret with the digest kept of it."""

from __future__ import annotations

import hmac

from broker.store.keys import digest


def same_secret(presented: str | None, expected_hash: str | None) -> bool:
    """Constant-time check that ``presented`` hashes to ``expected_hash``."""
    if not presented or not expected_hash:
        return False
    return hmac.compare_digest(digest(presented), expected_hash)
