"""The revocation key contract, defined once: the broker writes these keys, verifiers read them.

* ``{prefix}:{revoked}``: a sorted set of ended token handles, each scored by the expiry of the
  last token that carries it (the hash tag ``{revoked}`` gives the set a Redis Cluster slot of its
  own);
* ``{prefix}:revocations``: the pub/sub channel on which each ended handle is announced
  (channels have no slot).

A token handle is what an access token carries as ``sid``: its grant's id, or ``{grant_id}.{n}``
once the grant's scopes were narrowed in place ``n`` times (each narrowing ends the handle before
it, so tokens with the wider scope are refused while the grant lives on). A verifier refuses a
token whose ``sid`` is in the set; it never needs to parse a handle.

The broker's store (:mod:`broker.store.keys`) and :mod:`mcp_broker_verifier.revocations` both import these
names; this module imports nothing, so a verifier installed alone carries it.
"""

from __future__ import annotations


def revoked_set(prefix: str) -> str:
    """The sorted set of ended token handles (score: when the last token carrying one expires)."""
    return f"{prefix}:{{revoked}}"


def revocation_channel(prefix: str) -> str:
    """The channel on which the broker announces each ended token handle."""
    return f"{prefix}:revocations"
