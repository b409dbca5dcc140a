"""Targets of kind entra and oidc need a provider that keeps the user's upstream session: an Entra
provider with delegated_access, an OIDC provider with use_upstream_refresh (checked at load time,
so check-config says so instead of every exchange failing)."""

from __future__ import annotations

from broker.config import parse_config
from tests.broker.config.test_loader import ENV, VALID, problems


def with_targets(text: str, targets: str) -> str:
    return text + f"delegation:\n  targets:\n{targets}"


GRAPH = """    - id: graph
      kind: entra
      provider: {provider}
      audience: https://graph.microsoft.com
      scopes: [User.Read]
"""
TICKETS = """    - id: tickets
      kind: oidc
      provider: {provider}
      audience: https://tickets.example.com
      upstream_resource: https://tickets.example.com
      scopes: ["tickets:read"]
"""


def test_targets_of_providers_keeping_the_upstream_session_load() -> None:
    text = VALID.replace(
        "    client_secret: ${ENTRA_SECRET}\n", "    client_secret: ${ENTRA_SECRET}\n    delegated_access: true\n"
    )
    text = text.replace("    client_id: abc\n", "    client_id: abc\n    use_upstream_refresh: true\n")
    config = parse_config(with_targets(text, GRAPH.format(provider="entra") + TICKETS.format(provider="okta")), env=ENV)
    assert [t.id for t in config.delegation.targets] == ["graph", "tickets"]


def test_a_provider_without_the_upstream_session_or_of_another_type_is_refused() -> None:
    found = problems(
        with_targets(
            VALID,
            GRAPH.format(provider="entra")
            + TICKETS.format(provider="okta").replace("id: tickets", "id: t1")
            + TICKETS.format(provider="corp-ldap")
            .replace("id: tickets", "id: t2")
            .replace("tickets.example", "t2.example"),
        )
    )
    assert found == [
        "delegation.targets[0].provider: a target of kind entra needs a provider of type entra with "
        "delegated_access: true; 'entra' is not one",
        "delegation.targets[1].provider: a target of kind oidc needs a provider of type oidc with "
        "use_upstream_refresh: true; 'okta' is not one",
        "delegation.targets[2].provider: a target of kind oidc needs a provider of type oidc with "
        "use_upstream_refresh: true; 'corp-ldap' is not one",
    ]
