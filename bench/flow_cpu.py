"""CPU milliseconds per complete sign-in flow inside one broker process, and per step.

``bench/refresh.py`` phase 1 measures served flows end to end (HTTP, two workers, a Python load
generator); on a shared machine its figures move with the neighbours. This one isolates the
broker's own code: the app built by ``create_app`` is called as ASGI directly (no HTTP server)
by ``--browsers`` concurrent browsers, each running bench/refresh.py's ``sign_in`` (authorize →
consent → login page → LDAP login → code exchange) against a private ``redis-server`` and
``slapd``, and CPU time of this process is read with ``time.process_time`` over rounds of flows;
the best round and the median are printed. The driver's own share (building requests, parsing
pages, in this process too) is timed alone against canned answers and printed beside it.
Settings as in bench/refresh.py: logging at ``info`` (to a file).

``--steps`` also times each of the five requests alone (sequentially, ``--step-flows`` flows).

Run: .venv/bin/python bench/flow_cpu.py [--flows 300] [--rounds 8] [--browsers 8] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import cProfile
import os
import shutil
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from broker.metrics_env import prepare

# Before prometheus_client is first imported: the multiprocess storage served workers use.
atexit.register(shutil.rmtree, prepare(), ignore_errors=True)
sys.path.insert(0, str(Path(__file__).parent))
import refresh as served  # noqa: E402  (bench/refresh.py: its config and sign_in)
from _common import asgi_request, http_scope, run_with_services, work_dir_logging_to_file  # noqa: E402

from broker.devstack import RedisServer, Slapd, free_port  # noqa: E402

ASGIApp = Callable[..., Any]
sign_in: Callable[..., Awaitable[str]] = served.sign_in  # any object with its Connection's request()


class AsgiConnection:
    """bench/refresh.py's ``Connection``, answered by the ASGI app in this process."""

    def __init__(self, app: ASGIApp, port: int, steps: dict[str, list[float]] | None = None) -> None:
        self.app = app
        self.port = port
        self.steps = steps

    async def request(
        self, method: str, target: str, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> served.Reply:
        began = time.process_time() if self.steps is not None else 0.0
        path, _, query = target.partition("?")
        raw = [(b"host", f"127.0.0.1:{self.port}".encode())]
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
        if body or method == "POST":
            raw.append((b"content-length", str(len(body)).encode()))
        scope = http_scope(method, path, raw, query=query.encode("latin-1"), port=self.port)
        status, answered, content = await asgi_request(self.app, scope, body)
        fields, cookies = {}, {}
        for name, value in answered:
            name, value = name.decode("latin-1").lower(), value.decode("latin-1")
            if name == "set-cookie":
                cookie_name, _, rest = value.partition("=")
                cookies[cookie_name] = rest.partition(";")[0]
            fields[name] = value
        if self.steps is not None:
            step = f"{method} {path}" if path != "/token" else "POST /token (code)"
            self.steps[step].append(time.process_time() - began)
        return served.Reply(status, fields, cookies, content)


class CannedConnection:
    """The answers of one recorded flow, replayed: what the driver alone costs."""

    def __init__(self, replies: list[served.Reply]) -> None:
        self.replies = replies
        self.n = 0

    async def request(
        self, method: str, target: str, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> served.Reply:
        urlsplit(target)  # about what building the ASGI scope costs
        reply = self.replies[self.n % len(self.replies)]
        self.n += 1
        return reply


class Recorder(AsgiConnection):
    def __init__(self, app: ASGIApp, port: int) -> None:
        super().__init__(app, port)
        self.replies: list[served.Reply] = []

    async def request(
        self, method: str, target: str, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> served.Reply:
        reply = await super().request(method, target, body, headers)
        self.replies.append(reply)
        return reply


async def run(args: argparse.Namespace, work: Path, redis: RedisServer, slapd: Slapd) -> None:
    from broker.app import create_app
    from broker.config.loader import load_config

    port = free_port()
    path = work / "broker.yaml"
    path.write_text(served.broker_config(port, 1, redis, slapd, "info", args.recheck_interval))
    app = create_app(load_config(path))
    server, serving, client_id = await served.serve_in_loop(app, port)  # for the lifespan; the flows bypass HTTP

    async def browser(n: int, count: int) -> None:
        conn = AsgiConnection(app, port)
        for _ in range(count):
            await sign_in(conn, client_id, served.USERS[n % 2])

    per_browser = max(1, args.flows // args.browsers)
    done = per_browser * args.browsers
    await asyncio.gather(*(browser(n, 10) for n in range(args.browsers)))  # warm up
    figures = []
    for _ in range(args.rounds):
        began = time.process_time()
        await asyncio.gather(*(browser(n, per_browser) for n in range(args.browsers)))
        figures.append((time.process_time() - began) / done * 1e3)

    recorder = Recorder(app, port)
    await sign_in(recorder, client_id, "alice")
    canned = CannedConnection(recorder.replies)
    driver = []
    for _ in range(args.rounds):
        began = time.process_time()
        for _ in range(done):
            await sign_in(canned, client_id, "alice")
        driver.append((time.process_time() - began) / done * 1e3)

    steps: dict[str, list[float]] = defaultdict(list)
    if args.steps:
        conn = AsgiConnection(app, port, steps)
        for n in range(args.step_flows):
            await sign_in(conn, client_id, served.USERS[n % 2])
    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        await asyncio.gather(*(browser(n, per_browser) for n in range(args.browsers)))
        profile.disable()
        profile.dump_stats(args.profile)
    server.should_exit = True
    await serving
    out = sys.__stdout__
    best, median = min(figures), statistics.median(figures)
    print(
        f"{'sign-in flow, whole (ASGI, no HTTP)':<38} best {best:6.2f} ms   median {median:6.2f} ms   "
        f"({args.rounds} rounds of {done}, {args.browsers} browsers)",
        file=out,
    )
    print(
        f"{'  of which the driver (canned answers)':<38} best {min(driver):6.2f} ms   median "
        f"{statistics.median(driver):6.2f} ms",
        file=out,
    )
    broker_best = best - min(driver)
    print(
        f"{'  the broker alone':<38} best {broker_best:6.2f} ms   median {median - statistics.median(driver):6.2f} ms"
        f"   (2 cores → ~{2000 / broker_best:,.0f} flows/s for the broker's CPU alone)",
        file=out,
    )
    for step, times in steps.items():
        times.sort()
        print(
            f"  step {step:<32} median {statistics.median(times) * 1e3:6.3f} ms   "
            f"p10 {times[len(times) // 10] * 1e3:6.3f} ms",
            file=out,
        )


def main(args: argparse.Namespace) -> int:
    with work_dir_logging_to_file("mcpb-flow-cpu-") as work:
        run_with_services(work, lambda redis, slapd: run(args, work, redis, slapd))
    print(f"command: {' '.join([os.path.relpath(sys.executable), *sys.argv])}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--flows", type=int, default=300, help="flows per round (default 300)")
    parser.add_argument("--rounds", type=int, default=8, help="rounds; the best and the median are shown")
    parser.add_argument("--browsers", type=int, default=8, help="concurrent browsers (default 8)")
    parser.add_argument("--recheck-interval", type=int, default=0, help="tokens.upstream_recheck_interval")
    parser.add_argument("--steps", action="store_true", help="also time each request of a flow alone")
    parser.add_argument("--step-flows", type=int, default=200, help="flows for --steps (default 200)")
    parser.add_argument("--profile", help="write a cProfile of one more round to this file")
    raise SystemExit(main(parser.parse_args()))
