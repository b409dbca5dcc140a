"""The typed records read what the broker has always stored, and write it back unchanged (only
the fields nothing read are left out): a running Redis stays readable across the upgrade."""

from __future__ import annotations

import json

from broker.store import records

IDENTITY = {
    "provider_id": "corp",
    "subject": "corp:123",
    "username": "alice",
    "email": "alice@example.com",
    "display_name": "Alice",
    "groups": ["g1", "g2"],
    "group_names": {"g1": "Readers"},
    "username_is_unique": True,
    "private": "sealed-blob",
}
# As the code before the typed records wrote them (issue10-done), field for field.
OLD_CODE = {
    "code_hash": "ab12",
    "client_id": "c1",
    "redirect_uri": "http://127.0.0.1:9000/cb",
    "redirect_uri_given": False,
    "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
    "resource": "https://mcp.example.com",
    "scopes": ["notes:read", "notes:write"],
    "requested": ["notes:write"],
    "identity": IDENTITY,
    "auth_time": 1760000000,
    "policy_version": "3f2a",
}
OLD_GRANT = {
    "grant_id": "g1",
    "client_id": "c1",
    "subject": "corp:123",
    "username": "alice",
    "provider_id": "corp",
    "resource": "https://mcp.example.com",
    "scopes": "notes:read notes:write",
    "requested": "notes:write",
    "identity": IDENTITY,
    "created_at": 1760000000.5,
    "last_refresh": 1760000100.25,
    "auth_time": 1760000000,
    "expires_at": 1762592000.5,
    "status": "active",
    "code_hash": "ab12",
    "refresh_count": 3,
    "policy_version": "3f2a",
}
NOT_READ = ("requested", "refresh_count", "revoked_reason")


def stored(record: dict[str, object]) -> dict[str, object]:
    return json.loads(json.dumps(record))  # type: ignore[no-any-return]


def test_a_code_reads_and_writes_the_old_json() -> None:
    code = records.AuthorizationCode.from_json(stored(OLD_CODE))
    assert code.redirect_uri_given is False
    assert code.scopes == ("notes:read", "notes:write")
    assert code.identity.username_is_unique
    assert code.to_json() == {k: v for k, v in OLD_CODE.items() if k not in NOT_READ}
    assert records.AuthorizationCode.from_json(
        {**OLD_CODE, "redirect_uri_given": None}
    ).redirect_uri_given  # absent: given


def test_a_grant_reads_and_writes_the_old_json_revoked_too() -> None:
    grant = records.Grant.from_json(stored(OLD_GRANT))
    assert (grant.scope_list, grant.active, grant.identity and grant.identity.groups) == (
        ["notes:read", "notes:write"],
        True,
        ("g1", "g2"),
    )
    assert grant.to_json() == {k: v for k, v in OLD_GRANT.items() if k not in NOT_READ}
    revoked = {**OLD_GRANT, "status": "revoked", "revoked_at": 1760000200.0, "revoked_reason": "admin"}
    grant = records.Grant.from_json(stored(revoked))
    assert (grant.status, grant.revoked_at) == ("revoked", 1760000200.0)
    assert grant.to_json() == {k: v for k, v in revoked.items() if k not in NOT_READ}


def test_refresh_markers_old_and_new() -> None:
    assert records.RefreshToken.from_json(json.loads(records.RefreshToken.ACTIVE_JSON)) == records.RefreshToken(
        "active"
    )
    rotated = records.RefreshToken.from_json({"state": "rotated", "at": 1760000000.5})
    assert (rotated.rotated, rotated.rotated_at, rotated.successor) == (True, 1760000000.5, None)
    older = records.RefreshToken.from_json({"state": "rotated", "at": 1.0, "successor": "sealed"})  # before :next keys
    assert older.successor == "sealed"
    assert older.to_json() == {"state": "rotated", "at": 1.0, "successor": "sealed"}


def test_flows_in_each_stage_round_trip() -> None:
    request = {"client_id": "c1", "redirect_uri": "http://127.0.0.1/cb", "scopes": ["a"], "state": "s"}
    started = {"request": request, "csrf_hash": "h1", "approved": False, "created_at": 1760000000.5}
    approved = {**started, "approved": True, "provider": "corp", "binding_hash": "b", "client_id": "c1"}
    upstream = {**approved, "upstream": {"state_hash": "u", "data": "sealed-flow-data"}}
    unsealed = {**approved, "upstream": {"state_hash": "u", "data": {"nonce": "n"}}}
    account = {
        "purpose": "account",
        "approved": True,
        "provider": "corp",
        "binding_hash": "b",
        "upstream": {"data": None},
    }
    for record in (started, approved, upstream, unsealed, account, {"approved": True}):
        assert records.PendingFlow.from_json(stored(record)).to_json() == record
    flow = records.PendingFlow.from_json(started).approve(provider="corp", binding_hash="b", client_id="c1")
    assert flow.to_json() == approved


def test_sessions_consents_and_clients_round_trip() -> None:
    session = {"subject": "corp:123", "username": "alice", "provider": "corp", "created_at": 1760000000.5}
    assert records.BrowserSession.from_json(stored(session)).to_json() == session
    consent = records.Consent.from_json("c1 https://mcp.example.com", {"scopes": ["a", "b"], "at": 1760000000.5})
    assert (consent.client_id, consent.resource, consent.hash_field) == (
        "c1",
        "https://mcp.example.com",
        "c1 https://mcp.example.com",
    )
    assert consent.to_json() == {"scopes": ["a", "b"], "at": 1760000000.5}
    client = {
        "client_id": "c1",
        "client_name": "One",
        "redirect_uris": ["http://127.0.0.1/cb"],
        "application_type": "native",
        "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code", "refresh_token"],
        "kind": "dynamic",
        "secret_hash": None,
        "client_uri": None,
        "created_at": 1760000000,
    }
    assert stored(records.ClientRegistration.from_json(stored(client)).to_json()) == client
