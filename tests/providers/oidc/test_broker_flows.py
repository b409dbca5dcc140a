"""Whole flows through the real broker with the OIDC provider against the real test OP: the MCP
client's authorization request, consent, the OP's login and consent pages, the broker's
callback, the token exchange and refreshes, and what the user sees when something fails."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from html import unescape
from typing import Any

import httpx

from broker.devstack import free_port
from providers.oidc.discovery import WELL_KNOWN
from tests.broker.conftest import BrokerFactory
from tests.broker.flows import (
    REDIRECT,
    Authorization,
    Broker,
    authorize_params,
    exchange,
    hidden_inputs,
    pkce_pair,
    refresh,
    register,
)
from tests.providers.oidc.op import TestOP, query_of, sign_in
from tests.providers.tarpit import Tarpit, oidc_discovery

PROVIDER = "test-oidc"
MAPPINGS = f"""
  - id: oidc-readers
    resource: notes
    provider: {PROVIDER}
    groups: [mcp-readers]
    scopes: [notes:read]
  - id: oidc-writers
    resource: notes
    provider: {PROVIDER}
    groups: [mcp-writers]
    scopes: [notes:write]
"""


@dataclass
class OidcBroker:
    broker: Broker
    op: TestOP
    issuer: str  # the provider's configured issuer (the test OP's, unless a test points elsewhere)

    @property
    def callback(self) -> str:
        return f"{self.broker.base}/callback/{PROVIDER}"


@contextmanager
def oidc_broker(
    broker_factory: BrokerFactory,
    op: TestOP,
    *,
    upstream_refresh: bool = False,
    issuer: str | None = None,
    http_timeout: float = 5,
) -> Iterator[OidcBroker]:
    """A broker whose ``test-oidc`` provider is a fresh confidential client of the test OP."""
    issuer = issuer or op.issuer
    client_id, secret = f"broker-{secrets.token_hex(4)}", secrets.token_urlsafe(24)
    scopes = (
        "[openid, profile, email, groups, offline_access]" if upstream_refresh else "[openid, profile, email, groups]"
    )
    extra = "\n    use_upstream_refresh: true\n    authorize_params: {prompt: consent}" if upstream_refresh else ""
    providers = f"""
  - id: {PROVIDER}
    type: oidc
    display_name: Test OP
    issuer: "{issuer}"
    client_id: "{client_id}"
    client_secret: "{secret}"
    scopes: {scopes}
    groups_claim: groups
    http_timeout: {http_timeout}{extra}
"""
    with broker_factory(providers=providers, mappings=MAPPINGS) as broker:
        running = OidcBroker(broker, op, issuer)
        op.put_client(client_id, client_secret=secret, redirect_uris=[running.callback])
        yield running


def start(setup: OidcBroker, browser: httpx.Client) -> tuple[httpx.Response, dict[str, str], str]:
    """An MCP client's authorization request and the user's approval, choosing the OIDC provider."""
    client = register(setup.broker)
    verifier, challenge = pkce_pair()
    params = authorize_params(client["client_id"], challenge)
    consent = browser.get("/authorize", params=params)
    assert consent.status_code == 200, consent.text
    assert "Test OP" in consent.text
    assert setup.issuer in consent.headers["content-security-policy"]  # form-action may go upstream
    approved = browser.post(
        "/consent", data={**hidden_inputs(consent.text), "decision": "approve", "provider": PROVIDER}
    )
    return approved, {**params, "client_id": client["client_id"]}, verifier


def sign_in_through_broker(setup: OidcBroker, username: str) -> tuple[httpx.Response, dict[str, str], str]:
    """authorize → consent → the OP (login, consent) → the broker's callback; its response."""
    with setup.broker.client() as browser:
        approved, params, verifier = start(setup, browser)
        assert approved.status_code == 303, approved.text
        assert approved.headers["location"].startswith(f"{setup.op.issuer}/auth?")
        back = sign_in(browser, approved.headers["location"], until=setup.callback, username=username)
        done = browser.get(back)  # carries the broker's flow cookie, as the browser would
    return done, params, verifier


def tokens_for(setup: OidcBroker, username: str) -> tuple[str, dict[str, Any]]:
    done, params, verifier = sign_in_through_broker(setup, username)
    assert done.status_code == 303, done.text
    location = done.headers["location"]
    assert location.startswith(REDIRECT)
    query = query_of(location)
    assert query["state"] == params["state"]
    assert query["iss"] == setup.broker.base
    auth = Authorization(query["code"], verifier, params["state"], location, query)
    response = exchange(setup.broker, params["client_id"], auth)
    assert response.status_code == 200, response.text
    return params["client_id"], response.json()


# -- sign-in and scopes -----------------------------------------------------------------------
def test_scopes_follow_the_groups_at_the_op(broker_factory: BrokerFactory, op: TestOP) -> None:
    with oidc_broker(broker_factory, op) as setup:
        assert tokens_for(setup, "alice")[1]["scope"] == "notes:read notes:write"
        _, bob = tokens_for(setup, "bob")
        assert bob["scope"] == "notes:read"
        assert "refresh_token" in bob


