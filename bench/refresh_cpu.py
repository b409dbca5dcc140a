"""CPU microseconds per refresh-token grant inside one broker process, and of its hot-path parts.

``bench/refresh.py`` measures the served broker end to end (HTTP, workers, wrk); on a shared
machine its figures move with the neighbours. This one isolates the broker's own code: the app
built by ``create_app`` is called as ASGI directly (no HTTP server, no load generator) with real
refresh tokens from real sign-ins against a private ``redis-server`` and ``slapd``, and CPU time is
read with ``time.process_time`` over rounds of refreshes; the best round and the median are
printed (the best is the least disturbed by other programs). Production settings: logging at
``info`` (the request line and the audit event are rendered, to a file), re-check interval 60 s.

Parts, each alone in a loop: ``log`` (the two lines a refresh writes), ``mint`` (an ES256 access
token), ``seal`` (the successor sealed under the old refresh token).

Run: .venv/bin/python bench/refresh_cpu.py [--refreshes 1000] [--rounds 10] [--chains 8] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import cProfile
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.types import Receive, Scope, Send

from broker.metrics_env import prepare

# Before prometheus_client is first imported: the multiprocess storage served workers use.
atexit.register(shutil.rmtree, prepare(), ignore_errors=True)
sys.path.insert(0, str(Path(__file__).parent))
import refresh as served  # noqa: E402  (bench/refresh.py: its config, sign-in and HTTP client)
from _common import asgi_request, http_scope, run_with_services, work_dir_logging_to_file  # noqa: E402

from broker.devstack import RedisServer, Slapd, free_port  # noqa: E402

ASGIApp = Callable[..., Any]


def rounds(label: str, per_round: int, count: int, run: Callable[[], Any]) -> None:
    figures = []
    for _ in range(count):
        began = time.process_time()
        run()
        figures.append((time.process_time() - began) / per_round * 1e6)
    print(f"{label:<38} best {min(figures):7.1f} µs   median {statistics.median(figures):7.1f} µs", file=sys.__stdout__)


def parts(count: int) -> None:
    import structlog

    from broker.audit import audit
    from broker.oauth.signing import KeyRing, new_kek
    from broker.oauth.tokens import mint_access_token, new_handle, seal_for

    http = structlog.get_logger("mcp_broker.http")
    structlog.contextvars.bind_contextvars(request_id="0123456789abcdef")

    def log_lines() -> None:
        for _ in range(2000):
            http.info("http_request", method="POST", path="/token", status=200, duration_ms=1.23)
            audit(
                "token_refreshed",
                grant_id="Zm9vYmFyYmF6cXV4cXV1eA",
                client_id="c8f1e2d3-aaaa-bbbb-cccc-0123456789ab",
                sub="uid=alice,ou=people,dc=example,dc=org",
                scope="notes:read notes:write",
                scope_narrowed=None,
                policy_version="3f2a1b",
            )

    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp)
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        (keys / "k1.pem").write_bytes(pem)
        ring = KeyRing(None, kek=new_kek(), keys_dir=str(keys))
        asyncio.run(ring.refresh())

    def mint() -> None:
        for _ in range(2000):
            mint_access_token(
                ring,
                issuer="http://127.0.0.1:8000",
                subject="uid=alice,ou=people,dc=example,dc=org",
                client_id="c8f1e2d3-aaaa-bbbb-cccc-0123456789ab",
                resource=served.RESOURCE,
                scopes=["notes:read", "notes:write"],
                grant_id="Zm9vYmFyYmF6cXV4cXV1eA",
                ttl=300,
                auth_time=1_700_000_000,
            )

    token = new_handle("rt", "Zm9vYmFyYmF6cXV4cXV1eA")
    body = {"access_token": "x" * 600, "token_type": "Bearer", "expires_in": 300, "scope": "notes:read"}

    def seal() -> None:
        for _ in range(2000):
            seal_for(token, body)

    from broker.middleware import RequestContextMiddleware

    async def answer(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"{}"})

    wrapped = RequestContextMiddleware(answer)

    async def around(app: ASGIApp) -> None:
        for _ in range(2000):
            await asgi_post(app, "/token", b"grant_type=refresh_token")

    def middleware() -> None:
        asyncio.run(around(wrapped))

    def bare() -> None:
        asyncio.run(around(answer))

    rounds("part: two log lines (request, audit)", 2000, count, log_lines)
    rounds("part: mint an ES256 access token", 2000, count, mint)
    rounds("part: seal the successor", 2000, count, seal)
    rounds("part: an app that answers at once", 2000, count, bare)
    rounds("part: the same in the request middleware", 2000, count, middleware)


async def asgi_post(
    app: ASGIApp, path: str, body: bytes, content_type: bytes = b"application/x-www-form-urlencoded"
) -> tuple[int, bytes]:
    headers = [
        (b"host", b"127.0.0.1"),
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
    ]
    status, _, answer = await asgi_request(app, http_scope("POST", path, headers), body)
    return status, answer


async def whole(args: argparse.Namespace, work: Path, redis: RedisServer, slapd: Slapd) -> None:
    from broker.app import create_app
    from broker.config.loader import load_config

    port = free_port()
    path = work / "broker.yaml"
    path.write_text(served.broker_config(port, 1, redis, slapd, "info", 60))
    config = load_config(path)
    app = create_app(config)
    server, serving, client_id = await served.serve_in_loop(app, port)  # for the sign-ins; refreshes bypass it
    conn = served.Connection(port)
    tokens = [await served.sign_in(conn, client_id, served.USERS[n % 2]) for n in range(args.chains)]
    conn.close()

    async def chain(n: int, count: int) -> None:
        for _ in range(count):
            form = {"grant_type": "refresh_token", "refresh_token": tokens[n], "client_id": client_id}
            status, body = await asgi_post(app, "/token", urlencode(form).encode())
            if status != 200:
                raise RuntimeError(f"refresh answered {status}: {body[:200]!r}")
            tokens[n] = json.loads(body)["refresh_token"]

    per_chain = max(1, args.refreshes // args.chains)
    await asyncio.gather(*(chain(n, 50) for n in range(args.chains)))  # warm up
    if args.redis_stats:
        await redis_stats(
            redis, lambda: asyncio.gather(*(chain(n, per_chain) for n in range(args.chains))), per_chain * args.chains
        )
    figures = []
    for _ in range(args.rounds):
        began = time.process_time()
        await asyncio.gather(*(chain(n, per_chain) for n in range(args.chains)))
        figures.append((time.process_time() - began) / (per_chain * args.chains) * 1e6)
    refused = []  # the framework's share: middleware, routing, dependencies, an error answer
    for _ in range(args.rounds if args.refused else 0):
        began = time.process_time()
        for _ in range(1000):
            status, _body = await asgi_post(app, "/token", b"x", content_type=b"text/plain")
            assert status == 400, status
        refused.append((time.process_time() - began) / 1000 * 1e6)
    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        await asyncio.gather(*(chain(n, per_chain) for n in range(args.chains)))
        profile.disable()
        profile.dump_stats(args.profile)
    server.should_exit = True
    await serving
    print(
        f"{'refresh grant, whole (ASGI, no HTTP)':<38} best {min(figures):7.1f} µs   "
        f"median {statistics.median(figures):7.1f} µs   ({args.rounds} rounds of {per_chain * args.chains}, "
        f"{args.chains} chains)",
        file=sys.__stdout__,
    )
    if refused:
        print(
            f"{'POST /token refused (not a form)':<38} best {min(refused):7.1f} µs   median "
            f"{statistics.median(refused):7.1f} µs   (the framework around the grant, and an error answer)",
            file=sys.__stdout__,
        )


async def redis_stats(redis: RedisServer, run: Callable[[], Any], count: int) -> None:
    """What redis-server executes per refresh: its commands (INFO commandstats) and its CPU."""
    from redis.asyncio import Redis

    client = Redis.from_url(redis.url)

    async def sample() -> tuple[dict[str, tuple[int, int]], float]:
        stats = await client.info("commandstats")
        cpu = await client.info("cpu")
        calls = {k: (int(v["calls"]), int(v["usec"])) for k, v in stats.items()}
        return calls, float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])

    before, cpu_before = await sample()
    await run()
    after, cpu_after = await sample()
    grants = [key async for key in client.scan_iter(match="*:grant", count=1000)]
    sizes = [await client.strlen(key) for key in grants[:20]]
    print(f"grant records: {len(grants)}, {min(sizes, default=0)}-{max(sizes, default=0)} bytes", file=sys.__stdout__)
    await client.aclose()
    print(f"redis-server per refresh: {(cpu_after - cpu_before) / count * 1e6:.1f} µs CPU", file=sys.__stdout__)
    for name, (calls, usec) in sorted(after.items()):
        was = before.get(name, (0, 0))
        if calls - was[0] - (name in ("cmdstat_info",)) * 2 > 0:
            print(
                f"  {name[8:]:<12} {(calls - was[0]) / count:6.2f} calls  {(usec - was[1]) / count:7.1f} µs",
                file=sys.__stdout__,
            )


def main(args: argparse.Namespace) -> int:
    with work_dir_logging_to_file("mcpb-cpu-") as work:
        if not args.whole_only:
            parts(args.rounds)
        if args.parts_only:
            return 0
        run_with_services(work, lambda redis, slapd: whole(args, work, redis, slapd))
    command = " ".join([os.path.relpath(sys.executable), *sys.argv])
    print(f"command: {command}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--refreshes", type=int, default=1000, help="refreshes per round (default 1000)")
    parser.add_argument("--rounds", type=int, default=10, help="rounds; the best and the median are shown")
    parser.add_argument("--chains", type=int, default=8, help="concurrent refresh chains (default 8)")
    parser.add_argument("--whole-only", action="store_true", help="skip the parts")
    parser.add_argument("--parts-only", action="store_true", help="skip the whole refresh")
    parser.add_argument("--redis-stats", action="store_true", help="print Redis commands and CPU per refresh")
    parser.add_argument("--profile", help="write a cProfile of one more round to this file")
    parser.add_argument(
        "--refused", action=argparse.BooleanOptionalAction, default=True, help="also time refused POSTs to /token"
    )
    raise SystemExit(main(parser.parse_args()))
