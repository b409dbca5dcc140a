"""mcp_app in introspection mode (RFC 7662), for servers that cannot reach Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from broker.devstack import free_port
from mcp_app.app import create_app
from mcp_app.settings import McpAppSettings
from tests.broker.conftest import BrokerFactory
from tests.broker.flows import INTROSPECTOR_SECRET, Broker, tokens_for
from tests.http import running


def call(url: str, token: str) -> int:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}
    headers = {"authorization": f"Bearer {token}", "accept": "application/json, text/event-stream"}
    return httpx.post(url, json=body, headers=headers).status_code


def introspecting(port: int, issuer: str, secret: str, **over: object) -> McpAppSettings:
    """mcp_app on ``port`` checking tokens at ``issuer``'s introspection endpoint as notes-server."""
    return McpAppSettings(
        resource_url=f"http://127.0.0.1:{port}/mcp",
        issuer=issuer,
        verification="introspection",
        introspection_client_id="notes-server",
        introspection_client_secret=secret,  # type: ignore[arg-type]
        **over,  # type: ignore[arg-type]
    )


@pytest.fixture
def pair(broker_factory: BrokerFactory) -> Iterator[tuple[Broker, str, str]]:
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    with broker_factory(resource=resource) as broker:
        settings = introspecting(port, broker.base, INTROSPECTOR_SECRET, introspection_cache_seconds=0.5)
        with running(create_app(settings), port):
            yield broker, resource, f"http://127.0.0.1:{port}/mcp"


def test_tokens_are_checked_at_the_broker(pair: tuple[Broker, str, str]) -> None:
    broker, resource, url = pair
    client, tokens = tokens_for(broker, "bob", resource=resource)
    assert call(url, tokens["access_token"]) == 200
    httpx.post(f"{broker.base}/revoke", data={"token": tokens["refresh_token"], "client_id": client["client_id"]})
    time.sleep(0.6)  # the short positive cache
    assert call(url, tokens["access_token"]) == 401
    _, other = tokens_for(broker, "bob", resource="http://127.0.0.1:8002/mcp", scope="other:use")
    assert call(url, other["access_token"]) == 401
    assert call(url, "garbage") == 401


def test_wrong_credentials_fail_closed(broker_factory: BrokerFactory) -> None:
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    with (
        broker_factory(resource=resource) as broker,
        running(create_app(introspecting(port, broker.base, "wrong")), port),
    ):
        _, tokens = tokens_for(broker, "bob", resource=resource)
        assert call(f"http://127.0.0.1:{port}/mcp", tokens["access_token"]) == 401


def test_settings_need_credentials() -> None:
    with pytest.raises(ValueError, match="needs introspection_client_id"):
        McpAppSettings(verification="introspection")


@pytest.mark.parametrize("answer", ["<html>Proxy error</html>", "[1, 2]", '"active"'])
def test_an_answer_that_is_not_an_introspection_response_is_inactive(answer: str) -> None:
    """Something that is not the broker (a proxy's error page, say) answering 200 is no token's say-so."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def introspect(_: Request) -> Response:
        return Response(answer, media_type="text/html")

    not_a_broker = Starlette(routes=[Route("/introspect", introspect, methods=["POST"])])
    broker_port, port = free_port(), free_port()
    with running(not_a_broker, broker_port) as issuer, running(create_app(introspecting(port, issuer, "x")), port):
        assert call(f"http://127.0.0.1:{port}/mcp", "any-token") == 401
