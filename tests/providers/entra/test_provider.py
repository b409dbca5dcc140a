"""The Entra provider against the Entra emulator: sign-in, groups (claim, overage, Graph),
ID token checks, error mapping, MSAL cache handling, and the refresh-time re-check."""

from __future__ import annotations

import datetime
import json
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from providers.base import (
    AccountDisabled,
    InvalidCredentials,
    RedirectProvider,
    RefreshProvider,
    UpstreamRejected,
    UpstreamUnavailable,
)
from providers.entra.msal_apps import SignInExpired
from tests.emulators.entra import (
    ALL_STAFF,
    CLIENT_SECRET,
    DIRECTORY_ROLE,
    OTHER_TENANT,
    READERS,
    TENANT,
    WRITERS,
    EntraEmulator,
)
from tests.providers.entra.conftest import ProviderFactory
from tests.providers.entra.helpers import CALLBACK, authorize, sign_in

pytestmark = pytest.mark.filterwarnings("ignore:response_mode='form_post' is recommended:UserWarning")


def token_posts(entra: EntraEmulator, tenant: str = TENANT) -> int:
    return entra.calls.count(f"POST /{tenant}/oauth2/v2.0/token")


def graph_calls(entra: EntraEmulator) -> list[str]:
    return [c for c in entra.calls if c.split()[1].startswith("/v1.0/")]


# -- sign-in -----------------------------------------------------------------------------------
async def test_sign_in_builds_the_identity_from_the_id_token(
    entra: EntraEmulator, make_provider: ProviderFactory
) -> None:
    provider = make_provider()
    assert isinstance(provider, RedirectProvider)
    assert isinstance(provider, RefreshProvider)
    assert provider.origins == (entra.base,)

    identity = await sign_in(provider, entra, "alice")

    alice = entra.user("alice")
    assert identity.provider_id == "entra"
    assert identity.subject == f"entra:{TENANT}:{alice.oid}"  # qualified_subject(provider id, tid:oid)
    assert identity.username == "alice@contoso.example"
    assert identity.username_is_unique  # a UPN: its domain is verified by one tenant
    assert identity.email == "alice@contoso.example"
    assert identity.display_name == "Alice Example"
    # the groups claim (nested all-staff included, as Entra does), the app role as role:<value>
    assert identity.groups == {READERS, WRITERS, ALL_STAFF, "role:Notes.Admin"}
    assert identity.group_names == {}
    assert dict(identity.private) == {"tid": TENANT, "oid": alice.oid, "roles": ["Notes.Admin"]}
    assert graph_calls(entra) == []  # no overage: no Graph call
    assert "GET /common/discovery/instance" not in entra.calls  # instance discovery is off
    assert (await provider._msal.app(TENANT)).get_accounts() == []  # MSAL's token cache kept no user token


async def test_login_url_is_msal_auth_code_flow_with_the_brokers_state(
    entra: EntraEmulator, make_provider: ProviderFactory
) -> None:
    provider = make_provider()
    url, flow = await provider.login_url(CALLBACK, "the-broker-state")

    assert flow["state"] == "the-broker-state"
    assert url == flow["auth_uri"]
    json.dumps(flow)  # the broker stores it
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert url.startswith(f"{entra.base}/{TENANT}/oauth2/v2.0/authorize?")
    assert query["state"] == "the-broker-state"
    assert query["redirect_uri"] == CALLBACK
    assert query["code_challenge_method"] == "S256"
    assert query["nonce"]
    assert query["nonce"] != flow["nonce"]
    scopes = set(query["scope"].split())
    assert {"openid", "profile", "email", f"{entra.base}/User.Read"} <= scopes
    assert "offline_access" not in scopes  # no upstream refresh token: refresh uses app-only Graph


async def test_overage_user_groups_come_from_graph_with_paging(
    entra: EntraEmulator, make_provider: ProviderFactory
) -> None:
    provider = make_provider()
    identity = await sign_in(provider, entra, "carol")

    carol = entra.user("carol")
    assert identity.groups == set(entra.transitive_groups(carol))
    assert len(identity.groups) == 252
    assert READERS in identity.groups
    assert DIRECTORY_ROLE not in identity.groups  # directory roles are not groups
    # 252 groups plus nothing else at 100 a page: three pages, with the delegated token
    assert graph_calls(entra) == ["GET /v1.0/me/transitiveMemberOf"] * 3
    assert token_posts(entra) == 1  # no app-only token needed


