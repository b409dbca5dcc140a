"""How long the OIDC and Entra providers take to give up on an upstream that is a tarpit.

Each upstream call is pointed at a loopback tarpit in two modes: ``hang`` (the connection is
accepted, the request read, nothing answered) and ``drip`` (the answer arrives one byte every
half second, so no single read ever waits long enough for a per-read time-out). The OIDC
provider talks to ``tests/providers/tarpit.py`` (its discovery document answered, the endpoints
it names stalled); the Entra provider to the Entra emulator of the tests with the endpoint kind
stalled (HTTPS). Printed per call: the answer time in each mode (median and worst of
``--repeat``) against the configured deadline (``http_timeout`` / ``timeout``), and the reason
the provider gave (what the broker logs). Everything stays on 127.0.0.1; every call is bounded
(a call that outlives the deadline by 30 s is reported as "no answer").

Run: .venv/bin/python bench/outage_upstream.py [--timeout 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import secrets
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the emulator and tarpit of tests/

from providers.base import ProviderError
from providers.entra.config import EntraProviderConfig
from providers.entra.provider import EntraProvider
from providers.oidc.config import OidcProviderConfig
from providers.oidc.discovery import WELL_KNOWN
from providers.oidc.provider import OidcProvider
from tests.emulators.entra import CLIENT_ID, CLIENT_SECRET, TENANT, EntraEmulator
from tests.providers.entra.helpers import CALLBACK as ENTRA_CALLBACK
from tests.providers.entra.helpers import authorize, sign_in
from tests.providers.tarpit import Tarpit, oidc_discovery

warnings.filterwarnings("ignore", message="response_mode='form_post' is recommended")
MODES = ("hang", "drip")
OIDC_CALLBACK = "http://127.0.0.1:9/callback/bench"
Call = Callable[[], Awaitable[object]]


async def timed(call: Call, seconds: float) -> tuple[float, str]:
    """Seconds until ``call`` gave up, and its reason."""
    started = time.monotonic()
    try:
        await asyncio.wait_for(call(), seconds + 30)
        reason = "answered (not stalled?)"
    except ProviderError as exc:
        reason = f"{type(exc).__name__}: {exc}"
    except TimeoutError:
        reason = "no answer"
    return time.monotonic() - started, reason


# -- OIDC ---------------------------------------------------------------------------------------
def oidc(issuer: str, seconds: float) -> OidcProvider:
    return OidcProvider(
        OidcProviderConfig(
            id="bench",
            display_name="Bench OP",
            issuer=issuer,
            client_id="rp",
            client_secret="rp-secret",  # noqa: S106 - a throwaway client of a tarpit
            http_timeout=seconds,
        )
    )


async def oidc_call(kind: str, mode: str, seconds: float) -> tuple[float, str]:
    pit = Tarpit(mode)
    with pit.serve() as base:
        if kind != "discovery":
            pit.documents[WELL_KNOWN] = oidc_discovery(base)
        provider = oidc(base, seconds)
        try:
            if kind == "discovery":
                return await timed(provider.metadata, seconds)
            if kind == "token":
                state = secrets.token_urlsafe(16)
                _, flow = await provider.login_url(OIDC_CALLBACK, state)
                return await timed(
                    lambda: provider.handle_callback(OIDC_CALLBACK, {"code": "c", "state": state}, flow), seconds
                )
            if kind == "JWKS":
                return await timed(lambda: provider.keys.candidates("kid", "RS256"), seconds)
            metadata = await provider.metadata()
            token = {"access_token": "at", "token_type": "Bearer"}
            return await timed(lambda: provider._userinfo(metadata, token, "sub"), seconds)
        finally:
            await provider.aclose()


# -- Entra --------------------------------------------------------------------------------------
def entra(emulator: EntraEmulator, seconds: float) -> EntraProvider:
    return EntraProvider(
        EntraProviderConfig(
            id="entra",
            display_name="Bench Entra",
            tenant_id=TENANT,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            authority_host=emulator.base,
            graph_url=emulator.base,
            ca_file=str(emulator.ca_file),
            timeout=seconds,
        )
    )


async def entra_call(emulator: EntraEmulator, kind: str, mode: str, seconds: float) -> tuple[float, str]:
    emulator.stall.clear()
    provider = entra(emulator, seconds)
    try:
        if kind == "discovery":
            emulator.stall["discovery"] = mode
            return await timed(lambda: provider.login_url(ENTRA_CALLBACK, "state"), seconds)
        if kind in ("token (code)", "JWKS"):
            params, flow = await authorize(provider, emulator, "alice")
            emulator.stall["token" if kind.startswith("token") else "jwks"] = mode
            return await timed(lambda: provider.handle_callback(ENTRA_CALLBACK, params, flow), seconds)
        identity = await sign_in(provider, emulator, "alice")
        if kind == "Graph":
            await provider.refresh(identity)  # the app-only token is cached: only Graph stalls
            emulator.stall["graph"] = mode
        else:  # the app-only token of the refresh-time re-check
            emulator.stall["token"] = mode
        return await timed(lambda: provider.refresh(identity), seconds)
    finally:
        emulator.stall.clear()
        await provider.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeout", type=float, default=10.0, help="the providers' deadline, seconds")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    rows: list[tuple[str, dict[str, list[float]], str]] = []

    async def measure(name: str, run: Callable[[str], Awaitable[tuple[float, str]]]) -> None:
        times: dict[str, list[float]] = {}
        reason = ""
        for mode in MODES:
            for _ in range(args.repeat):
                elapsed, reason = await run(mode)
                times.setdefault(mode, []).append(elapsed)
        rows.append((name, times, reason))
        print(f"  measured {name}", file=sys.stderr)

    for kind in ("discovery", "token", "JWKS", "userinfo"):
        await measure(f"OIDC {kind}", lambda mode, kind=kind: oidc_call(kind, mode, args.timeout))
    with tempfile.TemporaryDirectory() as directory:
        emulator = EntraEmulator()
        with emulator.serve(Path(directory)):
            emulator.allow_redirect(ENTRA_CALLBACK)
            for kind in ("discovery", "token (code)", "JWKS", "token (app-only)", "Graph"):
                await measure(f"Entra {kind}", lambda mode, kind=kind: entra_call(emulator, kind, mode, args.timeout))

    print(f"\nDeadline {args.timeout:g} s; answer time in seconds, median / worst of {args.repeat}.\n")
    print(f"| {'call':<24} | {'hang':>13} | {'drip':>13} | reason (last, drip) |")
    print(f"|{'-' * 26}|{'-' * 15}|{'-' * 15}|---|")
    for name, times, reason in rows:
        cells = [f"{statistics.median(times[m]):5.2f} / {max(times[m]):5.2f}" for m in MODES]
        short = re.sub(r"https?://127\.0\.0\.1:\d+", "", reason).replace(TENANT, "{tid}")
        print(f"| {name:<24} | {cells[0]:>13} | {cells[1]:>13} | {short[:140]} |")


if __name__ == "__main__":
    asyncio.run(main())
