"""`mcp-broker explain` (and the admin API's) shows the delegation rules: per (MCP server,
target), each of the target's scopes granted or not and the rules deciding."""

from __future__ import annotations

import json
from pathlib import Path

from broker.devstack import RedisServer, Slapd
from tests.broker.delegation.test_exchange import DELEGATION, OTHER_CLIENT
from tests.broker.flows import RESOURCE, broker_yaml
from tests.broker.policy.test_explain import explain


def test_explain_shows_what_each_mcp_server_may_obtain_for_the_user(
    tmp_path: Path, redis_server: RedisServer, slapd: Slapd
) -> None:
    config = tmp_path / "broker.yaml"
    text = broker_yaml(8000, redis_server.url, slapd, prefix="explain", extra=DELEGATION)
    config.write_text(text.replace("      introspection_resources: [notes]\n", OTHER_CLIENT, 1))
    bob = explain(config, "--provider", "demo-ldap", "--user", "bob", "--resource", RESOURCE)
    assert bob.returncode == 0, bob.stderr
    assert "Team notes -> tickets  https://tickets.example.com  (internal)" in bob.stdout
    assert "+ tickets:read     granted by notes-tickets-readers" in bob.stdout
    assert "- tickets:write    not granted: no rule gives it" in bob.stdout
    assert "payroll" not in bob.stdout  # only the MCP server asked about
    alice = json.loads(explain(config, "--provider", "demo-ldap", "--user", "alice", "--json").stdout)
    pairs = {(p["mcp_server"], p["target"]): p for p in alice["delegation"]}
    assert set(pairs) == {("notes", "tickets"), ("other", "payroll")}
    scopes = {s["scope"]: s for s in pairs["notes", "tickets"]["scopes"]}
    assert scopes["tickets:write"]["granted_by"] == ["notes-tickets-writers"]
    assert all(s["granted"] for s in scopes.values())
