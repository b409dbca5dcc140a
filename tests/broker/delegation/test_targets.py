"""The target interface's errors become the token endpoint's answers; the delegation config checks
its own references."""

from __future__ import annotations

import time
from typing import Literal

import pytest

from broker.config.delegation import DelegationConfig, InternalTargetConfig
from broker.config.models import ResourceConfig, ScopeConfig
from broker.delegation.exchange import DelegatedExchange, InteractionRequiredError
from broker.delegation.targets import (
    DelegationRequest,
    DownstreamToken,
    InteractionRequired,
    Target,
    TargetRefused,
    TargetUnavailable,
)
from broker.oauth.errors import InvalidGrant, TemporarilyUnavailable
from broker.store.records import Grant
from providers.base import Identity

NOTES = ResourceConfig(
    id="notes", uri="https://notes.example.com/mcp", name="Notes", scopes=[ScopeConfig(name="n", description="N")]
)


def a_request(expires_in: int = 300) -> DelegationRequest:
    now = time.time()
    return DelegationRequest(
        grant=Grant(grant_id="g1", subject="ldap:alice", expires_at=now + 600, resource=NOTES.uri),
        identity=Identity(provider_id="ldap", subject="ldap:alice", username="alice"),
        mcp_server=NOTES,
        client_id="notes-server",
        scopes=frozenset({"t:read"}),
        subject_expires_at=int(now) + expires_in,
        now=now,
    )


class Failing:
    kind: Literal["internal"] = "internal"

    def __init__(self, error: Exception) -> None:
        self.id = "failing"
        self.config = InternalTargetConfig(kind="internal", id="failing", audience="https://t", scopes=["t:read"])
        self.error = error

    async def acquire(self, request: DelegationRequest) -> DownstreamToken:
        raise self.error


async def test_each_target_error_has_its_answer() -> None:
    exchange = DelegatedExchange.__new__(DelegatedExchange)  # _acquire needs nothing of the service
    target: Target = Failing(InteractionRequired("https://broker/delegation/consent?x=1", "consent_required"))
    with pytest.raises(InteractionRequiredError) as interaction:
        await exchange._acquire(target, a_request())
    assert interaction.value.body()["error"] == "interaction_required"
    assert interaction.value.body()["interaction_uri"] == "https://broker/delegation/consent?x=1"
    assert interaction.value.status == 400
    with pytest.raises(TemporarilyUnavailable):
        await exchange._acquire(Failing(TargetUnavailable("timed out")), a_request())
    with pytest.raises(InvalidGrant) as refused:
        await exchange._acquire(Failing(TargetRefused("upstream refresh token revoked")), a_request())
    assert "revoked" not in refused.value.description  # detail for the log only


def test_target_ids_audiences_and_rule_references_are_checked() -> None:
    target = {"kind": "internal", "id": "t", "audience": "https://t.example.com", "scopes": ["t:read"]}
    with pytest.raises(ValueError, match="target ids must be unique"):
        DelegationConfig.model_validate({"targets": [target, {**target, "audience": "https://u.example.com"}]})
    with pytest.raises(ValueError, match="unknown target"):
        DelegationConfig.model_validate(
            {
                "targets": [target],
                "rules": [{"id": "r", "mcp_server": "notes", "target": "x", "provider": "p", "scopes": ["t:read"]}],
            }
        )
    with pytest.raises(ValueError, match="not scopes of target"):
        DelegationConfig.model_validate(
            {
                "targets": [target],
                "rules": [{"id": "r", "mcp_server": "notes", "target": "t", "provider": "p", "scopes": ["t:write"]}],
            }
        )