async def test_groups_from_graph_always(entra: EntraEmulator, make_provider: ProviderFactory) -> None:
    provider = make_provider(groups_from_graph="always")
    identity = await sign_in(provider, entra, "bob")
    assert identity.groups == {READERS, ALL_STAFF}
    assert graph_calls(entra) == ["GET /v1.0/me/transitiveMemberOf"]


async def test_resolve_group_names(entra: EntraEmulator, make_provider: ProviderFactory) -> None:
    provider = make_provider(resolve_group_names=True, graph_scopes=["GroupMember.Read.All"])
    identity = await sign_in(provider, entra, "alice")
    assert identity.group_names == {READERS: "mcp-readers", WRITERS: "mcp-writers", ALL_STAFF: "all-staff"}
    assert "role:Notes.Admin" in identity.groups


async def test_resolve_group_names_with_user_read_only_gets_ids_only(
    entra: EntraEmulator, make_provider: ProviderFactory
) -> None:
    provider = make_provider(resolve_group_names=True)  # graph_scopes: [User.Read]
    identity = await sign_in(provider, entra, "alice")
    assert identity.groups >= {READERS, WRITERS}
    assert identity.group_names == {}  # Graph's "limited information" for User.Read


async def test_overage_without_delegated_scopes_uses_app_only_graph(
    entra: EntraEmulator, make_provider: ProviderFactory
) -> None:
    provider = make_provider(graph_scopes=[])
    identity = await sign_in(provider, entra, "carol")
    carol = entra.user("carol")
    assert len(identity.groups) == 252
    assert graph_calls(entra) == [f"GET /v1.0/users/{carol.oid}/transitiveMemberOf"] * 3
    assert token_posts(entra) == 2  # the code, then client credentials


async def test_certificate_credential(entra: EntraEmulator, make_provider: ProviderFactory, tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mcp-broker")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem = tmp_path / "broker.pem"
    pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        + cert.public_bytes(serialization.Encoding.PEM)
    )
    provider = make_provider(client_certificate_file=str(pem))

    with pytest.raises(UpstreamUnavailable, match="invalid_client"):  # not registered yet
        await sign_in(provider, entra, "bob")
    entra.app.certificates.append(cert)
    identity = await sign_in(provider, entra, "bob")
    assert identity.groups == {READERS, ALL_STAFF}


async def test_v1_issuer_only_when_configured(entra: EntraEmulator, make_provider: ProviderFactory) -> None:
    entra.id_token_version = "1.0"
    with pytest.raises(UpstreamRejected, match="Invalid issuer"):
        await sign_in(make_provider(), entra, "bob")

    identity = await sign_in(make_provider(accept_v1_issuer=True), entra, "bob")
    assert identity.username == "bob@contoso.example"  # from upn
    assert identity.username_is_unique


async def test_allowed_tenants_sign_in_through_organizations(
    entra: EntraEmulator, make_provider: ProviderFactory
) -> None:
    entra.app.multi_tenant = True
    provider = make_provider(allowed_tenants=[OTHER_TENANT])
    url, _ = await provider.login_url(CALLBACK, "s")
    assert url.startswith(f"{entra.base}/organizations/oauth2/v2.0/authorize?")

    erin = await sign_in(provider, entra, "erin")
    assert erin.subject == f"entra:{OTHER_TENANT}:{entra.user('erin').oid}"
    assert erin.groups == {WRITERS}
    alice = await sign_in(provider, entra, "alice")
    assert alice.subject.startswith(f"entra:{TENANT}:")

    refreshed = await provider.refresh(erin)  # app-only token from erin's own tenant
    assert refreshed.groups == {WRITERS}
    assert token_posts(entra, OTHER_TENANT) == 1


