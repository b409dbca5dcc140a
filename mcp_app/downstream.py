"""Delegated access in the demo (issue 14): ``call_downstream`` calls a downstream API as the user.

The MCP server trades the access token of the request for a token of a broker delegation target
(RFC 8693, through :class:`~mcp_broker_verifier.delegation.TokenExchanger`) and GETs the API
configured for the user's provider (``downstreams``: the provider id is the part of the token's
``sub`` before the first ``:``): Microsoft Graph ``/me`` for Entra users, the OpenID provider's
userinfo for OIDC users, the internal demo API below for LDAP users.

When the upstream needs the user (``interaction_required``), the broker's URL reaches the user
through MCP URL-mode elicitation: a client speaking 2026-07-28 that declared URL elicitation gets
an ``input_required`` result carrying ``elicitation/create`` (mode ``url``) and retries the call
once the user is back; any other client gets a tool error whose text carries the URL.

The internal demo API (``/demo-api/whoami``) accepts only broker-minted tokens for
``demo_api_audience`` (signature from the broker's JWKS, ``iss``, ``aud``, ``exp``, revocations)
and answers who the user is and which MCP server acts for them (the ``act`` claim).
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ElicitRequest, ElicitRequestURLParams, ElicitResult, InputRequiredResult
from mcp_types.version import is_version_at_least
from starlette.requests import Request
from starlette.responses import JSONResponse

from mcp_app.settings import Downstream
from mcp_broker_verifier.delegation import (
    ExchangeRefused,
    ExchangeUnavailable,
    InteractionRequired,
    TokenExchanger,
)
from mcp_broker_verifier.verifier import BrokerTokenVerifier

SIGN_IN = "delegation-sign-in"  # the key of the elicitation in input_requests / input_responses
_INPUT_REQUIRED_VERSION = "2026-07-28"  # the first revision with input_required results


class DownstreamCaller:
    """Exchange the request's token for the user's provider's target, GET the API with it."""

    def __init__(self, exchanger: TokenExchanger, downstreams: dict[str, Downstream], http: httpx.AsyncClient) -> None:
        self.exchanger = exchanger
        self.downstreams = downstreams
        self.http = http

    def downstream_for(self, subject: str) -> tuple[str, Downstream]:
        provider = subject.split(":", 1)[0]
        downstream = self.downstreams.get(provider)
        if downstream is None:
            raise ToolError(f"no downstream API is configured for users of {provider!r}")
        return provider, downstream

    async def call(self, ctx: Context) -> dict[str, Any] | InputRequiredResult:
        access = get_access_token()
        if access is None:
            raise ToolError("not authenticated")
        provider, downstream = self.downstream_for(str((access.claims or {}).get("sub") or access.subject or ""))
        answered = _sign_in_answer(ctx)
        try:
            token = await self.exchanger.exchange(access.token, downstream.target, downstream.scope)
        except InteractionRequired as needed:
            if answered is not None:  # asked already: no second round, the user decides when to retry
                if answered.action != "accept":
                    raise ToolError(f"sign-in {answered.action}d; open {needed.url} and call again") from None
                raise ToolError(f"the sign-in at {needed.url} is not complete yet; finish it and call again") from None
            if _url_elicitation(ctx):
                return InputRequiredResult(
                    input_requests={
                        SIGN_IN: ElicitRequest(
                            params=ElicitRequestURLParams(
                                message=f"{downstream.target} needs you to sign in again at your identity "
                                "provider. Open the link, finish the sign-in, then come back.",
                                url=needed.url,
                                elicitation_id=str(uuid.uuid4()),
                            )
                        )
                    }
                )
            raise ToolError(
                f"{downstream.target} needs you to sign in again: open {needed.url} in your browser, "
                "finish the sign-in, then call this tool again"
            ) from None
        except ExchangeRefused as refused:
            raise ToolError(f"the broker refused the token exchange: {refused.error}") from None
        except ExchangeUnavailable as exc:
            raise ToolError(f"the token exchange is unavailable, try again later ({exc})") from None
        try:
            response = await self.http.get(
                downstream.url, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"}
            )
        except httpx.HTTPError as exc:
            raise ToolError(f"{downstream.url} did not answer: {type(exc).__name__}") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code != 200 or not isinstance(body, dict):
            raise ToolError(f"{downstream.url} answered HTTP {response.status_code}")
        return {"provider": provider, "target": downstream.target, "api": downstream.url, "answer": body}


def _sign_in_answer(ctx: Context) -> ElicitResult | None:
    responses = ctx.input_responses or {}
    answer = responses.get(SIGN_IN)
    return answer if isinstance(answer, ElicitResult) else None


def _url_elicitation(ctx: Context) -> bool:
    """Whether the client can take an input_required result with a URL-mode elicitation."""
    version = ctx.protocol_version
    capabilities = ctx.client_capabilities
    return (
        version is not None
        and is_version_at_least(version, _INPUT_REQUIRED_VERSION)
        and capabilities is not None
        and capabilities.elicitation is not None
        and capabilities.elicitation.url is not None
    )


def demo_api(verifier: BrokerTokenVerifier) -> Any:
    """The internal demo API: who the user is and who acts for them, for a broker-minted token."""

    async def whoami(request: Request) -> JSONResponse:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        access = await verifier.verify_token(token) if scheme.lower() == "bearer" and token else None
        if access is None:
            return JSONResponse(
                {"error": "invalid_token"},
                status_code=401,
                headers={"www-authenticate": 'Bearer error="invalid_token"', "cache-control": "no-store"},
            )
        claims = access.claims or {}
        act = claims.get("act")
        return JSONResponse(
            {
                "sub": claims.get("sub"),
                "act": act if isinstance(act, dict) else None,
                "client_id": claims.get("client_id"),
                "scope": claims.get("scope", ""),
                "aud": claims.get("aud"),
            },
            headers={"cache-control": "no-store"},
        )

    return whoami
