"""Schema-driven fuzzing (schemathesis): every answer of the running broker is one its own
``/openapi.json`` describes (declared status, content type and headers, a body matching the
declared schema; a method the path does not take is a 405 naming the ones it does), and none is a
server error.

The broker runs as in the other route tests: a real uvicorn server in-process, on the session's
redis-server and slapd, with the admin API on (its bearer token is sent to the admin operations,
so they are fuzzed past authentication). ``MCPB_FUZZ_EXAMPLES`` raises the number of generated
cases per operation and phase (default 25, a bounded run for ``make test``); the draw is
deterministic, so a failure reproduces.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from broker.app import create_app
from broker.config import BrokerConfig, parse_config
from broker.devstack import RedisServer, Slapd, free_port
from tests.broker.flows import INTROSPECTOR_SECRET, RESOURCE, Broker, broker_yaml, register
from tests.http import running

ADMIN_TOKEN = "admin-" + secrets.token_urlsafe(30)
EXAMPLES = int(os.environ.get("MCPB_FUZZ_EXAMPLES", "25"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    unsupported_method,  # a method the path does not take: 405 with Allow
    allow_header_conformance,
]


def _config(port: int, redis_url: str, slapd: Slapd) -> BrokerConfig:
    extra = f'admin:\n  token: "{ADMIN_TOKEN}"\n'
    return parse_config(broker_yaml(port, redis_url, slapd, prefix=f"fz{secrets.token_hex(6)}", extra=extra))


# The document is built here, before any server runs, so that each operation is its own test;
# test_the_served_document_is_the_one_fuzzed checks the running broker serves the same.
DOCUMENT = create_app(_config(8000, "redis://127.0.0.1:1", Slapd(Path("/nonexistent"))), providers={}).openapi()
schema = schemathesis.openapi.from_dict(DOCUMENT)


@schemathesis.serializer("application/secevent+jwt")
def _set_body(ctx: schemathesis.SerializationContext, value: object) -> bytes:
    """A pushed Security Event Token (RFC 8935) is the compact JWS's text."""
    return str(value).encode("utf-8", "surrogatepass")


@dataclass
class Fuzzed:
    base: str
    client_id: str  # a registered public client


@pytest.fixture(scope="module")
def fuzzed_broker(redis_server: RedisServer, slapd: Slapd) -> Iterator[Fuzzed]:
    port = free_port()
    config = _config(port, redis_server.url, slapd)
    with running(create_app(config), port) as base:
        yield Fuzzed(base, register(Broker(base, config))["client_id"])


def test_the_served_document_is_the_one_fuzzed(fuzzed_broker: Fuzzed) -> None:
    assert httpx.get(f"{fuzzed_broker.base}/openapi.json").json() == DOCUMENT


def _half(drawn: object) -> bool:
    """A deterministic half of the drawn cases: those whose drawn value has an even length."""
    return len(str(drawn)) % 2 == 0


def _reach_further(case: schemathesis.Case, broker: Fuzzed) -> dict[str, str]:
    """Headers and parameters that take drawn cases past the first check that would refuse
    nearly all of them: the admin token (and, for half the cases, the configured provider);
    the static client's credentials at the token endpoints when no Authorization header was
    drawn; a registered client_id and the configured resource at /authorize for half the cases.
    (Negative-mode cases that leave out Authorization on purpose still go out without it.)"""
    if "/admin/" in case.path:
        case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        for where in (case.query, case.path_parameters):
            if isinstance(where, dict) and "provider" in where and _half(where["provider"]):
                where["provider"] = "demo-ldap"
        return {"authorization": f"Bearer {ADMIN_TOKEN}"}
    drawn = {k.lower() for k in case.headers or {}}
    if case.path in ("/token", "/revoke", "/introspect") and "authorization" not in drawn:
        basic = base64.b64encode(f"notes-server:{INTROSPECTOR_SECRET}".encode()).decode()
        return {"authorization": f"Basic {basic}"}
    if case.path == "/authorize" and isinstance(case.query, dict) and _half(case.query.get("client_id", "")):
        case.query.update(client_id=broker.client_id, resource=RESOURCE)
    return {}


@schema.parametrize()
@hypothesis.settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_every_answer_is_described_by_the_openapi_document(case: schemathesis.Case, fuzzed_broker: Fuzzed) -> None:
    headers = _reach_further(case, fuzzed_broker)
    case.call_and_validate(base_url=fuzzed_broker.base, headers=headers, checks=CHECKS, timeout=30)
