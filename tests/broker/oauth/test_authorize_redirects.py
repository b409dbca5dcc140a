"""No redirect to an unverified address before the user has signed in (RFC 9700 §4.11.2).

Anyone can register an https redirect URI (RFC 7591) or publish a client ID metadata document:
errors in their authorization requests, and a denial at consent, are shown on the broker.
Loopback and private-use scheme redirects (RFC 8252), pre-registered clients and metadata
documents on ``registration.cimd_trusted_domains`` keep RFC 6749 error redirects.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from broker.devstack import free_port
from broker.oauth.authorize import may_redirect_errors
from broker.oauth.clients import Client
from tests.broker.conftest import BrokerFactory
from tests.broker.flows import Broker, authorize_params, hidden_inputs, login, pkce_pair, register
from tests.http import running
from tests.tls import CA, make_ca

PHISH = "https://phish.example/landing"
STATIC_REDIRECT = "https://notes.example.com/unused"  # the pre-registered client of tests.broker.flows
AGENT_REDIRECT = "https://agent.example/oauth/callback"

# Authorization requests that fail after the client and its redirect URI are known, before sign-in.
BAD_REQUESTS: dict[str, dict[str, str | None]] = {
    "unsupported_response_type": {"response_type": "bogus"},
    "invalid_request": {"code_challenge": None},
    "invalid_scope": {"scope": "unknown:thing"},
    "invalid_target": {"resource": "https://not-configured.example.com/mcp"},
}


def _params(client_id: str, redirect_uri: str, **over: str | None) -> dict[str, str]:
    _, challenge = pkce_pair()
    return authorize_params(client_id, challenge, redirect_uri=redirect_uri, state="st-1", **over)


def _query(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def assert_shown(response: httpx.Response, redirect_uri: str) -> None:
    """A page on the broker: no Location, and no link to the unverified address either."""
    assert "location" not in response.headers, response.headers.get("location")
    assert response.headers["content-type"].startswith("text/html")
    host = urlsplit(redirect_uri).hostname
    assert host is not None
    assert host not in response.text


def assert_errors_shown(broker: Broker, client_id: str, redirect_uri: str) -> None:
    for error, over in BAD_REQUESTS.items():
        response = httpx.get(f"{broker.base}/authorize", params=_params(client_id, redirect_uri, **over))
        assert response.status_code == 400, (error, response.status_code)
        assert_shown(response, redirect_uri)
        assert "The application&#39;s request was invalid" in response.text, response.text
        assert "close this page" in response.text


def assert_errors_redirected(broker: Broker, client_id: str, redirect_uri: str) -> None:
    for error, over in BAD_REQUESTS.items():
        response = httpx.get(f"{broker.base}/authorize", params=_params(client_id, redirect_uri, **over))
        assert response.status_code == 302, (error, response.text)
        location = response.headers["location"]
        assert location.startswith(redirect_uri + "?")
        query = _query(location)
        assert (query["error"], query["state"], query["iss"]) == (error, "st-1", broker.base)


def deny(broker: Broker, client_id: str, redirect_uri: str) -> httpx.Response:
    with broker.client() as browser:
        consent = browser.get("/authorize", params=_params(client_id, redirect_uri))
        assert consent.status_code == 200, consent.text
        return browser.post("/consent", data={**hidden_inputs(consent.text), "decision": "deny"})


def assert_denial_shown(broker: Broker, client_id: str, redirect_uri: str) -> None:
    denied = deny(broker, client_id, redirect_uri)
    assert denied.status_code == 200, denied.text
    assert_shown(denied, redirect_uri)
    assert "was not given access" in denied.text
    assert "Team notes" in denied.text


def assert_denial_redirected(broker: Broker, client_id: str, redirect_uri: str) -> None:
    denied = deny(broker, client_id, redirect_uri)
    assert denied.status_code == 303, denied.text
    assert denied.headers["location"].startswith(redirect_uri + "?")
    query = _query(denied.headers["location"])
    assert (query["error"], query["state"], query["iss"]) == ("access_denied", "st-1", broker.base)


# Dynamically registered clients (RFC 7591)


def test_errors_for_a_registered_https_redirect_are_shown_not_redirected(broker: Broker) -> None:
    client = register(broker, redirect_uri=PHISH, application_type="web")
    assert_errors_shown(broker, client["client_id"], PHISH)


def test_the_page_says_what_was_wrong_and_the_log_says_why(broker: Broker, capsys: pytest.CaptureFixture[str]) -> None:
    client = register(broker, redirect_uri=PHISH, application_type="web")
    response = httpx.get(f"{broker.base}/authorize", params=_params(client["client_id"], PHISH, response_type="bogus"))
    assert "response_type=code" in response.text
    # A request's own text is not repeated on the broker's page (no content injection).
    scoped = httpx.get(f"{broker.base}/authorize", params=_params(client["client_id"], PHISH, scope="call:555-0100"))
    assert "no requested scope belongs to this resource" in scoped.text
    assert "555-0100" not in scoped.text
    log = capsys.readouterr().out
    assert "authorize_error_not_redirected" in log
    assert "invalid_scope" in log
    assert "call:555-0100" in log


def test_an_omitted_redirect_uri_is_no_way_around(broker: Broker) -> None:
    client = register(broker, redirect_uri=PHISH, application_type="web")
    _, challenge = pkce_pair()
    params = authorize_params(client["client_id"], challenge, redirect_uri=None, response_type="bogus")
    response = httpx.get(f"{broker.base}/authorize", params=params)
    assert response.status_code == 400
    assert_shown(response, PHISH)


def test_deny_for_a_registered_https_redirect_is_shown_not_redirected(broker: Broker) -> None:
    client = register(broker, redirect_uri=PHISH, application_type="web")
    assert_denial_shown(broker, client["client_id"], PHISH)


def test_after_sign_in_a_registered_https_redirect_gets_its_code(broker: Broker) -> None:
    client = register(broker, redirect_uri=PHISH, application_type="web")
    auth = login(broker, client["client_id"], redirect_uri=PHISH)
    assert auth.redirect.startswith(PHISH + "?")
    assert auth.params["iss"] == broker.base


@pytest.mark.parametrize("redirect_uri", ["http://127.0.0.1:33418/callback", "http://localhost/cb", "http://[::1]/cb"])
def test_loopback_redirects_still_get_errors(broker: Broker, redirect_uri: str) -> None:
    client = register(broker, redirect_uri=redirect_uri)
    assert_errors_redirected(broker, client["client_id"], redirect_uri)
    assert_denial_redirected(broker, client["client_id"], redirect_uri)


def test_private_use_scheme_redirects_still_get_errors(broker: Broker) -> None:
    client = register(broker, redirect_uri="com.example.agent:/oauth")
    assert_errors_redirected(broker, client["client_id"], "com.example.agent:/oauth")
    assert_denial_redirected(broker, client["client_id"], "com.example.agent:/oauth")


# Pre-registered clients


def test_a_pre_registered_https_redirect_still_gets_errors(broker: Broker) -> None:
    assert_errors_redirected(broker, "notes-server", STATIC_REDIRECT)
    assert_denial_redirected(broker, "notes-server", STATIC_REDIRECT)


# Client ID metadata documents, served over HTTPS on localhost


@dataclass
class Documents:
    ca: CA
    port: int
    served: dict[str, dict[str, object]]

    def publish(self, path: str, redirect_uri: str) -> str:
        url = f"https://localhost:{self.port}{path}"
        self.served[path] = {
            "client_id": url,
            "client_name": "Example Agent",
            "redirect_uris": [redirect_uri],
            "application_type": "web" if redirect_uri.startswith("https:") else "native",
        }
        return url

    def registration(self, trusted: list[str]) -> str:
        return (
            f'  cimd_allow_private_addresses: ["127.0.0.0/8"]\n  cimd_ca_file: "{self.ca.cert_path}"\n'
            f"  cimd_trusted_domains: {json.dumps(trusted)}"
        )


@pytest.fixture(scope="module")
def documents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Documents]:
    ca = make_ca(tmp_path_factory.mktemp("ca"))
    cert, key = ca.issue(tmp_path_factory.mktemp("tls"), hosts=["localhost", "127.0.0.1"])
    docs = Documents(ca, free_port(), {})

    async def serve(request: Request) -> Response:
        body = docs.served.get(request.url.path)
        if body is None:
            return Response(status_code=404)
        return Response(json.dumps(body), media_type="application/json")

    with running(Starlette(routes=[Route("/{path:path}", serve)]), docs.port, ssl_certfile=cert, ssl_keyfile=key):
        yield docs


def test_a_metadata_document_on_a_trusted_domain_still_gets_errors(
    broker_factory: BrokerFactory, documents: Documents
) -> None:
    client_id = documents.publish("/trusted.json", AGENT_REDIRECT)
    with broker_factory(registration=documents.registration(["localhost"])) as broker:
        assert_errors_redirected(broker, client_id, AGENT_REDIRECT)
        assert_denial_redirected(broker, client_id, AGENT_REDIRECT)


def test_a_metadata_document_nobody_vouches_for_gets_pages(broker_factory: BrokerFactory, documents: Documents) -> None:
    client_id = documents.publish("/anywhere.json", AGENT_REDIRECT)
    with broker_factory(registration=documents.registration([])) as broker:
        assert_errors_shown(broker, client_id, AGENT_REDIRECT)
        assert_denial_shown(broker, client_id, AGENT_REDIRECT)


def test_a_metadata_document_with_a_loopback_redirect_still_gets_errors(
    broker_factory: BrokerFactory, documents: Documents
) -> None:
    client_id = documents.publish("/native.json", "http://127.0.0.1:33418/callback")
    with broker_factory(registration=documents.registration([])) as broker:
        assert_errors_redirected(broker, client_id, "http://127.0.0.1:33418/callback")


# The rule itself


def _client(kind: str, client_id: str = "c1") -> Client:
    return Client(client_id=client_id, client_name="x", redirect_uris=(), kind=kind)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("client", "redirect_uri", "trusted", "allowed"),
    [
        (_client("dynamic"), PHISH, [], False),
        (_client("dynamic"), PHISH, ["phish.example"], False),  # the trusted domains vouch for documents only
        (_client("dynamic"), "http://127.0.0.1:4000/cb", [], True),
        (_client("dynamic"), "http://localhost/cb", [], True),
        (_client("dynamic"), "http://[::1]:4000/cb", [], True),
        (_client("dynamic"), "com.example.app:/cb", [], True),
        (_client("static"), PHISH, [], True),
        (_client("metadata_document", "https://agent.example/client.json"), PHISH, [], False),
        (_client("metadata_document", "https://agent.example/client.json"), PHISH, ["example"], True),
        (_client("metadata_document", "https://agent.example/client.json"), PHISH, ["agent.example"], True),
        (_client("metadata_document", "https://agent.example/client.json"), PHISH, ["other.example"], False),
        (_client("metadata_document", "https://evilagent.example/client.json"), PHISH, ["agent.example"], False),
        (_client("metadata_document", "https://agent.example/client.json"), "http://127.0.0.1/cb", [], True),
    ],
)
def test_may_redirect_errors(client: Client, redirect_uri: str, trusted: list[str], allowed: bool) -> None:
    assert may_redirect_errors(client, redirect_uri, trusted) is allowed
