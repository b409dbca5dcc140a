"""The OIDC provider against a real OpenID provider (node-oidc-provider on loopback): discovery,
the authorization request, the callback and its ID token checks, key rotation, upstream
refresh, RP-initiated logout, and how failures are reported."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from collections.abc import Mapping
from typing import Any

import httpx
import pytest

from broker.devstack import free_port
from providers.base import (
    Identity,
    InvalidCredentials,
    RedirectProvider,
    RefreshProvider,
    UpstreamRejected,
    UpstreamUnavailable,
)
from providers.oidc.provider import OidcProvider, RefreshingOidcProvider
from providers.registry import open_provider
from tests.providers.oidc.conftest import (
    CALLBACK,
    LOGGED_OUT,
    REFRESHING,
    ProviderFactory,
    RegisteredClient,
    oidc_config,
)
from tests.providers.oidc.op import FakeClock, TestOP, query_of, sign_in


def browser() -> httpx.Client:
    return httpx.Client(follow_redirects=False, timeout=10)


async def authorize(
    provider: OidcProvider, username: str = "alice", *, cancel: bool = False
) -> tuple[dict[str, str], Mapping[str, Any]]:
    """login_url, then the user at the OP; the callback's parameters and the flow data."""
    url, flow = await provider.login_url(CALLBACK, secrets.token_urlsafe(24))
    with browser() as user_agent:
        location = sign_in(user_agent, url, until=CALLBACK, username=username, cancel=cancel)
    return query_of(location), flow


async def login(provider: OidcProvider, username: str = "alice") -> Identity:
    params, flow = await authorize(provider, username)
    return await provider.handle_callback(CALLBACK, params, flow)


def refreshing(make_provider: ProviderFactory) -> RefreshingOidcProvider:
    provider = make_provider(**REFRESHING)
    assert isinstance(provider, RefreshingOidcProvider)
    return provider


def claims_of(id_token: str) -> dict[str, Any]:
    payload = id_token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


def header_of(id_token: str) -> dict[str, Any]:
    head = id_token.split(".")[0]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    return decoded


# -- capabilities and discovery -------------------------------------------------------------
def test_refresh_is_a_capability_only_with_upstream_refresh(op: TestOP, rp: RegisteredClient) -> None:
    plain = OidcProvider(oidc_config(op, rp))
    with_refresh = OidcProvider(oidc_config(op, rp, **REFRESHING))
    assert type(plain) is OidcProvider
    assert isinstance(plain, RedirectProvider)
    assert not isinstance(plain, RefreshProvider)
    assert isinstance(with_refresh, RefreshingOidcProvider)
    assert isinstance(with_refresh, RedirectProvider)
    assert isinstance(with_refresh, RefreshProvider)
    assert isinstance(open_provider(oidc_config(op, rp, **REFRESHING)), RefreshProvider)
    assert not isinstance(open_provider(oidc_config(op, rp)), RefreshProvider)


async def test_discovery_is_read_checked_and_cached(
    make_provider: ProviderFactory, op: TestOP, clock: FakeClock
) -> None:
    provider = make_provider()
    assert provider.origins == (op.issuer,)
    before = op.hits("/.well-known/openid-configuration")
    metadata = await provider.metadata()
    assert metadata.issuer == op.issuer
    assert metadata.authorization_endpoint == f"{op.issuer}/auth"
    assert metadata.token_endpoint == f"{op.issuer}/token"
    assert metadata.end_session_endpoint == f"{op.issuer}/session/end"
    assert metadata.id_token_algorithms == ("RS256",)
    assert metadata.iss_parameter_supported
    await provider.metadata()
    assert op.hits("/.well-known/openid-configuration") == before + 1  # cached
    clock.advance(3601)
    await provider.metadata()
    assert op.hits("/.well-known/openid-configuration") == before + 2  # an hour later: read again


async def test_a_stale_discovery_document_serves_while_the_op_is_down(
    make_provider: ProviderFactory, op: TestOP, clock: FakeClock
) -> None:
    provider = make_provider()
    await provider.metadata()
    clock.advance(3601)
    op.outage(503, ["/.well-known/openid-configuration"])
    url, _ = await provider.login_url(CALLBACK, "state")
    assert url.startswith(f"{op.issuer}/auth?")


async def test_issuer_must_match_discovery_exactly(make_provider: ProviderFactory, op: TestOP) -> None:
    provider = make_provider(issuer=op.issuer + "/")  # the OP's issuer has no trailing slash
    with pytest.raises(UpstreamRejected, match="differs from the configured issuer"):
        await provider.login_url(CALLBACK, "state")


