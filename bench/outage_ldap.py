"""How fast the LDAP provider answers when the directory is down, hung, or half there.

Loopback only. Starts a private ``slapd`` (the demo directory) and measures, through the LDAP
provider with its default timeouts (``connect_timeout`` 5 s, ``operation_timeout`` 10 s,
``request_deadline`` 10 s, ``failure_backoff`` 30 s unless given), the answer time of sign-ins
and lookups (the refresh-time re-check) against:

- down: a closed port (connection refused);
- hung: a listener that accepts connections and never answers;
- stopped: the slapd itself, SIGSTOPped after a first sign-in (a kept connection goes silent);
- failover: a dead or a hung first URL, then the real slapd (for the hung one, with
  ``operation_timeout`` set below ``request_deadline``, as docs/configuration.md advises);
- queued: ``--burst`` sign-ins at once against the hung listener with ``pool_size`` 2.

Each row: how many answers, the first, the median and the slowest, and what they were. Bounded:
every request ends within ``request_deadline``, so the run takes about
``2 * repeat * request_deadline + 2 * request_deadline`` seconds plus start-up.

Run: .venv/bin/python bench/outage_ldap.py [--repeat 2] [--deadline 10] [--burst 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from broker.devstack import Slapd, free_port
from providers.base import Identity, ProviderError
from providers.ldap.config import LdapProviderConfig
from providers.ldap.provider import LdapProvider

BASE = "dc=demo,dc=local"


def config(slapd: Slapd, urls: list[str], **over: Any) -> LdapProviderConfig:
    values: dict[str, Any] = {
        "id": "demo-ldap",
        "display_name": "Demo directory",
        "urls": urls,
        "bind_dn": slapd.service_dn,
        "bind_password": slapd.service_password,
        "user_base_dn": f"ou=people,{BASE}",
        "group_base_dn": f"ou=groups,{BASE}",
    }
    values.update(over)
    return LdapProviderConfig(**values)


async def timed(call: Callable[[], Awaitable[Identity]]) -> tuple[float, str]:
    start = time.perf_counter()
    try:
        await call()
        outcome = "answered"
    except ProviderError as exc:
        outcome = type(exc).__name__
    return (time.perf_counter() - start) * 1000, outcome


def row(scenario: str, operation: str, results: list[tuple[float, str]]) -> None:
    times = [t for t, _ in results]
    outcomes = sorted({o for _, o in results})
    print(
        f"{scenario:<22}{operation:<9}{len(times):>4}{times[0]:>10.0f}{statistics.median(times):>10.0f}"
        f"{max(times):>10.0f}  {', '.join(outcomes)}"
    )


async def measure(provider: LdapProvider, repeat: int, scenario: str) -> None:
    for operation in ("sign-in", "lookup"):
        results = []
        for _ in range(repeat):
            call = (
                (lambda: provider.login("alice", "demo-alice"))
                if operation == "sign-in"
                else (lambda: provider.lookup("alice"))
            )
            results.append(await timed(call))
        row(scenario, operation, results)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="requests per scenario and operation")
    parser.add_argument("--deadline", type=float, default=10.0, help="request_deadline (the default is 10)")
    parser.add_argument("--burst", type=int, default=8, help="sign-ins at once in the queued scenario")
    args = parser.parse_args()
    deadline = {"request_deadline": args.deadline}
    with (
        tempfile.TemporaryDirectory(prefix="mcpb-ldap-outage-") as work,
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as hung,
    ):
        hung.bind(("127.0.0.1", 0))
        hung.listen(256)  # accepted by the kernel, never answered
        hung_url = f"ldap://127.0.0.1:{hung.getsockname()[1]}"
        dead_url = f"ldap://127.0.0.1:{free_port()}"
        slapd = Slapd(Path(work)).start()
        try:
            print(f"request_deadline {args.deadline:g} s; times in ms")
            print(f"{'scenario':<22}{'':<9}{'n':>4}{'first':>10}{'median':>10}{'max':>10}  outcome")
            scenarios: list[tuple[str, LdapProviderConfig]] = [
                ("up (for scale)", config(slapd, [slapd.url], **deadline)),
                ("down", config(slapd, [dead_url], **deadline)),
                ("hung", config(slapd, [hung_url], **deadline)),
                ("failover from dead", config(slapd, [dead_url, slapd.url], **deadline)),
                (
                    "failover from hung",
                    config(slapd, [hung_url, slapd.url], operation_timeout=args.deadline / 5, **deadline),
                ),
            ]
            for name, settings in scenarios:
                provider = LdapProvider(settings)
                await measure(provider, args.repeat, name)
                await provider.aclose()

            provider = LdapProvider(config(slapd, [hung_url], pool_size=2, **deadline))
            burst = await asyncio.gather(
                *(timed(lambda: provider.login("alice", "demo-alice")) for _ in range(args.burst))
            )
            row(f"queued x{args.burst} (pool 2)", "sign-in", sorted(burst))
            await provider.aclose()

            provider = LdapProvider(config(slapd, [slapd.url], **deadline))
            await provider.login("alice", "demo-alice")  # a service connection is kept
            assert slapd._child is not None
            assert slapd._child.proc is not None
            os.kill(slapd._child.proc.pid, signal.SIGSTOP)
            try:
                await measure(provider, args.repeat, "stopped slapd")
            finally:
                os.kill(slapd._child.proc.pid, signal.SIGCONT)
            await provider.aclose()
        finally:
            slapd.stop()


if __name__ == "__main__":
    asyncio.run(main())