def test_a_user_without_groups_sees_the_no_access_page(broker_factory: BrokerFactory, op: TestOP) -> None:
    with oidc_broker(broker_factory, op) as setup:
        done, _, _ = sign_in_through_broker(setup, "carol")
    assert done.status_code == 403
    assert "You have no access to Team notes" in done.text
    assert "carol" in done.text
    assert "mcp-readers" in done.text  # the groups that would help
    return_url = unescape(done.text.split('href="')[-1].split('"')[0])
    assert return_url.startswith(REDIRECT)
    assert query_of(return_url)["error"] == "access_denied"


# -- upstream refresh -----------------------------------------------------------------------------
def test_upstream_refresh_sees_group_changes_at_the_op(broker_factory: BrokerFactory, op: TestOP) -> None:
    with oidc_broker(broker_factory, op, upstream_refresh=True) as setup:
        alice_client, alice = tokens_for(setup, "alice")
        bob_client, bob = tokens_for(setup, "bob")
        op.set_groups("alice", ["mcp-readers"])  # no longer a writer
        narrowed = refresh(setup.broker, alice_client, alice["refresh_token"])
        assert narrowed.status_code == 200, narrowed.text
        assert narrowed.json()["scope"] == "notes:read"

        op.set_groups("bob", [])  # no group left: the grant ends
        refused = refresh(setup.broker, bob_client, bob["refresh_token"])
        assert refused.status_code == 400
        assert refused.json()["error"] == "invalid_grant"


def test_without_upstream_refresh_the_stored_groups_are_used(broker_factory: BrokerFactory, op: TestOP) -> None:
    with oidc_broker(broker_factory, op) as setup:
        client_id, bob = tokens_for(setup, "bob")
        before = op.hits("/token")
        op.set_groups("bob", [])
        again = refresh(setup.broker, client_id, bob["refresh_token"])
        assert again.status_code == 200, again.text
        assert again.json()["scope"] == "notes:read"
        assert op.hits("/token") == before  # the OP was not asked


def test_a_user_deleted_at_the_op_loses_the_grant(broker_factory: BrokerFactory, op: TestOP) -> None:
    with oidc_broker(broker_factory, op, upstream_refresh=True) as setup:
        client_id, bob = tokens_for(setup, "bob")
        op.delete_user("bob")
        refused = refresh(setup.broker, client_id, bob["refresh_token"])
        assert refused.status_code == 400
        assert refused.json()["error"] == "invalid_grant"


def test_refresh_while_the_op_is_down_keeps_the_grant(broker_factory: BrokerFactory, op: TestOP) -> None:
    with oidc_broker(broker_factory, op, upstream_refresh=True) as setup:
        client_id, bob = tokens_for(setup, "bob")
        op.outage(503, ["/token"])
        down = refresh(setup.broker, client_id, bob["refresh_token"])
        assert down.status_code == 503
        assert down.json()["error"] == "temporarily_unavailable"
        op.outage(0)
        back = refresh(setup.broker, client_id, bob["refresh_token"])
        assert back.status_code == 200, back.text
        assert back.json()["scope"] == "notes:read"


# -- failures the user sees -------------------------------------------------------------------------
def test_op_down_at_sign_in_shows_a_clear_page(broker_factory: BrokerFactory, op: TestOP) -> None:
    with (
        oidc_broker(broker_factory, op, issuer=f"http://127.0.0.1:{free_port()}") as setup,
        setup.broker.client() as browser,
    ):
        approved, _, _ = start(setup, browser)
    assert approved.status_code == 503
    assert "Sign-in unavailable" in approved.text
    assert "temporarily unavailable" in approved.text
    assert "Traceback" not in approved.text


def test_the_user_cancelling_at_the_op_gets_a_way_back(broker_factory: BrokerFactory, op: TestOP) -> None:
    with oidc_broker(broker_factory, op) as setup, setup.broker.client() as browser:
        approved, params, _ = start(setup, browser)
        back = sign_in(browser, approved.headers["location"], until=setup.callback, cancel=True)
        assert query_of(back)["error"] == "access_denied"
        page = browser.get(back)
    assert page.status_code == 400
    assert "Sign-in was not completed" in page.text
    return_url = unescape(page.text.split('href="')[-1].split('"')[0])
    assert query_of(return_url)["error"] == "access_denied"
    assert query_of(return_url)["state"] == params["state"]


