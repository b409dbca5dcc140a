"""The delegation rules: which scopes of a target an MCP server may obtain for a user.

Pure, as ``broker.policy.evaluate`` is, and matched the same way (provider, then the user's
subject, a unique username, or any of the groups); deny rules win over grants. Applied at every
exchange with the identity as the grant last saw it (refreshed at each refresh).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from broker.config.delegation import DelegationRule, TargetConfigUnion
from broker.config.models import MappingRule
from broker.policy.evaluate import _matches
from providers.base import Identity


@dataclass(frozen=True)
class DelegationDecision:
    mcp_server: str
    target: str
    scopes: frozenset[str]
    granted_by: dict[str, list[str]] = field(default_factory=dict)
    denied_by: dict[str, list[str]] = field(default_factory=dict)


def _as_mapping(rule: DelegationRule) -> MappingRule:
    return MappingRule(
        id=rule.id,
        resource=rule.mcp_server,
        provider=rule.provider,
        effect=rule.effect,
        groups=rule.groups,
        users=rule.users,
        scopes=rule.scopes,
    )


class DelegationPolicy:
    def __init__(self, targets: Iterable[TargetConfigUnion], rules: Iterable[DelegationRule]) -> None:
        self.targets = {t.id: t for t in targets}
        self.rules = [(rule, _as_mapping(rule)) for rule in rules]

    def allows_any(self, mcp_server: str, target: str) -> bool:
        """Whether any grant rule lets this MCP server obtain this target at all (for anyone)."""
        return any(r.mcp_server == mcp_server and r.target == target and r.effect == "grant" for r, _ in self.rules)

    def pairs(self) -> list[tuple[str, str]]:
        """Every (MCP server, target) a rule names, in the order first named."""
        return list(dict.fromkeys((r.mcp_server, r.target) for r, _ in self.rules))

    def evaluate(self, mcp_server: str, target: str, identity: Identity) -> DelegationDecision:
        granted: dict[str, list[str]] = {}
        denied: dict[str, list[str]] = {}
        for rule, mapping in self.rules:
            if rule.mcp_server != mcp_server or rule.target != target or not _matches(mapping, identity):
                continue
            into = denied if rule.effect == "deny" else granted
            for scope in rule.scopes:
                into.setdefault(scope, []).append(rule.id)
        known = set(self.targets[target].scopes) if target in self.targets else set()
        allowed = frozenset(s for s in granted if s not in denied and s in known)
        return DelegationDecision(mcp_server, target, allowed, granted, denied)

    def narrow(self, decision: DelegationDecision, requested: Iterable[str] | None) -> frozenset[str]:
        """The request (every scope of the target when none) intersected with the decision."""
        if requested is None:
            return decision.scopes
        return frozenset(requested) & decision.scopes
