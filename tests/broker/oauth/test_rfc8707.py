"""Resource indicators (RFC 8707): one configured resource per grant, the token audience."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from jose import jwt

from tests.broker.flows import RESOURCE, Broker, authorize_params, exchange, login, pkce_pair, refresh, register


def _error(broker: Broker, **over: str | None) -> dict[str, str]:
    client = register(broker)
    _, challenge = pkce_pair()
    response = httpx.get(f"{broker.base}/authorize", params=authorize_params(client["client_id"], challenge, **over))
    assert response.status_code == 302
    return {k: v[0] for k, v in parse_qs(urlsplit(response.headers["location"]).query).items()}


@pytest.mark.parametrize(
    "resource",
    [None, "https://not-configured.example.com/mcp", "http://127.0.0.1:8001/other", "https://[x]/", "http://[::1"],
)
def test_unknown_or_missing_resource_is_invalid_target(broker: Broker, resource: str | None) -> None:
    assert _error(broker, resource=resource)["error"] == "invalid_target"


def test_two_resources_are_refused(broker: Broker) -> None:
    client = register(broker)
    _, challenge = pkce_pair()
    params = [
        *list(authorize_params(client["client_id"], challenge).items()),
        ("resource", "http://127.0.0.1:8002/mcp"),
    ]
    response = httpx.get(f"{broker.base}/authorize", params=params)
    assert "error=invalid_target" in response.headers["location"]


@pytest.mark.parametrize("variant", ["HTTP://127.0.0.1:8001/mcp", "http://127.0.0.1:8001/mcp/"])
def test_equivalent_spellings_are_accepted(broker: Broker, variant: str) -> None:
    client = register(broker)
    auth = login(broker, client["client_id"], resource=variant)
    token = exchange(broker, client["client_id"], auth).json()["access_token"]
    assert jwt.get_unverified_claims(token)["aud"] == RESOURCE


def test_scopes_of_another_resource_are_dropped(broker: Broker) -> None:
    # Clients fall back to the broker-wide scopes_supported when the MCP server lists none.
    client = register(broker)
    auth = login(broker, client["client_id"], "alice", scope="notes:read other:use")
    assert exchange(broker, client["client_id"], auth).json()["scope"] == "notes:read"
    assert _error(broker, scope="other:use unknown:thing")["error"] == "invalid_scope"


def test_token_request_for_another_resource(broker: Broker) -> None:
    client = register(broker)
    auth = login(broker, client["client_id"])
    response = exchange(broker, client["client_id"], auth, resource="http://127.0.0.1:8002/mcp")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_target"


@pytest.mark.parametrize("resource", ["https://[x]/", "http://[::1"])
def test_a_resource_that_is_not_a_url_is_invalid_target_at_the_token_endpoint(broker: Broker, resource: str) -> None:
    client = register(broker)
    auth = login(broker, client["client_id"])
    response = exchange(broker, client["client_id"], auth, resource=resource)
    assert (response.status_code, response.json()["error"]) == (400, "invalid_target")
    tokens = exchange(broker, client["client_id"], login(broker, client["client_id"])).json()
    moved = refresh(broker, client["client_id"], tokens["refresh_token"], resource=resource)
    assert (moved.status_code, moved.json()["error"]) == (400, "invalid_target")


def test_refresh_cannot_change_the_resource(broker: Broker) -> None:
    client = register(broker)
    auth = login(broker, client["client_id"])
    tokens = exchange(broker, client["client_id"], auth).json()
    moved = refresh(broker, client["client_id"], tokens["refresh_token"], resource="http://127.0.0.1:8002/mcp")
    assert moved.json()["error"] == "invalid_target"
    same = refresh(broker, client["client_id"], tokens["refresh_token"], resource=RESOURCE)
    assert same.status_code == 200
    assert jwt.get_unverified_claims(same.json()["access_token"])["aud"] == RESOURCE