async def test_op_not_listening_is_unavailable(make_provider: ProviderFactory) -> None:
    provider = make_provider(issuer=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(UpstreamUnavailable) as caught:
        await provider.login_url(CALLBACK, "state")
    assert caught.value.public == UpstreamUnavailable.public


async def test_op_answering_5xx_is_unavailable(make_provider: ProviderFactory, op: TestOP) -> None:
    op.outage(503)
    with pytest.raises(UpstreamUnavailable, match="HTTP 503"):
        await make_provider().login_url(CALLBACK, "state")


# -- the authorization request ----------------------------------------------------------------
async def test_login_url_carries_pkce_s256_nonce_and_state(
    make_provider: ProviderFactory, rp: RegisteredClient, op: TestOP
) -> None:
    provider = make_provider(authorize_params={"prompt": "login"})
    url, flow = await provider.login_url(CALLBACK, "the-state")
    assert url.startswith(f"{op.issuer}/auth?")
    params = query_of(url)
    assert params["response_type"] == "code"
    assert params["client_id"] == rp.client_id
    assert params["redirect_uri"] == CALLBACK
    assert params["scope"] == "openid profile email groups"
    assert params["state"] == "the-state" == flow["state"]
    assert params["nonce"] == flow["nonce"]
    assert len(flow["nonce"]) >= 32
    assert params["code_challenge_method"] == "S256"
    verifier = flow["code_verifier"]
    assert 43 <= len(verifier) <= 128
    expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    assert params["code_challenge"] == expected
    assert params["prompt"] == "login"
    assert "code_verifier" not in params
    json.dumps(flow)  # the broker stores it as JSON
    _other_url, other = await provider.login_url(CALLBACK, "another-state")
    assert other["nonce"] != flow["nonce"]
    assert other["code_verifier"] != flow["code_verifier"]


# -- the callback -------------------------------------------------------------------------------
async def test_alice_signs_in_with_her_groups(make_provider: ProviderFactory, op: TestOP) -> None:
    provider = make_provider()
    identity = await login(provider, "alice")
    assert identity.provider_id == "test-oidc"
    assert identity.subject == "test-oidc:alice"
    assert identity.username == "alice"
    assert not identity.username_is_unique  # preferred_username: OIDC Core §5.7 says not to rely on it
    assert identity.email == "alice@example.test"
    assert identity.display_name == "Alice"
    assert identity.groups == {"mcp-readers", "mcp-writers"}
    assert set(identity.private) == {"sub", "id_token"}  # no upstream refresh token kept
    assert claims_of(identity.private["id_token"])["iss"] == op.issuer


async def test_usernames_are_vouched_for_only_when_the_admin_says_the_op_keeps_them_unique(
    make_provider: ProviderFactory,
) -> None:
    assert (await login(make_provider(unique_usernames=True), "alice")).username_is_unique
    # A fallback to the verified email is never unique by configuration.
    assert not (await login(make_provider(username_claim="upn", unique_usernames=True), "bob")).username_is_unique


async def test_carol_signs_in_with_no_groups(make_provider: ProviderFactory) -> None:
    identity = await login(make_provider(), "carol")
    assert identity.username == "carol"
    assert identity.groups == frozenset()


async def test_groups_from_a_dotted_claim_at_userinfo(make_provider: ProviderFactory, op: TestOP) -> None:
    # The test OP puts realm_access.roles only into userinfo, so the source is unambiguous.
    from_id_token = await login(make_provider(groups_claim="realm_access.roles"), "bob")
    assert from_id_token.groups == frozenset()
    before = op.hits("/me")
    from_userinfo = await login(make_provider(groups_claim="realm_access.roles", groups_from_userinfo=True), "bob")
    assert from_userinfo.groups == {"mcp-readers"}
    assert op.hits("/me") == before + 1


async def test_username_falls_back_to_the_verified_email(make_provider: ProviderFactory) -> None:
    identity = await login(make_provider(username_claim="upn"), "bob")
    assert identity.username == "bob@example.test"


async def test_a_tampered_state_is_refused_before_the_code_is_spent(make_provider: ProviderFactory, op: TestOP) -> None:
    provider = make_provider()
    params, flow = await authorize(provider)
    before = op.hits("/token")
    with pytest.raises(UpstreamRejected, match="state"):
        await provider.handle_callback(CALLBACK, {**params, "state": "forged"}, flow)
    assert op.hits("/token") == before
    identity = await provider.handle_callback(CALLBACK, params, flow)  # the real one still works
    assert identity.username == "alice"


async def test_a_tampered_nonce_is_refused(make_provider: ProviderFactory) -> None:
    provider = make_provider()
    params, flow = await authorize(provider)
    with pytest.raises(UpstreamRejected, match="nonce"):
        await provider.handle_callback(CALLBACK, params, {**flow, "nonce": secrets.token_urlsafe(32)})


async def test_a_response_from_another_issuer_is_refused(make_provider: ProviderFactory) -> None:
    provider = make_provider()
    params, flow = await authorize(provider)
    with pytest.raises(UpstreamRejected, match="issuer"):
        await provider.handle_callback(CALLBACK, {**params, "iss": "https://evil.example"}, flow)
    without_iss = {k: v for k, v in params.items() if k != "iss"}
    with pytest.raises(UpstreamRejected, match="RFC 9207"):
        await provider.handle_callback(CALLBACK, without_iss, flow)


async def test_a_different_callback_url_is_refused(make_provider: ProviderFactory) -> None:
    provider = make_provider()
    params, flow = await authorize(provider)
    with pytest.raises(UpstreamRejected, match="callback URL"):
        await provider.handle_callback("http://127.0.0.1:9/callback/other", params, flow)


async def test_a_spent_code_is_rejected(make_provider: ProviderFactory) -> None:
    provider = make_provider()
    params, flow = await authorize(provider)
    await provider.handle_callback(CALLBACK, params, flow)
    with pytest.raises(UpstreamRejected, match="invalid_grant"):
        await provider.handle_callback(CALLBACK, params, flow)


async def test_the_user_cancelling_at_the_op(make_provider: ProviderFactory) -> None:
    provider = make_provider()
    params, flow = await authorize(provider, cancel=True)
    assert params["error"] == "access_denied"
    with pytest.raises(UpstreamRejected, match="access_denied"):
        await provider.handle_callback(CALLBACK, params, flow)


async def test_token_endpoint_down_at_callback(make_provider: ProviderFactory, op: TestOP) -> None:
    provider = make_provider()
    params, flow = await authorize(provider)
    op.outage(502, ["/token"])
    with pytest.raises(UpstreamUnavailable, match="HTTP 502"):
        await provider.handle_callback(CALLBACK, params, flow)


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("wrong_audience", "aud"),
        ("extra_audience_without_azp", "azp"),
        ("wrong_azp", "azp"),
        ("wrong_issuer", "iss"),
        ("expired", "expired"),
        ("issued_in_future", "iat"),
        ("no_nonce", "nonce"),
        ("wrong_nonce", "nonce"),
        ("no_subject", "sub"),
        ("bad_signature", "signature"),
        ("unknown_key", "no key"),
        ("alg_none", "'none'"),
        ("hs256_client_secret", "'HS256'"),
    ],
)
async def test_an_id_token_that_fails_a_check_is_rejected(
    make_provider: ProviderFactory, op: TestOP, mode: str, reason: str
) -> None:
    provider = make_provider()
    params, flow = await authorize(provider)
    op.tamper(mode)
    with pytest.raises(UpstreamRejected, match=reason) as caught:
        await provider.handle_callback(CALLBACK, params, flow)
    assert caught.value.public == UpstreamRejected.public
    assert params["code"] not in str(caught.value)


