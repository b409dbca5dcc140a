"""The policy end to end against the real directory: group changes and policy reloads take
effect at the next refresh; an invalid policy file leaves the old one working."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import ldap3
import pytest
import yaml

from broker.app import create_app
from broker.config import parse_config
from broker.devstack import RedisServer, Slapd, free_port
from broker.oauth.metadata import well_known_paths
from tests.broker.flows import Broker, broker_yaml, refresh, tokens_for
from tests.http import running

ADMIN_TOKEN = "admin-" + "p" * 40


@pytest.fixture(scope="module")
def own_slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    """A directory of this module's own, since these tests change group membership."""
    server = Slapd(tmp_path_factory.mktemp("policy-slapd")).start()
    yield server
    server.stop()


@pytest.fixture
def policy_broker(redis_server: RedisServer, own_slapd: Slapd, tmp_path: Path) -> Iterator[tuple[Broker, Path]]:
    port = free_port()
    data: dict[str, Any] = yaml.safe_load(
        broker_yaml(port, redis_server.url, own_slapd, prefix=f"t{secrets.token_hex(6)}")
    )
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"resources": data.pop("resources"), "mappings": data.pop("mappings")}))
    data["policy_file"] = str(policy)
    data["admin"] = {"token": ADMIN_TOKEN}
    config = parse_config(yaml.safe_dump(data))
    with running(create_app(config), port):
        yield Broker(config.issuer, config), policy


def test_removing_alice_from_writers_shrinks_her_next_refresh(
    policy_broker: tuple[Broker, Path], own_slapd: Slapd
) -> None:
    broker, _ = policy_broker
    client, tokens = tokens_for(broker, "alice")
    assert tokens["scope"] == "notes:read notes:write"
    admin = own_slapd.admin_connection()
    writers = "cn=mcp-writers,ou=groups,dc=demo,dc=local"
    alice = "uid=alice,ou=people,dc=demo,dc=local"
    # groupOfNames needs a member: keep the group alive with a placeholder while alice leaves.
    assert admin.modify(writers, {"member": [(ldap3.MODIFY_ADD, [own_slapd.service_dn])]}), admin.result
    assert admin.modify(writers, {"member": [(ldap3.MODIFY_DELETE, [alice])]}), admin.result
    try:
        shrunk = refresh(broker, client["client_id"], tokens["refresh_token"]).json()
        assert shrunk["scope"] == "notes:read"  # the token response says so
        # And it stays shrunk: the grant itself lost the scope.
        assert admin.modify(writers, {"member": [(ldap3.MODIFY_ADD, [alice])]}), admin.result
        again = refresh(broker, client["client_id"], shrunk["refresh_token"]).json()
        assert again["scope"] == "notes:read"
    finally:
        admin.modify(writers, {"member": [(ldap3.MODIFY_ADD, [alice])]})
        admin.modify(writers, {"member": [(ldap3.MODIFY_DELETE, [own_slapd.service_dn])]})
        admin.unbind()


def _policy(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def _last_reload(broker: Broker) -> dict[str, Any] | None:
    view = httpx.get(f"{broker.base}/admin/policy", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}).json()
    last: dict[str, Any] | None = view["last_reload"]
    return last


def _reload_and_wait(broker: Broker, path: Path, content: dict[str, Any] | str | bytes) -> dict[str, Any]:
    """Replace the policy file and wait until the broker has read it (it polls every 2 s);
    the admin API's account of that reload attempt."""
    before = _last_reload(broker)
    data = (
        content
        if isinstance(content, bytes)
        else (content if isinstance(content, str) else yaml.safe_dump(content)).encode()
    )
    # Write beside and rename, as a ConfigMap update swaps files atomically.
    temp = path.with_suffix(".tmp")
    temp.write_bytes(data)
    temp.replace(path)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        last = _last_reload(broker)
        if last is not None and last != before:
            return last
        time.sleep(0.1)
    raise AssertionError("the broker never reloaded the policy file")


