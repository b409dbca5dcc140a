"""The admin API: authenticated, and able to revoke everything of one user at once."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from jose import jwt
from structlog.testing import capture_logs

from tests.broker.conftest import BrokerFactory
from tests.broker.flows import RESOURCE, Broker, refresh, register, sign_in_attempt, tokens_for

ADMIN_TOKEN = "admin-" + "t" * 40


@pytest.fixture
def admin_broker(broker_factory: BrokerFactory) -> Iterator[Broker]:
    with broker_factory(extra=f'admin:\n  token: "{ADMIN_TOKEN}"\n') as broker:
        yield broker


def admin(broker: Broker, method: str, path: str, **kwargs: object) -> httpx.Response:
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    return httpx.request(method, f"{broker.base}/admin{path}", headers=headers, **kwargs)  # type: ignore[arg-type]


def test_disabled_without_a_token(broker: Broker) -> None:
    response = httpx.get(f"{broker.base}/admin/policy", headers={"authorization": "Bearer anything"})
    assert response.status_code == 403
    assert response.json()["error"] == "access_denied"


def test_wrong_or_missing_token(admin_broker: Broker) -> None:
    assert httpx.get(f"{admin_broker.base}/admin/policy").status_code == 401
    wrong = httpx.get(f"{admin_broker.base}/admin/policy", headers={"authorization": "Bearer " + "x" * 46})
    assert wrong.status_code == 401


def test_revoke_everything_of_one_user(admin_broker: Broker) -> None:
    first_client, first = tokens_for(admin_broker, "alice")
    second_client, second = tokens_for(admin_broker, "alice")
    bob_client, bob = tokens_for(admin_broker, "bob")
    subject = jwt.get_unverified_claims(first["access_token"])["sub"]
    grants = admin(admin_broker, "GET", f"/users/{subject}/grants").json()
    assert len(grants) == 2
    assert {g["client_id"] for g in grants} == {first_client["client_id"], second_client["client_id"]}
    assert all(g["resource"] == RESOURCE and g["status"] == "active" for g in grants)
    revoked = admin(admin_broker, "POST", f"/users/{subject}/revoke").json()["revoked"]
    assert len(revoked) == 2
    assert refresh(admin_broker, first_client["client_id"], first["refresh_token"]).json()["error"] == "invalid_grant"
    assert refresh(admin_broker, second_client["client_id"], second["refresh_token"]).json()["error"] == "invalid_grant"
    assert refresh(admin_broker, bob_client["client_id"], bob["refresh_token"]).status_code == 200


def test_revoke_one_grant(admin_broker: Broker) -> None:
    client, tokens = tokens_for(admin_broker, "bob")
    grant_id = jwt.get_unverified_claims(tokens["access_token"])["sid"]
    assert admin(admin_broker, "DELETE", f"/grants/{grant_id}").json() == {"revoked": [grant_id]}
    assert admin(admin_broker, "DELETE", f"/grants/{grant_id}").json() == {"revoked": []}
    assert refresh(admin_broker, client["client_id"], tokens["refresh_token"]).json()["error"] == "invalid_grant"
    assert admin(admin_broker, "DELETE", "/grants/nope").status_code == 400


def test_consents_are_listed_and_forgotten(admin_broker: Broker) -> None:
    client, tokens = tokens_for(admin_broker, "bob")
    subject = jwt.get_unverified_claims(tokens["access_token"])["sub"]
    listed = admin(admin_broker, "GET", f"/users/{subject}/consents").json()
    assert listed[0]["client_id"] == client["client_id"]
    assert listed[0]["scopes"] == ["notes:read"]
    params = {"client_id": client["client_id"], "resource": RESOURCE}
    assert admin(admin_broker, "DELETE", f"/users/{subject}/consents", params=params).json() == {"removed": True}
    assert admin(admin_broker, "GET", f"/users/{subject}/consents").json() == []


def test_an_admin_unlocks_a_locked_username(broker_factory: BrokerFactory) -> None:
    """Locked for one address (pair) and then for all (global): one unlock clears both."""
    protection = "login_protection: {max_failures_per_user: 2, max_failures_per_account: 3, window: 600}"
    with broker_factory(extra=f'admin:\n  token: "{ADMIN_TOKEN}"\n{protection}\n') as b:
        client = register(b)["client_id"]
        for source in ("127.0.0.2", "127.0.0.2", "127.0.0.3"):
            assert sign_in_attempt(b, client, "bob", "wrong", source).status_code == 401
        assert sign_in_attempt(b, client, "bob", "demo-bob", "127.0.0.4").status_code == 429
        path = f"{b.base}/admin/users/demo-ldap/bob/unlock"
        assert httpx.post(path).status_code == 401
        assert httpx.post(path, headers={"authorization": "Bearer " + "x" * 46}).status_code == 401
        assert sign_in_attempt(b, client, "bob", "demo-bob", "127.0.0.2").status_code == 429  # still locked
        with capture_logs() as logs:
            assert admin(b, "POST", "/users/demo-ldap/bob/unlock").json() == {"unlocked": True}
        [event] = [e for e in logs if e["event"] == "account_unlocked"]
        assert (event["audit"], event["provider"], event["username"], event["by"]) == (
            True,
            "demo-ldap",
            "bob",
            "admin",
        )
        assert sign_in_attempt(b, client, "bob", "demo-bob", "127.0.0.2").status_code == 303
        assert admin(b, "POST", "/users/demo-ldap/bob/unlock").json() == {"unlocked": False}  # nothing left


def test_unlock_names_a_password_provider(admin_broker: Broker) -> None:
    unknown = admin(admin_broker, "POST", "/users/no-such-provider/bob/unlock")
    assert unknown.status_code == 400
    assert unknown.json()["error"] == "invalid_request"


def test_unlock_needs_the_admin_api(broker: Broker) -> None:
    response = httpx.post(f"{broker.base}/admin/users/demo-ldap/bob/unlock", headers={"authorization": "Bearer x"})
    assert response.status_code == 403


def test_policy_version_and_openapi(admin_broker: Broker) -> None:
    policy = admin(admin_broker, "GET", "/policy").json()
    assert len(policy["version"]) == 12
    schema = httpx.get(f"{admin_broker.base}/openapi.json").json()
    assert "/admin/users/{subject}/revoke" in schema["paths"]
    assert "/admin/users/{provider}/{username}/unlock" in schema["paths"]
