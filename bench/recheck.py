"""The refresh-time upstream re-check, shared: CPU per answer by where it comes from, and how many
directory lookups concurrent refreshes of one user make.

Starts a private ``redis-server`` and ``slapd`` (the demo directory) and drives
``broker.oauth.recheck.Rechecks`` (what ``GrantService`` runs at every refresh) with the real LDAP
provider and the Redis store; lookups are counted by a thin subclass of the provider.

1. CPU per answer, ``--calls`` sequential answers each, for this process (user + system, all
   threads) and for redis-server and slapd (from /proc): a directory lookup (interval 0); the
   answer another process keeps in Redis (interval 60: one EVALSHA, the record parsed and opened);
   this process's memo (interval 60, no I/O). CPU time, not wall time: stable on a shared machine.
2. Lookups for ``--concurrency`` concurrent refreshes of one user, spread over ``--processes``
   independent sharers on one Redis (as broker workers and replicas are), at interval 0 and 60.

Run: .venv/bin/python bench/recheck.py [--calls 2000] [--concurrency 64] [--processes 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from _common import demo_ldap_config

from broker.devstack import RedisServer, Slapd
from broker.oauth import recheck
from broker.oauth.grants import identity_from, identity_record
from broker.oauth.recheck import Rechecks
from broker.oauth.sealing import Sealer
from broker.oauth.signing import new_kek
from broker.store.client import create_redis
from broker.store.keys import Keys
from broker.store.redis_store import RedisStore
from providers.base import Identity
from providers.ldap.provider import LdapProvider

_CLK_TCK = os.sysconf("SC_CLK_TCK")


class CountingLdap(LdapProvider):
    lookups = 0

    async def refresh(self, identity: Identity) -> Identity:
        CountingLdap.lookups += 1
        return await super().refresh(identity)


def child_cpu(server: RedisServer | Slapd) -> float:
    """Seconds of CPU a devstack server's process has used (utime + stime)."""
    proc = server._child.proc if server._child else None
    if proc is None:
        return 0.0
    fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def sharer(store: RedisStore, sealer: Sealer, interval: int) -> Rechecks:
    return Rechecks(
        store,
        lambda: interval,
        lambda identity: identity_record(identity, sealer),
        lambda record: identity_from(record, sealer),
    )


async def cpu_per_answer(
    name: str, calls: int, answer: Callable[[], Awaitable[object]], servers: tuple[RedisServer, Slapd]
) -> None:
    before = own_cpu(), child_cpu(servers[0]), child_cpu(servers[1])
    lookups = CountingLdap.lookups
    for _ in range(calls):
        await answer()
    after = own_cpu(), child_cpu(servers[0]), child_cpu(servers[1])
    us = [(b - a) / calls * 1e6 for a, b in zip(before, after, strict=True)]
    print(
        f"{name:<44} {us[0]:8.1f} µs {us[1]:8.1f} µs {us[2]:8.1f} µs   "
        f"{(CountingLdap.lookups - lookups) / calls:5.2f} lookups per answer"
    )


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="mcpb-recheck-") as tmp:
        redis_server = RedisServer(Path(tmp), persist=False).start()
        slapd = Slapd(Path(tmp)).start()
        client = create_redis(redis_server.url)
        providers: list[CountingLdap] = []
        try:
            config = demo_ldap_config(slapd)
            providers = [CountingLdap(config) for _ in range(max(2, args.processes))]
            provider = providers[0]
            alice = await provider.lookup("alice")
            sealer = Sealer(new_kek())
            servers = (redis_server, slapd)

            def store() -> RedisStore:
                return RedisStore(client, Keys(f"b{secrets.token_hex(4)}"))

            print(
                f"{'CPU per answer (' + str(args.calls) + ' calls each)':<44} {'this proc':>11} {'redis':>11} {'slapd':>11}"
            )
            every = sharer(store(), sealer, 0)
            await cpu_per_answer(
                "directory lookup (interval 0)", args.calls, lambda: every.check(provider, alice, 0), servers
            )
            shared = store()
            writer, reader = sharer(shared, sealer, 60), sharer(shared, sealer, 60)
            await writer.check(provider, alice, 0)  # another process looked alice up: kept in Redis
            original = reader._remember
            reader._remember = lambda *_: None  # type: ignore[method-assign]
            await cpu_per_answer(
                "answer kept in Redis (interval 60, no memo)",
                args.calls,
                lambda: reader.check(provider, alice, 0),
                servers,
            )
            reader._remember = original  # type: ignore[method-assign]
            await reader.check(provider, alice, 0)
            await cpu_per_answer(
                "this process's memo (interval 60)", args.calls, lambda: reader.check(provider, alice, 0), servers
            )

            print(f"\nlookups for {args.concurrency} concurrent refreshes of one user over {args.processes} processes")
            for interval in (0, 60):
                shared = store()
                sharers = [sharer(shared, sealer, interval) for _ in range(args.processes)]
                lookups = CountingLdap.lookups
                started = time.monotonic()
                await asyncio.gather(
                    *(
                        sharers[n % args.processes].check(providers[n % args.processes], alice, 0)
                        for n in range(args.concurrency)
                    )
                )
                print(
                    f"  interval {interval:>2}: {CountingLdap.lookups - lookups} lookup(s), "
                    f"all answered in {(time.monotonic() - started) * 1e3:.1f} ms"
                )
            print(f"\n(waits on another process's lookup are bounded by {recheck.WAIT_SECONDS:g} s)")
        finally:
            for p in providers:
                await p.aclose()
            await client.aclose()
            slapd.stop()
            redis_server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=2000, help="sequential answers per CPU row (default 2000)")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent refreshes of one user (default 64)")
    parser.add_argument("--processes", type=int, default=2, help="independent sharers on one Redis (default 2)")
    asyncio.run(main(parser.parse_args()))
