"""``POST /backchannel-logout/{provider_id}``: OpenID Connect Back-Channel Logout 1.0 §2.5-2.8.

Register ``{issuer}/backchannel-logout/{provider_id}`` at the OP as the client's
``backchannel_logout_uri`` (docs/deprovisioning.md). The logic is in ``broker.signals.backchannel``.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from broker.oauth.errors import OAuthError
from broker.routes import openapi
from broker.routes.deps import ProvidersDep, SignalsDep
from broker.routes.forms import read_form
from broker.signals.backchannel import LogoutRefused, receive

_NO_STORE = {"cache-control": "no-store"}
_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "properties": {"logout_token": {"type": "string", "description": "The OP's signed logout token"}},
                    "required": ["logout_token"],
                }
            }
        },
    },
    "security": [],  # the logout token's signature authenticates the OP
}


def router(base: str) -> APIRouter:
    api = APIRouter(prefix=base, tags=["signals"])

    @api.post(
        "/backchannel-logout/{provider_id}",
        summary="OpenID Connect Back-Channel Logout: an OP's logout token ends the user's sessions here",
        responses={
            200: {"description": "The logout token was accepted (Cache-Control: no-store)"},
            **openapi.errors(400, 405),
        },
        openapi_extra=_FORM,
    )
    async def backchannel_logout(
        provider_id: str, request: Request, providers: ProvidersDep, effects: SignalsDep
    ) -> Response:
        try:
            form = await read_form(request)
            await receive(providers.get(provider_id), provider_id, form.get("logout_token"), effects)
        except OAuthError as exc:
            return _refused(exc.description)
        except LogoutRefused as exc:
            return _refused(exc.description)
        return Response(status_code=200, headers=_NO_STORE)

    return api


def _refused(description: str) -> JSONResponse:
    # §2.8: 400, optionally with an OAuth-style error body.
    return JSONResponse(
        {"error": "invalid_request", "error_description": description}, status_code=400, headers=_NO_STORE
    )
