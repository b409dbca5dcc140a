"""``external_authorization_servers``: MCP servers elsewhere the broker issues ID-JAGs for, named
in the same policy as its own, and explained alike."""

from __future__ import annotations

import pytest

from broker.config import ConfigError, parse_config
from broker.policy import Policy
from broker.policy.explain import explain, render
from providers.base import Identity
from tests.broker.config.test_loader import ENV, VALID

EXTERNAL = """
external_authorization_servers:
  - issuer: https://crm-auth.example.net/
    clients:
      claude-desktop: 0oa1b2c3
      "https://vscode.dev/oauth/client-metadata.json": 0oa4d5e6
    resources:
      - id: crm
        uri: https://crm.example.net/mcp
        name: CRM
        scopes:
          - {name: "crm:read", description: Read customers}
          - {name: "crm:write", description: Change customers, implies: ["crm:read"]}
"""
CRM_RULE = """
  - id: sales-crm
    resource: crm
    provider: corp-ldap
    groups: [sales]
    scopes: ["crm:write"]
"""


def config_text(external: str = EXTERNAL, rule: str = CRM_RULE) -> str:
    return VALID + rule + external


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, env=ENV)
    return [str(p) for p in caught.value.problems]


def test_external_servers_join_the_policy_but_not_our_targets() -> None:
    config = parse_config(config_text(), env=ENV)
    server = config.external_authorization_servers[0]
    assert server.issuer == "https://crm-auth.example.net/"  # exactly as written: the ID-JAG's aud
    assert server.clients["https://vscode.dev/oauth/client-metadata.json"] == "0oa4d5e6"
    assert [r.id for r in config.external_resources] == ["crm"]
    policy = Policy(config.resources, config.mappings, config.external_resources)
    assert policy.resource_for("https://crm.example.net/mcp") is None  # never an audience of our tokens
    assert policy.external_ids == {"crm"}
    seller = Identity(provider_id="corp-ldap", subject="corp-ldap:s1", username="sam", groups=frozenset({"sales"}))
    assert policy.evaluate(policy.resources["crm"], seller).scopes == {"crm:read", "crm:write"}
    # The policy version changes with the external servers; without them it is as it was
    assert policy.version != Policy(config.resources, config.mappings, config.external_resources[:0]).version
    assert Policy(config.resources, config.mappings).version == Policy(config.resources, config.mappings, []).version


def test_explain_shows_ours_and_theirs() -> None:
    config = parse_config(config_text(), env=ENV)
    policy = Policy(config.resources, config.mappings, config.external_resources)
    seller = Identity(provider_id="corp-ldap", subject="corp-ldap:s1", username="sam", groups=frozenset({"sales"}))
    report = explain(policy, seller)
    assert [(r["uri"], r["external"]) for r in report["resources"]] == [
        ("https://mcp.example.com/mcp", False),
        ("https://crm.example.net/mcp", True),
    ]
    text = render(report)
    assert "CRM  https://crm.example.net/mcp  (external: ID-JAG)" in text
    assert "+ crm:write        granted by sales-crm" in text
    only = explain(policy, seller, "https://crm.example.net/mcp")
    assert [r["uri"] for r in only["resources"]] == ["https://crm.example.net/mcp"]


def test_resource_ids_are_unique_across_ours_and_theirs() -> None:
    clash = EXTERNAL.replace("id: crm", "id: notes")
    found = problems(config_text(clash, rule=""))
    assert "external_authorization_servers[0].resources[0].id: 'notes' is used more than once" in found


def test_mistakes_are_reported_with_their_paths() -> None:
    twice = EXTERNAL + EXTERNAL.replace("external_authorization_servers:\n", "").replace("id: crm", "id: crm2")
    ours = EXTERNAL.replace("https://crm-auth.example.net/", "https://auth.example.com")
    bad_implies = EXTERNAL.replace('implies: ["crm:read"]', 'implies: ["crm:admin"]')
    assert "external_authorization_servers[1].issuer: 'https://crm-auth.example.net/' is used more than once" in (
        problems(config_text(twice))
    )
    assert "external_authorization_servers[0].issuer: is this broker's own issuer" in problems(config_text(ours))
    assert (
        "external_authorization_servers[0].resources[0].scopes[1].implies: 'crm:admin' is not a scope of resource 'crm'"
        in problems(config_text(bad_implies))
    )
    assert "mappings[1].scopes: 'crm:delete' is not a scope of resource 'crm'" in problems(
        config_text(rule=CRM_RULE.replace('["crm:write"]', '["crm:delete"]'))
    )
    insecure = EXTERNAL.replace("https://crm-auth.example.net/", "http://crm-auth.example.net")
    assert any(p.startswith("external_authorization_servers[0].issuer: ") for p in problems(config_text(insecure)))
    no_clients = EXTERNAL.replace(
        '      claude-desktop: 0oa1b2c3\n      "https://vscode.dev/oauth/client-metadata.json": 0oa4d5e6\n', ""
    )
    no_clients = no_clients.replace("    clients:\n", "    clients: {}\n")
    assert any(p.startswith("external_authorization_servers[0].clients") for p in problems(config_text(no_clients)))


def test_id_jag_lifetime_is_at_most_five_minutes() -> None:
    assert parse_config(VALID, env=ENV).tokens.id_jag_ttl == 300
    found = problems(VALID.replace("  access_token_ttl: 5m\n", "  access_token_ttl: 5m\n  id_jag_ttl: 10m\n"))
    assert any(p.startswith("tokens.id_jag_ttl") for p in found)
