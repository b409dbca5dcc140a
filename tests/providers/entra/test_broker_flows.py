"""Sign-in with Microsoft Entra ID through the real broker: the browser goes authorize ->
consent -> the Entra emulator -> the broker's callback -> the client's redirect; the client
exchanges the code and refreshes. Group changes made in the emulator show at refresh."""

from __future__ import annotations

import base64
import json
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.broker.conftest import BrokerFactory
from tests.broker.flows import (
    Authorization,
    Broker,
    authorize_params,
    exchange,
    hidden_inputs,
    pkce_pair,
    refresh,
    register,
)
from tests.emulators.entra import CLIENT_ID, CLIENT_SECRET, READERS, TENANT, WRITERS, EntraEmulator

pytestmark = pytest.mark.filterwarnings("ignore:response_mode='form_post' is recommended:UserWarning")

MAPPINGS = f"""
  - id: entra-readers
    resource: notes
    provider: entra
    groups: ["{READERS}"]
    scopes: [notes:read]
  - id: entra-writers
    resource: notes
    provider: entra
    groups: ["{WRITERS}"]
    scopes: [notes:write]
"""


def provider_yaml(entra: EntraEmulator, extra: str = "", timeout: float = 5) -> str:
    return f"""
  - id: entra
    type: entra
    display_name: Contoso (Microsoft Entra ID)
    tenant_id: "{TENANT}"
    client_id: "{CLIENT_ID}"
    client_secret: "{CLIENT_SECRET}"
    authority_host: "{entra.base}"
    graph_url: "{entra.base}"
    ca_file: "{entra.ca_file}"
    timeout: {timeout}
{extra}"""


@contextmanager
def entra_broker(
    broker_factory: BrokerFactory,
    entra: EntraEmulator,
    extra: str = "",
    mappings: str = MAPPINGS,
    timeout: float = 5,
) -> Iterator[Broker]:
    with broker_factory(providers=provider_yaml(entra, extra, timeout), mappings=mappings) as broker:
        entra.allow_redirect(f"{broker.base}/callback/entra")
        yield broker


@dataclass
class Browser:
    """One browser session from the consent page to the broker's callback."""

    broker: Broker
    entra: EntraEmulator
    http: httpx.Client
    verifier: str = ""
    params: dict[str, str] | None = None

    def to_entra(self, client_id: str) -> str:
        """authorize -> consent (choose Entra, approve) -> the Entra authorize URL."""
        self.verifier, challenge = pkce_pair()
        self.params = authorize_params(client_id, challenge)
        consent = self.http.get(f"{self.broker.base}/authorize", params=self.params)
        assert consent.status_code == 200, consent.text
        assert self.entra.base in consent.headers["content-security-policy"]  # form-action allows Entra
        form = {**hidden_inputs(consent.text), "provider": "entra", "decision": "approve"}
        approved = self.http.post(f"{self.broker.base}/consent", data=form)
        assert approved.status_code == 303, approved.text
        location = approved.headers["location"]
        assert location.startswith(f"{self.entra.base}/{TENANT}/oauth2/v2.0/authorize?")
        return location

    def at_entra(self, url: str, user: str) -> str:
        """Entra signs ``user`` in and sends the browser back: the broker callback URL."""
        self.entra.next_user = user
        answer = self.http.get(url)
        assert answer.status_code == 302, answer.text
        callback = answer.headers["location"]
        assert callback.startswith(f"{self.broker.base}/callback/entra?")
        return callback

    def callback(self, url: str) -> httpx.Response:
        return self.http.get(url)

    def authorization(self, done: httpx.Response) -> Authorization:
        assert done.status_code == 303, done.text
        query = {k: v[0] for k, v in parse_qs(urlsplit(done.headers["location"]).query).items()}
        assert "code" in query, done.headers["location"]
        assert self.params is not None
        return Authorization(query["code"], self.verifier, self.params["state"], done.headers["location"], query)


@contextmanager
def browser(broker: Broker, entra: EntraEmulator) -> Iterator[Browser]:
    assert entra.ca_file is not None
    verify = ssl.create_default_context(cafile=entra.ca_file)
    with httpx.Client(verify=verify, follow_redirects=False, timeout=10) as http:
        yield Browser(broker, entra, http)


def sign_in(broker: Broker, entra: EntraEmulator, client_id: str, user: str) -> Authorization:
    with browser(broker, entra) as b:
        return b.authorization(b.callback(b.at_entra(b.to_entra(client_id), user)))


