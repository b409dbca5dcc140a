"""LDAP lookups per second (the refresh-time re-check) by connection pool size, near and far.

A directory in production is rarely on loopback: Active Directory is a few milliseconds away.
This starts a private ``slapd`` (the demo directory) and, in a process of its own, a TCP relay in
front of it that holds every chunk of data for ``--latency-ms`` in each direction, then runs
``--concurrency`` lookups at a time (as concurrent refreshes do) for ``--seconds`` per pool size
through the LDAP provider, directly and through the relay. Printed: lookups per second and p50/p99
latency per pool size.

Run: .venv/bin/python bench/ldap_pool.py [--latency-ms 5] [--sizes 1,2,4,8] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

from broker.devstack import Slapd, free_port
from providers.ldap.config import LdapProviderConfig
from providers.ldap.provider import LdapProvider

BASE = "dc=demo,dc=local"
USERS = ["alice", "bob", "carol"]


def relay(listen_port: int, target_port: int, latency: float, ready: object) -> None:
    """Forward loopback TCP to ``target_port``, each chunk held ``latency`` seconds on the way."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    writer.close()
                    return
                await asyncio.sleep(max(0.0, due - loop.time()))
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(deliver())
        while data := await reader.read(65536):
            queue.put_nowait((loop.time() + latency, data))
        queue.put_nowait((loop.time() + latency, b""))
        await sender

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w), return_exceptions=True)

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
        ready.set()  # type: ignore[attr-defined]
        async with server:
            await server.serve_forever()

    asyncio.run(main())


async def run(provider: LdapProvider, seconds: float, concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(n: int) -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            await provider.lookup(USERS[n % len(USERS)])
            latencies.append((time.perf_counter() - start) * 1000)

    start = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return len(latencies) / (time.perf_counter() - start), latencies


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=5.0, help="added each way by the relay")
    parser.add_argument("--sizes", default="1,2,4,8", help="pool sizes to measure")
    parser.add_argument("--concurrency", type=int, default=16, help="lookups in flight at once")
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="mcpb-ldap-pool-") as work:
        slapd = Slapd(Path(work)).start()
        relay_port = free_port()
        ready = multiprocessing.Event()
        relay_proc = multiprocessing.Process(
            target=relay, args=(relay_port, slapd.port, args.latency_ms / 1000, ready), daemon=True
        )
        relay_proc.start()
        ready.wait(10)
        try:
            print(
                f"{args.concurrency} lookups in flight, {args.seconds:.0f} s each; "
                f"far = through a relay adding {args.latency_ms:g} ms each way"
            )
            print(f"{'directory':<10}{'pool':>5}{'lookups/s':>11}{'p50 ms':>9}{'p99 ms':>9}")
            for where, url in (("near", slapd.url), ("far", f"ldap://127.0.0.1:{relay_port}")):
                for size in sizes:
                    provider = LdapProvider(config(slapd, url, size))
                    await provider.lookup("alice")  # connect and bind outside the measurement
                    rate, latencies = await run(provider, args.seconds, args.concurrency)
                    await provider.aclose()
                    p99 = sorted(latencies)[int(0.99 * (len(latencies) - 1))]
                    print(f"{where:<10}{size:>5}{rate:>11.0f}{statistics.median(latencies):>9.1f}{p99:>9.1f}")
        finally:
            relay_proc.terminate()
            slapd.stop()


if __name__ == "__main__":
    asyncio.run(main())
