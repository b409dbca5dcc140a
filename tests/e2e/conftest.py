"""The whole stack on loopback for end-to-end tests: the broker (LDAP provider, real Redis and slapd),
the protected MCP server (`mcp_app`) and an HTTPS server publishing client ID metadata documents,
its certificate issued by a throwaway CA the broker is told to trust."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from broker.app import create_app as create_broker
from broker.config import parse_config
from broker.devstack import RedisServer, Slapd, free_port
from mcp_app.app import create_app as create_mcp_app
from mcp_app.settings import McpAppSettings
from tests.broker.flows import Broker, broker_yaml
from tests.http import running
from tests.tls import CA, make_ca

ACCESS_TOKEN_TTL = 2  # seconds: short enough that a test can outlive a token and watch the client refresh it


@dataclass
class DocServer:
    """Serves JSON documents over HTTPS on 127.0.0.1, and remembers what was fetched."""

    port: int
    documents: dict[str, dict[str, Any]] = field(default_factory=dict)
    fetched: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def publish(self, path: str, document: dict[str, Any]) -> None:
        self.documents[path] = document


def _doc_app(state: DocServer) -> Starlette:
    async def serve(request: Request) -> Response:
        state.fetched.append(request.url.path)
        document = state.documents.get(request.url.path)
        if document is None:
            return Response(status_code=404)
        return Response(json.dumps(document), media_type="application/json")

    return Starlette(routes=[Route("/{path:path}", serve)])


@dataclass(frozen=True)
class Stack:
    broker: Broker
    mcp_url: str  # the MCP endpoint, also its canonical resource URI
    docs: DocServer


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    return make_ca(tmp_path_factory.mktemp("e2e-ca"))


@pytest.fixture(scope="session")
def doc_server(ca: CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DocServer]:
    cert, key = ca.issue(tmp_path_factory.mktemp("e2e-tls"), hosts=["127.0.0.1", "localhost"])
    state = DocServer(port=free_port())
    with running(_doc_app(state), state.port, ssl_certfile=cert, ssl_keyfile=key):
        yield state


@pytest.fixture
def stack(redis_server: RedisServer, slapd: Slapd, ca: CA, doc_server: DocServer) -> Iterator[Stack]:
    """A fresh broker and MCP server; the broker takes both RFC 7591 registrations and metadata
    documents (from loopback, trusting the test CA) and issues access tokens that live 2 s."""
    doc_server.documents.clear()
    doc_server.fetched.clear()
    mcp_port, broker_port = free_port(), free_port()
    mcp_url = f"http://127.0.0.1:{mcp_port}/mcp"
    text = broker_yaml(
        broker_port,
        redis_server.url,
        slapd,
        prefix=f"e2e{secrets.token_hex(6)}",
        resource=mcp_url,
        registration=f'  cimd_allow_private_addresses: ["127.0.0.0/8"]\n  cimd_ca_file: "{ca.cert_path}"',
    )
    assert text.count("\ntokens:\n") == 1
    text = text.replace("\ntokens:\n", f"\ntokens:\n  access_token_ttl: {ACCESS_TOKEN_TTL}\n")
    config = parse_config(text)
    assert config.tokens.access_token_ttl == ACCESS_TOKEN_TTL
    mcp_settings = McpAppSettings(resource_url=mcp_url, issuer=config.issuer, redis_url=redis_server.url)
    with running(create_broker(config), broker_port), running(create_mcp_app(mcp_settings), mcp_port):
        yield Stack(broker=Broker(config.issuer, config), mcp_url=mcp_url, docs=doc_server)
