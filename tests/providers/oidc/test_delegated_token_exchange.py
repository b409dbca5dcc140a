"""Delegated access at an OP whose metadata announces RFC 8693 token exchange (node-oidc-provider
does not): the kept refresh token gives the user's own access token, which is exchanged for one
with the target's audience and scope; a rotated refresh token comes back as state; a refused
refresh token needs the user."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker.devstack import free_port
from providers.base import DelegatedAccess, InteractionNeeded, UpstreamRejected
from providers.oidc.config import OidcProviderConfig
from providers.oidc.provider import TOKEN_EXCHANGE, OidcProvider
from tests.http import running
from tests.providers.tarpit import oidc_discovery

ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
API = "https://api.example.com"


@dataclass
class ExchangingOP:
    base: str = ""
    forms: list[dict[str, str]] = field(default_factory=list)
    refresh_error: str | None = None
    exchange_error: str | None = None

    def app(self) -> Starlette:
        async def discovery(request: Request) -> Response:
            document: dict[str, Any] = oidc_discovery(self.base)
            document["grant_types_supported"] = ["authorization_code", "refresh_token", TOKEN_EXCHANGE]
            return JSONResponse(document)

        async def token(request: Request) -> Response:
            form = {k: str(v) for k, v in (await request.form()).items()}
            self.forms.append(form)
            if form.get("grant_type") == "refresh_token":
                if self.refresh_error:
                    return JSONResponse({"error": self.refresh_error}, status_code=400)
                return JSONResponse(
                    {"access_token": "user-at", "token_type": "Bearer", "expires_in": 300, "refresh_token": "rt-2"}
                )
            if form.get("grant_type") == TOKEN_EXCHANGE and form.get("subject_token") == "user-at":
                if self.exchange_error:
                    return JSONResponse({"error": self.exchange_error}, status_code=400)
                return JSONResponse(
                    {
                        "access_token": f"api-at for {form.get('audience')}",
                        "issued_token_type": ACCESS_TOKEN,
                        "token_type": "Bearer",
                        "expires_in": 120,
                        "scope": form.get("scope", ""),
                    }
                )
            return JSONResponse({"error": "invalid_request"}, status_code=400)

        return Starlette(
            routes=[
                Route("/.well-known/openid-configuration", discovery),
                Route("/token", token, methods=["POST"]),
            ]
        )


@pytest.fixture
def xop() -> Iterator[ExchangingOP]:
    server = ExchangingOP()
    port = free_port()
    server.base = f"http://127.0.0.1:{port}"
    with running(server.app(), port):
        yield server


@pytest.fixture
async def provider(xop: ExchangingOP) -> AsyncIterator[OidcProvider]:
    config = OidcProviderConfig(
        id="xop",
        display_name="Exchanging OP",
        issuer=xop.base,
        client_id="broker",
        client_secret="broker-secret",
        scopes=["openid", "offline_access"],
        use_upstream_refresh=True,
        http_timeout=5,
    )
    made = OidcProvider(config)
    yield made
    await made.aclose()


async def test_the_users_token_is_exchanged_at_the_op_for_the_targets_audience(
    xop: ExchangingOP, provider: OidcProvider
) -> None:
    assert isinstance(provider, DelegatedAccess)
    token = await provider.delegated_token({"sub": "u1", "refresh_token": "rt-1"}, ["api:read"], audience=API)
    assert token.access_token == f"api-at for {API}"
    assert token.scopes == {"api:read"}
    assert token.expires_in == 120
    assert token.state is not None
    assert token.state["refresh_token"] == "rt-2"  # rotated: the broker keeps it
    refresh, exchange = xop.forms
    assert refresh["grant_type"] == "refresh_token"
    assert refresh["refresh_token"] == "rt-1"
    assert "scope" not in refresh  # the user's own token first
    assert "resource" not in refresh
    assert exchange["subject_token_type"] == ACCESS_TOKEN
    assert exchange["requested_token_type"] == ACCESS_TOKEN
    assert exchange["audience"] == API
    assert exchange["scope"] == "api:read"


async def test_a_refused_refresh_token_needs_the_user_and_a_refused_exchange_is_rejected(
    xop: ExchangingOP, provider: OidcProvider
) -> None:
    assert isinstance(provider, DelegatedAccess)
    xop.refresh_error = "invalid_grant"
    with pytest.raises(InteractionNeeded):
        await provider.delegated_token({"sub": "u1", "refresh_token": "rt-1"}, ["api:read"], audience=API)
    xop.refresh_error, xop.exchange_error = None, "invalid_target"
    with pytest.raises(UpstreamRejected, match="invalid_target"):
        await provider.delegated_token({"sub": "u1", "refresh_token": "rt-1"}, ["api:read"], audience=API)
    with pytest.raises(InteractionNeeded, match="no upstream refresh token"):
        await provider.delegated_token({"sub": "u1"}, ["api:read"])
