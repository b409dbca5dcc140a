"""Token revocation (RFC 7009): a revoked token's grant dies, and resource servers hear of it."""

from __future__ import annotations

import time

import httpx
import redis
from jose import jwt

from broker.devstack import RedisServer
from tests.broker.flows import Broker, refresh, register, tokens_for


def revoke(broker: Broker, client_id: str, token: str, **extra: str) -> httpx.Response:
    return httpx.post(f"{broker.base}/revoke", data={"token": token, "client_id": client_id, **extra})


def test_revoking_a_refresh_token_kills_the_grant(broker: Broker) -> None:
    client, tokens = tokens_for(broker)
    response = revoke(broker, client["client_id"], tokens["refresh_token"], token_type_hint="refresh_token")
    assert response.status_code == 200
    assert refresh(broker, client["client_id"], tokens["refresh_token"]).json()["error"] == "invalid_grant"


def test_revoking_an_access_token_kills_its_grant_and_is_published(broker: Broker, redis_server: RedisServer) -> None:
    client, tokens = tokens_for(broker)
    grant_id = jwt.get_unverified_claims(tokens["access_token"])["sid"]
    raw = redis.Redis.from_url(redis_server.url)
    pubsub = raw.pubsub()
    pubsub.subscribe(f"{broker.config.redis.key_prefix}:revocations")
    pubsub.get_message(timeout=1)  # subscription confirmation
    assert revoke(broker, client["client_id"], tokens["access_token"]).status_code == 200
    message = pubsub.get_message(timeout=2)
    assert message is not None
    assert message["data"] == grant_id.encode()
    score = raw.zscore(f"{broker.config.redis.key_prefix}:{{revoked}}", grant_id)
    assert score is not None
    assert score > time.time()
    assert refresh(broker, client["client_id"], tokens["refresh_token"]).json()["error"] == "invalid_grant"
    pubsub.close()
    raw.close()


def test_another_client_cannot_revoke(broker: Broker) -> None:
    client, tokens = tokens_for(broker)
    other = register(broker)
    assert revoke(broker, other["client_id"], tokens["refresh_token"]).status_code == 200  # says nothing
    assert refresh(broker, client["client_id"], tokens["refresh_token"]).status_code == 200  # but did nothing


def test_unknown_tokens_answer_200(broker: Broker) -> None:
    client = register(broker)
    for token in ("garbage", "rt.AAAAAAAAAAAAAAAAAAAAAA." + "B" * 43, "eyJhbGciOiJub25lIn0.e30."):
        assert revoke(broker, client["client_id"], token).status_code == 200


def test_revocation_needs_client_authentication(broker: Broker) -> None:
    _, tokens = tokens_for(broker)
    response = httpx.post(f"{broker.base}/revoke", data={"token": tokens["refresh_token"]})
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    missing = httpx.post(f"{broker.base}/revoke", data={"client_id": register(broker)["client_id"]})
    assert missing.json()["error"] == "invalid_request"
