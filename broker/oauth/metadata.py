"""Authorization server metadata (RFC 8414), also served as OpenID Connect discovery."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from broker.config.models import BrokerConfig
from broker.oauth.client_assertion import ALGORITHMS as ASSERTION_ALGORITHMS
from broker.oauth.clients import AUTH_METHODS
from broker.oauth.id_jag import ID_JAG_PROFILE, JWT_BEARER
from broker.oauth.id_token import CLAIMS_SUPPORTED
from broker.oauth.token_exchange import TOKEN_EXCHANGE


def metadata(config: BrokerConfig) -> dict[str, Any]:
    issuer = config.issuer
    scopes = sorted({s.name for r in config.resources for s in r.scopes})
    doc: dict[str, Any] = {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "jwks_uri": f"{issuer}/jwks.json",
        "revocation_endpoint": f"{issuer}/revoke",
        "introspection_endpoint": f"{issuer}/introspect",
        "scopes_supported": scopes,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "revocation_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "client_id_metadata_document_supported": config.registration.client_metadata_documents,
        "authorization_response_iss_parameter_supported": True,
        "service_documentation": "https://github.com/modelcontextprotocol/modelcontextprotocol",
    }
    if config.registration.dynamic_registration:
        doc["registration_endpoint"] = f"{issuer}/register"
    if any(c.jwks is not None for c in config.registration.static_clients):  # RFC 7523 §2.2
        for endpoint in ("token", "revocation", "introspection"):
            doc[f"{endpoint}_endpoint_auth_methods_supported"] = [
                *doc[f"{endpoint}_endpoint_auth_methods_supported"],
                "private_key_jwt",
            ]
        doc["token_endpoint_auth_signing_alg_values_supported"] = list(ASSERTION_ALGORITHMS)
    # OpenID Connect Discovery 1.0 §3: the broker signs MCP clients in (ID tokens with `openid`).
    doc["scopes_supported"] = sorted({*scopes, "openid"})
    doc["id_token_signing_alg_values_supported"] = [config.signing.algorithm]
    doc["subject_types_supported"] = ["public"]
    doc["claims_supported"] = list(CLAIMS_SUPPORTED)
    # RFC 8693 token exchange: an ID token of ours for an ID-JAG (ext-auth, SEP-990).
    doc["grant_types_supported"] = [*doc["grant_types_supported"], TOKEN_EXCHANGE]
    if config.identity_assertion.trusted_issuers:  # RFC 7523 with ID-JAGs (MCP ext-auth §6)
        doc["grant_types_supported"] = [*doc["grant_types_supported"], JWT_BEARER]
        doc["authorization_grant_profiles_supported"] = [ID_JAG_PROFILE]
    return doc


def well_known_paths(issuer: str) -> list[str]:
    """Every path a client may try (RFC 8414 §3.1 path-inserted; OIDC path-inserted and appended)."""
    path = urlsplit(issuer).path.rstrip("/")
    paths = [f"/.well-known/oauth-authorization-server{path}", f"/.well-known/openid-configuration{path}"]
    if path:
        paths.append(f"{path}/.well-known/openid-configuration")
    return paths
