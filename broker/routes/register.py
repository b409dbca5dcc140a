"""Dynamic client registration (RFC 7591)."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from broker.audit import audit
from broker.oauth.errors import AccessDenied, InvalidClientMetadata, TooManyRequests
from broker.routes import openapi
from broker.routes.deps import ClientsDep, ConfigDep, RegistrationsDep
from broker.routes.errors import NO_STORE
from broker.routes.forms import read_body

MAX_BODY = 16 * 1024


def router(base: str) -> APIRouter:
    api = APIRouter(tags=["registration"])

    @api.post(
        f"{base}/register",
        status_code=201,
        summary="Register a client (RFC 7591)",
        responses={201: {"model": openapi.RegisteredClientBody}, **openapi.REGISTER_ERRORS},
        openapi_extra=openapi.REGISTER,
    )
    async def register(
        request: Request, config: ConfigDep, clients: ClientsDep, registrations: RegistrationsDep
    ) -> JSONResponse:
        if not config.registration.dynamic_registration:
            raise AccessDenied("dynamic client registration is disabled; use a client ID metadata document")
        client_ip = request.client.host if request.client else "unknown"
        allowance = await registrations.hit(client_ip)
        if not allowance.allowed:
            audit("registration_throttled", client_ip=client_ip, retry_after=allowance.retry_after)
            raise TooManyRequests(
                f"too many client registrations from this address; try again in {allowance.retry_after} s",
                retry_after=allowance.retry_after,
            )
        body = await read_body(request, MAX_BODY, InvalidClientMetadata("the registration request is too large"))
        try:
            metadata = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: nesting deep enough to exhaust the parser
            raise InvalidClientMetadata("the body must be a JSON object") from None
        if not isinstance(metadata, dict):
            raise InvalidClientMetadata("the body must be a JSON object")
        response = await clients.register(metadata)
        audit(
            "client_registered",
            client_id=response["client_id"],
            client_name=response["client_name"],
            redirect_uris=response["redirect_uris"],
            application_type=response["application_type"],
            auth_method=response["token_endpoint_auth_method"],
        )
        return JSONResponse(response, status_code=201, headers=NO_STORE)

    return api
