"""The JWKS (RFC 7517) resource servers verify access tokens with: current and next keys."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from broker.state import BrokerState

router = APIRouter(tags=["discovery"])


@router.get("/jwks.json", summary="Signing keys (JWKS)")
async def jwks(request: Request) -> JSONResponse:
    state: BrokerState = request.app.state.broker
    return JSONResponse(state.keyring.jwks(), headers={"cache-control": "public, max-age=300"})
