"""Does a failed LDAP login tell an attacker whether the username exists? Response times compared.

The LDAP provider answers "wrong password" and "unknown user" with one message; this measures
whether the time it takes gives the difference away. For an unknown user the provider still binds
(as a random DN that does not exist), so both paths cost one search and one bind.

A private ``slapd`` (the demo directory) is started for the run. The attempts are interleaved in a
random order so drift in the machine's load hits every kind alike; the first ``--warmup`` are
discarded. Printed per kind: median, p90 and p99 latency in microseconds; then the difference of
the medians (unknown minus wrong password) in microseconds and as a share of the median.

Phase 2 runs the same refusals through the broker's guarded sign-in (``password_login``: the
throttle in a private ``redis-server``, then the provider, then the failure floor, here
``--floor`` seconds), which is what the login form does, and prints the same figures.

Run: .venv/bin/python bench/login_timing.py [--attempts 1000] [--warmup 100] [--floor-attempts 60]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis.asyncio as aioredis
from _common import demo_ldap_config

from broker.devstack import RedisServer, Slapd
from broker.security.password_login import LoginOutcome, password_login
from broker.security.throttle import LoginThrottle
from broker.store.keys import Keys
from broker.store.redis_store import RedisStore
from providers.base import ProviderError
from providers.ldap.provider import LdapProvider


def report(times: dict[str, list[float]]) -> None:
    print(f"{'kind':<26}{'median µs':>11}{'p90 µs':>10}{'p99 µs':>10}")
    for kind, values in times.items():
        median = statistics.median(values)
        print(f"{kind:<26}{median:>11.0f}{percentile(values, 0.9):>10.0f}{percentile(values, 0.99):>10.0f}")
    wrong = statistics.median(times["wrong password (alice)"])
    unknown = statistics.median(times["unknown user"])
    print(f"unknown user minus wrong password, medians: {unknown - wrong:+.0f} µs ({(unknown - wrong) / wrong:+.1%})")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def timed(attempt: Callable[[], Awaitable[object]]) -> tuple[float, str]:
    start = time.perf_counter()
    try:
        result = await attempt()
        outcome = "ok"
        if isinstance(result, LoginOutcome):
            outcome = type(result.error).__name__ if result.error else "throttled" if result.retry_after else "ok"
    except ProviderError as exc:
        outcome = type(exc).__name__
    return (time.perf_counter() - start) * 1e6, outcome


async def measure(
    kinds: dict[str, Callable[[], Awaitable[object]]], attempts: int, warmup: int
) -> dict[str, list[float]]:
    order = [kind for kind in kinds for _ in range(attempts + warmup)]
    random.shuffle(order)
    seen = dict.fromkeys(kinds, 0)
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    outcomes: dict[str, set[str]] = {kind: set() for kind in kinds}
    for kind in order:
        micros, outcome = await timed(kinds[kind])
        seen[kind] += 1
        outcomes[kind].add(outcome)
        if seen[kind] > warmup:
            times[kind].append(micros)
    for kind, found in outcomes.items():
        print(f"  outcomes, {kind}: {', '.join(sorted(found))}")
    return times


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=1000, help="measured attempts per kind")
    parser.add_argument("--warmup", type=int, default=100, help="discarded attempts per kind")
    parser.add_argument("--floor-attempts", type=int, default=60, help="phase 2: measured attempts per kind")
    parser.add_argument("--floor", type=float, default=0.05, help="phase 2: the failure floor, seconds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mcpb-login-timing-") as work:
        slapd = Slapd(Path(work)).start()
        redis_server = RedisServer(Path(work), persist=False).start()
        redis = aioredis.Redis.from_url(redis_server.url)
        provider = LdapProvider(demo_ldap_config(slapd))
        try:
            print(f"phase 1, the LDAP provider alone ({slapd.url}); {args.attempts} attempts per kind, interleaved")
            report(
                await measure(
                    {
                        "wrong password (alice)": lambda: provider.login("alice", "not-her-password"),
                        "unknown user": lambda: provider.login(unknown(), "not-a-password"),
                        "right password (alice)": lambda: provider.login("alice", "demo-alice"),
                    },
                    args.attempts,
                    args.warmup,
                )
            )
            throttle = LoginThrottle(
                RedisStore(redis, Keys("bench")), per_user=10**9, per_ip=10**9, window=60, failure_floor=args.floor
            )

            def guarded(username: str, password: str) -> Awaitable[LoginOutcome]:
                return password_login(throttle, provider, username, password, None)

            print(
                f"\nphase 2, guarded sign-in with a {args.floor * 1000:.0f} ms failure floor; {args.floor_attempts} per kind"
            )
            report(
                await measure(
                    {
                        "wrong password (alice)": lambda: guarded("alice", "not-her-password"),
                        "unknown user": lambda: guarded(unknown(), "not-a-password"),
                    },
                    args.floor_attempts,
                    5,
                )
            )
        finally:
            await provider.aclose()
            await redis.aclose()
            redis_server.stop()
            slapd.stop()


def unknown() -> str:
    return f"nobody{random.randrange(10**6)}"


if __name__ == "__main__":
    asyncio.run(main())
