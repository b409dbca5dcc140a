"""`make bench`: one table of refresh grants per second, the broker side by side with a bare
reference endpoint and node-oidc-provider, measured in one run on this machine.

Rows, one after another, each served on loopback and loaded the same way:

* reference: bench/reference_app.py, FastAPI form parse + one Redis ``EVALSHA`` rotating the
  refresh-token family + one ES256 signature; uvicorn, ``--workers`` workers, uvloop, httptools;
* node-oidc-provider: bench/oidc_peer/server.mjs (refresh rotation, ES256 JWT access tokens for a
  resource indicator), one process, in-memory storage; its refresh tokens come from real sign-ins
  driven over HTTP;
* ours: ``mcp-broker serve``, ``--workers`` workers, ``tokens.upstream_recheck_interval: 60`` (the
  production recommendation), then the same with a re-check at every refresh (0), LDAP on loopback;
* ``make dev``: ``mcp-broker dev``, one process with its own Redis and slapd (re-check 0, its default).

The reference and ours share one private redis-server (append-only file on, as in production),
emptied between rows; ours uses a private slapd. Load: ``wrk``, ``--connections`` connections,
one request in flight per refresh-token family, each family always continuing with its rotated
successor; a warm-up run, then ``--duration`` seconds measured. CPU is read from /proc: "server CPU
per refresh" is the CPU time of every server process (the target's process tree, redis-server,
slapd) divided by the refreshes answered; "ratio by CPU" compares that cost with the reference's, the
ratio idle cores would give a CPU-bound target (steadier than wall clock on a shared machine). A row with a non-200 answer or a refused rotation is
flagged. Below the table: the full sign-in flow rate of ours (authorize → consent → LDAP login →
code exchange, concurrent) and, with ``--memory``, RSS per worker after 50,000 refreshes.

Run: .venv/bin/python bench/compare.py [--duration 8] [--memory] [--no-dev] [--no-node]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import multiprocessing
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from reference_app import seed
from refresh import (
    REDIRECT,
    RESOURCE,
    USERS,
    Connection,
    Phase,
    broker_config,
    count_events,
    python_phase,
    quantiles,
    register_client,
    sign_in,
    source_revision,
    wait_ready,
    worker_libraries,
)
from wrk_chains import WRK_SPARE, WRK_THREADS, Row, Target, measure, run_wrk, started, wait_http, worker_rss_mb

from broker.devstack import RedisServer, Slapd, free_port
from broker.devstack.process import ChildProcess
from broker.oauth.pkce import s256

HERE = Path(__file__).resolve().parent
PEER_MODULE = HERE.parent / "tests/oidc-op/node_modules/oidc-provider"
PEER_CLIENT = "bench"
REFERENCE_CLIENT = "bench-client"
MEMORY_REFRESHES = 50_000


@dataclass
class Rig:
    """What the rows share: the load generator, one Redis and one directory, and what ours adds
    below the table."""

    args: argparse.Namespace
    wrk: str
    work: Path
    redis_server: RedisServer
    slapd: Slapd
    flows: Phase | None = None
    memory: tuple[int, list[float]] | None = None
    audit: list[str] = field(default_factory=list)
    loaded: str = ""


# -- refresh tokens, from real sign-ins -------------------------------------------------------------


def peer_tokens(base: str, count: int) -> list[str]:
    """Real sign-ins at node-oidc-provider: /auth, the login form, /auth/{uid}, code exchange."""
    tokens = []
    with httpx.Client(base_url=base, timeout=10) as client:
        for n in range(count):
            client.cookies.clear()
            verifier = os.urandom(32).hex()
            query = {
                "response_type": "code",
                "client_id": PEER_CLIENT,
                "redirect_uri": REDIRECT,
                "code_challenge": s256(verifier),
                "code_challenge_method": "S256",
                "resource": RESOURCE,
                "scope": "notes:read",
            }
            step = client.get("/auth", params=query)
            user = USERS[n % len(USERS)]
            step = client.post(
                f"{urlsplit(step.headers['location']).path}/login", data={"login": user, "password": f"demo-{user}"}
            )
            step = client.get(urlsplit(step.headers["location"]).path)
            code = parse_qs(urlsplit(step.headers["location"]).query)["code"][0]
            form = {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": REDIRECT,
                "code_verifier": verifier,
                "client_id": PEER_CLIENT,
                "resource": RESOURCE,
            }
            answer = client.post("/token", data=form)
            answer.raise_for_status()
            tokens.append(str(answer.json()["refresh_token"]))
    return tokens


def broker_tokens(port: int, client_id: str, count: int, resource: str = RESOURCE) -> list[str]:
    """Sign-ins at the broker (authorize → consent → LDAP login → code exchange), 8 at a time."""

    async def run() -> list[str]:
        async def browser(n: int, share: int) -> list[str]:
            conn = Connection(port)
            try:
                return [await sign_in(conn, client_id, USERS[(n + k) % len(USERS)], resource) for k in range(share)]
            finally:
                conn.close()

        parts = await asyncio.gather(*(browser(n, count // 8 + (n < count % 8)) for n in range(8)))
        return [token for part in parts for token in part]

    return asyncio.run(run())


# -- the rows ---------------------------------------------------------------------------------------


def reference_row(rig: Rig) -> Row:
    port = free_port()
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    env = {"REFERENCE_REDIS_URL": rig.redis_server.url, "REFERENCE_SIGNING_KEY": pem.decode()}
    os.environ.update(env)  # inherited by the child; not on its command line
    try:
        argv = [sys.executable, str(HERE / "reference_app.py"), str(port), str(rig.args.workers)]
        child = ChildProcess("reference", argv, rig.work / "reference.log")
        with started(child):
            wait_http(f"http://127.0.0.1:{port}/", child)
            url = rig.redis_server.url
            target = Target(child.name, child, port, REFERENCE_CLIENT, lambda n: seed(url, n, REFERENCE_CLIENT))
            row, _ = measure(target, rig.wrk, rig.args, rig.work)
    finally:
        for key in env:
            os.environ.pop(key, None)
    row.target = f"bare reference (FastAPI form + 1 EVALSHA rotate + 1 ES256 sign), {rig.args.workers} workers"
    return row


def peer_row(rig: Rig) -> Row:
    node = shutil.which("node")
    if node is None or not PEER_MODULE.is_dir():
        raise RuntimeError("node or tests/oidc-op/node_modules is missing: run `make node-deps`")
    port = free_port()
    argv = [node, str(HERE / "oidc_peer/server.mjs"), str(port), RESOURCE, REDIRECT]
    child = ChildProcess("node-oidc-provider", argv, rig.work / "peer.log")
    base = f"http://127.0.0.1:{port}"
    with started(child):
        wait_http(f"{base}/.well-known/openid-configuration", child)
        target = Target(child.name, child, port, PEER_CLIENT, lambda n: peer_tokens(base, n))
        row, _ = measure(target, rig.wrk, rig.args, rig.work)
    found = re.search(r'"version":\s*"([^"]+)"', (PEER_MODULE / "package.json").read_text())
    row.target = (
        f"node-oidc-provider {found.group(1) if found else ''} (rotation, ES256 JWT AT, resource indicators), "
        "1 process, in-memory store"
    )
    return row


def ours_row(rig: Rig, interval: int, production: bool) -> Row:
    """``mcp-broker serve``; the production row also runs the sign-in flows (their refresh tokens
    feed the chains) and, with --memory, the memory check."""
    args = rig.args
    port = free_port()
    config = rig.work / f"broker-{interval}.yaml"
    config.write_text(broker_config(port, args.workers, rig.redis_server, rig.slapd, "info", interval))
    log = rig.work / f"broker-{interval}.log"
    child = ChildProcess("mcp-broker", [str(Path(sys.executable).with_name("mcp-broker")), "serve", "--config",
                                        str(config)], log)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    with started(child):
        wait_ready(base, child)
        client_id = register_client(base)
        assert child.proc is not None
        pid = child.proc.pid

        def sign_in_flows() -> list[str]:
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                list(pool.map(time.sleep, [0.5]))  # the generator process is up before the clock starts
                rig.flows = python_phase(
                    pool, 1, "flows", port, client_id, args.browsers, [], args.warmup, args.duration, pid
                )
            return rig.flows.tokens

        target = Target(child.name, child, port, client_id, lambda n: broker_tokens(port, client_id, n))
        offset = log.stat().st_size
        row, spare = measure(target, rig.wrk, args, rig.work, sign_in_flows if production else None)
        assert row.load is not None
        audited = count_events(log, offset, "token_refreshed")
        rig.audit.append(
            f"re-check {interval} s: {audited:,} token_refreshed audit events in the server log for "
            f"{row.warm_ok + row.load.ok:,} refreshes answered 200 (warm-up included)"
        )
        rig.loaded = worker_libraries(pid)
        if production and args.memory:
            try:
                rig.memory = memory_check(rig, target, spare, row)
            except (RuntimeError, OSError, ValueError, KeyError, httpx.HTTPError) as exc:
                row.notes.append(f"memory check FAILED: {type(exc).__name__}: {exc}")
    row.target = f"`mcp-broker serve`, {args.workers} workers, upstream_recheck_interval: {interval}"
    return row


def dev_row(rig: Rig) -> Row:
    """``mcp-broker dev`` as ``make dev`` runs it: one process, its own Redis and slapd."""
    broker_port, mcp_port = free_port(), free_port()
    resource = f"http://127.0.0.1:{mcp_port}/mcp"
    argv = [str(Path(sys.executable).with_name("mcp-broker")), "dev", "--state-dir", str(rig.work / "dev"),
            "--broker-port", str(broker_port), "--mcp-port", str(mcp_port), "--log-format", "json"]  # fmt: skip
    child = ChildProcess("mcp-broker dev", argv, rig.work / "dev.log")
    base = f"http://127.0.0.1:{broker_port}"
    with started(child):
        wait_ready(base, child)
        client_id = register_client(base)
        target = Target(
            child.name, child, broker_port, client_id, lambda n: broker_tokens(broker_port, client_id, n, resource)
        )
        row, _ = measure(target, rig.wrk, rig.args, rig.work)
    row.target = "`make dev` (`mcp-broker dev`, one process, re-check at every refresh)"
    return row


def memory_check(rig: Rig, target: Target, spare: list[str], row: Row) -> tuple[int, list[float]]:
    """Keep refreshing until the broker has answered MEMORY_REFRESHES refreshes in all; RSS then."""
    assert row.load is not None and target.child.proc is not None
    needed = rig.args.connections + WRK_SPARE * WRK_THREADS
    done = row.warm_ok + row.load.ok
    rate = max(row.load.rate, 50.0)
    print(f"memory: refreshing up to {MEMORY_REFRESHES:,} ...", file=sys.stderr, flush=True)
    for _ in range(6):
        if done >= MEMORY_REFRESHES:
            break
        if len(spare) < needed:
            spare += target.tokens(needed - len(spare))
        seconds = min(600.0, (MEMORY_REFRESHES - done) / rate * 1.05 + 1)
        load = run_wrk(rig.wrk, target.port, target.client_id, spare[:needed], rig.args.connections, seconds,
                       target.child.proc.pid, rig.work)  # fmt: skip
        spare = spare[needed:]
        done += load.ok
        rate = max(load.rate, 50.0)
        if load.errors or load.refused:
            row.notes.append(f"memory run: {load.refused} refused, errors {dict(load.errors)}: {load.sample}")
    return done, worker_rss_mb(target.child.proc.pid)


# -- main -------------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> int:
    command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk is not installed: run `sudo apt-get install -y wrk`", file=sys.stderr)
        return 2
    plan: list[tuple[str, Callable[[Rig], Row]]] = [("reference", reference_row)]
    if args.node:
        plan.append(("node-oidc-provider", peer_row))
    plan.append(("ours, re-check 60 s", lambda rig: ours_row(rig, 60, production=True)))
    plan.append(("ours, re-check at every refresh", lambda rig: ours_row(rig, 0, production=False)))
    if args.dev:
        plan.append(("make dev", dev_row))
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="mcpb-compare-") as tmp:
        work = Path(tmp)
        rig = Rig(args, wrk, work, RedisServer(work, persist=True), Slapd(work))
        try:
            rig.redis_server.start()
            rig.slapd.start()
            store = redis.Redis.from_url(rig.redis_server.url)
            for name, run in plan:
                print(f"{name} ...", file=sys.stderr, flush=True)
                store.flushall()  # every row starts from an empty Redis
                try:
                    rows.append(run(rig))
                except (RuntimeError, OSError, ValueError, KeyError, httpx.HTTPError) as exc:
                    rows.append(Row(name, failure=f"{type(exc).__name__}: {exc}"[-1500:]))
            store.close()
        finally:
            rig.slapd.stop()
            rig.redis_server.stop()
    report(rig, command, rows)
    return 1 if any(row.flagged for row in rows) or (rig.flows is not None and rig.flows.errors) else 0


# -- report -----------------------------------------------------------------------------------------


def table(rows: list[Row]) -> list[str]:
    """The side-by-side table, Markdown."""
    first = rows[0].load if rows and not rows[0].flagged else None
    reference, reference_cpu = (first.rate, first.server_cpu_ms()) if first else (float("nan"), float("nan"))
    header = (
        "target",
        "refresh grants/s",
        "ratio to reference",
        "p99 ms",
        "server CPU ms/refresh",
        "ratio by CPU",
        "RSS MB/worker",
        "check",
    )
    lines = []
    for row in rows:
        if row.load is None:
            lines.append((row.target, "-", "-", "-", "-", "-", "-", "FAILED (below)"))
            continue
        load = row.load
        check = "ok" if not row.flagged else f"FLAGGED: {load.refused} refused, errors {dict(load.errors)}"
        lines.append((
            row.target,
            f"{load.rate:,.0f}",
            f"{load.rate / reference:.2f}",
            f"{load.p99 * 1e3:.1f}",
            f"{load.server_cpu_ms():.2f}",
            f"{reference_cpu / load.server_cpu_ms():.2f}",
            " + ".join(f"{mb:.0f}" for mb in row.rss) or "-",
            check,
        ))  # fmt: skip
    widths = [max(len(str(x[i])) for x in [header, *lines]) for i in range(len(header))]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines:
        cells = [c.ljust(w) if i in (0, 7) else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))]
        out.append("| " + " | ".join(cells) + " |")
    return out


def report(rig: Rig, command: str, rows: list[Row]) -> None:
    args, flows = rig.args, rig.flows
    print(
        f"mcp-broker ({source_revision()}), {os.cpu_count()} CPU cores shared with wrk; {args.connections} "
        f"connections, one request in flight per refresh-token family; {args.warmup:g} s warm-up, "
        f"{args.duration:g} s measured per row"
    )
    print("\n".join(table(rows)))
    print(
        "ratio by CPU: the reference's server CPU per refresh over the row's, the ratio idle cores would give "
        "a CPU-bound target (node-oidc-provider runs one process: it cannot use a second core); on a shared "
        "machine it is steadier than the wall-clock ratio"
    )
    print()
    for row in rows:
        if row.failure:
            print(f"{row.target} FAILED: {row.failure}")
        if row.load is not None:
            load = row.load
            print(f"{row.target}: p50 {load.p50 * 1e3:.1f} ms, n={load.ok:,} in {load.seconds:.1f} s; "
                  f"{load.usage()}")  # fmt: skip
            if row.flagged:
                print(f"  first failure: {load.sample}")
        for note in row.notes:
            print(f"  {note}")
    if flows is not None:
        f50, f99 = quantiles(flows, False)
        print(
            f"ours, full sign-in flows (authorize → consent → LDAP login → code exchange), {args.browsers} concurrent: "
            f"{flows.rate:,.1f}/s, p50 {f50 * 1e3:.0f} ms, p99 {f99 * 1e3:.0f} ms, n={flows.completed:,}"
            + (f"; ERRORS {dict(flows.errors)}: {flows.error_sample}" if flows.errors else "")
        )
        if flows.cpu:
            print("  " + flows.cpu.cost(flows.completed, "flow"))
            print("  bottleneck: " + flows.cpu.diagnosis(1))
    if rig.memory is not None:
        done, sizes = rig.memory
        print(
            f"memory: RSS per worker after {done:,} refreshes (re-check 60 s row): "
            + " + ".join(f"{mb:.0f} MB" for mb in sizes)
            + f" (target ≤ 100 MB: {'met' if sizes and max(sizes) <= 100 else 'NOT met'})"
        )
    for entry in rig.audit:
        print(f"audit: {entry}")
    if rig.loaded:
        print(f"our workers loaded: {rig.loaded}")
    print(f"command: {command}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per row (default 8)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each row (default 2)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections = families in flight (16)")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers of ours and the reference (2)")
    parser.add_argument("--browsers", type=int, default=16, help="concurrent sign-in flows (default 16)")
    parser.add_argument("--memory", action="store_true", help=f"RSS per worker after {MEMORY_REFRESHES:,} refreshes")
    parser.add_argument(
        "--node", action=argparse.BooleanOptionalAction, default=True, help="the node-oidc-provider row"
    )
    parser.add_argument("--dev", action=argparse.BooleanOptionalAction, default=True, help="the `make dev` row")
    raise SystemExit(main(parser.parse_args()))
