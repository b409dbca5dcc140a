"""Explain the policy for one user: which scopes each resource grants, and which rules say so."""

from __future__ import annotations

from typing import Any

from broker.policy.delegation import DelegationPolicy
from broker.policy.evaluate import Policy
from providers.base import Identity, ProviderConfig


def given_identity(provider: ProviderConfig, user: str | None, groups: frozenset[str]) -> Identity:
    """A hypothetical user of ``provider`` holding ``groups`` (``explain --groups``). ``user`` is
    taken as a username, and as a subject too where it can be one: always for providers whose
    usernames are unique, else only when it has the provider's subject form (``<id>:<sub>``)."""
    name = user or "(given groups)"
    as_subject = provider.usernames_are_unique or name.startswith(f"{provider.id}:")
    return Identity(
        provider_id=provider.id,
        subject=name if as_subject else "(given groups)",
        username=name,
        groups=groups,
        username_is_unique=provider.usernames_are_unique,
    )


def explain(
    policy: Policy,
    identity: Identity,
    resource_uri: str | None = None,
    delegation: DelegationPolicy | None = None,
) -> dict[str, Any]:
    """The report: per resource, each scope granted or not and the rules deciding; with
    ``delegation``, the same per (MCP server, target) pair a delegation rule names."""
    resources = list(policy.resources.values())  # ours, then those of external authorization servers
    if resource_uri is not None:
        resources = [r for r in resources if r.uri == resource_uri]
    out: dict[str, Any] = {
        "provider": identity.provider_id,
        "username": identity.username,
        "subject": identity.subject,
        "groups": sorted(identity.group_names.get(g, g) for g in identity.groups),
        "policy_version": policy.version,
        "resources": [],
    }
    for resource in resources:
        decision = policy.evaluate(resource, identity)
        scopes = []
        for scope in resource.scopes:
            granted_by = decision.granted_by.get(scope.name, [])
            denied_by = decision.denied_by.get(scope.name, [])
            scopes.append(
                {
                    "scope": scope.name,
                    "granted": scope.name in decision.scopes,
                    "granted_by": granted_by,
                    "denied_by": denied_by,
                }
            )
        out["resources"].append(
            {
                "uri": resource.uri,
                "name": resource.name,
                "external": resource.id in policy.external_ids,  # reached with an ID-JAG, not our token
                "scopes": scopes,
                "ask_for_groups": [] if decision.scopes else policy.hint_groups(resource, identity.provider_id),
            }
        )
    if delegation is not None:
        out["delegation"] = _delegation(policy, delegation, identity, {r.id for r in resources})
    return out


def _delegation(
    policy: Policy, delegation: DelegationPolicy, identity: Identity, resource_ids: set[str]
) -> list[dict[str, Any]]:
    pairs = [p for p in delegation.pairs() if p[0] in resource_ids]
    report = []
    for mcp_server, target_id in pairs:
        target = delegation.targets[target_id]
        decision = delegation.evaluate(mcp_server, target_id, identity)
        server = policy.resources.get(mcp_server)
        report.append(
            {
                "mcp_server": mcp_server,
                "mcp_server_name": server.name if server is not None else mcp_server,
                "target": target_id,
                "kind": target.kind,
                "audience": target.audience,
                "scopes": [
                    {
                        "scope": scope,
                        "granted": scope in decision.scopes,
                        "granted_by": decision.granted_by.get(scope, []),
                        "denied_by": decision.denied_by.get(scope, []),
                    }
                    for scope in target.scopes
                ],
            }
        )
    return report


def render(report: dict[str, Any]) -> str:
    lines = [
        f"{report['username']} (provider {report['provider']}, subject {report['subject']})",
        f"groups: {', '.join(report['groups']) or '(none)'}",
        f"policy version: {report['policy_version']}",
    ]
    for resource in report["resources"]:
        via = "  (external: ID-JAG)" if resource.get("external") else ""
        lines += ["", f"{resource['name']}  {resource['uri']}{via}"]
        for scope in resource["scopes"]:
            if scope["granted"]:
                why = f"granted by {', '.join(scope['granted_by'])}"
            elif scope["denied_by"]:
                why = f"DENIED by {', '.join(scope['denied_by'])}" + (
                    f" (granted by {', '.join(scope['granted_by'])})" if scope["granted_by"] else ""
                )
            elif scope["granted_by"]:
                why = f"not granted: a scope it needs is denied (granted by {', '.join(scope['granted_by'])})"
            else:
                why = "not granted: no rule gives it"
            lines.append(f"  {'+' if scope['granted'] else '-'} {scope['scope']:<16} {why}")
        if not any(s["granted"] for s in resource["scopes"]):
            hint = ", ".join(resource["ask_for_groups"]) or "a mapping rule"
            lines.append(f'  => no access (the user sees the "no access" page; groups that would help: {hint})')
    if report.get("delegation"):
        lines += ["", "Delegated access (MCP server -> downstream target, RFC 8693 token exchange)"]
    for pair in report.get("delegation", []):
        lines.append(f"{pair['mcp_server_name']} -> {pair['target']}  {pair['audience']}  ({pair['kind']})")
        for scope in pair["scopes"]:
            if scope["granted"]:
                why = f"granted by {', '.join(scope['granted_by'])}"
            elif scope["denied_by"]:
                why = f"DENIED by {', '.join(scope['denied_by'])}"
            else:
                why = "not granted: no rule gives it"
            lines.append(f"  {'+' if scope['granted'] else '-'} {scope['scope']:<16} {why}")
    return "\n".join(lines)
