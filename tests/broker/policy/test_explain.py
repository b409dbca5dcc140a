"""`mcp-broker explain` against the real directory, and the same answer from the admin API."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

from broker.devstack import RedisServer, Slapd
from tests.broker.conftest import BrokerFactory
from tests.broker.flows import RESOURCE, broker_yaml

ADMIN = "admin-" + "e" * 40


def explain(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", "explain", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_explain_each_demo_user(tmp_path: Path, redis_server: RedisServer, slapd: Slapd) -> None:
    config = tmp_path / "broker.yaml"
    config.write_text(broker_yaml(8000, redis_server.url, slapd, prefix="explain"))
    alice = explain(config, "--provider", "demo-ldap", "--user", "alice", "--resource", RESOURCE)
    assert alice.returncode == 0, alice.stderr
    assert "+ notes:read       granted by readers-read, writers-write" in alice.stdout
    assert "+ notes:write      granted by writers-write" in alice.stdout
    bob = explain(config, "--provider", "demo-ldap", "--user", "bob", "--resource", RESOURCE).stdout
    assert "+ notes:read" in bob
    assert "- notes:write      not granted: no rule gives it" in bob
    carol = explain(config, "--provider", "demo-ldap", "--user", "carol", "--resource", RESOURCE).stdout
    assert "no access" in carol
    assert "mcp-readers, mcp-writers" in carol
    everything = json.loads(explain(config, "--provider", "demo-ldap", "--user", "bob", "--json").stdout)
    assert [r["uri"] for r in everything["resources"]] == [RESOURCE, "http://127.0.0.1:8002/mcp"]


def test_explain_with_given_groups_and_errors(tmp_path: Path, redis_server: RedisServer, slapd: Slapd) -> None:
    config = tmp_path / "broker.yaml"
    config.write_text(broker_yaml(8000, redis_server.url, slapd, prefix="explain"))
    given = explain(config, "--provider", "demo-ldap", "--groups", "mcp-writers", "--resource", RESOURCE)
    assert "+ notes:write" in given.stdout
    unknown = explain(config, "--provider", "nope", "--user", "alice")
    assert unknown.returncode == 2
    assert "no provider 'nope' (configured: demo-ldap)" in unknown.stderr
    nobody = explain(config, "--provider", "demo-ldap", "--user", "nobody")
    assert nobody.returncode == 1
    assert "Traceback" not in nobody.stderr


def test_the_admin_api_gives_the_same_answer(broker_factory: BrokerFactory) -> None:
    with broker_factory(extra=f'admin:\n  token: "{ADMIN}"\n') as broker:
        response = httpx.get(
            f"{broker.base}/admin/explain",
            params={"provider": "demo-ldap", "user": "alice", "resource": RESOURCE},
            headers={"authorization": f"Bearer {ADMIN}"},
        )
        assert response.status_code == 200, response.text
        scopes = {s["scope"]: s for s in response.json()["resources"][0]["scopes"]}
        assert scopes["notes:write"]["granted_by"] == ["writers-write"]
        assert scopes["notes:read"]["granted"] is True


def test_a_given_user_of_a_provider_whose_usernames_are_not_unique() -> None:
    from broker.policy.explain import given_identity
    from providers.ldap.config import LdapProviderConfig
    from providers.oidc.config import OidcProviderConfig

    oidc = OidcProviderConfig(id="okta", display_name="Okta", issuer="https://op.example", client_id="c")
    by_name = given_identity(oidc, "alice", frozenset({"g"}))
    assert (by_name.username, by_name.subject, by_name.username_is_unique) == ("alice", "(given groups)", False)
    assert given_identity(oidc, "okta:00u1", frozenset()).subject == "okta:00u1"  # the subject form
    ldap = LdapProviderConfig(id="corp", display_name="Corp", urls=["ldap://dir.example"], user_base_dn="dc=x")
    assert given_identity(ldap, "alice", frozenset()).subject == "alice"
    assert given_identity(ldap, "alice", frozenset()).username_is_unique
