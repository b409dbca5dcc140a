"""An OP that hangs or dribbles its answers: every call (discovery, token, JWKS, userinfo) is
UpstreamUnavailable within ``http_timeout``, with the reason in its text; other failures
(connection refused, an untrusted certificate) say why too."""

from __future__ import annotations

import asyncio
import secrets
import ssl
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.devstack import free_port
from providers.base import UpstreamUnavailable
from providers.oidc.config import OidcProviderConfig
from providers.oidc.discovery import WELL_KNOWN
from providers.oidc.provider import OidcProvider
from tests.providers.oidc.conftest import CALLBACK
from tests.providers.tarpit import Tarpit, oidc_discovery
from tests.providers.tarpit import unavailable_in_time as answered_in_time
from tests.tls import make_ca

DEADLINE = 1.0
MARGIN = 1.5  # a shared, slow test machine
GUARD = DEADLINE + 20  # a regression fails the test instead of hanging it


def provider_for(issuer: str, **over: Any) -> OidcProvider:
    values: dict[str, Any] = {
        "id": "stalled",
        "display_name": "Stalled OP",
        "issuer": issuer,
        "client_id": "rp",
        "client_secret": "rp-secret",
        "http_timeout": DEADLINE,
    }
    return OidcProvider(OidcProviderConfig(**(values | over)))


@pytest.fixture(params=["hang", "drip"])
def pit(request: pytest.FixtureRequest) -> Iterator[Tarpit]:
    tarpit = Tarpit(request.param)
    with tarpit.serve() as base:
        tarpit.documents[WELL_KNOWN] = oidc_discovery(base)
        yield tarpit


async def unavailable_in_time(call: Awaitable[object]) -> str:
    """The call's UpstreamUnavailable text, asserting it came within the deadline."""
    return await answered_in_time(call, DEADLINE, MARGIN)


async def test_stalled_discovery(pit: Tarpit) -> None:
    del pit.documents[WELL_KNOWN]
    provider = provider_for(pit.base)
    try:
        reason = await unavailable_in_time(provider.metadata())
    finally:
        await provider.aclose()
    assert f"discovery document {pit.base}{WELL_KNOWN} timed out after 1 s" in reason


async def test_stalled_token_endpoint(pit: Tarpit) -> None:
    provider = provider_for(pit.base)
    try:
        state = secrets.token_urlsafe(16)
        _, flow = await provider.login_url(CALLBACK, state)
        reason = await unavailable_in_time(provider.handle_callback(CALLBACK, {"code": "c", "state": state}, flow))
    finally:
        await provider.aclose()
    assert f"token endpoint {pit.base}/token timed out after 1 s" in reason
    assert "POST /token" in pit.requests


async def test_stalled_jwks(pit: Tarpit) -> None:
    provider = provider_for(pit.base)
    try:
        reason = await unavailable_in_time(provider.keys.candidates("some-kid", "RS256"))
    finally:
        await provider.aclose()
    assert "timed out after 1 s" in reason
    assert "JWKS" in reason
    assert "GET /jwks" in pit.requests


async def test_concurrent_sign_ins_wait_for_one_stalled_fetch_within_the_deadline(pit: Tarpit) -> None:
    # Waiting for a fetch another request started counts against the same deadline.
    del pit.documents[WELL_KNOWN]
    provider = provider_for(pit.base)
    try:
        reasons = await asyncio.gather(*(unavailable_in_time(provider.metadata()) for _ in range(5)))
    finally:
        await provider.aclose()
    assert all("timed out after 1 s" in r for r in reasons)


async def test_stalled_userinfo(pit: Tarpit) -> None:
    provider = provider_for(pit.base, groups_from_userinfo=True)
    try:
        metadata = await provider.metadata()
        token = {"access_token": "at", "token_type": "Bearer"}
        reason = await unavailable_in_time(provider._userinfo(metadata, token, "sub-1"))
    finally:
        await provider.aclose()
    assert f"userinfo {pit.base}/userinfo timed out after 1 s" in reason


async def test_a_stale_discovery_document_still_serves_while_the_op_hangs(pit: Tarpit) -> None:
    clock = [0.0]
    provider = OidcProvider(provider_for(pit.base).config, clock=lambda: clock[0])
    try:
        first = await provider.metadata()
        del pit.documents[WELL_KNOWN]
        clock[0] += 7200  # past the cache's hour
        started = time.monotonic()
        assert await asyncio.wait_for(provider.metadata(), GUARD) is first
        assert time.monotonic() - started < DEADLINE + MARGIN
    finally:
        await provider.aclose()


# -- the reason reaches the message ------------------------------------------------------------
async def test_connection_refused_says_so() -> None:
    provider = provider_for(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(UpstreamUnavailable) as raised:
            await provider.metadata()
    finally:
        await provider.aclose()
    assert "unreachable: ConnectError" in str(raised.value)
    assert "ConnectionRefusedError" in str(raised.value)  # the cause, not just the type


async def test_an_untrusted_certificate_says_certificate_verify_failed(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "untrusted")
    cert, key = ca.issue(tmp_path / "untrusted", hosts=["127.0.0.1"])
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    with Tarpit("hang", tls=tls).serve() as base:
        provider = provider_for(base)
        try:
            with pytest.raises(UpstreamUnavailable) as raised:
                await asyncio.wait_for(provider.metadata(), GUARD)
        finally:
            await provider.aclose()
    assert "certificate verify failed" in str(raised.value)
