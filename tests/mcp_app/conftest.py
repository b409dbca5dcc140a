from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass

import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from broker.app import create_app as create_broker
from broker.config import parse_config
from broker.devstack import RedisServer, Slapd, free_port
from tests.broker.conftest import broker_factory  # noqa: F401 - the broker fixture, shared
from tests.broker.flows import Broker, broker_yaml
from tests.http import running, wait_ready

ADMIN_TOKEN = "admin-" + "a" * 40


@dataclass
class Stack:
    broker: Broker
    mcp_urls: list[str]
    resource: str
    metrics_urls: list[str]


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, slapd: Slapd) -> Iterator[Stack]:
    """A broker and two mcp_app processes-worth of servers (same resource, same Redis)."""
    broker_port, mcp_ports = free_port(), [free_port(), free_port()]
    resource = f"http://127.0.0.1:{mcp_ports[0]}/mcp"
    prefix = f"t{secrets.token_hex(6)}"
    config = parse_config(
        broker_yaml(
            broker_port,
            redis_server.url,
            slapd,
            prefix=prefix,
            resource=resource,
            extra=f'admin:\n  token: "{ADMIN_TOKEN}"\n',
        )
    )
    with ExitStack() as stack:
        stack.enter_context(running(create_broker(config), broker_port))
        urls, metrics = [], []
        for port in mcp_ports:
            metrics_port = free_port()
            env = {
                **{k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
                "MCP_APP_RESOURCE_URL": resource,  # both serve one resource, as two replicas would
                "MCP_APP_ISSUER": config.issuer,
                "MCP_APP_REDIS_URL": redis_server.url,
                "MCP_APP_REDIS_KEY_PREFIX": prefix,
                "MCP_APP_ALLOWED_HOSTS": json.dumps([f"127.0.0.1:{port}"]),
                "MCP_APP_PORT": str(port),
                "MCP_APP_METRICS_HOST": "127.0.0.1",
                "MCP_APP_METRICS_PORT": str(metrics_port),
            }
            proc = subprocess.Popen(  # a separate mcp_app process, as in production
                [sys.executable, "-m", "mcp_app.cli", "serve"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            stack.callback(_stop, proc)
            wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
            urls.append(f"http://127.0.0.1:{port}/mcp")
            metrics.append(f"http://127.0.0.1:{metrics_port}/metrics")
        yield Stack(Broker(config.issuer, config), urls, resource, metrics)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@asynccontextmanager
async def session(url: str, token: str) -> AsyncIterator[Client]:
    http = create_mcp_http_client(headers={"authorization": f"Bearer {token}"})
    async with http, Client(streamable_http_client(url, http_client=http)) as client:
        yield client