async def test_several_audiences_are_fine_when_azp_is_this_client(make_provider: ProviderFactory, op: TestOP) -> None:
    provider = make_provider()
    params, flow = await authorize(provider)
    op.tamper("extra_audience_with_azp")
    identity = await provider.handle_callback(CALLBACK, params, flow)
    assert len(claims_of(identity.private["id_token"])["aud"]) == 2


# -- signing keys ---------------------------------------------------------------------------------
async def test_key_rotation_is_followed_and_unknown_keys_refetch_at_most_once_a_minute(
    make_provider: ProviderFactory, op: TestOP, clock: FakeClock
) -> None:
    provider = make_provider()
    first = await login(provider)
    jwks_fetches = op.hits("/jwks")
    new_kid = op.rotate_keys()[0]
    second = await login(provider)  # signed with a kid the cached JWKS lacks: one refetch
    assert header_of(second.private["id_token"])["kid"] == new_kid != header_of(first.private["id_token"])["kid"]
    assert op.hits("/jwks") == jwks_fetches + 1

    params, flow = await authorize(provider)  # a key nobody publishes, right after a refetch
    op.tamper("unknown_key")
    with pytest.raises(UpstreamRejected, match="no key"):
        await provider.handle_callback(CALLBACK, params, flow)
    assert op.hits("/jwks") == jwks_fetches + 1  # no new fetch within the minute

    clock.advance(61)
    params, flow = await authorize(provider)
    op.tamper("unknown_key")
    with pytest.raises(UpstreamRejected, match="no key"):
        await provider.handle_callback(CALLBACK, params, flow)
    assert op.hits("/jwks") == jwks_fetches + 2  # a minute later the OP is asked again
    assert (await login(provider)).username == "alice"  # the old and new keys still verify


