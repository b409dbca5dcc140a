"""Which scopes of a resource an identity may hold, and which rules say so.

Pure: no I/O, no clock. Applied when a code is issued and again at every refresh, with
fresh group data, so a scope can shrink. Deny rules win over grants; scope hierarchies
(``implies``) are honoured on both sides: granting ``notes:write`` grants ``notes:read``, and
denying ``notes:read`` also removes every scope that implies it (but denying ``notes:write``
leaves ``notes:read``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from broker.config.models import MappingRule, ResourceConfig
from mcp_broker_verifier.scopes import effective_scopes as closure  # one hierarchy rule for the broker and verifiers
from providers.base import Identity


@dataclass(frozen=True)
class Decision:
    resource: str
    scopes: frozenset[str]
    granted_by: dict[str, list[str]] = field(default_factory=dict)
    denied_by: dict[str, list[str]] = field(default_factory=dict)


def _matches(rule: MappingRule, identity: Identity) -> bool:
    return _Matcher(identity).matches(rule, _lowered(rule.users), _lowered(rule.groups))


def _lowered(names: Iterable[str]) -> frozenset[str]:
    return frozenset(n.lower() for n in names)


class _Matcher:
    """Whether rules name one identity; its names lowered once for all the rules of an evaluation."""

    __slots__ = ("_held", "identity", "subject", "username")

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.subject = identity.subject.lower()
        self.username = identity.username.lower()
        self._held: set[str] | None = None

    def matches(self, rule: MappingRule, users: frozenset[str], groups: frozenset[str]) -> bool:
        """``users`` and ``groups``: the rule's, lowered."""
        identity = self.identity
        if rule.provider != identity.provider_id:
            return False
        if self.subject in users:
            return True
        # A username is only as good as the provider's word that nobody else can present it: a
        # grant needs that; a deny matches regardless (naming yourself into a deny gains nothing).
        if self.username in users and (identity.username_is_unique or rule.effect == "deny"):
            return True
        if not groups:
            return False
        if self._held is None:
            self._held = {g.lower() for g in identity.groups} | {n.lower() for n in identity.group_names.values()}
        return not groups.isdisjoint(self._held)


class Policy:
    """The resources and mapping rules in force, with a version (content hash) for audit events."""

    def __init__(
        self,
        resources: list[ResourceConfig],
        rules: list[MappingRule],
        external: list[ResourceConfig] | None = None,
    ) -> None:
        """``external``: MCP servers of other authorization servers (``external_authorization_servers``),
        evaluated alike for the ID-JAGs the broker issues, but never a target of its own tokens:
        ``by_uri`` and ``resource_for`` know only ``resources``."""
        external = external or []
        self.resources = {r.id: r for r in [*resources, *external]}
        self.by_uri = {r.uri: r for r in resources}
        self.external_ids = frozenset(r.id for r in external)
        self.rules = rules
        dumped = [[r.model_dump(mode="json") for r in resources], [m.model_dump(mode="json") for m in rules]]
        if external:  # the version of a policy without any stays what it was
            dumped.append([r.model_dump(mode="json") for r in external])
        payload = json.dumps(dumped, sort_keys=True)
        self.version = hashlib.sha256(payload.encode()).hexdigest()[:12]
        self._implies = {r.id: {s.name: list(s.implies) for s in r.scopes} for r in self.resources.values()}
        # Each rule's users and groups lowered once (evaluate runs at every refresh).
        self._named = [(rule, _lowered(rule.users), _lowered(rule.groups)) for rule in rules]

    def resource_for(self, uri: str) -> ResourceConfig | None:
        return self.by_uri.get(uri)

    def implies(self, resource: ResourceConfig) -> dict[str, list[str]]:
        return self._implies[resource.id]

    def evaluate(self, resource: ResourceConfig, identity: Identity) -> Decision:
        implies = self._implies[resource.id]
        granted: dict[str, list[str]] = {}
        denied: dict[str, list[str]] = {}
        matcher = _Matcher(identity)
        for rule, users, groups in self._named:
            if rule.resource != resource.id or not matcher.matches(rule, users, groups):
                continue
            if rule.effect == "deny":  # the scope itself; what implies it is removed below
                for scope in rule.scopes:
                    denied.setdefault(scope, []).append(rule.id)
            else:
                for scope in closure(rule.scopes, implies):
                    granted.setdefault(scope, []).append(rule.id)
        # Denying a scope removes every scope that would bring it back through `implies`.
        blocked = set(denied)
        allowed = {s for s in granted if not (closure([s], implies) & blocked)}
        return Decision(resource.id, frozenset(allowed), granted, denied)

    def narrow(self, resource: ResourceConfig, decision: Decision, requested: Iterable[str] | None) -> frozenset[str]:
        """Scopes to put in a token: the request (all of the resource's scopes when none) closed
        over ``implies``, intersected with what the decision allows."""
        implies = self._implies[resource.id]
        wanted = closure(requested, implies) if requested is not None else {s.name for s in resource.scopes}
        return frozenset(wanted & decision.scopes)

    def hint_groups(self, resource: ResourceConfig, provider_id: str) -> list[str]:
        """Groups that would grant something on ``resource`` (for the "ask IT" page)."""
        return sorted(
            {
                g
                for r in self.rules
                if r.resource == resource.id and r.provider == provider_id and r.effect == "grant"
                for g in r.groups
            }
        )