# -- refused sign-ins ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("tampering", "message"),
    [
        ("bad-signature", "signature invalid"),
        ("unknown-kid", "unknown key id"),
        ("nonce", "nonce"),
        ("audience", "Invalid audience"),
        ("expired", "expired"),
    ],
)
async def test_tampered_id_tokens_are_refused(
    entra: EntraEmulator, make_provider: ProviderFactory, tampering: str, message: str
) -> None:
    provider = make_provider()
    await sign_in(provider, entra, "bob")  # keys cached: an unknown kid now cannot force a refetch
    entra.next_id_token = tampering
    with pytest.raises(UpstreamRejected, match=message):
        await sign_in(provider, entra, "bob")


async def test_id_token_of_another_tenant_is_refused(entra: EntraEmulator, make_provider: ProviderFactory) -> None:
    entra.issue_as_tenant = OTHER_TENANT
    with pytest.raises(UpstreamRejected, match=f"tenant {OTHER_TENANT}, which is not allowed"):
        await sign_in(make_provider(), entra, "alice")


async def test_state_mismatch_is_refused_before_redeeming(entra: EntraEmulator, make_provider: ProviderFactory) -> None:
    provider = make_provider()
    params, flow = await authorize(provider, entra, "alice")
    with pytest.raises(UpstreamRejected, match="state"):
        await provider.handle_callback(CALLBACK, {**params, "state": "another-state"}, flow)
    with pytest.raises(UpstreamRejected, match="redirect_uri"):
        await provider.handle_callback("http://127.0.0.1:9/callback/other", params, flow)
    assert token_posts(entra) == 0


async def test_replayed_code_is_refused(entra: EntraEmulator, make_provider: ProviderFactory) -> None:
    provider = make_provider()
    params, flow = await authorize(provider, entra, "alice")
    await provider.handle_callback(CALLBACK, params, flow)
    with pytest.raises(SignInExpired, match="AADSTS54005"):
        await provider.handle_callback(CALLBACK, params, flow)


async def test_expired_code(entra: EntraEmulator, make_provider: ProviderFactory) -> None:
    provider = make_provider()
    params, flow = await authorize(provider, entra, "alice")
    entra.expire_codes()
    with pytest.raises(SignInExpired, match="invalid_grant: AADSTS70008") as caught:
        await provider.handle_callback(CALLBACK, params, flow)
    assert "took too long" in caught.value.public
    assert "\n" not in str(caught.value)  # only the first line of error_description


async def test_error_callback(entra: EntraEmulator, make_provider: ProviderFactory) -> None:
    provider = make_provider()
    _, flow = await provider.login_url(CALLBACK, "s")
    with pytest.raises(UpstreamRejected, match="access_denied"):
        await provider.handle_callback(CALLBACK, {"state": "s", "error": "access_denied"}, flow)


async def test_wrong_client_secret_is_a_configuration_error(
    entra: EntraEmulator, make_provider: ProviderFactory
) -> None:
    provider = make_provider(client_secret="not-the-secret")
    with pytest.raises(UpstreamUnavailable, match="AADSTS7000215") as caught:
        await sign_in(provider, entra, "alice")
    assert "not-the-secret" not in str(caught.value)
    assert CLIENT_SECRET not in str(caught.value)


async def test_graph_failure_on_overage(entra: EntraEmulator, make_provider: ProviderFactory) -> None:
    entra.graph_status = 500
    with pytest.raises(UpstreamUnavailable, match="transitiveMemberOf: HTTP 500 generalException") as caught:
        await sign_in(make_provider(), entra, "carol")
    assert "Bearer" not in str(caught.value)


async def test_one_token_endpoint_failure_is_not_cached(entra: EntraEmulator, make_provider: ProviderFactory) -> None:
    """MSAL's own HTTP cache would replay a failed POST for 5 to 60 seconds; ours keeps none."""
    provider = make_provider()
    entra.fail_next_token = (500, {"error": "server_error"})
    with pytest.raises(UpstreamUnavailable):
        await sign_in(provider, entra, "alice")
    identity = await sign_in(provider, entra, "alice")  # at once, no throttling

    entra.fail_next_token = (400, {"error": "invalid_client", "error_description": "AADSTS7000222: expired secret"})
    with pytest.raises(UpstreamUnavailable, match="AADSTS7000222"):
        await provider.refresh(identity)
    assert (await provider.refresh(identity)).groups == identity.groups  # the same request, answered again


