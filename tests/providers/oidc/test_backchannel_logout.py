"""OpenID Connect Back-Channel Logout 1.0 end to end: the real test OP (node-oidc-provider) sends
its own logout token to the broker's ``/backchannel-logout/{provider_id}`` when the user signs out
there, and the user's access token is refused by the verifier (the library mcp_app runs) at once.
Tokens the OP did not sign, or that are malformed, get 400 and change nothing."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from html import unescape
from typing import Any

import httpx
from jose import jwt

from broker.devstack import RedisServer
from providers.oidc.config import OidcProviderConfig
from tests.broker.conftest import BrokerFactory
from tests.broker.flows import REDIRECT, Authorization, exchange, refresh
from tests.broker.revocations import refused_within, verifier_for
from tests.providers.oidc.op import TestOP, query_of, sign_in
from tests.providers.oidc.test_broker_flows import PROVIDER, OidcBroker, oidc_broker, start

ADMIN_TOKEN = "admin-" + "s" * 40
REFUSAL_BOUND = 3.0  # seconds; the refusal takes ~10 ms, the bound is for a loaded CI machine


def oidc_settings(setup: OidcBroker) -> OidcProviderConfig:
    settings = next(p for p in setup.broker.config.providers if p.id == PROVIDER)
    assert isinstance(settings, OidcProviderConfig)
    return settings


@contextmanager
def logout_broker(broker_factory: BrokerFactory, op: TestOP, *, session_required: bool = True) -> Iterator[OidcBroker]:
    """A broker whose test-oidc client at the OP has the broker's back-channel logout URI."""

    def with_admin(**kw: Any) -> Any:
        return broker_factory(extra=f'admin:\n  token: "{ADMIN_TOKEN}"\n', **kw)

    with oidc_broker(with_admin, op) as setup:
        settings = oidc_settings(setup)
        assert settings.client_secret is not None
        op.put_client(
            settings.client_id,
            client_secret=settings.client_secret.get_secret_value(),
            redirect_uris=[setup.callback],
            backchannel_logout_uri=f"{setup.broker.base}/backchannel-logout/{PROVIDER}",
            backchannel_logout_session_required=session_required,
        )
        yield setup


def signed_in(setup: OidcBroker, browser: httpx.Client, username: str) -> dict[str, Any]:
    """authorize → consent → the OP → callback → token, keeping the OP's session in ``browser``."""
    approved, params, verifier = start(setup, browser)
    back = sign_in(browser, approved.headers["location"], until=setup.callback, username=username)
    done = browser.get(back)
    assert done.status_code == 303, done.text
    location = done.headers["location"]
    assert location.startswith(REDIRECT)
    query = query_of(location)
    response = exchange(
        setup.broker, params["client_id"], Authorization(query["code"], verifier, params["state"], location, query)
    )
    assert response.status_code == 200, response.text
    tokens: dict[str, Any] = response.json()
    return tokens


def log_out_at_op(browser: httpx.Client, op: TestOP) -> None:
    """The user signs out at the OP: its end_session endpoint, then the confirmation form."""
    page = browser.get(f"{op.issuer}/session/end")
    assert page.status_code == 200, page.text
    form = re.search(r'<form id="op.logoutForm" method="post" action="([^"]+)"', page.text)
    xsrf = re.search(r'name="xsrf" value="([^"]+)"', page.text)
    assert form is not None, page.text
    assert xsrf is not None, page.text
    done = browser.post(page.url.join(unescape(form.group(1))), data={"xsrf": xsrf.group(1), "logout": "yes"})
    assert done.status_code in (200, 302, 303), done.text


def signals(setup: OidcBroker) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{setup.broker.base}/admin/signals",
        params={"provider": PROVIDER},
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert response.status_code == 200, response.text
    records: list[dict[str, Any]] = response.json()
    return records


