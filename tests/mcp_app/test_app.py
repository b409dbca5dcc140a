"""The protected MCP server over real HTTP: 401 discovery hints, PRM, Host checks, readiness."""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import pytest
import uvicorn
from structlog.testing import capture_logs

from broker.app import create_app as create_broker
from broker.config import parse_config
from broker.devstack import RedisServer, free_port
from mcp_app.app import create_app
from mcp_app.cli import server_options
from mcp_app.settings import McpAppSettings
from tests.broker.conftest import BrokerFactory
from tests.broker.flows import tokens_for
from tests.conftest import base_config
from tests.forwarded import seen_by_the_app
from tests.http import running


def test_unauthenticated_requests_get_a_discoverable_401(redis_server: RedisServer) -> None:
    port = free_port()
    settings = McpAppSettings(
        resource_url=f"http://127.0.0.1:{port}/mcp", issuer="http://127.0.0.1:8000", redis_url=redis_server.url
    )
    with running(create_app(settings), port) as base:
        response = httpx.post(f"{base}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "server/discover"})
        assert response.status_code == 401
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith("Bearer ")
        assert f'resource_metadata="{base}/.well-known/oauth-protected-resource/mcp"' in challenge
        prm = httpx.get(f"{base}/.well-known/oauth-protected-resource/mcp").json()
        assert prm["resource"] == f"{base}/mcp"
        assert prm["authorization_servers"] == ["http://127.0.0.1:8000"]
        # A forged token is refused the same way, and never echoed back.
        forged = httpx.post(f"{base}/mcp", json={}, headers={"authorization": "Bearer not.a.token"})
        assert forged.status_code == 401
        assert "not.a.token" not in forged.text


def test_dns_rebinding_is_refused(redis_server: RedisServer) -> None:
    port = free_port()
    settings = McpAppSettings(resource_url=f"http://127.0.0.1:{port}/mcp", redis_url=redis_server.url)
    with running(create_app(settings), port) as base:
        response = httpx.post(f"{base}/mcp", json={}, headers={"host": "evil.example", "authorization": "Bearer x"})
        assert response.status_code == 421
        origin = httpx.post(
            f"{base}/mcp", json={}, headers={"origin": "http://evil.example", "authorization": "Bearer x"}
        )
        assert origin.status_code == 403
        # Health probes from the kubelet use the pod address, not the public host.
        assert httpx.get(f"{base}/healthz", headers={"host": "10.1.2.3:8001"}).status_code == 200


def test_ready_once_the_broker_jwks_is_reachable(redis_server: RedisServer) -> None:
    broker = create_broker(parse_config(base_config(redis_server.url)))
    with running(broker) as issuer:
        port = free_port()
        settings = McpAppSettings(
            resource_url=f"http://127.0.0.1:{port}/mcp", issuer=issuer, redis_url=redis_server.url
        )
        with running(create_app(settings), port) as base:
            ready = httpx.get(f"{base}/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"] == {"redis": "ok", "signing_keys": "ok", "revocations": "ok"}


def test_not_ready_without_the_broker(redis_server: RedisServer) -> None:
    port = free_port()
    settings = McpAppSettings(
        resource_url=f"http://127.0.0.1:{port}/mcp",
        issuer=f"http://127.0.0.1:{free_port()}",
        redis_url=redis_server.url,
    )
    with running(create_app(settings), port) as base:
        ready = httpx.get(f"{base}/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["signing_keys"].startswith("broker JWKS unavailable")


def test_deeply_nested_json_is_a_parse_error_not_a_crash(
    broker_factory: BrokerFactory, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    with broker_factory(resource=resource) as broker:
        _, tokens = tokens_for(broker, resource=resource)
        settings = McpAppSettings(
            resource_url=resource,
            issuer=broker.base,
            redis_url=redis_server.url,
            redis_key_prefix=broker.config.redis.key_prefix,
        )
        headers = {
            "authorization": f"Bearer {tokens['access_token']}",
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
        }
        with running(create_app(settings), port) as base, capture_logs() as logs:
            for body in (b"[" * 100_000, b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": ' * 5000):
                response = httpx.post(f"{base}/mcp", content=body, headers=headers)
                assert response.status_code == 400, response.text
                error = response.json()
                assert (error["jsonrpc"], error["id"], error["error"]["code"]) == ("2.0", None, -32700)
            listed = httpx.post(
                f"{base}/mcp", json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers=headers
            )
            assert listed.status_code == 200, listed.text
            assert listed.json()["result"]["tools"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not [e for e in logs if e["log_level"] in ("error", "critical") or "exc_info" in e or "exception" in e]


def test_forwarded_headers_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")

    def config(app: Callable[..., object], port: int) -> uvicorn.Config:
        return uvicorn.Config(app, **server_options(McpAppSettings(port=port)))

    assert seen_by_the_app(config) == {"client": "127.0.0.1", "scheme": "http"}
