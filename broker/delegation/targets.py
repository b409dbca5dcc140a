"""The target interface: how the broker gets a downstream token for one configured target, as
the user of a grant, on behalf of the MCP server asking (RFC 8693 token exchange, issue 14).

A target kind is one class with ``id``, ``kind``, ``config`` and ``acquire`` (the :class:`Target`
protocol) and one entry in ``broker.delegation.registry.OPENERS`` (``kind`` -> constructor from its
config and the :class:`TargetContext`). The exchange (``broker.delegation.exchange``) has already checked the
subject token, the MCP server, the grant and the policy when ``acquire`` is called, and caches what
it returns (sealed, per grant and target) until shortly before it expires; a target therefore
never caches downstream tokens itself. It may keep upstream state (the vault) under the grant.

``acquire`` either returns a :class:`DownstreamToken` or raises one of the errors below; anything
else is a bug (a 500). The exchange turns the errors into the token endpoint's answers:

==========================  ===================================================================
``InteractionRequired``     400 ``interaction_required`` with ``interaction_uri``: a broker URL
                            where the user completes an upstream step (consent, a new sign-in)
``TargetUnavailable``       503 ``temporarily_unavailable``: the upstream did not answer
``TargetRefused``           400 ``invalid_grant``: the upstream will not issue for this user
==========================  ===================================================================
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from broker.config.delegation import TargetConfigUnion, TargetKind
from broker.config.models import BrokerConfig, ResourceConfig
from broker.oauth.sealing import Sealer
from broker.oauth.signing import KeyRing
from broker.oauth.token_exchange import ACCESS_TOKEN_TYPE
from broker.store.base import Store
from broker.store.records import Grant
from providers.base import Identity


@dataclass(frozen=True)
class DelegationRequest:
    """What a target needs to issue one downstream token: all of it checked by the exchange."""

    grant: Grant  # active, bound to ``mcp_server``; ``grant.identity`` holds the sealed upstream state
    identity: Identity  # the user, opened from the grant (provider-private part included)
    mcp_server: ResourceConfig  # the MCP server asking (the subject token's audience)
    client_id: str  # the MCP server's client id (authenticated, confidential)
    scopes: frozenset[str]  # what the policy gives this user for (MCP server, target): never empty
    subject_expires_at: int  # the subject token's ``exp``
    subject_claims: Mapping[str, Any] = field(default_factory=dict)  # the verified subject token
    now: float = field(default_factory=time.time)

    @property
    def remaining(self) -> int:
        """Seconds the subject token has left (a downstream token should not outlive it)."""
        return max(0, int(self.subject_expires_at - self.now))


@dataclass(frozen=True)
class DownstreamToken:
    """A token for the target's API. ``scopes`` is what it carries (a subset of the request's, or
    the upstream's answer); ``expires_at`` a Unix time."""

    access_token: str
    expires_at: int
    scopes: frozenset[str]
    token_type: str = "Bearer"  # noqa: S105  (a token type, not a secret)
    issued_token_type: str = ACCESS_TOKEN_TYPE

    def to_json(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "expires_at": self.expires_at,
            "scopes": sorted(self.scopes),
            "token_type": self.token_type,
            "issued_token_type": self.issued_token_type,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DownstreamToken:
        return cls(
            access_token=str(data["access_token"]),
            expires_at=int(data["expires_at"]),
            scopes=frozenset(data.get("scopes", [])),
            token_type=str(data.get("token_type", "Bearer")),
            issued_token_type=str(data.get("issued_token_type", ACCESS_TOKEN_TYPE)),
        )


class DelegationError(Exception):
    """A target could not issue; ``detail`` goes to the log and audit, never to the client."""

    reason = "target_error"

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


class InteractionRequired(DelegationError):
    """The upstream needs the user (Entra ``interaction_required``/``consent_required``, an expired
    upstream refresh token): ``url`` is a broker page where the user completes that step; after
    it the same exchange succeeds."""

    reason = "interaction_required"

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(detail)
        self.url = url


class TargetUnavailable(DelegationError):
    """The upstream did not answer (time-out, 5xx, network): try again later."""

    reason = "target_unavailable"


class TargetRefused(DelegationError):
    """The upstream refused for good (the user's upstream session was revoked, the app lacks the
    permission): nothing the user can do at a broker page."""

    reason = "target_refused"


@runtime_checkable
class Target(Protocol):
    """One configured target (read-only members: a plain attribute of a narrower type satisfies them)."""

    @property
    def id(self) -> str: ...

    @property
    def kind(self) -> TargetKind: ...

    @property
    def config(self) -> TargetConfigUnion: ...

    async def acquire(self, request: DelegationRequest) -> DownstreamToken:
        """A downstream token for ``request.scopes``, lifetime bounded as the kind allows; raises a
        :class:`DelegationError`."""
        ...


@dataclass(frozen=True)
class TargetContext:
    """What the composition root hands every target constructor."""

    config: BrokerConfig
    store: Store
    keyring: KeyRing
    sealer: Sealer  # the key-encryption key's envelope (``signing.key_encryption_key``)
    providers: Mapping[str, Any]  # provider id -> provider (``providers.base``)


Opener = Callable[[Any, TargetContext], Target]
"""A kind's constructor: its config model and the context (entries of ``broker.delegation.registry.OPENERS``)."""
