"""Helpers for the Entra provider tests: provider configuration against the emulator, and the
browser's part of a sign-in."""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from providers.base import Identity
from providers.entra.config import EntraProviderConfig
from providers.entra.provider import EntraProvider
from tests.emulators.entra import CLIENT_ID, CLIENT_SECRET, TENANT, EntraEmulator

CALLBACK = "http://127.0.0.1:9/callback/entra"  # never contacted: the tests play the browser


def entra_config(entra: EntraEmulator, **over: Any) -> EntraProviderConfig:
    values: dict[str, Any] = {
        "id": "entra",
        "display_name": "Contoso (Entra ID)",
        "tenant_id": TENANT,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "authority_host": entra.base,
        "graph_url": entra.base,
        "ca_file": str(entra.ca_file),
        "timeout": 5,
    }
    values.update(over)
    if "client_certificate_file" in over:
        values.pop("client_secret")
    return EntraProviderConfig(**values)


async def authorize(
    provider: EntraProvider, entra: EntraEmulator, user: str, state: str = "broker-state"
) -> tuple[dict[str, str], dict[str, Any]]:
    """Play the browser: open the provider's login URL, the emulator signs ``user`` in and
    redirects back. Returns (callback parameters, flow)."""
    url, flow = await provider.login_url(CALLBACK, state)
    entra.next_user = user
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=entra.ca_file), timeout=10) as browser:
        response = await browser.get(url)
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(CALLBACK + "?"), location
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}, dict(flow)


async def sign_in(provider: EntraProvider, entra: EntraEmulator, user: str) -> Identity:
    params, flow = await authorize(provider, entra, user)
    return await provider.handle_callback(CALLBACK, params, flow)