async def test_discovery_failure_is_retried(entra: EntraEmulator, make_provider: ProviderFactory) -> None:
    lost = entra.tenant_names.pop(TENANT)
    provider = make_provider()
    with pytest.raises(UpstreamUnavailable, match="discovery"):
        await provider.login_url(CALLBACK, "s")
    entra.tenant_names[TENANT] = lost
    url, _ = await provider.login_url(CALLBACK, "s")
    assert url.startswith(entra.base)


async def test_unreachable_entra(entra: EntraEmulator, make_provider: ProviderFactory) -> None:
    provider = make_provider(authority_host="https://127.0.0.1:9")
    with pytest.raises(UpstreamUnavailable, match="unreachable"):
        await provider.login_url(CALLBACK, "s")


# -- refresh -----------------------------------------------------------------------------------
async def test_refresh_reads_current_groups_with_app_only_graph(
    entra: EntraEmulator, make_provider: ProviderFactory
) -> None:
    provider = make_provider()
    identity = await sign_in(provider, entra, "alice")
    entra.user("alice").groups.discard(WRITERS)

    refreshed = await provider.refresh(identity)
    assert refreshed.groups == {READERS, ALL_STAFF, "role:Notes.Admin"}  # roles of sign-in time kept
    assert refreshed.subject == identity.subject
    assert refreshed.username == identity.username
    alice = entra.user("alice").oid
    assert graph_calls(entra) == [f"GET /v1.0/users/{alice}", f"GET /v1.0/users/{alice}/transitiveMemberOf"]

    await provider.refresh(identity)
    assert token_posts(entra) == 2  # the code, then one app-only token, reused from MSAL's cache


async def test_refresh_without_private_data_reads_tenant_and_object_from_the_subject(
    entra: EntraEmulator, make_provider: ProviderFactory
) -> None:
    # Without a key encryption key the broker keeps no private data: the subject says who it is.
    provider = make_provider()
    identity = replace(await sign_in(provider, entra, "alice"), private={})
    assert identity.subject == f"entra:{TENANT}:{entra.user('alice').oid}"
    refreshed = await provider.refresh(identity)
    assert READERS in refreshed.groups
    assert graph_calls(entra)[0] == f"GET /v1.0/users/{entra.user('alice').oid}"


async def test_refresh_of_a_deleted_or_disabled_user(entra: EntraEmulator, make_provider: ProviderFactory) -> None:
    provider = make_provider()
    alice = await sign_in(provider, entra, "alice")
    bob = await sign_in(provider, entra, "bob")
    entra.user("alice").enabled = False
    entra.remove_user("bob")

    with pytest.raises(AccountDisabled):
        await provider.refresh(alice)
    with pytest.raises(InvalidCredentials):
        await provider.refresh(bob)


async def test_refresh_when_graph_is_down(entra: EntraEmulator, make_provider: ProviderFactory) -> None:
    provider = make_provider()
    identity = await sign_in(provider, entra, "alice")
    entra.graph_status = 503
    with pytest.raises(UpstreamUnavailable, match="HTTP 503"):
        await provider.refresh(identity)
    entra.graph_status = 404  # a 404 that is not Graph's "no such user" must not revoke anyone
    with pytest.raises(UpstreamUnavailable, match="HTTP 404"):
        await provider.refresh(identity)


async def test_refresh_without_application_permissions(entra: EntraEmulator, make_provider: ProviderFactory) -> None:
    entra.app.application_permissions = []
    provider = make_provider()
    identity = await sign_in(provider, entra, "alice")
    with pytest.raises(UpstreamUnavailable, match=r"403 Authorization_RequestDenied.*permissions"):
        await provider.refresh(identity)


async def test_refresh_check_none_keeps_sign_in_groups(entra: EntraEmulator, make_provider: ProviderFactory) -> None:
    provider = make_provider(refresh_check="none")
    identity = await sign_in(provider, entra, "alice")
    entra.user("alice").groups.clear()
    assert await provider.refresh(identity) == identity
    assert graph_calls(entra) == []
