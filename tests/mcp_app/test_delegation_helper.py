"""The verifier distribution's delegation helper, ``TokenExchanger``: against the real broker (with
tokens from a real sign-in), kept until shortly before expiry; and its errors, each distinct."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from broker.devstack import RedisServer, Slapd
from mcp_broker_verifier.delegation import (
    ExchangeRefused,
    ExchangeUnavailable,
    InteractionRequired,
    TokenExchanger,
)
from tests.broker.delegation.test_exchange import OTHER, TICKETS, delegating_broker, verified
from tests.broker.flows import INTROSPECTOR_SECRET, Broker, tokens_for


@pytest.fixture
def broker(redis_server: RedisServer, slapd: Slapd) -> Iterator[Broker]:
    with delegating_broker(redis_server, slapd) as running_broker:
        yield running_broker


async def test_exchange_against_the_broker_and_keep_the_answer(broker: Broker) -> None:
    _, tokens = tokens_for(broker, "alice")
    calls: list[httpx.Request] = []

    async def count(request: httpx.Request) -> None:
        calls.append(request)

    async with httpx.AsyncClient(event_hooks={"request": [count]}) as http:
        exchanger = TokenExchanger(
            token_endpoint=f"{broker.base}/token",
            client_id="notes-server",
            client_secret=INTROSPECTOR_SECRET,
            http=http,
        )
        token = await exchanger.exchange(tokens["access_token"], TICKETS, scope="tickets:read")
        assert verified(broker, token, TICKETS)["scope"] == "tickets:read"
        assert await exchanger.exchange(tokens["access_token"], TICKETS, scope="tickets:read") == token
        assert len(calls) == 1  # kept in memory
        both = await exchanger.exchange(tokens["access_token"], TICKETS)
        assert verified(broker, both, TICKETS)["scope"] == "tickets:read tickets:write"
        assert len(calls) == 2

        _, other = tokens_for(broker, "alice", resource=OTHER)
        with pytest.raises(ExchangeRefused) as refused:
            await exchanger.exchange(other["access_token"], TICKETS)
        assert refused.value.error == "invalid_grant"
        with pytest.raises(ExchangeRefused) as target:
            await exchanger.exchange(tokens["access_token"], "https://unknown.example.com")
        assert target.value.error == "invalid_target"

        short = TokenExchanger(
            token_endpoint=f"{broker.base}/token",
            client_id="notes-server",
            client_secret=INTROSPECTOR_SECRET,
            http=http,
            margin=3600,  # every answer too close to its expiry to keep
        )
        await short.exchange(tokens["access_token"], TICKETS)
        await short.exchange(tokens["access_token"], TICKETS)
        assert len(calls) == 6


async def test_errors_are_distinct() -> None:
    answers = iter(
        [
            httpx.Response(
                400,
                json={
                    "error": "interaction_required",
                    "error_description": "consent",
                    "interaction_uri": "https://b/x",
                },
            ),
            httpx.Response(503, json={"error": "temporarily_unavailable"}),
            httpx.Response(502, text="<html>bad gateway</html>"),
            httpx.Response(401, json={"error": "invalid_client"}),
        ]
    )
    seen: list[dict[str, list[str]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        from urllib.parse import parse_qs

        seen.append(parse_qs(request.content.decode()))
        return next(answers)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        exchanger = TokenExchanger(token_endpoint="https://b/token", client_id="c", client_secret="s", http=http)
        with pytest.raises(InteractionRequired) as interaction:
            await exchanger.exchange("t", "https://api")
        assert interaction.value.url == "https://b/x"
        assert interaction.value.error == "interaction_required"
        with pytest.raises(ExchangeUnavailable):
            await exchanger.exchange("t", "https://api")
        with pytest.raises(ExchangeUnavailable):
            await exchanger.exchange("t", "https://api")
        with pytest.raises(ExchangeRefused) as client:
            await exchanger.exchange("t", "https://api")
        assert client.value.error == "invalid_client"
    assert json.dumps(seen[0]["subject_token_type"]) == '["urn:ietf:params:oauth:token-type:access_token"]'
    assert seen[0]["audience"] == ["https://api"]
