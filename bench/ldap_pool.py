"""LDAP lookups per second (the refresh-time re-check) and CPU per lookup, near and far.

A directory in production is rarely on loopback: Active Directory is a few milliseconds away.
This starts a private ``slapd`` (the demo directory) and, in a process of its own, a TCP proxy in
front of it that holds every chunk of data for ``--latency-ms`` in each direction
(bench/delay_proxy.py), then runs ``--concurrency`` lookups at a time (as concurrent refreshes
do) for ``--seconds`` per row through the LDAP provider, directly and through the proxy.
Printed per pool size: lookups per second, p50/p99 latency, and the benchmark process's CPU time
per lookup (user + system, all threads; slapd and the proxy run in processes of their own), the
figure that stays meaningful on a shared, noisy machine.

``--baseline REV`` adds the same rows for the provider as it was at git revision REV
(providers/ldap/provider.py taken from git), measured in the same run, side by side.

Run: .venv/bin/python bench/ldap_pool.py [--latency-ms 5] [--sizes 1,2,4,8] [--concurrency 16]
     [--seconds 4] [--baseline REV]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from delay_proxy import DelayProxy

from broker.devstack import Slapd
from providers.ldap.config import LdapProviderConfig
from providers.ldap.provider import LdapProvider

BASE = "dc=demo,dc=local"
USERS = ["alice", "bob", "carol"]
ROOT = Path(__file__).resolve().parent.parent


def provider_at(rev: str, work: Path) -> Any:
    """The LdapProvider class of providers/ldap/provider.py at git revision ``rev``."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:providers/ldap/provider.py"], check=True, capture_output=True
    ).stdout
    path = work / f"ldap_provider_{rev.replace('/', '_')}.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module.LdapProvider


async def run(provider: Any, seconds: float, concurrency: int) -> tuple[float, float, list[float]]:
    """Lookups per second, CPU milliseconds per lookup, and each lookup's latency (ms)."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(n: int) -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            await provider.lookup(USERS[n % len(USERS)])
            latencies.append((time.perf_counter() - start) * 1000)

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - start
    return len(latencies) / wall, cpu * 1000 / max(1, len(latencies)), latencies


def config(slapd: Slapd, url: str, pool_size: int) -> LdapProviderConfig:
    return LdapProviderConfig(
        id="demo-ldap",
        display_name="Demo directory",
        urls=[url],
        bind_dn=slapd.service_dn,
        bind_password=slapd.service_password,
        user_base_dn=f"ou=people,{BASE}",
        group_base_dn=f"ou=groups,{BASE}",
        pool_size=pool_size,
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=5.0, help="added each way by the proxy")
    parser.add_argument("--sizes", default="1,2,4,8", help="pool sizes to measure")
    parser.add_argument("--concurrency", type=int, default=16, help="lookups in flight at once")
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--baseline", metavar="REV", help="also measure the provider at this git revision")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="mcpb-ldap-pool-") as work:
        providers: list[tuple[str, Any]] = [("now", LdapProvider)]
        if args.baseline:
            providers.insert(0, (args.baseline[:10], provider_at(args.baseline, Path(work))))
        slapd = Slapd(Path(work)).start()
        try:
            with DelayProxy(slapd.port, args.latency_ms) as proxy_port:
                print(
                    f"{args.concurrency} lookups in flight, {args.seconds:g} s each; "
                    f"far = through a proxy adding {args.latency_ms:g} ms each way"
                )
                print(
                    f"{'code':<12}{'directory':<10}{'pool':>5}{'lookups/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'CPU ms':>9}"
                )
                for where, url in (("near", slapd.url), ("far", f"ldap://127.0.0.1:{proxy_port}")):
                    for size in sizes:
                        for name, cls in providers:
                            provider = cls(config(slapd, url, size))
                            await provider.lookup("alice")  # connect and bind outside the measurement
                            rate, cpu, latencies = await run(provider, args.seconds, args.concurrency)
                            await provider.aclose()
                            p99 = sorted(latencies)[int(0.99 * (len(latencies) - 1))]
                            print(
                                f"{name:<12}{where:<10}{size:>5}{rate:>11.0f}"
                                f"{statistics.median(latencies):>9.1f}{p99:>9.1f}{cpu:>9.2f}",
                                flush=True,
                            )
        finally:
            slapd.stop()


if __name__ == "__main__":
    asyncio.run(main())
