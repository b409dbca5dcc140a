"""Entra or Graph hanging or dribbling its answers: discovery, the token endpoint (sign-in and
app-only), the JWKS and Graph are each UpstreamUnavailable within ``timeout``, the reason in
the text, and stalled MSAL calls hold no thread of the default executor."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import pytest

from providers.base import UpstreamUnavailable
from tests.emulators.entra import TENANT, EntraEmulator
from tests.providers.entra.conftest import ProviderFactory
from tests.providers.entra.helpers import CALLBACK, authorize, sign_in
from tests.providers.tarpit import Tarpit
from tests.providers.tarpit import unavailable_in_time as answered_in_time

pytestmark = pytest.mark.filterwarnings("ignore:response_mode='form_post' is recommended:UserWarning")

DEADLINE = 1.0
MARGIN = 1.5  # a shared, slow test machine
GUARD = DEADLINE + 20  # a regression fails the test instead of hanging it
MODES = pytest.mark.parametrize("mode", ["hang", "drip"])


async def unavailable_in_time(call: Awaitable[object]) -> str:
    """The call's UpstreamUnavailable text, asserting it came within the deadline."""
    return await answered_in_time(call, DEADLINE, MARGIN)


@MODES
async def test_stalled_discovery(mode: str, entra: EntraEmulator, make_provider: ProviderFactory) -> None:
    entra.stall["discovery"] = mode
    provider = make_provider(timeout=DEADLINE)
    reason = await unavailable_in_time(provider.login_url(CALLBACK, "state"))
    assert f"GET {entra.base}/{TENANT}/v2.0/.well-known/openid-configuration timed out after 1 s" in reason


@MODES
async def test_stalled_token_endpoint_at_sign_in(
    mode: str, entra: EntraEmulator, make_provider: ProviderFactory
) -> None:
    provider = make_provider(timeout=DEADLINE)
    params, flow = await authorize(provider, entra, "alice")
    entra.stall["token"] = mode
    reason = await unavailable_in_time(provider.handle_callback(CALLBACK, params, flow))
    assert reason.startswith("redeeming the code: ")
    assert f"POST {entra.base}/{TENANT}/oauth2/v2.0/token timed out after 1 s" in reason


@MODES
async def test_stalled_jwks(mode: str, entra: EntraEmulator, make_provider: ProviderFactory) -> None:
    provider = make_provider(timeout=DEADLINE)
    params, flow = await authorize(provider, entra, "alice")
    entra.stall["jwks"] = mode
    reason = await unavailable_in_time(provider.handle_callback(CALLBACK, params, flow))
    assert f"JWKS {entra.base}/{TENANT}/discovery/v2.0/keys timed out after 1 s" in reason


@MODES
async def test_stalled_graph_at_refresh(mode: str, entra: EntraEmulator, make_provider: ProviderFactory) -> None:
    provider = make_provider(timeout=DEADLINE)
    identity = await sign_in(provider, entra, "alice")
    await provider.refresh(identity)  # the app-only token is now in MSAL's cache
    entra.stall["graph"] = mode
    reason = await unavailable_in_time(provider.refresh(identity))
    assert f"Graph users/{entra.user('alice').oid} timed out after 1 s" in reason


@MODES
async def test_stalled_app_only_token_at_refresh(
    mode: str, entra: EntraEmulator, make_provider: ProviderFactory
) -> None:
    identity = await sign_in(make_provider(), entra, "alice")
    provider = make_provider(timeout=DEADLINE)
    await provider.login_url(CALLBACK, "state")  # discovery done: only the token call stalls
    entra.stall["token"] = mode
    reason = await unavailable_in_time(provider.refresh(identity))
    assert reason.startswith(f"app-only token for tenant {TENANT}: POST ")
    assert "timed out after 1 s" in reason


async def test_an_authority_that_never_answers_the_tls_handshake(make_provider: ProviderFactory) -> None:
    with Tarpit("hang").serve() as base:
        provider = make_provider(timeout=DEADLINE, authority_host=base.replace("http://", "https://"))
        reason = await unavailable_in_time(provider.login_url(CALLBACK, "state"))
    assert "openid-configuration timed out after 1 s" in reason


async def test_stalled_sign_ins_hold_no_default_executor_thread(
    entra: EntraEmulator, make_provider: ProviderFactory
) -> None:
    provider = make_provider(timeout=DEADLINE)
    started = [await authorize(provider, entra, "alice", state=f"s{i}") for i in range(12)]
    entra.stall["token"] = "hang"
    sign_ins = asyncio.gather(
        *(unavailable_in_time(provider.handle_callback(CALLBACK, p, f)) for p, f in started),
        return_exceptions=True,
    )
    await asyncio.sleep(0.3)  # every sign-in is now waiting on Entra or for an MSAL slot
    begun = time.monotonic()
    assert await asyncio.wait_for(asyncio.to_thread(lambda: 42), GUARD) == 42
    assert time.monotonic() - begun < 1.0  # the default executor was free (held, it took 1.7 s)
    reasons = await sign_ins
    assert all(isinstance(r, str) and "timed out after 1 s" in r for r in reasons), reasons


async def test_an_untrusted_certificate_says_certificate_verify_failed(
    entra: EntraEmulator, make_provider: ProviderFactory
) -> None:
    provider = make_provider(ca_file=None)  # certifi's roots only: the emulator's CA is unknown
    with pytest.raises(UpstreamUnavailable) as raised:
        await asyncio.wait_for(provider.login_url(CALLBACK, "state"), GUARD)
    assert "certificate verify failed" in str(raised.value)