def test_cancelling_at_the_op_offers_no_way_back_to_an_unvouched_address(
    broker_factory: BrokerFactory, op: TestOP
) -> None:
    """Not signed in, and nobody vouches for a dynamically registered https redirect URI: the
    page links nowhere (RFC 9700 §4.11.2), as a denial at consent does."""
    landing = "https://app.example.com/landing"
    with oidc_broker(broker_factory, op) as setup, setup.broker.client() as browser:
        client = register(setup.broker, redirect_uri=landing, application_type="web")
        _, challenge = pkce_pair()
        consent = browser.get(
            "/authorize", params=authorize_params(client["client_id"], challenge, redirect_uri=landing)
        )
        assert consent.status_code == 200, consent.text
        approved = browser.post(
            "/consent", data={**hidden_inputs(consent.text), "decision": "approve", "provider": PROVIDER}
        )
        back = sign_in(browser, approved.headers["location"], until=setup.callback, cancel=True)
        page = browser.get(back)
    assert page.status_code == 400
    assert "Sign-in was not completed" in page.text
    assert "app.example.com" not in page.text
    assert "button secondary" not in page.text  # no link back


def test_a_forged_id_token_is_refused_with_a_page(broker_factory: BrokerFactory, op: TestOP) -> None:
    with oidc_broker(broker_factory, op) as setup:
        op.tamper("wrong_audience")
        done, _, _ = sign_in_through_broker(setup, "alice")
    assert done.status_code == 400
    assert "Sign-in failed" in done.text
    assert "could not be accepted" in done.text


def test_token_endpoint_failing_at_callback_shows_a_page(broker_factory: BrokerFactory, op: TestOP) -> None:
    with oidc_broker(broker_factory, op) as setup, setup.broker.client() as browser:
        approved, _, _ = start(setup, browser)
        back = sign_in(browser, approved.headers["location"], until=setup.callback, username="alice")
        op.outage(500, ["/token"])
        page = browser.get(back)
    assert page.status_code == 502
    assert "temporarily unavailable" in page.text


def test_a_callback_cannot_be_replayed(broker_factory: BrokerFactory, op: TestOP) -> None:
    with oidc_broker(broker_factory, op) as setup, setup.broker.client() as browser:
        approved, _, _ = start(setup, browser)
        back = sign_in(browser, approved.headers["location"], until=setup.callback, username="alice")
        assert browser.get(back).status_code == 303
        replay = browser.get(back)
    assert replay.status_code == 400
    assert "Sign-in expired" in replay.text


def test_refreshes_keep_working_when_the_op_rotates_its_refresh_tokens(
    broker_factory: BrokerFactory, op: TestOP
) -> None:
    with oidc_broker(broker_factory, op, upstream_refresh=True) as setup:
        client_id, alice = tokens_for(setup, "alice")
        op.rotate_refresh_tokens(True)
        token = alice["refresh_token"]
        for _ in range(3):  # each broker refresh spends and stores a new upstream refresh token
            answer = refresh(setup.broker, client_id, token)
            assert answer.status_code == 200, answer.text
            token = answer.json()["refresh_token"]


async def test_concurrent_refreshes_ask_the_op_once(broker_factory: BrokerFactory, op: TestOP) -> None:
    import asyncio

    with oidc_broker(broker_factory, op, upstream_refresh=True) as setup:
        client_id, alice = tokens_for(setup, "alice")
        op.rotate_refresh_tokens(True)
        before = op.hits("/token")
        data = {"grant_type": "refresh_token", "refresh_token": alice["refresh_token"], "client_id": client_id}
        async with httpx.AsyncClient(base_url=setup.broker.base, timeout=30) as http:
            answers = await asyncio.gather(*(http.post("/token", data=data) for _ in range(10)))
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        assert len({a.json()["refresh_token"] for a in answers}) == 1
        assert op.hits("/token") - before == 1


def test_discovery_is_read_at_start_not_at_the_first_sign_in(broker_factory: BrokerFactory, op: TestOP) -> None:
    # So the very first consent page's CSP form-action already names the authorization endpoint.
    before = op.hits("/.well-known/openid-configuration")
    with oidc_broker(broker_factory, op):
        deadline = time.monotonic() + 15
        while op.hits("/.well-known/openid-configuration") == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert op.hits("/.well-known/openid-configuration") > before


def test_a_tarpit_token_endpoint_gets_the_try_again_page_within_the_deadline(
    broker_factory: BrokerFactory, op: TestOP
) -> None:
    deadline, margin = 2, 1.5  # margin: a shared, slow test machine
    pit = Tarpit("drip")  # the OP answers discovery, then dribbles a byte every half second
    with pit.serve() as base:
        pit.documents[WELL_KNOWN] = oidc_discovery(base)
        with (
            oidc_broker(broker_factory, op, issuer=base, http_timeout=deadline) as setup,
            setup.broker.client() as browser,
        ):
            approved, _, _ = start(setup, browser)
            assert approved.status_code == 303, approved.text
            upstream = query_of(approved.headers["location"])
            started = time.monotonic()
            page = browser.get(setup.callback, params={"code": "c", "state": upstream["state"]})  # gives up at 10 s
            elapsed = time.monotonic() - started
    assert page.status_code == 502
    assert "temporarily unavailable" in page.text
    assert elapsed < deadline + margin
    assert "POST /token" in pit.requests
