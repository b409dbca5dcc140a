"""How soon mcp_app's revocation view is whole again after a Redis restart.

A private Redis with its append-only file; mcp_app's ``RevocationWatcher`` on it; Redis stopped
for each of ``--outages`` seconds and started again on the same port; the moment it answers, a
broker revokes a grant (``RedisStore.revoke_grant``: the set entry and the announcement, which
the watcher, not yet resubscribed, does not hear). The figure is the time from Redis answering
to the watcher refusing the grant; the promise is "within a second".

Run: .venv/bin/python bench/revocation_resync.py [--outages 1 3 6 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path

import structlog

from broker.devstack import RedisServer
from broker.store.client import create_redis
from broker.store.keys import Keys
from broker.store.records import Grant
from broker.store.redis_store import RedisStore
from mcp_broker_verifier.revocations import RevocationWatcher


async def one_restart(server: RedisServer, outage: float, grant_id: str) -> float:
    client = create_redis(server.url)
    watcher = RevocationWatcher(client, key_prefix="bench")
    await watcher.start()
    try:
        await asyncio.to_thread(server.stop)
        await asyncio.sleep(outage)
        await asyncio.to_thread(server.start)
        answering = time.monotonic()
        broker = create_redis(server.url)
        store = RedisStore(broker, Keys("bench"))
        await store.create_grant(
            Grant(grant_id=grant_id, subject="bench", status="active", expires_at=time.time() + 600),
            "h",
            refresh_ttl=600,
            grant_ttl=600,
        )
        await store.revoke_grant(grant_id, "bench")
        while not watcher.is_revoked(grant_id):
            if time.monotonic() - answering > 30:
                raise RuntimeError("the watcher never learned of the revocation")
            await asyncio.sleep(0.005)
        took = time.monotonic() - answering
        await broker.aclose()
        return took
    finally:
        await watcher.stop()
        await client.aclose()


async def main(outages: list[float], rounds: int) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))  # no retry warnings
    figures: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp), persist=True).start()
        try:
            for n in range(rounds):
                for outage in outages:
                    took = await one_restart(server, outage, f"g-{n}-{outage}")
                    figures.append(took)
                    print(
                        f"round {n + 1}, Redis down {outage:g} s: revocation known {took * 1000:.0f} ms after it answered"
                    )
        finally:
            server.stop()
    print(
        f"revocation known after a Redis restart: median {statistics.median(figures) * 1000:.0f} ms, "
        f"max {max(figures) * 1000:.0f} ms over {len(figures)} restarts"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outages", type=float, nargs="+", default=[1.0, 3.0, 6.0, 10.0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(main(args.outages, args.rounds))