async def test_logging_out_at_the_op_ends_the_mcp_session(
    broker_factory: BrokerFactory, op: TestOP, redis_server: RedisServer
) -> None:
    with logout_broker(broker_factory, op) as setup, setup.broker.client() as browser:
        tokens = signed_in(setup, browser, "alice")
        with setup.broker.client() as other_browser:  # bob, in a session of his own at the OP
            bob = signed_in(setup, other_browser, "bob")
        async with verifier_for(setup.broker, redis_server) as verifier:
            assert await verifier.verify_token(tokens["access_token"]) is not None
            assert await verifier.verify_token(bob["access_token"]) is not None
            log_out_at_op(browser, op)  # the OP posts its logout token before it answers
            took = await refused_within(verifier, tokens["access_token"], REFUSAL_BOUND)
            assert await verifier.verify_token(bob["access_token"]) is not None  # another session
        print(f"refused {took * 1000:.1f} ms after the OP's logout returned")
        grant_id = jwt.get_unverified_claims(tokens["access_token"])["sid"]
        [record] = signals(setup)
        assert record["source"] == "backchannel_logout"
        assert record["effect"] == "revoke_session"
        assert record["revoked"] == [grant_id]
        assert record["subject"] == f"{PROVIDER}:alice"
        assert "sid" in record["detail"]
        assert refresh(setup.broker, _client_of(tokens), tokens["refresh_token"]).status_code == 400


async def test_a_logout_token_without_sid_ends_every_session_of_the_user(
    broker_factory: BrokerFactory, op: TestOP, redis_server: RedisServer
) -> None:
    with logout_broker(broker_factory, op, session_required=False) as setup, setup.broker.client() as browser:
        first = signed_in(setup, browser, "alice")
        with setup.broker.client() as elsewhere:  # alice again, in another OP session
            second = signed_in(setup, elsewhere, "alice")
        async with verifier_for(setup.broker, redis_server) as verifier:
            log_out_at_op(browser, op)
            await refused_within(verifier, first["access_token"], REFUSAL_BOUND)
            await refused_within(verifier, second["access_token"], REFUSAL_BOUND)
        [record] = signals(setup)
        assert record["effect"] == "revoke_user"
        assert len(record["revoked"]) == 2
        assert record["detail"] == {"sub": "alice"}


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_tokens_the_op_did_not_sign_are_refused_and_change_nothing(broker_factory: BrokerFactory, op: TestOP) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jose import jwk as jose_jwk

    with logout_broker(broker_factory, op) as setup, setup.broker.client() as browser:
        tokens = signed_in(setup, browser, "alice")
        kid = httpx.get(f"{op.issuer}/jwks").json()["keys"][0]["kid"]
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": op.issuer,
            "aud": oidc_settings(setup).client_id,
            "iat": now,
            "jti": "forged-1",
            "sub": "alice",
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
        }
        unsigned = f"{_b64({'alg': 'none', 'typ': 'logout+jwt'})}.{_b64(claims)}."
        from cryptography.hazmat.primitives import serialization

        stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = stranger.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        forged = jwt.encode(claims, jose_jwk.construct(pem, "RS256").to_dict(), algorithm="RS256", headers={"kid": kid})
        url = f"{setup.broker.base}/backchannel-logout/{PROVIDER}"
        for token in (unsigned, forged, "not-a-jwt", ""):
            answer = httpx.post(url, data={"logout_token": token})
            assert answer.status_code == 400, (token[:40], answer.text)
            assert answer.json()["error"] == "invalid_request"
            assert answer.headers["cache-control"] == "no-store"
        unknown = httpx.post(f"{setup.broker.base}/backchannel-logout/nobody", data={"logout_token": forged})
        assert unknown.status_code == 400
        not_a_form = httpx.post(url, json={"logout_token": forged})
        assert not_a_form.status_code == 400
        again = refresh(setup.broker, _client_of(tokens), tokens["refresh_token"])
        assert again.status_code == 200, again.text  # nothing was revoked
        assert signals(setup) == []


def _client_of(tokens: dict[str, Any]) -> str:
    client_id: str = jwt.get_unverified_claims(tokens["access_token"])["client_id"]
    return client_id
