"""Token endpoint (OAuth 2.1 §3.2), revocation (RFC 7009) and introspection (RFC 7662)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from broker.oauth.errors import InvalidClient, InvalidRequest, UnauthorizedClient, UnsupportedGrantType
from broker.oauth.id_jag import JWT_BEARER
from broker.oauth.token_exchange import TOKEN_EXCHANGE
from broker.routes import openapi
from broker.routes.client_auth import authenticate_client
from broker.routes.deps import ClientsDep, IntrospectionDep, RevocationDep, TokenEndpointDep
from broker.routes.errors import NO_STORE
from broker.routes.forms import read_form

# Starlette's JSONResponse renders with json.dumps(..., separators=(",", ":")), which builds an
# encoder per answer, and merges header dicts: the same bytes from one encoder, headers made once.
_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
_JSON_NO_STORE = ((b"content-type", b"application/json"), *((k.encode(), v.encode()) for k, v in NO_STORE.items()))


class NoStoreJSON(Response):
    """A JSON answer with ``Cache-Control: no-store`` (RFC 6749 §5.1), as JSONResponse renders it."""

    media_type = "application/json"

    def render(self, content: Mapping[str, Any]) -> bytes:
        return _encode(content).encode()

    def init_headers(self, headers: Mapping[str, str] | None = None) -> None:
        self.raw_headers = [(b"content-length", str(len(self.body)).encode()), *_JSON_NO_STORE]


def router(base: str) -> APIRouter:
    api = APIRouter(tags=["token"])

    @api.post(
        f"{base}/token",
        summary="Token endpoint",
        responses={200: {"model": openapi.TokenBody}, **openapi.TOKEN_ENDPOINT_ERRORS},
        openapi_extra=openapi.TOKEN,
    )
    async def token(request: Request, endpoint: TokenEndpointDep) -> Response:
        form = await read_form(request)
        client = await authenticate_client(endpoint.clients, request, form)
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            body = await endpoint.grants.exchange_code(client, form)
        elif grant_type == "refresh_token":
            body = await endpoint.grants.refresh(client, form)
        elif grant_type == TOKEN_EXCHANGE:  # RFC 8693; by token types in broker.oauth.token_exchange
            body = await endpoint.exchanges.exchange(client, form)
        elif grant_type == JWT_BEARER:  # RFC 7523 with an ID-JAG: broker.oauth.assertion_grant
            body = await endpoint.assertions.redeem(client, form)
        elif grant_type is None:
            raise InvalidRequest("grant_type is required")
        else:
            raise UnsupportedGrantType(detail=f"grant_type {grant_type[:60]!r}")
        return NoStoreJSON(body)

    @api.post(
        f"{base}/revoke",
        summary="Revoke a token (RFC 7009)",
        response_class=Response,
        responses={
            200: {"description": "Revoked, or the token was unknown (RFC 7009 §2.2)"},
            **openapi.TOKEN_ENDPOINT_ERRORS,
        },
        openapi_extra=openapi.REVOKE,
    )
    async def revoke(request: Request, clients: ClientsDep, revocation: RevocationDep) -> Response:
        form = await read_form(request)
        client = await authenticate_client(clients, request, form)
        token = form.get("token")
        if token is None:
            raise InvalidRequest("token is required")
        await revocation.revoke(client, token)
        return Response(status_code=200, headers=NO_STORE)

    @api.post(
        f"{base}/introspect",
        summary="Introspect a token (RFC 7662)",
        responses={200: {"model": openapi.IntrospectionBody}, **openapi.TOKEN_ENDPOINT_ERRORS},
        openapi_extra=openapi.INTROSPECT,
    )
    async def introspect(
        request: Request, clients: ClientsDep, revocation: RevocationDep, introspection: IntrospectionDep
    ) -> JSONResponse:
        form = await read_form(request)
        client = await authenticate_client(clients, request, form)
        if client.is_public:
            raise InvalidClient(detail="public clients may not introspect")
        allowed = introspection.get(client.client_id)
        if not allowed:
            raise UnauthorizedClient(detail=f"client {client.client_id} is not allowed to introspect")
        token = form.get("token")
        if token is None:
            raise InvalidRequest("token is required")
        return JSONResponse(await revocation.introspect(client, token, allowed), headers=NO_STORE)

    return api
