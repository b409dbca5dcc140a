"""Redis key names, designed for Redis Cluster from the start.

Every key that one Lua script reads or writes carries the same hash tag (the part in
braces), so all of them live in one slot and the script runs unchanged on Cluster:

* ``{prefix}:{g:<grant_id>}:…``   a grant (a refresh-token family) and all its tokens;
* ``{prefix}:{u:<subject>}:…``    per-user indexes (grants, consents);
* ``{prefix}:{r:<hash>}:recheck…`` a user's shared upstream re-check answer and its lookup lock
  (the hash of provider id and subject);
* ``{prefix}:{un:<hash>}:grants``, ``{prefix}:{us:<hash>}:grants`` grants by provider and
  username, and by upstream session (an OIDC ``sid``);
* ``{prefix}:{sig:<provider_id>}:recent`` a provider's recent upstream signals;
* ``{prefix}:{c:<client_id>}``    a registered client;
* ``{prefix}:{j:<hash>}:jti``     a redeemed ID-JAG's ``jti`` (the hash of issuer and jti), until its ``exp``;
* ``{prefix}:{scim:<tenant>}:…``  a SCIM tenant's users and groups, their lookup index and each
  resource's indexed values (one slot per tenant: every SCIM write is one script);
* ``{prefix}:{keys}:…``           the signing key ring;
* ``{prefix}:{revoked}``          revoked grant ids (sorted set scored by expiry); announced on
  ``{prefix}:revocations`` (a channel, in no slot). Revoking touches the grant's slot and this
  one: one script on a single node, two ordered scripts on Cluster (see ``RedisStore.revoke_grant``).

Tokens handed to clients embed the grant id, so the broker derives the slot from the token
itself and never needs a cross-slot lookup on the hot path.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from mcp_broker_verifier import revocation_keys


def digest(value: str) -> str:
    """What the store keeps instead of a secret: its SHA-256, hex."""
    return hashlib.sha256(value.encode()).hexdigest()


def _tag_safe(value: str) -> str:
    # A brace inside a tag would move the tag; subjects and ids are hashed when they could hold one.
    return digest(value)[:32] if any(c in value for c in "{}") or len(value) > 128 else value


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "mcpb"

    def grant(self, grant_id: str) -> str:
        return f"{self.prefix}:{{g:{grant_id}}}:grant"

    def grant_last_refresh(self, grant_id: str) -> str:
        """The grant's last refresh (a number), apart from its record so a refresh need not
        rewrite the record; readers fold it in (the later of the two)."""
        return f"{self.prefix}:{{g:{grant_id}}}:grant:last"

    def grant_lock(self, grant_id: str) -> str:
        return f"{self.prefix}:{{g:{grant_id}}}:grant:lock"

    def refresh(self, grant_id: str, token_hash: str) -> str:
        return f"{self.prefix}:{{g:{grant_id}}}:rt:{token_hash}"

    def successor(self, grant_id: str, token_hash: str) -> str:
        """The sealed answer a rotated refresh token's retries get, kept only for the grace window."""
        return f"{self.prefix}:{{g:{grant_id}}}:rt:{token_hash}:next"

    def code(self, grant_id: str) -> str:
        return f"{self.prefix}:{{g:{grant_id}}}:code"

    def upstream_tokens(self, grant_id: str) -> str:
        """The grant's vault: upstream tokens kept for delegated access, sealed (same slot as the grant)."""
        return f"{self.prefix}:{{g:{grant_id}}}:upstream"

    def downstream_tokens(self, grant_id: str) -> str:
        """The grant's cached downstream tokens (a hash: slot -> sealed token with its expiry; same slot)."""
        return f"{self.prefix}:{{g:{grant_id}}}:downstream"

    def user_grants(self, subject: str) -> str:
        return f"{self.prefix}:{{u:{_tag_safe(subject)}}}:grants"

    def user_consents(self, subject: str) -> str:
        return f"{self.prefix}:{{u:{_tag_safe(subject)}}}:consents"

    def username_grants(self, provider_id: str, username: str) -> str:
        """A provider's user's grants by username (case-folded, hashed: it comes from outside)."""
        hashed = digest(provider_id + "\n" + username.casefold())[:32]
        return f"{self.prefix}:{{un:{hashed}}}:grants"

    def session_grants(self, provider_id: str, session: str) -> str:
        """The grants started from one upstream session (an OIDC ``sid``; hashed)."""
        hashed = digest(provider_id + "\n" + session)[:32]
        return f"{self.prefix}:{{us:{hashed}}}:grants"

    def recent_signals(self, provider_id: str) -> str:
        """A provider's recent upstream signals (a list, newest first, bounded)."""
        return f"{self.prefix}:{{sig:{_tag_safe(provider_id)}}}:recent"

    def client(self, client_id: str) -> str:
        return f"{self.prefix}:{{c:{_tag_safe(client_id)}}}"

    def signing_keys(self) -> str:
        return f"{self.prefix}:{{keys}}:ring"

    def signing_lock(self) -> str:
        return f"{self.prefix}:{{keys}}:lock"

    def revoked(self) -> str:
        return revocation_keys.revoked_set(self.prefix)

    def revocation_channel(self) -> str:
        return revocation_keys.revocation_channel(self.prefix)

    def flow(self, flow_id: str) -> str:
        return f"{self.prefix}:{{f:{flow_id}}}"

    def recheck(self, provider_id: str, subject: str) -> str:
        """A user's latest upstream re-check answer, shared by every worker and replica."""
        user = digest(f"{provider_id}\n{subject}")[:32]
        return f"{self.prefix}:{{r:{user}}}:recheck"

    def recheck_lock(self, provider_id: str, subject: str) -> str:
        """Held by the one process looking the user up (same slot as the answer)."""
        return f"{self.recheck(provider_id, subject)}:lock"

    def assertion_jti(self, issuer: str, jti: str) -> str:
        """A redeemed identity assertion's ``jti``, per issuer (hashed: both come from outside)."""
        hashed = digest(issuer + "\n" + jti)[:40]
        return f"{self.prefix}:{{j:{hashed}}}:jti"

    def scim_resources(self, tenant: str, kind: str) -> str:
        """A SCIM tenant's resources of one kind (a hash: id -> record)."""
        return f"{self.prefix}:{{scim:{_tag_safe(tenant)}}}:{kind}"

    def scim_index(self, tenant: str, kind: str) -> str:
        """Their lookup index (a hash: attribute NUL value -> id; same slot)."""
        return f"{self.scim_resources(tenant, kind)}:idx"

    def scim_indexed(self, tenant: str, kind: str) -> str:
        """Each resource's index entries (a hash: id -> entries, NUL-separated; same slot)."""
        return f"{self.scim_resources(tenant, kind)}:own"
