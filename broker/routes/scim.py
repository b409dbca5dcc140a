"""SCIM 2.0 endpoints (RFC 7644 §3) at ``{issuer}/scim/v2/{tenant}``, one tenant per provider
(``scim.tenants``): thin, the protocol is :mod:`broker.scim.service`. Every answer is
``application/scim+json``; every error the RFC 7644 §3.12 ``Error`` body, rendered here once.
The tenant's bearer token is compared by its SHA-256 in constant time; an unknown tenant and a
wrong token get the same 401."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Annotated, Any, NoReturn

import structlog
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from scim2_models import (
    Error,
    InvalidSyntaxException,
    NotFoundException,
    NotImplementedException,
    PayloadTooLargeException,
    SCIMException,
    UnauthorizedException,
)

from broker.routes.deps import ConfigDep, SignalsDep, StoreDep
from broker.scim import resources
from broker.scim.service import Endpoint, ScimError, ScimTenant

_log = structlog.get_logger("mcp_broker.scim")
MEDIA_TYPE = "application/scim+json"
MAX_BODY = 1024 * 1024  # the largest request body taken (a group of many members fits)
_ENDPOINTS: dict[str, Endpoint] = {"Users": "Users", "Groups": "Groups"}
_DISCOVERY = {"ServiceProviderConfig", "ResourceTypes", "Schemas"}


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def error_response(error: Error) -> JSONResponse:
    headers = {"www-authenticate": 'Bearer realm="scim"'} if str(error.status) == "401" else None
    return _json(error.model_dump(), int(error.status or 500), headers)


async def get_scim(
    request: Request, config: ConfigDep, store: StoreDep, signals: SignalsDep, tenant: str
) -> ScimTenant:
    """The tenant the bearer token opens, or 401 (an unknown tenant and a wrong token alike)."""
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    digest = hashlib.sha256(presented.strip().encode()).digest()
    for each in config.scim.tenants:
        if each.provider == tenant:
            if scheme.lower() == "bearer" and hmac.compare_digest(digest, each.token_digest()):
                return ScimTenant(each, store, signals, f"{config.issuer}/scim/v2/{tenant}")
            break
    raise UnauthorizedException(detail="missing or wrong bearer token")


ScimDep = Annotated[ScimTenant, Depends(get_scim)]


def install(app: FastAPI) -> None:
    """Every ``SCIMException`` becomes its RFC 7644 §3.12 body."""

    @app.exception_handler(SCIMException)
    async def _scim(request: Request, exc: SCIMException) -> JSONResponse:
        error = exc.to_error()
        _log.info(
            "scim_error", path=request.url.path, status=error.status, scim_type=error.scim_type, detail=error.detail
        )
        return error_response(error)


async def _body(request: Request) -> Any:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise PayloadTooLargeException(detail=f"the body exceeds {MAX_BODY} bytes")
    try:
        return json.loads(raw)
    except ValueError:
        raise InvalidSyntaxException(detail="the body is not JSON") from None


def _endpoint(name: str) -> Endpoint:
    endpoint = _ENDPOINTS.get(name)
    if endpoint is None:
        _no_endpoint(name)
    return endpoint


def _no_endpoint(path: str) -> NoReturn:
    """404; 405 for a method the discovery endpoints do not take (RFC 7644 §4: GET only); 501 for
    a search of every resource type at once (root ``/.search``, RFC 7644 §3.4.3: not supported)."""
    if path == ".search":
        raise NotImplementedException(detail="search one resource type: /Users/.search or /Groups/.search")
    if path.split("/", 1)[0] in _DISCOVERY:
        raise ScimError(Error(status=405, detail=f"{path} takes GET only"))
    raise NotFoundException(detail=f"no endpoint {path}")


def router(base: str) -> APIRouter:
    api = APIRouter(prefix=f"{base}/scim/v2/{{tenant}}", include_in_schema=False)

    @api.get("/ServiceProviderConfig")
    async def service_provider_config(scim: ScimDep) -> Response:
        return _json(resources.service_provider_config(scim.base_url))

    @api.get("/ResourceTypes")
    @api.get("/ResourceTypes/{name}")
    async def resource_types(scim: ScimDep, name: str | None = None) -> Response:
        return _discovery(resources.resource_types(scim.base_url), name, "resource type")

    @api.get("/Schemas")
    @api.get("/Schemas/{name}")
    async def schemas(scim: ScimDep, name: str | None = None) -> Response:
        return _discovery(resources.schemas(scim.base_url), name, "schema")

    @api.post("/{kind}")
    async def create(request: Request, scim: ScimDep, kind: str) -> Response:
        created = await scim.create(_endpoint(kind), await _body(request))
        return _json(created, 201, {"location": created["meta"]["location"]})

    @api.get("/{kind}")
    async def search(request: Request, scim: ScimDep, kind: str) -> Response:
        return _json(await scim.search(_endpoint(kind), dict(request.query_params)))

    @api.post("/{kind}/.search")
    async def search_by_post(request: Request, scim: ScimDep, kind: str) -> Response:
        body = await _body(request)
        if not isinstance(body, dict):
            raise InvalidSyntaxException(detail="the body is not a JSON object")
        return _json(await scim.search(_endpoint(kind), body))

    @api.get("/{kind}/{resource_id}")
    async def read(request: Request, scim: ScimDep, kind: str, resource_id: str) -> Response:
        return _json(await scim.get(_endpoint(kind), resource_id, dict(request.query_params)))

    @api.put("/{kind}/{resource_id}")
    async def replace(request: Request, scim: ScimDep, kind: str, resource_id: str) -> Response:
        return _json(await scim.replace(_endpoint(kind), resource_id, await _body(request)))

    @api.patch("/{kind}/{resource_id}")
    async def patch(request: Request, scim: ScimDep, kind: str, resource_id: str) -> Response:
        return _json(await scim.patch(_endpoint(kind), resource_id, await _body(request)))

    @api.delete("/{kind}/{resource_id}")
    async def delete(scim: ScimDep, kind: str, resource_id: str) -> Response:
        await scim.delete(_endpoint(kind), resource_id)
        return Response(status_code=204)

    @api.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def unknown(scim: ScimDep, rest: str) -> Response:
        _no_endpoint(rest)

    return api


def _discovery(found: list[dict[str, Any]], name: str | None, what: str) -> Response:
    if name is None:
        return _json(resources.list_response(found, total=len(found), start=1))
    for each in found:
        if each.get("id") == name:
            return _json(each)
    raise NotFoundException(detail=f"no {what} {name}")