def tokens(broker: Broker, entra: EntraEmulator, user: str) -> tuple[str, dict[str, Any]]:
    client_id = register(broker)["client_id"]
    auth = sign_in(broker, entra, client_id, user)
    response = exchange(broker, client_id, auth)
    assert response.status_code == 200, response.text
    return client_id, response.json()


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def test_sign_in_exchange_and_refresh_follow_group_changes(broker_factory: BrokerFactory, entra: EntraEmulator) -> None:
    with entra_broker(broker_factory, entra) as broker:
        client_id, body = tokens(broker, entra, "alice")
        assert body["scope"] == "notes:read notes:write"
        alice = entra.user("alice")
        assert claims(body["access_token"])["sub"] == f"entra:{TENANT}:{alice.oid}"

        alice.groups.discard(WRITERS)  # an admin removes alice from mcp-writers
        narrowed = refresh(broker, client_id, body["refresh_token"])
        assert narrowed.status_code == 200, narrowed.text
        assert narrowed.json()["scope"] == "notes:read"

        alice.groups.clear()
        gone = refresh(broker, client_id, narrowed.json()["refresh_token"])
        assert gone.status_code == 400
        assert gone.json()["error"] == "invalid_grant"


def test_user_in_250_groups_gets_a_normal_sized_token(broker_factory: BrokerFactory, entra: EntraEmulator) -> None:
    with entra_broker(broker_factory, entra) as broker:
        _, body = tokens(broker, entra, "carol")
    assert body["scope"] == "notes:read"
    assert len(body["access_token"]) < 1500
    assert "groups" not in claims(body["access_token"])
    assert "GET /v1.0/me/transitiveMemberOf" in entra.calls  # the overage went to Graph


def test_graph_failure_on_overage_is_a_clear_error_page(broker_factory: BrokerFactory, entra: EntraEmulator) -> None:
    entra.graph_status = 500
    with entra_broker(broker_factory, entra) as broker, browser(broker, entra) as b:
        client_id = register(broker)["client_id"]
        page = b.callback(b.at_entra(b.to_entra(client_id), "carol"))
    assert page.status_code == 502
    assert "temporarily unavailable" in page.text
    assert "Sign-in failed" in page.text


def test_expired_authorization_code(broker_factory: BrokerFactory, entra: EntraEmulator) -> None:
    with entra_broker(broker_factory, entra) as broker, browser(broker, entra) as b:
        client_id = register(broker)["client_id"]
        callback = b.at_entra(b.to_entra(client_id), "alice")
        entra.expire_codes()
        page = b.callback(callback)
    assert page.status_code == 400
    assert "took too long" in page.text


@pytest.mark.parametrize(
    "tampering",
    ["bad-signature", "nonce", "wrong-tenant"],
)
def test_untrustworthy_id_tokens_are_refused(
    broker_factory: BrokerFactory, entra: EntraEmulator, tampering: str
) -> None:
    with entra_broker(broker_factory, entra) as broker, browser(broker, entra) as b:
        client_id = register(broker)["client_id"]
        if tampering == "wrong-tenant":
            entra.issue_as_tenant = "1d2e3f40-5a6b-4c7d-8e9f-a0b1c2d3e4f5"
        else:
            entra.next_id_token = tampering
        page = b.callback(b.at_entra(b.to_entra(client_id), "alice"))
    assert page.status_code == 400
    assert "could not be accepted" in page.text


def test_replayed_or_altered_callback_is_refused(broker_factory: BrokerFactory, entra: EntraEmulator) -> None:
    with entra_broker(broker_factory, entra) as broker, browser(broker, entra) as b:
        client_id = register(broker)["client_id"]
        callback = b.at_entra(b.to_entra(client_id), "alice")
        altered = callback.replace("state=", "state=x")
        refused = b.callback(altered)
        assert refused.status_code == 400
        assert "Sign-in expired" in refused.text
        b.authorization(b.callback(callback))  # the genuine one still works once
        replayed = b.callback(callback)
        assert replayed.status_code == 400
        assert "Sign-in expired" in replayed.text
    assert entra.calls.count(f"POST /{TENANT}/oauth2/v2.0/token") == 1


def test_callback_without_the_flow_cookie_is_refused(broker_factory: BrokerFactory, entra: EntraEmulator) -> None:
    with entra_broker(broker_factory, entra) as broker, browser(broker, entra) as b:
        client_id = register(broker)["client_id"]
        callback = b.at_entra(b.to_entra(client_id), "alice")
        b.http.cookies.clear()  # another browser presents the callback
        page = b.callback(callback)
    assert page.status_code == 400
    assert "Sign-in expired" in page.text


def test_user_declines_at_entra(broker_factory: BrokerFactory, entra: EntraEmulator) -> None:
    entra.deny_next = True
    with entra_broker(broker_factory, entra) as broker, browser(broker, entra) as b:
        client_id = register(broker)["client_id"]
        page = b.callback(b.at_entra(b.to_entra(client_id), "alice"))
    assert page.status_code == 400
    assert "did not complete the sign-in" in page.text


def test_token_endpoint_failure_then_immediate_success(broker_factory: BrokerFactory, entra: EntraEmulator) -> None:
    with entra_broker(broker_factory, entra) as broker:
        entra.fail_next_token = (500, {"error": "server_error"})
        with browser(broker, entra) as b:
            client_id = register(broker)["client_id"]
            page = b.callback(b.at_entra(b.to_entra(client_id), "alice"))
        assert page.status_code == 502
        _, body = tokens(broker, entra, "alice")  # no minute of MSAL throttling
        assert body["scope"] == "notes:read notes:write"


