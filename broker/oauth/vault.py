"""The vault: a grant's upstream session for delegated access (issue 14), sealed at rest.

What a provider keeps of the user's upstream session at sign-in (an OIDC upstream refresh token,
Entra's MSAL token cache) is the provider-private part of the grant's identity, sealed with the
key encryption key (``broker.oauth.grants.identity_record``). Only a rotation writes a grant's
identity (``Store.rotate_refresh``), so the newer state a delegated call brings back (a rotated
upstream refresh token, an MSAL cache that gained tokens) goes to the grant's vault entry
(``Store.put_upstream_tokens``), sealed under the same key with the grant id as associated data.

An entry names the identity it supersedes (a digest of that identity's private part): it
applies to the grant while the grant still holds that identity. A refresh that spends the
upstream refresh token writes the rotated one into the grant's identity; from then on the entry
no longer matches and is ignored, so the two never disagree about which token is current.

Revoking the grant (any path: RFC 7009, reuse detection, deprovisioning at refresh, the admin
API) drops the entry and the identity's private part in the step that marks the grant; an entry
lives no longer than its grant. Nothing here is ever returned to a client.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from broker.oauth.sealing import Sealer
from broker.store.base import Store
from providers.base import Identity


def _fingerprint(private: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(dict(private), sort_keys=True, default=str).encode()).hexdigest()


class Vault:
    """The grant-bound upstream state of :mod:`broker.oauth.vault`, over the store and the sealer."""

    def __init__(self, store: Store, sealer: Sealer) -> None:
        self._store = store
        self._sealer = sealer

    @staticmethod
    def _context(grant_id: str) -> str:
        return f"vault:{grant_id}"

    async def state(self, grant_id: str, identity: Identity) -> dict[str, Any]:
        """The identity's provider-private data with the grant's newer upstream state over it."""
        private = dict(identity.private)
        sealed = await self._store.get_upstream_tokens(grant_id)
        if not sealed:
            return private
        entry = self._sealer.open(sealed, context=self._context(grant_id))
        newer = entry.get("state")
        if entry.get("over") != _fingerprint(identity.private) or not isinstance(newer, dict):
            return private  # a refresh has written a newer identity since
        return {**private, **newer}

    async def current(self, grant_id: str, identity: Identity) -> Identity:
        """``identity`` with :meth:`state` as its private part."""
        return replace(identity, private=await self.state(grant_id, identity))

    async def keep(self, grant_id: str, identity: Identity, state: Mapping[str, Any], ttl: float) -> bool:
        """Keep ``state`` (the provider's upstream state after a call) for the grant, over the
        identity it holds now. False when not kept: no key encryption key, or the grant is no
        longer active (a revocation won)."""
        sealed = self._sealer.seal(
            {"over": _fingerprint(identity.private), "state": dict(state)}, context=self._context(grant_id)
        )
        if sealed is None:
            return False
        return await self._store.put_upstream_tokens(grant_id, sealed, ttl)
