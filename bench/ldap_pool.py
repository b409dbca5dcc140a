"""LDAP lookups (the refresh-time re-check) or sign-ins per second, and CPU per operation.

A directory in production is rarely on loopback: Active Directory is a few milliseconds away.
This starts a private ``slapd`` (the demo directory) and, in a process of its own, a TCP proxy in
front of it that holds every chunk of data for ``--latency-ms`` in each direction
(bench/delay_proxy.py), then runs ``--concurrency`` lookups at a time (as concurrent refreshes
do) for ``--seconds`` per row through the LDAP provider, directly and through the proxy.
Printed per pool size: lookups per second, p50/p99 latency, and the benchmark process's CPU time
per lookup (user + system, all threads; slapd and the proxy run in processes of their own), the
figure that stays meaningful on a shared, noisy machine.

``--sign-ins`` measures password sign-ins (search, bind as the user, groups) instead, and
``--tls starttls`` or ``--tls ldaps`` puts TLS under either (a throwaway CA from tests/tls.py).

``--baseline REV`` adds the same rows for the provider as it was at git revision REV
(providers/ldap/provider.py taken from git), measured in the same run, side by side.

Run: .venv/bin/python bench/ldap_pool.py [--latency-ms 5] [--sizes 1,2,4,8] [--concurrency 16]
     [--seconds 4] [--sign-ins] [--tls none|starttls|ldaps] [--baseline REV]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the throwaway CA of tests/
from tests.tls import make_ca

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


async def run(provider: Any, seconds: float, concurrency: int, sign_ins: bool) -> tuple[float, float, list[float]]:
    """Operations per second, CPU milliseconds per operation, and each one's latency (ms)."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(n: int) -> None:
        user = USERS[n % len(USERS)]
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            await (provider.login(user, f"demo-{user}") if sign_ins else provider.lookup(user))
            latencies.append((time.perf_counter() - start) * 1000)

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - start
    return len(latencies) / wall, cpu * 1000 / max(1, len(latencies)), latencies


def config(slapd: Slapd, url: str, pool_size: int, **tls: Any) -> LdapProviderConfig:
    return LdapProviderConfig(
        id="demo-ldap",
        display_name="Demo directory",
        urls=[url],
        bind_dn=slapd.service_dn,
        bind_password=slapd.service_password,
        user_base_dn=f"ou=people,{BASE}",
        group_base_dn=f"ou=groups,{BASE}",
        pool_size=pool_size,
        **tls,
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=5.0, help="added each way by the proxy")
    parser.add_argument("--sizes", default="1,2,4,8", help="pool sizes to measure")
    parser.add_argument("--concurrency", type=int, default=16, help="operations in flight at once")
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--sign-ins", action="store_true", help="measure sign-ins instead of lookups")
    parser.add_argument("--tls", choices=["none", "starttls", "ldaps"], default="none", help="transport")
    parser.add_argument("--baseline", metavar="REV", help="also measure the provider at this git revision")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    what = "sign-ins" if args.sign_ins else "lookups"
    with tempfile.TemporaryDirectory(prefix="mcpb-ldap-pool-") as work:
        providers: list[tuple[str, Any]] = [("now", LdapProvider)]
        if args.baseline:
            providers.insert(0, (args.baseline[:10], provider_at(args.baseline, Path(work))))
        tls: dict[str, Any] = {}
        certificate = None
        if args.tls != "none":
            ca = make_ca(Path(work))
            certificate = ca.issue(Path(work), hosts=["127.0.0.1", "localhost"])
            tls = {"ca_file": str(ca.cert_path), "start_tls": args.tls == "starttls"}
        slapd = Slapd(Path(work), tls=certificate).start()
        port = slapd.ldaps_port if args.tls == "ldaps" and slapd.ldaps_port else slapd.port
        scheme = "ldaps" if args.tls == "ldaps" else "ldap"
        try:
            with DelayProxy(port, args.latency_ms) as proxy_port:
                print(
                    f"{args.concurrency} {what} in flight, {args.seconds:g} s each, TLS: {args.tls}; "
                    f"far = through a proxy adding {args.latency_ms:g} ms each way"
                )
                print(
                    f"{'code':<12}{'directory':<10}{'pool':>5}{what + '/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'CPU ms':>9}"
                )
                for where, at in (("near", port), ("far", proxy_port)):
                    for size in sizes:
                        for name, cls in providers:
                            provider = cls(config(slapd, f"{scheme}://127.0.0.1:{at}", size, **tls))
                            await provider.lookup("alice")  # connect and bind outside the measurement
                            rate, cpu, latencies = await run(provider, args.seconds, args.concurrency, args.sign_ins)
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
