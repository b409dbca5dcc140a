"""What the OpenAPI document says each operation answers: the RFC 6749 error body, the request
bodies, the security schemes, and one ``responses=`` declaration per kind of endpoint.

The routers read their requests themselves (``read_form``, ``read_body``), so FastAPI cannot infer
the bodies; and every error is rendered by :mod:`broker.routes.errors`, never by FastAPI's
validation (a ``RequestValidationError`` is a 400 ``invalid_request``, not a 422). ``install``
finishes the document accordingly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

from broker.oauth.clients import AUTH_METHODS

Declared = dict[int | str, dict[str, Any]]


class OAuthErrorBody(BaseModel):
    """RFC 6749 §5.2 (and RFC 7591 §3.2.2, RFC 7009, RFC 7662) error response."""

    error: str = Field(description="The error code, e.g. `invalid_request`, `invalid_client`, `invalid_grant`")
    error_description: str = Field(description="What went wrong, for a developer (never a secret)")
    interaction_uri: str | None = Field(
        default=None,
        description="With `interaction_required` (delegated access): the broker page where the user completes "
        "an upstream step; the same token exchange works afterwards",
    )


class TokenBody(BaseModel):
    """OAuth 2.1 §3.2.3 access token response."""

    access_token: str
    token_type: str = Field(description="`Bearer`; `N_A` for an ID-JAG from the token exchange (RFC 8693 §2.2.1)")
    expires_in: int
    scope: str
    refresh_token: str | None = Field(default=None, description="Present for clients allowed `refresh_token`")
    id_token: str | None = Field(default=None, description="OpenID Connect ID token, when the scope held `openid`")
    issued_token_type: str | None = Field(
        default=None,
        description="Token exchange: `urn:ietf:params:oauth:token-type:id-jag` (then `access_token` is the ID-JAG), "
        "or `urn:ietf:params:oauth:token-type:access_token` (delegated access: a token for the target)",
    )


class IntrospectionBody(BaseModel):
    """RFC 7662 §2.2: only `active` for an inactive or foreign token."""

    active: bool
    token_type: str | None = None
    scope: str | None = None
    client_id: str | None = None
    sub: str | None = None
    aud: str | None = None
    iss: str | None = None
    exp: int | None = None
    iat: int | None = None
    nbf: int | None = None
    jti: str | None = None
    username: str | None = None


class RegisteredClientBody(BaseModel):
    """RFC 7591 §3.2.1 client information response (the secret is shown this once)."""

    client_id: str
    client_id_issued_at: int
    client_name: str
    redirect_uris: list[str]
    application_type: str
    grant_types: list[str]
    response_types: list[str]
    token_endpoint_auth_method: str
    client_secret: str | None = None
    client_secret_expires_at: int | None = None
    client_uri: str | None = None


ERROR_SCHEMA = {"$ref": "#/components/schemas/OAuthError"}
_HTML = {"text/html": {"schema": {"type": "string"}}}
_JSON_ERROR = {"application/json": {"schema": ERROR_SCHEMA}}
_TEXT = {"type": "string"}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again", "schema": {"type": "integer"}}}

_ERRORS: dict[int, dict[str, Any]] = {
    400: {"description": "Invalid request (RFC 6749 §5.2 error body)"},
    401: {
        "description": "Client or admin authentication failed (`invalid_client`)",
        "headers": {
            "WWW-Authenticate": {"description": "A Basic challenge when Basic credentials were sent", "schema": _TEXT}
        },
    },
    403: {"description": "Not allowed (`access_denied`)"},
    404: {"description": "No route: a path parameter holding an encoded `/` makes another path"},
    405: {
        "description": "Method not allowed on this path",
        "headers": {"Allow": {"description": "The methods this path accepts", "required": True, "schema": _TEXT}},
    },
    429: {
        "description": "Too many requests (RFC 6585 §4)",
        "headers": {"Retry-After": {**_RETRY_AFTER["Retry-After"], "required": True}},
    },
    503: {"description": "Temporarily unavailable (Redis or an upstream): try again soon", "headers": _RETRY_AFTER},
}


def errors(*statuses: int) -> Declared:
    """JSON error responses with the RFC 6749 body, for the given statuses."""
    return {status: {**_ERRORS[status], "content": _JSON_ERROR} for status in statuses}


def _form(properties: dict[str, dict[str, Any]], required: list[str]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {"type": "object", "properties": properties, "required": required}
            }
        },
    }


_CLIENT_FIELDS: dict[str, dict[str, Any]] = {
    "client_id": {"type": "string", "description": "The client, unless authenticated with HTTP Basic"},
    "client_secret": {"type": "string", "description": "`client_secret_post` authentication"},
    "client_assertion_type": {
        "type": "string",
        "enum": ["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"],
        "description": "`private_key_jwt` authentication (RFC 7523 §2.2), for a client with configured keys",
    },
    "client_assertion": {"type": "string", "description": "`private_key_jwt`: the client's signed JWT"},
}
_TOKEN_HINT = {"type": "string", "enum": ["access_token", "refresh_token"]}
# Client authentication (RFC 6749 §2.3): HTTP Basic, or client_id/client_secret in the form
# (`client_secret_post`), or only client_id for a public client: hence the empty alternative.
_CLIENT_SECURITY: list[dict[str, list[str]]] = [{"clientSecretBasic": []}, {}]

TOKEN = {
    "requestBody": _form(
        {
            "grant_type": {
                "type": "string",
                "enum": [
                    "authorization_code",
                    "refresh_token",
                    "urn:ietf:params:oauth:grant-type:jwt-bearer",
                    "urn:ietf:params:oauth:grant-type:token-exchange",
                ],
            },
            "code": {"type": "string"},
            "redirect_uri": {"type": "string"},
            "code_verifier": {
                "type": "string",
                "pattern": "^[A-Za-z0-9._~-]{43,128}$",
                "description": "PKCE (RFC 7636)",
            },
            "refresh_token": {"type": "string"},
            "assertion": {"type": "string", "description": "jwt-bearer (RFC 7523): an ID-JAG from a trusted IdP"},
            "subject_token": {
                "type": "string",
                "description": "token exchange (RFC 8693): an ID token of this broker, or (an MCP server, for "
                "delegated access) the user's access token it received",
            },
            "subject_token_type": {
                "type": "string",
                "enum": ["urn:ietf:params:oauth:token-type:id_token", "urn:ietf:params:oauth:token-type:access_token"],
            },
            "requested_token_type": {
                "type": "string",
                "enum": ["urn:ietf:params:oauth:token-type:id-jag", "urn:ietf:params:oauth:token-type:access_token"],
            },
            "audience": {
                "type": "string",
                "description": "token exchange: the issuer the ID-JAG is for, or the delegation target",
            },
            "scope": {"type": "string", "description": "Space-separated; at refresh, at most the granted scopes"},
            "resource": {"type": "string", "description": "RFC 8707 resource indicator"},
            **_CLIENT_FIELDS,
        },
        ["grant_type"],
    ),
    "security": _CLIENT_SECURITY,
}
REVOKE = {
    "requestBody": _form({"token": {"type": "string"}, "token_type_hint": _TOKEN_HINT, **_CLIENT_FIELDS}, ["token"]),
    "security": _CLIENT_SECURITY,
}
INTROSPECT = {
    "requestBody": _form({"token": {"type": "string"}, "token_type_hint": _TOKEN_HINT, **_CLIENT_FIELDS}, ["token"]),
    "security": _CLIENT_SECURITY,
}
REGISTER = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "description": "RFC 7591 §2 client metadata (at most 16 KiB)",
                    "properties": {
                        "redirect_uris": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 20},
                        "client_name": {"type": "string", "maxLength": 100},
                        "token_endpoint_auth_method": {"type": "string", "enum": list(AUTH_METHODS)},
                        "grant_types": {
                            "type": "array",
                            "items": {"type": "string", "enum": ["authorization_code", "refresh_token"]},
                        },
                        "response_types": {"type": "array", "items": {"type": "string", "enum": ["code"]}},
                        "application_type": {"type": "string", "enum": ["native", "web"]},
                        "client_uri": {"type": "string"},
                    },
                    "required": ["redirect_uris"],
                }
            }
        },
    }
}


def _query(name: str, description: str, *, required: bool = False, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": {"type": "string", **schema},
    }


AUTHORIZE = {
    "parameters": [
        _query("response_type", "Only the authorization code flow", required=True, enum=["code"]),
        _query("client_id", "A registered client ID, or the URL of a client ID metadata document", required=True),
        _query("redirect_uri", "One of the client's redirect URIs; optional when it registered only one"),
        _query("code_challenge", "PKCE (RFC 7636): base64url SHA-256", required=True, pattern="^[A-Za-z0-9_-]{43}$"),
        _query("code_challenge_method", "PKCE method; `plain` is refused", required=True, enum=["S256"]),
        _query("resource", "The MCP server (RFC 8707), exactly once", required=True),
        _query("scope", "Space-separated scopes"),
        _query("state", "Returned unchanged", maxLength=2000),
        _query("login_hint", "user@domain picks the matching identity provider"),
    ]
}

TOKEN_ENDPOINT_ERRORS = errors(400, 401, 405, 503)
REGISTER_ERRORS = errors(400, 403, 405, 429, 503)
ADMIN_ERRORS = errors(400, 401, 403, 405, 503)
DISCOVERY_ERRORS = errors(405)
# Every admin operation: `@api.get(path, summary=..., **openapi.ADMIN_ROUTE)`.
ADMIN_ROUTE: dict[str, Any] = {"responses": ADMIN_ERRORS, "openapi_extra": {"security": [{"adminBearer": []}]}}
AUTHORIZE_RESPONSES: Declared = {
    200: {"description": "The consent page", "content": _HTML},
    302: {
        "description": "An RFC 6749 §4.1.2.1 error sent back to the client's redirect URI",
        "headers": {"Location": {"description": "The redirect URI with the error", "required": True, "schema": _TEXT}},
    },
    400: {"description": "A page explaining a request that cannot be redirected", "content": _HTML},
    405: {**_ERRORS[405], "content": _JSON_ERROR},
    503: {
        "description": "No identity provider is configured (a page), or Redis is unavailable (JSON)",
        "headers": _RETRY_AFTER,
        "content": {**_HTML, **_JSON_ERROR},
    },
}

SECURITY_SCHEMES = {
    "clientSecretBasic": {
        "type": "http",
        "scheme": "basic",
        "description": "Client authentication (RFC 6749 §2.3.1); `client_secret_post` sends the same in the form",
    },
    "adminBearer": {"type": "http", "scheme": "bearer", "description": "The static admin token (`admin.token`)"},
}


def _tidy(schema: dict[str, Any]) -> None:
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {})["OAuthError"] = OAuthErrorBody.model_json_schema()
    components["securitySchemes"] = SECURITY_SCHEMES
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            if "{" in path:  # `%2F` in a parameter is decoded before routing: no route then matches
                operation["responses"].setdefault("404", errors(404)[404])
            # Validation errors are answered 400 invalid_request (errors.install), never 422.
            operation.get("responses", {}).pop("422", None)
            # OpenAPI ignores an Authorization header parameter: the security scheme says it.
            parameters = [
                p
                for p in operation.get("parameters", [])
                if not (p.get("in") == "header" and p.get("name", "").lower() == "authorization")
            ]
            if parameters:
                operation["parameters"] = parameters
            else:
                operation.pop("parameters", None)
    for unused in ("HTTPValidationError", "ValidationError"):  # in this order: the first refers to the second
        if f'"#/components/schemas/{unused}"' not in json.dumps([schema["paths"], components["schemas"]]):
            components["schemas"].pop(unused, None)


def install(app: FastAPI) -> None:
    """Finish the generated document (once, on first request for it)."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _tidy(generate())
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
