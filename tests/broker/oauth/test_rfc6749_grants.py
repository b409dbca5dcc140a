"""The authorization code and refresh token grants (OAuth 2.1 §4.1, §4.3), and the attacks on them."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.broker.flows import (
    REDIRECT,
    Broker,
    authorize_params,
    exchange,
    login,
    login_form,
    pkce_pair,
    refresh,
    register,
    tokens_for,
)


def test_code_exchange_response(broker: Broker) -> None:
    client = register(broker)
    auth = login(broker, client["client_id"], "bob")
    response = exchange(broker, client["client_id"], auth)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 300
    assert body["scope"] == "notes:read"  # bob is a reader only
    assert body["refresh_token"].startswith("rt.")


def test_requested_scope_is_narrowed_to_the_policy(broker: Broker) -> None:
    client = register(broker)
    bob = exchange(broker, client["client_id"], login(broker, client["client_id"], "bob", scope="notes:write"))
    assert bob.json()["scope"] == "notes:read"  # write implies read; bob holds only read
    alice = exchange(broker, client["client_id"], login(broker, client["client_id"], "alice", scope="notes:read"))
    assert alice.json()["scope"] == "notes:read"


def test_code_replay_is_refused_and_revokes_what_it_issued(broker: Broker) -> None:
    client = register(broker)
    auth = login(broker, client["client_id"])
    first = exchange(broker, client["client_id"], auth)
    assert first.status_code == 200
    replay = exchange(broker, client["client_id"], auth)
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"
    # The refresh token from the first exchange died with the replay.
    assert refresh(broker, client["client_id"], first.json()["refresh_token"]).json()["error"] == "invalid_grant"


def test_code_used_by_another_client(broker: Broker) -> None:
    owner, thief = register(broker), register(broker)
    auth = login(broker, owner["client_id"])
    stolen = exchange(broker, thief["client_id"], auth)
    assert stolen.json()["error"] == "invalid_grant"


def test_redirect_uri_must_match_at_the_token_endpoint(broker: Broker) -> None:
    client = register(broker)
    auth = login(broker, client["client_id"])
    response = exchange(broker, client["client_id"], auth, redirect_uri="http://127.0.0.1:33418/other")
    assert response.json()["error"] == "invalid_grant"


def test_forged_and_malformed_codes(broker: Broker) -> None:
    client = register(broker)
    auth = login(broker, client["client_id"])
    grant = auth.code.split(".")[1]
    forged = exchange(broker, client["client_id"], auth, code=f"ac.{grant}.{'A' * 43}")
    assert forged.json()["error"] == "invalid_grant"
    assert exchange(broker, client["client_id"], auth, code="garbage").json()["error"] == "invalid_grant"


def test_unknown_client_at_authorize_is_a_page_not_a_redirect(broker: Broker) -> None:
    _, challenge = pkce_pair()
    response = httpx.get(f"{broker.base}/authorize", params=authorize_params("no-such-client", challenge))
    assert response.status_code == 400
    assert "location" not in response.headers
    assert "Unknown application" in response.text


@pytest.mark.parametrize(
    "redirect",
    [
        "https://evil.example.com/callback",
        "http://127.0.0.1:33418/callback/../evil",
        "http://127.0.0.1:33418/callbackx",
        "http://localhost:33418/callback",
        "http://evil@127.0.0.1:33418/callback",
    ],
)
def test_open_redirect_attempts_are_shown_not_followed(broker: Broker, redirect: str) -> None:
    client = register(broker)
    _, challenge = pkce_pair()
    params = authorize_params(client["client_id"], challenge, redirect_uri=redirect)
    response = httpx.get(f"{broker.base}/authorize", params=params)
    assert response.status_code == 400
    assert "location" not in response.headers
    assert "not registered" in response.text


def test_loopback_redirect_matches_on_any_port(broker: Broker) -> None:
    client = register(broker)
    auth = login(broker, client["client_id"], redirect_uri="http://127.0.0.1:51234/callback")
    assert auth.redirect.startswith("http://127.0.0.1:51234/callback?")
    # At the token endpoint the value must be identical to the authorization request's (§4.1.3):
    # the loopback port leeway is for matching the registration only.
    other_port = exchange(broker, client["client_id"], auth, redirect_uri="http://127.0.0.1:51235/callback")
    assert other_port.json()["error"] == "invalid_grant"
    again = login(broker, client["client_id"], redirect_uri="http://127.0.0.1:51234/callback")
    ok = exchange(broker, client["client_id"], again, redirect_uri="http://127.0.0.1:51234/callback")
    assert ok.status_code == 200


def test_redirect_uri_at_the_token_endpoint_only_when_the_authorization_request_had_one(broker: Broker) -> None:
    client = register(broker)  # one registered redirect URI, so authorize may omit it
    without = login(broker, client["client_id"], redirect_uri=None)
    assert without.redirect.startswith(REDIRECT + "?")
    assert exchange(broker, client["client_id"], without, redirect_uri=None).status_code == 200
    with_it = login(broker, client["client_id"])
    missing = exchange(broker, client["client_id"], with_it, redirect_uri=None)
    assert missing.json()["error"] == "invalid_grant"


def test_https_redirect_must_match_exactly(broker: Broker) -> None:
    client = register(broker, redirect_uri="https://app.example.com/cb", application_type="web")
    _, challenge = pkce_pair()
    params = authorize_params(client["client_id"], challenge, redirect_uri="https://app.example.com:8443/cb")
    assert httpx.get(f"{broker.base}/authorize", params=params).status_code == 400


def test_duplicate_parameters_are_refused(broker: Broker) -> None:
    client = register(broker)
    _, challenge = pkce_pair()
    params = [*authorize_params(client["client_id"], challenge).items(), ("state", "second")]
    response = httpx.get(f"{broker.base}/authorize", params=params)
    assert "error=invalid_request" in response.headers["location"]
    duplicate = httpx.post(
        f"{broker.base}/token",
        content="grant_type=refresh_token&grant_type=authorization_code&client_id=x",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert duplicate.json()["error"] == "invalid_request"


def test_token_endpoint_input_errors(broker: Broker) -> None:
    client = register(broker)
    cases = [
        ({"client_id": client["client_id"]}, 400, "invalid_request"),
        ({"client_id": client["client_id"], "grant_type": "password"}, 400, "unsupported_grant_type"),
        ({"client_id": "nobody", "grant_type": "refresh_token"}, 401, "invalid_client"),
        ({"grant_type": "refresh_token"}, 401, "invalid_client"),
    ]
    for data, status, error in cases:
        response = httpx.post(f"{broker.base}/token", data=data)
        assert (response.status_code, response.json()["error"]) == (status, error), data
    json_body = httpx.post(f"{broker.base}/token", json={"grant_type": "refresh_token"})
    assert json_body.status_code == 400
    assert json_body.json()["error"] == "invalid_request"


def test_confidential_client_authentication(broker: Broker) -> None:
    client = register(broker, token_endpoint_auth_method="client_secret_basic")
    auth = login(broker, client["client_id"])
    no_secret = exchange(broker, client["client_id"], auth)
    assert no_secret.status_code == 401
    assert no_secret.json()["error"] == "invalid_client"
    auth = login(broker, client["client_id"])
    wrong = httpx.post(
        f"{broker.base}/token",
        data={
            "grant_type": "authorization_code",
            "code": auth.code,
            "redirect_uri": REDIRECT,
            "code_verifier": auth.verifier,
        },
        auth=(client["client_id"], "wrong"),
    )
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"].startswith("Basic")
    auth = login(broker, client["client_id"])
    right = httpx.post(
        f"{broker.base}/token",
        data={
            "grant_type": "authorization_code",
            "code": auth.code,
            "redirect_uri": REDIRECT,
            "code_verifier": auth.verifier,
        },
        auth=(client["client_id"], client["client_secret"]),
    )
    assert right.status_code == 200, right.text


def test_refresh_rotates(broker: Broker) -> None:
    client, tokens = tokens_for(broker)
    second = refresh(broker, client["client_id"], tokens["refresh_token"]).json()
    assert second["refresh_token"] != tokens["refresh_token"]
    assert second["expires_in"] == 300
    assert second["scope"] == "notes:read notes:write"
    third = refresh(broker, client["client_id"], second["refresh_token"])
    assert third.status_code == 200


def test_refresh_may_narrow_but_never_widen(broker: Broker) -> None:
    client = register(broker)
    tokens = exchange(
        broker, client["client_id"], login(broker, client["client_id"], "alice", scope="notes:read")
    ).json()
    wider = refresh(broker, client["client_id"], tokens["refresh_token"], scope="notes:read notes:write")
    assert wider.json()["error"] == "invalid_scope"
    _, full = tokens_for(broker, "alice")
    narrow = refresh(broker, client["client_id"], full["refresh_token"], scope="notes:read")
    assert narrow.json()["error"] == "invalid_grant"  # another client's token
    client2, full2 = tokens_for(broker, "alice")
    narrowed = refresh(broker, client2["client_id"], full2["refresh_token"], scope="notes:read").json()
    assert narrowed["scope"] == "notes:read"
    # The grant keeps its scopes: a later refresh without scope gets them all back.
    assert refresh(broker, client2["client_id"], narrowed["refresh_token"]).json()["scope"] == "notes:read notes:write"


def test_refresh_with_another_clients_token(broker: Broker) -> None:
    _, tokens = tokens_for(broker)
    other = register(broker)
    stolen = refresh(broker, other["client_id"], tokens["refresh_token"])
    assert stolen.json()["error"] == "invalid_grant"


def test_a_client_without_the_refresh_grant_is_unauthorized_for_it(broker: Broker) -> None:
    client = register(broker, grant_types=["authorization_code"])
    tokens = exchange(broker, client["client_id"], login(broker, client["client_id"])).json()
    assert "refresh_token" not in tokens
    _, other_tokens = tokens_for(broker)
    response = refresh(broker, client["client_id"], other_tokens["refresh_token"])
    assert (response.status_code, response.json()["error"]) == (400, "unauthorized_client")  # RFC 6749 §5.2


def test_reuse_within_grace_gets_the_same_answer_and_after_it_revokes(broker: Broker) -> None:
    client, tokens = tokens_for(broker)
    first = refresh(broker, client["client_id"], tokens["refresh_token"]).json()
    retry = refresh(broker, client["client_id"], tokens["refresh_token"]).json()
    assert retry == first  # a retried refresh is not a theft
    time.sleep(2.2)  # the test config's grace window is 2 s
    reuse = refresh(broker, client["client_id"], tokens["refresh_token"])
    assert reuse.json()["error"] == "invalid_grant"
    # The whole family is revoked: the successor the legitimate client holds is dead too.
    assert refresh(broker, client["client_id"], first["refresh_token"]).json()["error"] == "invalid_grant"


async def test_fifty_concurrent_refreshes_get_one_successor(broker: Broker) -> None:
    client, tokens = tokens_for(broker)
    data = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "client_id": client["client_id"]}
    limits = httpx.Limits(max_connections=50)
    async with httpx.AsyncClient(base_url=broker.base, limits=limits, timeout=30) as http:
        responses = await asyncio.gather(*(http.post("/token", data=data) for _ in range(50)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    successors = {r.json()["refresh_token"] for r in responses}
    access = {r.json()["access_token"] for r in responses}
    assert len(successors) == 1
    assert len(access) == 1
    assert refresh(broker, client["client_id"], successors.pop()).status_code == 200


def test_state_is_echoed_verbatim(broker: Broker) -> None:
    client = register(broker)
    state = "a b&c=d/é"
    auth = login(broker, client["client_id"], state=state)
    assert auth.params["state"] == state


def test_carol_gets_no_access_page_not_a_code(broker: Broker) -> None:
    client = register(broker)
    with broker.client() as browser:
        fields = login_form(browser, client["client_id"])
        done = browser.post("/login", data={**fields, "username": "carol", "password": "demo-carol"})
    assert done.status_code == 403
    assert "You have no access to Team notes" in done.text
    assert "mcp-readers" in done.text
    assert "mcp-writers" in done.text
    back = urlsplit(done.text.split('href="')[-1].split('"')[0].replace("&amp;", "&"))
    assert parse_qs(back.query)["error"] == ["access_denied"]


def test_a_code_presented_by_another_client_stays_with_its_owner(broker: Broker) -> None:
    owner, thief = register(broker), register(broker)
    auth = login(broker, owner["client_id"])
    assert exchange(broker, thief["client_id"], auth).json()["error"] == "invalid_grant"
    # The thief's attempt neither spent the code nor made the owner's exchange look like a replay.
    rightful = exchange(broker, owner["client_id"], auth)
    assert rightful.status_code == 200, rightful.text
    assert refresh(broker, owner["client_id"], rightful.json()["refresh_token"]).status_code == 200