def test_a_policy_reload_takes_effect_at_the_next_refresh(policy_broker: tuple[Broker, Path]) -> None:
    broker, path = policy_broker
    client, tokens = tokens_for(broker, "alice")
    assert tokens["scope"] == "notes:read notes:write"
    policy = _policy(path)
    policy["mappings"] = [m for m in policy["mappings"] if m["id"] != "writers-write"]
    assert _reload_and_wait(broker, path, policy)["outcome"] == "applied"
    after = refresh(broker, client["client_id"], tokens["refresh_token"]).json()
    assert after["scope"] == "notes:read"


def test_an_invalid_policy_file_leaves_the_old_policy_working(policy_broker: tuple[Broker, Path]) -> None:
    broker, path = policy_broker
    client, tokens = tokens_for(broker, "bob")
    original = _policy(path)
    policy = _policy(path)
    policy["mappings"][0]["scopes"] = ["no-such-scope"]  # fails validation
    rejected = _reload_and_wait(broker, path, policy)
    assert rejected["outcome"] == "rejected"
    assert any("mappings[0].scopes" in problem and "no-such-scope" in problem for problem in rejected["problems"])
    assert refresh(broker, client["client_id"], tokens["refresh_token"]).json()["scope"] == "notes:read"
    assert _reload_and_wait(broker, path, "mappings: [unclosed")["outcome"] == "rejected"  # not even YAML
    latin1 = _reload_and_wait(broker, path, "resources: []\nmappings: []\n# \xc9quipe\n".encode("latin-1"))
    assert latin1["outcome"] == "rejected"  # not UTF-8: and the watch goes on
    assert any("not UTF-8" in problem for problem in latin1["problems"])
    original["mappings"] = original["mappings"][::-1]  # a real change, which the watch still sees
    assert _reload_and_wait(broker, path, original)["outcome"] == "applied"
    _, fresh = tokens_for(broker, "bob")
    assert fresh["scope"] == "notes:read"


def test_removing_every_rule_denies_the_refresh(policy_broker: tuple[Broker, Path]) -> None:
    broker, path = policy_broker
    client, tokens = tokens_for(broker, "bob")
    policy = _policy(path)
    policy["mappings"] = [m for m in policy["mappings"] if m["id"] == "writers-write"]
    assert _reload_and_wait(broker, path, policy)["outcome"] == "applied"
    denied = refresh(broker, client["client_id"], tokens["refresh_token"])
    assert denied.json()["error"] == "invalid_grant"


def test_discovery_after_a_policy_reload_stays_as_read_at_start(policy_broker: tuple[Broker, Path]) -> None:
    """The discovery document's ``scopes_supported`` is read at start (docs/configuration.md): a
    reload that adds a scope and drops a resource puts the new policy in force at once, while the
    document stays whole, unchanged, and the same at every well-known path."""
    broker, path = policy_broker
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(broker.base))
    paths = well_known_paths(broker.config.issuer)

    def documents() -> list[dict[str, Any]]:
        answers = [httpx.get(f"{origin}{p}") for p in paths]
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        return [a.json() for a in answers]

    before = documents()
    assert all(doc == before[0] for doc in before)
    assert before[0]["issuer"] == broker.config.issuer
    assert before[0]["scopes_supported"] == ["notes:read", "notes:write", "openid", "other:use"]
    policy = _policy(path)
    notes = next(r for r in policy["resources"] if r["id"] == "notes")
    notes["scopes"].append({"name": "notes:admin", "description": "Administer notes"})
    policy["resources"] = [r for r in policy["resources"] if r["id"] != "other"]
    policy["mappings"] = [m for m in policy["mappings"] if m["resource"] != "other"] + [
        {
            "id": "writers-admin",
            "resource": "notes",
            "provider": "demo-ldap",
            "groups": ["mcp-writers"],
            "scopes": ["notes:admin"],
        }
    ]
    assert _reload_and_wait(broker, path, policy)["outcome"] == "applied"
    _, tokens = tokens_for(broker, "alice", scope="notes:admin notes:write")
    assert "notes:admin" in tokens["scope"].split()  # the reloaded policy is in force
    assert documents() == before