def test_refresh_of_disabled_or_deleted_user_revokes_the_grant(
    broker_factory: BrokerFactory, entra: EntraEmulator
) -> None:
    with entra_broker(broker_factory, entra) as broker:
        alice_client, alice = tokens(broker, entra, "alice")
        bob_client, bob = tokens(broker, entra, "bob")
        entra.user("alice").enabled = False
        entra.remove_user("bob")
        for client_id, body in ((alice_client, alice), (bob_client, bob)):
            refused = refresh(broker, client_id, body["refresh_token"])
            assert refused.status_code == 400
            assert refused.json()["error"] == "invalid_grant"


def test_graph_down_at_refresh_is_temporary(broker_factory: BrokerFactory, entra: EntraEmulator) -> None:
    with entra_broker(broker_factory, entra) as broker:
        client_id, body = tokens(broker, entra, "alice")
        entra.graph_status = 503
        down = refresh(broker, client_id, body["refresh_token"])
        assert down.status_code == 503
        assert down.json()["error"] == "temporarily_unavailable"
        entra.graph_status = None
        again = refresh(broker, client_id, body["refresh_token"])  # the same token still works
        assert again.status_code == 200, again.text
        assert again.json()["scope"] == "notes:read notes:write"


def test_mappings_by_group_name_and_app_role(broker_factory: BrokerFactory, entra: EntraEmulator) -> None:
    mappings = """
  - id: entra-readers-by-name
    resource: notes
    provider: entra
    groups: [mcp-readers]
    scopes: [notes:read]
  - id: entra-admins-by-role
    resource: notes
    provider: entra
    groups: ["role:Notes.Admin"]
    scopes: [notes:write]
"""
    extra = "    resolve_group_names: true\n    graph_scopes: [GroupMember.Read.All]\n"
    with entra_broker(broker_factory, entra, extra=extra, mappings=mappings) as broker:
        _, alice = tokens(broker, entra, "alice")
        _, bob = tokens(broker, entra, "bob")
    assert alice["scope"] == "notes:read notes:write"
    assert bob["scope"] == "notes:read"


def test_entra_unreachable_at_consent_is_a_clear_error_page(
    broker_factory: BrokerFactory, entra: EntraEmulator
) -> None:
    with entra_broker(broker_factory, entra) as broker, browser(broker, entra) as b:
        client_id = register(broker)["client_id"]
        _, challenge = pkce_pair()
        consent = b.http.get(f"{broker.base}/authorize", params=authorize_params(client_id, challenge))
        lost = entra.tenant_names.pop(TENANT)  # discovery of the tenant now fails
        form = {**hidden_inputs(consent.text), "provider": "entra", "decision": "approve"}
        page = b.http.post(f"{broker.base}/consent", data=form)
        entra.tenant_names[TENANT] = lost
        assert page.status_code == 503
        assert "temporarily unavailable" in page.text
        _, body = tokens(broker, entra, "bob")  # the next sign-in builds MSAL's app and works
        assert body["scope"] == "notes:read"


# -- a tarpit upstream (issue 10 §1) -------------------------------------------------------------
DEADLINE = 2
MARGIN = 1.5  # a shared, slow test machine


def test_a_tarpit_token_endpoint_gets_the_try_again_page_within_the_deadline(
    broker_factory: BrokerFactory, entra: EntraEmulator
) -> None:
    with entra_broker(broker_factory, entra, timeout=DEADLINE) as broker, browser(broker, entra) as b:
        client_id = register(broker)["client_id"]
        back = b.at_entra(b.to_entra(client_id), "alice")
        entra.stall["token"] = "drip"  # Entra accepts the code and answers a byte every half second
        started = time.monotonic()
        page = b.callback(back)  # the browser gives up after 10 s
        elapsed = time.monotonic() - started
    assert page.status_code == 502
    assert "temporarily unavailable" in page.text
    assert elapsed < DEADLINE + MARGIN


def test_a_tarpit_graph_at_refresh_is_temporary_within_the_deadline(
    broker_factory: BrokerFactory, entra: EntraEmulator
) -> None:
    with entra_broker(broker_factory, entra, timeout=DEADLINE) as broker:
        client_id, body = tokens(broker, entra, "alice")
        entra.stall["graph"] = "drip"
        started = time.monotonic()
        down = refresh(broker, client_id, body["refresh_token"])
        elapsed = time.monotonic() - started
        entra.stall.clear()
        again = refresh(broker, client_id, body["refresh_token"])  # the same token still works
    assert down.status_code == 503
    assert down.json()["error"] == "temporarily_unavailable"
    assert elapsed < DEADLINE + MARGIN
    assert again.status_code == 200, again.text
