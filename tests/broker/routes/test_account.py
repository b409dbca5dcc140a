"""Self-service connected apps: sign in, see your grants, disconnect one."""

from __future__ import annotations

import httpx
from jose import jwt

from tests.broker.flows import Broker, hidden_inputs, refresh, tokens_for


def sign_in(broker: Broker, username: str, password: str) -> tuple[httpx.Client, httpx.Response]:
    browser = broker.client()
    page = browser.get("/account")
    assert page.status_code == 200
    assert "Sign in to see your connected apps" in page.text
    done = browser.post("/account/login", data={**hidden_inputs(page.text), "username": username, "password": password})
    return browser, done


def test_list_and_disconnect(broker: Broker) -> None:
    client, tokens = tokens_for(broker, "alice")
    other_client, other = tokens_for(broker, "alice")
    browser, done = sign_in(broker, "alice", "demo-alice")
    assert done.status_code == 303
    page = browser.get("/account")
    assert "Connected apps" in page.text
    assert page.text.count("Disconnect</button>") == 2
    assert "Team notes" in page.text
    assert "notes:write" in page.text
    grant_id = jwt.get_unverified_claims(tokens["access_token"])["sid"]
    csrf = hidden_inputs(page.text)["csrf"]
    gone = browser.post("/account/revoke", data={"csrf": csrf, "grant": grant_id})
    assert gone.status_code == 303
    assert refresh(broker, client["client_id"], tokens["refresh_token"]).json()["error"] == "invalid_grant"
    assert refresh(broker, other_client["client_id"], other["refresh_token"]).status_code == 200
    assert browser.get("/account").text.count("Disconnect</button>") == 1
    browser.close()


def test_someone_elses_grant_cannot_be_disconnected(broker: Broker) -> None:
    client, bobs = tokens_for(broker, "bob")
    browser, _ = sign_in(broker, "alice", "demo-alice")
    page = browser.get("/account")
    bob_grant = jwt.get_unverified_claims(bobs["access_token"])["sid"]
    refused = browser.post("/account/revoke", data={"csrf": hidden_inputs(page.text)["csrf"], "grant": bob_grant})
    assert refused.status_code == 404
    assert refresh(broker, client["client_id"], bobs["refresh_token"]).status_code == 200
    browser.close()


def test_forms_need_csrf_and_a_session(broker: Broker) -> None:
    _, tokens = tokens_for(broker, "alice")
    grant_id = jwt.get_unverified_claims(tokens["access_token"])["sid"]
    browser, _ = sign_in(broker, "alice", "demo-alice")
    assert browser.post("/account/revoke", data={"csrf": "forged", "grant": grant_id}).status_code == 403
    anonymous = httpx.post(f"{broker.base}/account/revoke", data={"csrf": "x", "grant": grant_id})
    assert anonymous.status_code == 401
    browser.close()


def test_wrong_password_and_logout(broker: Broker) -> None:
    browser, failed = sign_in(broker, "alice", "nope")
    assert failed.status_code == 401
    assert "The username or password is incorrect." in failed.text
    browser.close()
    browser, _ = sign_in(broker, "bob", "demo-bob")
    page = browser.get("/account")
    assert "Signed in as <strong>bob</strong>" in page.text
    out = browser.post("/account/logout", data={"csrf": hidden_inputs(page.text)["csrf"]})
    assert out.status_code == 303
    assert "Sign in to see your connected apps" in browser.get("/account").text
    browser.close()
