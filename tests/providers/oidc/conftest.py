"""Fixtures for the OIDC provider: one real OpenID provider (node-oidc-provider) per test worker,
a fresh client registered at it per test, providers configured against it, and (for flows
through the broker) the broker factory of ``tests/broker``."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from providers.oidc.config import OidcProviderConfig
from providers.oidc.provider import OidcProvider
from tests.broker.conftest import broker_factory  # noqa: F401 - the broker fixture, shared
from tests.providers.oidc.op import FakeClock, TestOP, start_op

CALLBACK = "http://127.0.0.1:9/callback/test-oidc"  # never contacted: the test reads the redirect
LOGGED_OUT = "http://127.0.0.1:9/logged-out"


@pytest.fixture(scope="session")
def op(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestOP]:
    server = start_op(tmp_path_factory.mktemp("oidc-op"))
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _fresh_op(request: pytest.FixtureRequest) -> None:
    """Tests that use the OP start from its initial users, untampered and up."""
    if "op" in request.fixturenames:
        request.getfixturevalue("op").reset()


@dataclass(frozen=True)
class RegisteredClient:
    client_id: str
    client_secret: str


@pytest.fixture
def rp(op: TestOP) -> RegisteredClient:
    """A confidential client of the OP, redirecting to CALLBACK."""
    client = RegisteredClient(f"rp-{secrets.token_hex(4)}", secrets.token_urlsafe(24))
    op.put_client(
        client.client_id,
        client_secret=client.client_secret,
        redirect_uris=[CALLBACK],
        post_logout_redirect_uris=[LOGGED_OUT],
    )
    return client


def oidc_config(op: TestOP, rp: RegisteredClient, **over: Any) -> OidcProviderConfig:
    values: dict[str, Any] = {
        "id": "test-oidc",
        "display_name": "Test OP",
        "issuer": op.issuer,
        "client_id": rp.client_id,
        "client_secret": rp.client_secret,
        "scopes": ["openid", "profile", "email", "groups"],
        "http_timeout": 5,
    }
    values.update(over)
    return OidcProviderConfig(**values)


REFRESHING: dict[str, Any] = {
    "use_upstream_refresh": True,
    "scopes": ["openid", "profile", "email", "groups", "offline_access"],
    "authorize_params": {"prompt": "consent"},
}

ProviderFactory = Callable[..., OidcProvider]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def make_provider(op: TestOP, rp: RegisteredClient, clock: FakeClock) -> AsyncIterator[ProviderFactory]:
    made: list[OidcProvider] = []

    def make(**over: Any) -> OidcProvider:
        provider = OidcProvider(oidc_config(op, rp, **over), clock=clock)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()
