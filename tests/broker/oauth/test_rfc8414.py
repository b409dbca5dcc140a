"""RFC 8414 authorization server metadata (and the same document as OIDC discovery)."""

from __future__ import annotations

import httpx

from tests.broker.conftest import BrokerFactory
from tests.broker.flows import Broker


def test_metadata_document(broker: Broker) -> None:
    doc = httpx.get(f"{broker.base}/.well-known/oauth-authorization-server").json()
    issuer = broker.base
    assert doc["issuer"] == issuer  # exactly, no trailing slash
    assert doc["authorization_endpoint"] == f"{issuer}/authorize"
    assert doc["token_endpoint"] == f"{issuer}/token"
    assert doc["registration_endpoint"] == f"{issuer}/register"
    assert doc["revocation_endpoint"] == f"{issuer}/revoke"
    assert doc["introspection_endpoint"] == f"{issuer}/introspect"
    assert doc["jwks_uri"] == f"{issuer}/jwks.json"
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["response_types_supported"] == ["code"]
    assert doc["grant_types_supported"][:2] == ["authorization_code", "refresh_token"]  # then the extension grants
    assert doc["client_id_metadata_document_supported"] is True
    assert doc["authorization_response_iss_parameter_supported"] is True
    assert set(doc["token_endpoint_auth_methods_supported"]) == {"none", "client_secret_post", "client_secret_basic"}
    assert set(doc["scopes_supported"]) == {"notes:read", "notes:write", "other:use", "openid"}
    assert "offline_access" not in doc["scopes_supported"]


def test_oidc_discovery_serves_the_same_document(broker: Broker) -> None:
    rfc8414 = httpx.get(f"{broker.base}/.well-known/oauth-authorization-server").json()
    oidc = httpx.get(f"{broker.base}/.well-known/openid-configuration").json()
    assert oidc == rfc8414


def test_every_endpoint_in_the_document_answers(broker: Broker) -> None:
    doc = httpx.get(f"{broker.base}/.well-known/oauth-authorization-server").json()
    assert httpx.get(doc["jwks_uri"]).json()["keys"]
    for name in ("token_endpoint", "revocation_endpoint", "introspection_endpoint"):
        answer = httpx.post(doc[name], data={})
        assert answer.status_code in (400, 401), name
        assert "error" in answer.json()
    assert httpx.post(doc["registration_endpoint"], json={}).status_code == 400


def test_issuer_with_a_path(broker_factory: BrokerFactory) -> None:
    with broker_factory(issuer_path="/tenant-a") as broker:
        root = broker.base.removesuffix("/tenant-a")
        for path in (
            "/.well-known/oauth-authorization-server/tenant-a",
            "/.well-known/openid-configuration/tenant-a",
            "/tenant-a/.well-known/openid-configuration",
        ):
            doc = httpx.get(root + path).json()
            assert doc["issuer"] == broker.base, path
            assert doc["token_endpoint"] == f"{broker.base}/token"
        assert httpx.get(f"{root}/.well-known/oauth-authorization-server").status_code == 404
        assert httpx.get(f"{broker.base}/jwks.json").json()["keys"]


def test_registration_endpoint_absent_when_disabled(broker_factory: BrokerFactory) -> None:
    with broker_factory(registration="  dynamic_registration: false") as broker:
        doc = httpx.get(f"{broker.base}/.well-known/oauth-authorization-server").json()
        assert "registration_endpoint" not in doc
        refused = httpx.post(f"{broker.base}/register", json={"redirect_uris": ["http://127.0.0.1/cb"]})
        assert refused.status_code == 403
        assert refused.json()["error"] == "access_denied"