# -- upstream refresh ------------------------------------------------------------------------------
async def test_upstream_refresh_reads_fresh_groups(make_provider: ProviderFactory, op: TestOP) -> None:
    provider = refreshing(make_provider)
    identity = await login(provider, "bob")
    assert identity.groups == {"mcp-readers"}
    assert isinstance(identity.private["refresh_token"], str)
    op.set_groups("bob", ["mcp-readers", "mcp-writers"])
    fresh = await provider.refresh(identity)
    assert fresh.subject == identity.subject
    assert fresh.groups == {"mcp-readers", "mcp-writers"}
    assert fresh.private["refresh_token"] == identity.private["refresh_token"]  # this OP does not rotate
    op.set_groups("bob", [])
    assert (await provider.refresh(fresh)).groups == frozenset()


async def test_a_rotated_upstream_refresh_token_replaces_the_old_one(
    make_provider: ProviderFactory, op: TestOP
) -> None:
    provider = refreshing(make_provider)
    identity = await login(provider, "alice")
    op.rotate_refresh_tokens(True)
    fresh = await provider.refresh(identity)
    assert fresh.private["refresh_token"] != identity.private["refresh_token"]
    again = await provider.refresh(fresh)  # the rotated token is the one that works now
    assert again.groups == {"mcp-readers", "mcp-writers"}
    assert again.private["refresh_token"] != fresh.private["refresh_token"]


async def test_refresh_fails_as_invalid_credentials_when_the_user_is_gone(
    make_provider: ProviderFactory, op: TestOP
) -> None:
    provider = refreshing(make_provider)
    identity = await login(provider, "bob")
    op.delete_user("bob")
    with pytest.raises(InvalidCredentials, match="invalid_grant") as caught:
        await provider.refresh(identity)
    assert identity.private["refresh_token"] not in str(caught.value)


async def test_refresh_without_a_stored_refresh_token(make_provider: ProviderFactory) -> None:
    provider = refreshing(make_provider)
    identity = await login(provider, "bob")
    bare = Identity(provider_id=identity.provider_id, subject=identity.subject, username=identity.username)
    with pytest.raises(InvalidCredentials, match="no upstream refresh token"):
        await provider.refresh(bare)  # e.g. a broker without a key encryption key keeps no private data


async def test_refresh_while_the_op_is_down(make_provider: ProviderFactory, op: TestOP) -> None:
    provider = refreshing(make_provider)
    identity = await login(provider, "bob")
    op.outage(503, ["/token"])
    with pytest.raises(UpstreamUnavailable):
        await provider.refresh(identity)
    op.outage(0)
    assert (await provider.refresh(identity)).groups == {"mcp-readers"}


async def test_refreshed_id_tokens_are_checked_too(make_provider: ProviderFactory, op: TestOP) -> None:
    provider = refreshing(make_provider)
    identity = await login(provider, "bob")
    op.tamper("wrong_audience")
    with pytest.raises(UpstreamRejected, match="aud"):
        await provider.refresh(identity)


async def test_upstream_refresh_needs_a_refresh_token_at_sign_in(make_provider: ProviderFactory) -> None:
    provider = make_provider(use_upstream_refresh=True)  # no offline_access: the OP issues none
    params, flow = await authorize(provider)
    with pytest.raises(UpstreamRejected, match="offline_access"):
        await provider.handle_callback(CALLBACK, params, flow)


# -- RP-initiated logout -----------------------------------------------------------------------------
async def test_logout_url_ends_the_session_at_the_op(make_provider: ProviderFactory, op: TestOP) -> None:
    provider = make_provider()
    url, flow = await provider.login_url(CALLBACK, secrets.token_urlsafe(24))
    with browser() as user_agent:
        location = sign_in(user_agent, url, until=CALLBACK, username="alice")
        identity = await provider.handle_callback(CALLBACK, query_of(location), flow)
        logout = await provider.logout_url(identity.private["id_token"], LOGGED_OUT)
        assert logout is not None
        assert logout.startswith(f"{op.issuer}/session/end?")
        assert query_of(logout)["post_logout_redirect_uri"] == LOGGED_OUT
        confirm = user_agent.get(logout)  # the OP asks the user to confirm
        assert confirm.status_code == 200, confirm.text
        form = re.search(r'<form id="op.logoutForm" method="post" action="([^"]+)">(.*?)</form>', confirm.text)
        assert form is not None, confirm.text
        fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form.group(2)))
        done = user_agent.post(confirm.url.join(form.group(1)), data={**fields, "logout": "yes"})
        assert done.status_code == 303, done.text
        assert done.headers["location"] == LOGGED_OUT
