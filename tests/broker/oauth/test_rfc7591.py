"""RFC 7591 dynamic client registration: what is accepted, what is refused, secrets kept hashed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from broker.devstack import RedisServer
from tests.broker.conftest import BrokerFactory
from tests.broker.flows import Broker


def post(broker: Broker, body: Any) -> httpx.Response:
    return httpx.post(f"{broker.base}/register", json=body)


def test_public_native_client(broker: Broker) -> None:
    response = post(
        broker,
        {
            "redirect_uris": ["http://127.0.0.1:3000/callback"],
            "client_name": "Claude Code",
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "application_type": "native",
        },
    )
    assert response.status_code == 201
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["client_name"] == "Claude Code"
    assert body["token_endpoint_auth_method"] == "none"
    assert "client_secret" not in body
    assert body["grant_types"] == ["authorization_code", "refresh_token"]
    assert len(body["client_id"]) >= 32


def test_confidential_client_secret_is_returned_once_and_stored_hashed(
    broker: Broker, redis_server: RedisServer
) -> None:
    body = post(
        broker,
        {
            "redirect_uris": ["https://app.example.com/cb"],
            "client_name": "Web app",
            "token_endpoint_auth_method": "client_secret_post",
            "application_type": "web",
        },
    ).json()
    secret = body["client_secret"]
    assert body["client_secret_expires_at"] == 0
    raw = redis.Redis.from_url(redis_server.url)
    stored = [raw.dump(k) for k in raw.scan_iter(f"{broker.config.redis.key_prefix}:*")]
    assert stored
    assert all(secret.encode() not in (v or b"") for v in stored)
    assert all(raw.ttl(k) > 0 for k in raw.scan_iter(f"{broker.config.redis.key_prefix}:{{c:*"))  # expires unused
    raw.close()


def test_application_type_is_inferred_for_older_clients(broker: Broker) -> None:
    native = post(broker, {"redirect_uris": ["http://localhost:8080/cb"], "token_endpoint_auth_method": "none"}).json()
    assert native["application_type"] == "native"
    web = post(broker, {"redirect_uris": ["https://app.example.com/cb"]}).json()
    assert web["application_type"] == "web"
    assert web["token_endpoint_auth_method"] == "client_secret_basic"  # RFC 7591 default
    scheme = post(broker, {"redirect_uris": ["com.example.app:/oauth"], "token_endpoint_auth_method": "none"}).json()
    assert scheme["application_type"] == "native"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"redirect_uris": ["http://evil.example.com/cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://app.example.com/cb#frag"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["javascript:alert(1)"], "application_type": "native"}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://*.example.com/cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["http://127.0.0.1/cb"], "application_type": "web"}, "invalid_redirect_uri"),
        ({"redirect_uris": ["myapp:/cb"], "application_type": "web"}, "invalid_redirect_uri"),
        ({"redirect_uris": []}, "invalid_redirect_uri"),
        ({"client_name": "no redirects"}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://a.example/cb"], "grant_types": ["client_credentials"]}, "invalid_client_metadata"),
        ({"redirect_uris": ["https://a.example/cb"], "grant_types": ["implicit"]}, "invalid_client_metadata"),
        ({"redirect_uris": ["https://a.example/cb"], "response_types": ["token"]}, "invalid_client_metadata"),
        (
            {"redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "private_key_jwt"},
            "invalid_client_metadata",
        ),
        ({"redirect_uris": ["https://a.example/cb"], "application_type": "desktop"}, "invalid_client_metadata"),
        ({"redirect_uris": ["https://a.example/cb"], "client_name": "x" * 101}, "invalid_client_metadata"),
        (["not", "an", "object"], "invalid_client_metadata"),
    ],
)
def test_refused_metadata(broker: Broker, body: Any, error: str) -> None:
    response = post(broker, body)
    assert response.status_code == 400
    assert response.json()["error"] == error
    assert response.json()["error_description"]


def test_malformed_json_is_a_clear_error(broker: Broker) -> None:
    response = httpx.post(f"{broker.base}/register", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_client_metadata"


def test_redirect_host_allow_list(broker_factory: BrokerFactory) -> None:
    with broker_factory(registration="  dynamic_registration_allowed_redirect_hosts: [apps.example.com]") as broker:
        assert post(broker, {"redirect_uris": ["https://apps.example.com/cb"]}).status_code == 201
        refused = post(broker, {"redirect_uris": ["https://elsewhere.example.com/cb"]})
        assert refused.status_code == 400
        assert "not allowed to register" in refused.json()["error_description"]


def test_registrations_per_address_are_limited(broker_factory: BrokerFactory) -> None:
    with broker_factory(registration="  dynamic_registration_per_ip: 3\n  dynamic_registration_window: 1h") as broker:
        body = {
            "redirect_uris": ["http://127.0.0.1/callback"],
            "client_name": "Flood",
            "token_endpoint_auth_method": "none",
        }
        assert post(broker, body).status_code == 201
        assert post(broker, {"redirect_uris": "not a list"}).status_code == 400  # invalid ones count too
        assert post(broker, body).status_code == 201
        refused = post(broker, body)
        assert refused.status_code == 429
        assert refused.json()["error"] == "temporarily_unavailable"
        assert "too many client registrations" in refused.json()["error_description"]
        assert 3500 <= int(refused.headers["retry-after"]) <= 3600
        assert refused.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("uris", [[123], [{"a": 1}], [None], [""]])
def test_redirect_uris_that_are_not_strings_are_a_clear_error(broker: Broker, uris: list[object]) -> None:
    response = post(broker, {"redirect_uris": uris, "token_endpoint_auth_method": "none"})
    assert (response.status_code, response.json()["error"]) == (400, "invalid_redirect_uri")


def test_deeply_nested_json_is_a_clear_error(broker: Broker) -> None:
    response = httpx.post(
        f"{broker.base}/register", content=b"[" * 100_000, headers={"content-type": "application/json"}
    )
    assert (response.status_code, response.json()["error"]) == (400, "invalid_client_metadata")


def test_an_oversized_body_is_refused_before_it_is_read(broker: Broker) -> None:
    big = b'{"client_name": "' + b"x" * 20_000 + b'"}'
    declared = httpx.post(f"{broker.base}/register", content=big, headers={"content-type": "application/json"})
    assert (declared.status_code, declared.json()["error"]) == (400, "invalid_client_metadata")

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused while streaming
        for _ in range(1000):
            yield b" " * 1024

    streamed = httpx.post(f"{broker.base}/register", content=chunks(), headers={"content-type": "application/json"})
    assert (streamed.status_code, streamed.json()["error"]) == (400, "invalid_client_metadata")
    assert "too large" in streamed.json()["error_description"]


@pytest.mark.parametrize(
    "uri",
    [
        "https://evil.example; script-src 'unsafe-inline'/cb",
        "https://evil.example%20x/cb",
        "https://ex ample.com/cb",
        "https:///cb",
    ],
)
def test_a_redirect_host_must_be_a_host_name(broker: Broker, uri: str) -> None:
    response = post(broker, {"redirect_uris": [uri], "token_endpoint_auth_method": "none"})
    assert (response.status_code, response.json()["error"]) == (400, "invalid_redirect_uri")


JSON = {"content-type": "application/json"}
HIDDEN = [
    "\u202e",
    "\u202a",
    "\u2066",
    "\u2069",
    "\u200b",
    "\u200d",
    "\u200f",
    "\ufeff",
    "\u2028",
    "\u2029",
    "\x00",
    "\x1b",
    "\n",
    "\x7f",
    "\x85",
    "\ud800",
]


@pytest.mark.parametrize("char", HIDDEN, ids=[f"U+{ord(c):04X}" for c in HIDDEN])
def test_a_name_that_does_not_read_as_itself_is_refused(broker: Broker, char: str) -> None:
    """Unicode TR #36: "\\u202eedoC oidutS lausiV" would read "Visual Studio Code" on the consent page."""
    body = {"redirect_uris": ["http://127.0.0.1/cb"], "client_name": f"{char}edoC oidutS lausiV"}
    # json.dumps escapes as \uXXXX, so even a lone surrogate travels as valid JSON text.
    response = httpx.post(f"{broker.base}/register", content=json.dumps(body), headers=JSON)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_client_metadata"
    assert response.json()["error_description"] == (
        f"client_name must not contain control, invisible or bidirectional formatting characters (U+{ord(char):04X})"
    )


