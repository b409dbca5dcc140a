"""The broker app over real HTTP with a real Redis: health, readiness, request ids, JWKS."""

from __future__ import annotations

import httpx

from broker.app import create_app
from broker.config import parse_config
from broker.devstack import RedisServer, free_port
from tests.conftest import base_config
from tests.http import running


def test_health_ready_and_request_ids(redis_server: RedisServer) -> None:
    app = create_app(parse_config(base_config(redis_server.url)))
    with running(app) as base:
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "checks": {"redis": "ok", "signing_keys": "ok"}}
        generated = httpx.get(f"{base}/healthz").headers["x-request-id"]
        assert len(generated) == 16
        echoed = httpx.get(f"{base}/healthz", headers={"x-request-id": "trace-42"})
        assert echoed.headers["x-request-id"] == "trace-42"
        # A malformed id is replaced, never reflected.
        odd = httpx.get(f"{base}/healthz", headers={"x-request-id": "<script>" + "x" * 80})
        assert odd.headers["x-request-id"] != "<script>" + "x" * 80


def test_jwks_publishes_current_and_next_key(redis_server: RedisServer) -> None:
    app = create_app(parse_config(base_config(redis_server.url)))
    with running(app) as base:
        keys = httpx.get(f"{base}/jwks.json").json()["keys"]
    assert len(keys) == 2
    for key in keys:
        assert key["kty"] == "EC"
        assert key["alg"] == "ES256"
        assert key["use"] == "sig"
        assert "d" not in key  # never the private part


def test_not_ready_when_redis_is_unreachable() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    app = create_app(parse_config(base_config(dead)))
    with running(app) as base:
        assert httpx.get(f"{base}/healthz").status_code == 200
        ready = httpx.get(f"{base}/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "not ready"
    assert body["checks"]["redis"].startswith("unreachable")
    assert body["checks"]["signing_keys"] == "not loaded"
