"""``/openapi.json`` says what the API answers: error statuses with the RFC 6749 body, request
bodies, security schemes, pages and redirects for the browser endpoint, and no 422 that the app
never sends. (test_fuzz.py checks the running broker against the same document.)"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.broker.conftest import BrokerFactory
from tests.broker.flows import Broker

OAUTH_ERROR = {"$ref": "#/components/schemas/OAuthError"}
CLIENT_ENDPOINTS = ["/token", "/revoke", "/introspect"]
ADMIN_TOKEN = "admin-" + "o" * 40


@pytest.fixture
def document(broker: Broker) -> dict[str, Any]:
    response = httpx.get(f"{broker.base}/openapi.json")
    assert response.status_code == 200
    return dict(response.json())


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, ops in document["paths"].items() for method, op in ops.items()]


def assert_oauth_errors(operation: dict[str, Any], statuses: list[str]) -> None:
    for status in statuses:
        declared = operation["responses"].get(status)
        assert declared is not None, f"{status} is not declared"
        assert declared["content"]["application/json"]["schema"] == OAUTH_ERROR, status


def test_the_error_body_is_rfc6749s(document: dict[str, Any]) -> None:
    body = document["components"]["schemas"]["OAuthError"]
    assert set(body["required"]) == {"error", "error_description"}
    assert body["properties"]["error"]["type"] == "string"


@pytest.mark.parametrize("path", CLIENT_ENDPOINTS)
def test_client_endpoints_declare_their_errors_body_and_client_auth(document: dict[str, Any], path: str) -> None:
    operation = document["paths"][path]["post"]
    assert_oauth_errors(operation, ["400", "401", "405", "503"])
    assert "WWW-Authenticate" in operation["responses"]["401"]["headers"]
    form = operation["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
    assert {"client_id", "client_secret"} <= set(form["properties"])
    assert operation["security"] == [{"clientSecretBasic": []}, {}]
    scheme = document["components"]["securitySchemes"]["clientSecretBasic"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "basic")


def test_token_form_and_answers(document: dict[str, Any]) -> None:
    operation = document["paths"]["/token"]["post"]
    form = operation["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
    assert {"grant_type", "code", "code_verifier", "redirect_uri", "refresh_token", "resource", "scope"} <= set(
        form["properties"]
    )
    assert form["required"] == ["grant_type"]
    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/TokenBody"
    }
    # RFC 7009 §2.2: revocation answers 200 with no body at all.
    assert "content" not in document["paths"]["/revoke"]["post"]["responses"]["200"]


def test_registration_declares_json_body_limit_and_errors(document: dict[str, Any]) -> None:
    operation = document["paths"]["/register"]["post"]
    assert_oauth_errors(operation, ["400", "403", "405", "429", "503"])
    assert operation["responses"]["429"]["headers"]["Retry-After"]["required"] is True
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["redirect_uris"]
    assert "201" in operation["responses"]


def test_authorize_declares_pages_and_redirects(document: dict[str, Any]) -> None:
    responses = document["paths"]["/authorize"]["get"]["responses"]
    assert list(responses["200"]["content"]) == ["text/html"]
    assert list(responses["400"]["content"]) == ["text/html"]
    assert responses["302"]["headers"]["Location"]["required"] is True
    assert "content" not in responses["302"]
    assert set(responses["503"]["content"]) == {"text/html", "application/json"}
    names = {p["name"] for p in document["paths"]["/authorize"]["get"]["parameters"]}
    assert {"response_type", "client_id", "redirect_uri", "code_challenge", "resource", "state"} <= names


def test_admin_operations_declare_400_not_422_and_the_bearer_scheme(document: dict[str, Any]) -> None:
    admin = [(path, op) for path, _, op in operations(document) if path.startswith("/admin/")]
    assert len(admin) >= 7
    for path, operation in admin:
        assert_oauth_errors(operation, ["400", "401", "403", "405", "503"])
        assert operation["security"] == [{"adminBearer": []}], path
        assert all(p["name"].lower() != "authorization" for p in operation.get("parameters", [])), path
    assert document["components"]["securitySchemes"]["adminBearer"]["scheme"] == "bearer"


def test_no_operation_declares_a_422_the_app_never_sends(document: dict[str, Any]) -> None:
    for path, method, operation in operations(document):
        assert "422" not in operation["responses"], f"{method} {path}"
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_a_request_fastapi_finds_invalid_is_the_declared_400(broker_factory: BrokerFactory) -> None:
    with broker_factory(extra=f'admin:\n  token: "{ADMIN_TOKEN}"\n') as broker:
        missing = httpx.get(f"{broker.base}/admin/explain", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    assert missing.status_code == 400
    assert missing.json()["error"] == "invalid_request"


def test_an_encoded_slash_in_a_path_parameter_is_the_declared_404(broker: Broker, document: dict[str, Any]) -> None:
    assert "404" in document["paths"]["/admin/grants/{grant_id}"]["delete"]["responses"]
    assert "404" not in document["paths"]["/admin/policy"]["get"]["responses"]
    response = httpx.delete(f"{broker.base}/admin/grants/a%2Fb", headers={"authorization": "Bearer x"})
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_every_operation_declares_405_with_allow(document: dict[str, Any]) -> None:
    for path, method, operation in operations(document):
        declared = operation["responses"].get("405")
        assert declared is not None, f"{method} {path}"
        assert declared["headers"]["Allow"]["required"] is True


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/token", "POST"),
        ("POST", "/jwks.json", "GET"),
        # Two routes on one path: Starlette alone would name only the first one's methods.
        ("PUT", "/admin/users/u/consents", "DELETE, GET"),
    ],
)
def test_a_405_names_the_allowed_methods(broker: Broker, method: str, path: str, allow: str) -> None:
    response = httpx.request(method, f"{broker.base}{path}")
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert response.json()["error"] == "invalid_request"
    assert response.headers["cache-control"] == "no-store"