@pytest.mark.parametrize(
    "field",
    [{"software_id": "a\u202eb"}, {"software_version": "1.0\x00"}, {"contacts": ["ops@example.com", "\u2066x"]}],
)
def test_other_readable_strings_are_held_to_the_same_rule(broker: Broker, field: dict[str, Any]) -> None:
    response = post(broker, {"redirect_uris": ["https://a.example/cb"], **field})
    assert (response.status_code, response.json()["error"]) == (400, "invalid_client_metadata")
    assert next(iter(field)) in response.json()["error_description"]


def test_names_in_any_script_are_welcome(broker: Broker) -> None:
    name = "Éditeur 日本語 مرحبا Ωμέγα 🙂"
    response = post(broker, {"redirect_uris": ["https://a.example/cb"], "client_name": name})
    assert response.status_code == 201, response.text
    assert response.json()["client_name"] == name


@pytest.mark.parametrize("field", ["client_uri", "logo_uri", "policy_uri", "tos_uri"])
@pytest.mark.parametrize(
    "uri",
    [
        "javascript:alert(document.domain)",
        "data:text/html,<script>alert(1)</script>",
        "http://app.example.com/",
        "ftp://app.example.com/",
        "https://",
        "https://evil.example; script-src 'unsafe-inline'/",
        "https://user:pass@app.example.com/",
        "https://app.example.com/a b",
        "//app.example.com/",
        "",
        42,
    ],
)
def test_a_page_url_must_be_https(broker: Broker, field: str, uri: object) -> None:
    response = post(broker, {"redirect_uris": ["https://a.example/cb"], field: uri})
    assert (response.status_code, response.json()["error"]) == (400, "invalid_client_metadata")
    assert response.json()["error_description"].startswith(field)


def test_page_urls_over_https_or_loopback_http_are_kept(broker: Broker) -> None:
    pages = {
        "client_uri": "https://app.example.com/",
        "logo_uri": "https://cdn.example.com/logo.png",
        "policy_uri": "http://127.0.0.1:3000/policy",
        "tos_uri": "http://localhost/tos",
    }
    response = post(broker, {"redirect_uris": ["https://a.example/cb"], **pages})
    assert response.status_code == 201, response.text
    assert response.json()["client_uri"] == "https://app.example.com/"
