"""This process's copy of the grants it has just rotated, so that the next refresh of a family saves
a read of the store (one Redis round trip of the two a refresh needs).

A grant's scopes and identity change only in :meth:`broker.store.base.Store.rotate_refresh`, in
the same atomic step as the refresh token they were written with. So while that token is still
active, the grant in the store is the one its rotation wrote, apart from its status; and the
rotation that spends the token checks the status, the token and the grant's existence atomically
itself. A refresh that presents the token this process issued can therefore start from the grant
kept here; if the store then refuses the rotation (revoked, expired, the token spent or gone), the
refresh starts over from the store and answers exactly as it would have without the memo.

Kept: the grant record as stored (no plaintext secret: provider-private data stays sealed), under
the hash of the one token it answers to; taken on use; at most ``size`` grants and ``group_budget``
group entries (a directory user may be in hundreds of groups: 2,048 grants of five groups take
about 5 MB), oldest first out.
"""

from __future__ import annotations

import hmac

from broker.store.records import Grant


def _weight(grant: Grant) -> int:
    identity = grant.identity
    return 1 + (len(identity.groups) + len(identity.group_names) if identity is not None else 0)


class GrantMemo:
    def __init__(self, size: int = 2048, group_budget: int = 40_000) -> None:
        self._size = size
        self._budget = group_budget
        self._weight = 0
        self._grants: dict[str, tuple[str, Grant, int]] = {}  # grant id -> (token hash, grant, weight)

    def __len__(self) -> int:
        return len(self._grants)

    def put(self, token_hash: str, grant: Grant) -> None:
        """Keep ``grant`` as its rotation to the token of ``token_hash`` wrote it."""
        self.forget(grant.grant_id)
        weight = _weight(grant)
        if weight > self._budget:
            return
        while self._grants and (len(self._grants) >= self._size or self._weight + weight > self._budget):
            self.forget(next(iter(self._grants)))
        self._grants[grant.grant_id] = (token_hash, grant, weight)
        self._weight += weight

    def take(self, grant_id: str, token_hash: str) -> Grant | None:
        """The grant kept for exactly this token, removed from the memo; None for any other."""
        kept = self._grants.get(grant_id)
        if kept is None or not hmac.compare_digest(kept[0], token_hash):
            return None
        self.forget(grant_id)
        return kept[1]

    def forget(self, grant_id: str) -> None:
        kept = self._grants.pop(grant_id, None)
        if kept is not None:
            self._weight -= kept[2]
