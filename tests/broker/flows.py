"""Drive the broker the way a browser and an OAuth client do, over real HTTP."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from html import unescape
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from broker.config import BrokerConfig
from broker.devstack import Slapd, free_port
from broker.oauth.pkce import s256

RESOURCE_PORT = 8001
RESOURCE = f"http://127.0.0.1:{RESOURCE_PORT}/mcp"
REDIRECT = "http://127.0.0.1:33418/callback"
INTROSPECTOR_SECRET = "introspector-secret-" + "x" * 24


def broker_yaml(
    port: int,
    redis_url: str,
    slapd: Slapd,
    *,
    prefix: str,
    extra: str = "",
    issuer_path: str = "",
    registration: str = "",
    resource: str = RESOURCE,
    providers: str = "",
    mappings: str = "",
    tokens: str = "",
) -> str:
    """A broker configuration for tests. ``providers`` and ``mappings`` are YAML list items
    (indented two spaces) appended to those sections, ``tokens`` lines (indented two spaces) to
    the ``tokens`` section; ``extra`` is appended at top level."""
    return f"""
issuer: http://127.0.0.1:{port}{issuer_path}
redis:
  url: "{redis_url}"
  key_prefix: "{prefix}"
signing:
  key_encryption_key: "{"A" * 43}"
tokens:
  refresh_reuse_grace: 2
{tokens}
registration:
{registration}
  static_clients:
    - client_id: notes-server
      client_name: Notes MCP server
      client_secret: "{INTROSPECTOR_SECRET}"
      redirect_uris: ["https://notes.example.com/unused"]
      application_type: web
      introspection_resources: [notes]
providers:
  - id: demo-ldap
    type: ldap
    display_name: Demo directory
    urls: ["{slapd.url}"]
    bind_dn: "{slapd.service_dn}"
    bind_password: "{slapd.service_password}"
    user_base_dn: ou=people,dc=demo,dc=local
    group_base_dn: ou=groups,dc=demo,dc=local
{providers}
resources:
  - id: notes
    uri: {resource}
    name: Team notes
    scopes:
      - name: notes:read
        description: Read notes
      - name: notes:write
        description: Write notes
        implies: [notes:read]
  - id: other
    uri: http://127.0.0.1:8002/mcp
    name: Other server
    scopes:
      - name: other:use
        description: Use it
mappings:
  - id: readers-read
    resource: notes
    provider: demo-ldap
    groups: [mcp-readers]
    scopes: [notes:read]
  - id: writers-write
    resource: notes
    provider: demo-ldap
    groups: [mcp-writers]
    scopes: [notes:write]
  - id: readers-other
    resource: other
    provider: demo-ldap
    groups: [mcp-readers]
    scopes: [other:use]
{mappings}
{extra}
"""


def fresh_broker_yaml(redis_url: str, slapd: Slapd, **options: str) -> tuple[int, str]:
    """A free port and ``broker_yaml`` for it under a fresh key prefix; ``options`` as there."""
    port = free_port()
    return port, broker_yaml(port, redis_url, slapd, prefix=f"t{secrets.token_hex(6)}", **options)


def notes_server_delegates(text: str) -> str:
    """``text`` (from ``broker_yaml``) with its introspecting client ``notes-server`` also the MCP
    server ``notes`` that delegation rules name."""
    return text.replace(
        "      introspection_resources: [notes]\n",
        "      introspection_resources: [notes]\n      mcp_server: notes\n",
        1,
    )


@dataclass
class Broker:
    base: str
    config: BrokerConfig

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, follow_redirects=False, timeout=10)


def hidden_inputs(html: str) -> dict[str, str]:
    return {
        m.group(1): unescape(m.group(2))
        for m in re.finditer(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', html)
    }


def register(broker: Broker, redirect_uri: str = REDIRECT, **metadata: Any) -> dict[str, Any]:
    body = {
        "redirect_uris": [redirect_uri],
        "client_name": "Test MCP client",
        "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code", "refresh_token"],
        "application_type": "native",
        **metadata,
    }
    response = httpx.post(f"{broker.base}/register", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    return verifier, s256(verifier)


@dataclass
class Authorization:
    code: str
    verifier: str
    state: str
    redirect: str
    params: dict[str, str]


def authorize_params(client_id: str, challenge: str, **over: str | None) -> dict[str, str]:
    params: dict[str, str | None] = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "resource": RESOURCE,
        "state": "state-" + secrets.token_hex(4),
    }
    params.update(over)
    return {k: v for k, v in params.items() if v is not None}


def approve(browser: httpx.Client, consent: httpx.Response) -> dict[str, str]:
    """Approve on the consent page and open the login form: its hidden fields."""
    approved = browser.post("/consent", data={**hidden_inputs(consent.text), "decision": "approve"})
    assert approved.status_code == 303, approved.text
    login_page = browser.get(approved.headers["location"])
    assert login_page.status_code == 200, login_page.text
    return hidden_inputs(login_page.text)


def login_form(browser: httpx.Client, client_id: str) -> dict[str, str]:
    """A fresh authorization request, approved: the login form's hidden fields."""
    _, challenge = pkce_pair()
    return approve(browser, browser.get("/authorize", params=authorize_params(client_id, challenge)))


def sign_in_attempt(
    broker: Broker, client_id: str, username: str, password: str, source: str = "127.0.0.1"
) -> httpx.Response:
    """One password sign-in from a fresh browser whose connections come from the loopback address
    ``source`` (any of 127.0.0.0/8), so tests can sign in from several client addresses: the answer."""
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(base_url=broker.base, follow_redirects=False, timeout=10, transport=transport) as browser:
        fields = login_form(browser, client_id)
        return browser.post("/login", data={**fields, "username": username, "password": password})


def login(
    broker: Broker,
    client_id: str,
    username: str = "alice",
    password: str | None = None,
    **over: str | None,
) -> Authorization:
    """authorize → consent (approve) → login form → redirect with a code."""
    verifier, challenge = pkce_pair()
    params = authorize_params(client_id, challenge, **over)
    with broker.client() as browser:
        consent = browser.get("/authorize", params=params)
        assert consent.status_code == 200, consent.text
        fields = approve(browser, consent)
        done = browser.post("/login", data={**fields, "username": username, "password": password or f"demo-{username}"})
        assert done.status_code == 303, done.text
    location = done.headers["location"]
    query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    assert "code" in query, location
    return Authorization(query["code"], verifier, params.get("state", ""), location, query)


def exchange(broker: Broker, client_id: str, auth: Authorization, **over: str | None) -> httpx.Response:
    data: dict[str, str | None] = {
        "grant_type": "authorization_code",
        "code": auth.code,
        "redirect_uri": REDIRECT,
        "code_verifier": auth.verifier,
        "client_id": client_id,
        "resource": RESOURCE,
    }
    data.update(over)
    return httpx.post(f"{broker.base}/token", data={k: v for k, v in data.items() if v is not None})


def refresh(broker: Broker, client_id: str, token: str, **over: str | None) -> httpx.Response:
    data: dict[str, str | None] = {"grant_type": "refresh_token", "refresh_token": token, "client_id": client_id}
    data.update(over)
    return httpx.post(f"{broker.base}/token", data={k: v for k, v in data.items() if v is not None})


def tokens_for(broker: Broker, username: str = "alice", **over: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    client = register(broker)
    auth = login(broker, client["client_id"], username, **over)
    response = exchange(broker, client["client_id"], auth, resource=over.get("resource", RESOURCE))
    assert response.status_code == 200, response.text
    return client, response.json()
