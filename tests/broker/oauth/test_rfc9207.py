"""RFC 9207: ``iss`` on every authorization response, errors included."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx

from tests.broker.flows import Broker, authorize_params, hidden_inputs, login, pkce_pair, register


def test_iss_and_state_on_success(broker: Broker) -> None:
    client = register(broker)
    auth = login(broker, client["client_id"], state="xyz-123")
    assert auth.params["iss"] == broker.base
    assert auth.params["state"] == "xyz-123"


def test_iss_on_an_error_response(broker: Broker) -> None:
    client = register(broker)
    _, challenge = pkce_pair()
    params = authorize_params(client["client_id"], challenge, response_type="token", state="s1")
    location = httpx.get(f"{broker.base}/authorize", params=params).headers["location"]
    query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    assert query == {
        "error": "unsupported_response_type",
        "error_description": query["error_description"],
        "state": "s1",
        "iss": broker.base,
    }


def test_iss_when_the_user_denies(broker: Broker) -> None:
    client = register(broker)
    _, challenge = pkce_pair()
    with broker.client() as browser:
        page = browser.get("/authorize", params=authorize_params(client["client_id"], challenge, state="s2"))
        denied = browser.post("/consent", data={**hidden_inputs(page.text), "decision": "deny"})
    assert denied.status_code == 303
    query = {k: v[0] for k, v in parse_qs(urlsplit(denied.headers["location"]).query).items()}
    assert (query["error"], query["state"], query["iss"]) == ("access_denied", "s2", broker.base)
