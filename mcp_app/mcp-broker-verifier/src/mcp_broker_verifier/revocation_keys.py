"""The revocation key contract, defined once: the broker writes these keys, verifiers read them.

* ``{prefix}:{revoked}``: a sorted set of revoked grant ids, each scored by the expiry of the
  grant's last token (the hash tag ``{revoked}`` gives the set a Redis Cluster slot of its own);
* ``{prefix}:revocations``: the pub/sub channel on which each revoked grant id is announced
  (channels have no slot).

The broker's store (:mod:`broker.store.keys`) and :mod:`mcp_broker_verifier.revocations` both import these
names; this module imports nothing, so a verifier installed alone carries it.
"""

from __future__ import annotations


def revoked_set(prefix: str) -> str:
    """The sorted set of revoked grant ids (score: when the grant's last token expires)."""
    return f"{prefix}:{{revoked}}"


def revocation_channel(prefix: str) -> str:
    """The channel on which the broker announces each revoked grant id."""
    return f"{prefix}:revocations"
