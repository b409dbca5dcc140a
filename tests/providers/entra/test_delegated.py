"""Delegated access through the Entra provider (issue 14): the user's MSAL token cache kept from
sign-in gives tokens for other APIs, silently or on-behalf-of, against the Entra emulator; Graph's
``/me`` answers as the signed-in user; Entra wanting the user back is InteractionNeeded."""

from __future__ import annotations

import json
import ssl

import httpx
import pytest

from providers.base import DelegatedAccess, InteractionNeeded, UpstreamToken
from providers.entra.msal_apps import MSAL_CACHE
from tests.emulators.entra import CLIENT_ID, EntraEmulator
from tests.providers.entra.conftest import ProviderFactory
from tests.providers.entra.helpers import sign_in


async def graph_me(entra: EntraEmulator, token: str) -> httpx.Response:
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=entra.ca_file), timeout=10) as http:
        return await http.get(f"{entra.base}/v1.0/me", headers={"Authorization": f"Bearer {token}"})


async def test_silent_acquisition_gives_a_graph_token_for_the_signed_in_user(
    entra: EntraEmulator, make_provider: ProviderFactory
) -> None:
    provider = make_provider(delegated_access=True)
    assert isinstance(provider, DelegatedAccess)
    identity = await sign_in(provider, entra, "alice")
    cache = identity.private[MSAL_CACHE]
    assert "RefreshToken" in json.loads(cache)  # offline_access was asked: the session can be refreshed

    token = await provider.delegated_token(identity.private, [f"{entra.base}/User.Read"])
    assert isinstance(token, UpstreamToken)
    assert token.scopes == {f"{entra.base}/User.Read"}
    assert token.expires_in > 0
    me = await graph_me(entra, token.access_token)
    assert me.status_code == 200, me.text
    assert me.json()["userPrincipalName"] == entra.user("alice").upn
    assert me.json()["id"] == entra.user("alice").oid


async def test_a_short_scope_name_is_a_graph_permission_and_a_second_call_is_served_from_the_cache(
    entra: EntraEmulator, make_provider: ProviderFactory
) -> None:
    provider = make_provider(delegated_access=True)
    identity = await sign_in(provider, entra, "bob")
    first = await provider.delegated_token(identity.private, ["User.Read"])
    assert first.state is None or MSAL_CACHE in first.state
    state = {**identity.private, **(first.state or {})}
    issued = len(entra.issued)
    again = await provider.delegated_token(state, ["User.Read"])
    assert again.access_token == first.access_token  # MSAL's cache: no new request to Entra
    assert len(entra.issued) == issued
    assert (await graph_me(entra, again.access_token)).json()["userPrincipalName"] == entra.user("bob").upn


async def test_a_scope_of_another_resource_refreshes_and_returns_the_grown_cache(
    entra: EntraEmulator, make_provider: ProviderFactory
) -> None:
    provider = make_provider(delegated_access=True, graph_scopes=[])
    entra.app.admin_consent[f"api://{CLIENT_ID}"] = {"access_as_user"}
    identity = await sign_in(provider, entra, "alice")
    token = await provider.delegated_token(identity.private, [f"api://{CLIENT_ID}/access_as_user"])
    assert entra.issued[-1] == ("refresh_token", "alice", f"api://{CLIENT_ID}/access_as_user")
    assert token.state is not None
    assert token.state[MSAL_CACHE] != identity.private[MSAL_CACHE]
    assert (await graph_me(entra, token.access_token)).status_code == 401  # not a Graph token


async def test_on_behalf_of_uses_a_token_for_the_brokers_api_as_the_assertion(
    entra: EntraEmulator, make_provider: ProviderFactory
) -> None:
    provider = make_provider(delegated_access=True)
    entra.app.admin_consent[f"api://{CLIENT_ID}"] = {"access_as_user"}
    identity = await sign_in(provider, entra, "alice")
    token = await provider.delegated_token(identity.private, [f"{entra.base}/User.Read"], on_behalf_of=True)
    assert [grant for grant, _, _ in entra.issued[-2:]] == ["refresh_token", "on_behalf_of"]
    assert entra.issued[-1] == ("on_behalf_of", "alice", f"{entra.base}/User.Read")
    me = await graph_me(entra, token.access_token)
    assert me.json()["userPrincipalName"] == entra.user("alice").upn


async def test_on_behalf_of_without_consent_to_the_brokers_api_needs_the_user(
    entra: EntraEmulator, make_provider: ProviderFactory
) -> None:
    provider = make_provider(delegated_access=True)
    identity = await sign_in(provider, entra, "alice")
    with pytest.raises(InteractionNeeded, match="consent_required"):
        await provider.delegated_token(identity.private, [f"{entra.base}/User.Read"], on_behalf_of=True)


async def test_a_permission_nobody_consented_to_is_interaction_needed(
    entra: EntraEmulator, make_provider: ProviderFactory
) -> None:
    provider = make_provider(delegated_access=True)
    identity = await sign_in(provider, entra, "alice")
    with pytest.raises(InteractionNeeded, match="consent_required") as caught:
        await provider.delegated_token(identity.private, [f"{entra.base}/Mail.Read"])
    assert caught.value.scopes == (f"{entra.base}/Mail.Read",)


async def test_conditional_access_asking_for_the_user_is_interaction_needed(
    entra: EntraEmulator, make_provider: ProviderFactory
) -> None:
    provider = make_provider(delegated_access=True, graph_scopes=[])
    identity = await sign_in(provider, entra, "alice")  # no Graph token cached: MSAL must refresh
    entra.require_interaction.add("alice")
    with pytest.raises(InteractionNeeded, match="interaction_required"):
        await provider.delegated_token(identity.private, [f"{entra.base}/User.Read"])


async def test_without_delegated_access_nothing_is_kept_and_the_user_is_needed(
    entra: EntraEmulator, make_provider: ProviderFactory
) -> None:
    provider = make_provider()
    identity = await sign_in(provider, entra, "alice")
    assert MSAL_CACHE not in identity.private
    with pytest.raises(InteractionNeeded, match="no Entra session"):
        await provider.delegated_token(identity.private, [f"{entra.base}/User.Read"])
