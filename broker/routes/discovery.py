"""Discovery documents: RFC 8414 metadata at every well-known path clients try, JWKS, page assets."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, Response

from broker.oauth.metadata import metadata, well_known_paths
from broker.routes import openapi
from broker.routes.deps import ConfigDep, KeyRingDep

_CSS = resources.files("broker.web").joinpath("static/broker.css").read_bytes()


def install(app: FastAPI, issuer: str, base: str) -> None:
    router = APIRouter(tags=["discovery"])

    async def discovery(config: ConfigDep) -> JSONResponse:
        return JSONResponse(metadata(config), headers={"cache-control": "public, max-age=300"})

    for path in well_known_paths(issuer):
        router.add_api_route(
            path,
            discovery,
            methods=["GET"],
            summary="Authorization server metadata",
            responses=openapi.DISCOVERY_ERRORS,
        )

    async def jwks(keyring: KeyRingDep) -> JSONResponse:
        return JSONResponse(keyring.jwks(), headers={"cache-control": "public, max-age=300"})

    router.add_api_route(
        f"{base}/jwks.json", jwks, methods=["GET"], summary="Signing keys (JWKS)", responses=openapi.DISCOVERY_ERRORS
    )

    async def css() -> Response:
        return Response(_CSS, media_type="text/css", headers={"cache-control": "public, max-age=3600"})

    router.add_api_route(f"{base}/assets/broker.css", css, methods=["GET"], include_in_schema=False)
    app.include_router(router)
