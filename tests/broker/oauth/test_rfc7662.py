"""Token introspection (RFC 7662): authenticated callers, inactive for anything not good."""

from __future__ import annotations

import base64
import json
import time

import httpx

from tests.broker.flows import INTROSPECTOR_SECRET, RESOURCE, Broker, refresh, tokens_for


def introspect(
    broker: Broker, token: str, *, auth: tuple[str, str] | None = ("notes-server", INTROSPECTOR_SECRET)
) -> httpx.Response:
    return httpx.post(f"{broker.base}/introspect", data={"token": token}, auth=auth)


def test_active_access_token(broker: Broker) -> None:
    client, tokens = tokens_for(broker, "bob")
    body = introspect(broker, tokens["access_token"]).json()
    assert body["active"] is True
    assert body["client_id"] == client["client_id"]
    assert body["scope"] == "notes:read"
    assert body["aud"] == RESOURCE
    assert body["iss"] == broker.base
    assert body["username"] == "bob"
    assert body["exp"] > time.time()


def test_active_refresh_token_and_rotated_one(broker: Broker) -> None:
    client, tokens = tokens_for(broker)
    assert introspect(broker, tokens["refresh_token"]).json()["active"] is True
    refresh(broker, client["client_id"], tokens["refresh_token"])
    assert introspect(broker, tokens["refresh_token"]).json() == {"active": False}


def test_revoked_token_is_inactive(broker: Broker) -> None:
    client, tokens = tokens_for(broker)
    httpx.post(f"{broker.base}/revoke", data={"token": tokens["refresh_token"], "client_id": client["client_id"]})
    assert introspect(broker, tokens["access_token"]).json() == {"active": False}


def test_callers_must_authenticate(broker: Broker) -> None:
    _, tokens = tokens_for(broker)
    assert introspect(broker, tokens["access_token"], auth=None).status_code == 401
    assert introspect(broker, tokens["access_token"], auth=("notes-server", "wrong")).status_code == 401
    public = httpx.post(
        f"{broker.base}/introspect",
        data={"token": tokens["access_token"], "client_id": tokens_for(broker)[0]["client_id"]},
    )
    assert public.status_code == 401


def test_expired_token_is_inactive(broker: Broker) -> None:
    _, tokens = tokens_for(broker)
    header, payload, signature = tokens["access_token"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["exp"] = int(time.time()) - 10
    tampered = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert introspect(broker, f"{header}.{tampered}.{signature}").json() == {"active": False}


def test_token_for_another_resource_is_inactive_for_this_caller(broker: Broker) -> None:
    _, tokens = tokens_for(broker, "bob", resource="http://127.0.0.1:8002/mcp", scope="other:use")
    assert introspect(broker, tokens["access_token"]).json() == {"active": False}


def test_garbage_is_inactive(broker: Broker) -> None:
    for token in ("garbage", "a.b.c", "eyJhbGciOiJub25lIiwidHlwIjoiYXQrand0In0.eyJzdWIiOiJ4In0."):
        assert introspect(broker, token).json() == {"active": False}
