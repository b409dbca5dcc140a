"""``POST /ssf/push/{stream_id}``: Shared Signals push delivery (RFC 8935) of Security Event Tokens.

Configure ``{issuer}/ssf/push/<stream id>`` as the stream's push endpoint at the transmitter, with
the stream's ``push.authorization`` as its bearer token (docs/deprovisioning.md). The logic is in
``broker.signals.ssf``; poll streams are polled by its ``Poller`` (started in the app's lifespan).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from broker.routes import openapi
from broker.routes.deps import SsfDep
from broker.signals.ssf import SetRefused

_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/secevent+jwt": {"schema": {"type": "string", "description": "A signed SET"}}},
    },
    # The stream's own bearer token (push.authorization), not a broker credential: described here.
    "security": [],
    "description": "Send `Authorization: Bearer <the stream's push.authorization>`; the SET's signature "
    "by the transmitter's key is checked too.",
}
_ERROR = {
    "application/json": {
        "schema": {
            "type": "object",
            "properties": {
                "err": {
                    "type": "string",
                    "enum": [
                        "invalid_request",
                        "invalid_key",
                        "invalid_issuer",
                        "invalid_audience",
                        "authentication_failed",
                        "access_denied",
                    ],
                },
                "description": {"type": "string"},
            },
            "required": ["err"],
        }
    }
}


def router(base: str) -> APIRouter:
    api = APIRouter(prefix=base, tags=["signals"])

    @api.post(
        "/ssf/push/{stream_id}",
        summary="Shared Signals push delivery: a transmitter's Security Event Token (RFC 8935)",
        responses={
            202: {"description": "The SET was accepted"},
            400: {"description": "The SET was refused (RFC 8935 §2.3); nothing changed", "content": _ERROR},
            **openapi.errors(405),
        },
        status_code=202,
        openapi_extra=_BODY,
    )
    async def ssf_push(stream_id: str, request: Request, receiver: SsfDep) -> Response:
        body = await request.body()
        try:
            await receiver.push(
                stream_id,
                body,
                content_type=request.headers.get("content-type"),
                authorization=request.headers.get("authorization"),
            )
        except SetRefused as exc:
            return JSONResponse({"err": exc.err, "description": exc.description}, status_code=400)
        return Response(status_code=202)

    return api
