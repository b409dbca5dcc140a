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
slapd) divided by the refreshes answered. A row with a non-200 answer or a refused rotation is
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
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
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
    CpuWindow,
    Phase,
    broker_config,
    count_events,
    python_phase,
    quantiles,
    register_client,
    sign_in,
    snapshot,
    source_revision,
    wait_ready,
    worker_libraries,
)

from broker.devstack import RedisServer, Slapd, free_port
from broker.devstack.process import ChildProcess
from broker.oauth.pkce import s256

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEER_CLIENT = "bench"
REFERENCE_CLIENT = "bench-client"
MEMORY_REFRESHES = 50_000
WRK_THREADS = 1
WRK_SPARE = 4  # tokens beyond one per connection: wrk calls request() once more per thread

# refresh.py's chain script, with refused rotations (400 invalid_grant) counted apart from other
# failures: the pool of live tokens is per wrk thread, each response's successor goes back into it,
# so a family has one request in flight and always continues with the token it was just given.
WRK_SCRIPT = r"""
local threads = {}
function setup(thread) table.insert(threads, thread) end
local pool = {}
ok, refused, bad, empty, sample = 0, 0, 0, 0, ""
function init(args)
  prefix = "grant_type=refresh_token&client_id=" .. args[2] .. "&refresh_token="
  for line in io.lines(args[1]) do table.insert(pool, line) end
  headers = {["Content-Type"] = "application/x-www-form-urlencoded"}
end
function request()
  local token = table.remove(pool)
  if token == nil then
    empty = empty + 1
    token = "rt.pool-empty"
  end
  return wrk.format("POST", nil, headers, prefix .. token)
end
function response(status, headers, body)
  local token = status == 200 and body:match('"refresh_token":"([^"]+)"')
  if token then
    ok = ok + 1
    table.insert(pool, token)
  else
    if status == 400 and body:find("invalid_grant", 1, true) then refused = refused + 1 else bad = bad + 1 end
    if sample == "" then sample = status .. " " .. body:sub(1, 200) end
  end
end
function done(summary, latency, requests)
  local good, no, failed, starved, first = 0, 0, 0, 0, ""
  for _, thread in ipairs(threads) do
    good = good + thread:get("ok")
    no = no + thread:get("refused")
    failed = failed + thread:get("bad")
    starved = starved + thread:get("empty")
    if first == "" then first = thread:get("sample") end
  end
  local e = summary.errors
  io.write(string.format(
    "WRKRESULT ok=%d refused=%d bad=%d empty=%d duration_us=%d p50_us=%d p99_us=%d connect=%d read=%d write=%d timeout=%d\n",
    good, no, failed, starved, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.timeout))
  io.write("WRKSAMPLE " .. first:gsub("\n", " ") .. "\n")
end
"""


# -- measuring one target ---------------------------------------------------------------------------


@dataclass
class Load:
    ok: int
    refused: int
    errors: Counter[str]
    sample: str
    seconds: float
    p50: float
    p99: float
    cpu: CpuWindow

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def target_seconds(self) -> float:
        """CPU of the target's own processes (a dev stack's Redis and slapd included)."""
        return sum(v for k, v in self.cpu.roles.items() if k.startswith("broker"))

    def server_cpu_ms(self) -> float:
        """CPU of the target's processes, redis-server and slapd, per refresh answered."""
        seconds = self.target_seconds() + self.cpu.roles.get("redis-server", 0.0) + self.cpu.roles.get("slapd", 0.0)
        return seconds * 1e3 / self.ok if self.ok else float("nan")

    def usage(self) -> str:
        """Who used the cores during the measured run (100% = one core)."""
        cpu = self.cpu
        cores = os.cpu_count() or 1
        others = sorted(((cpu.percent(k), k[6:]) for k in cpu.roles if k.startswith("other ")), reverse=True)
        busiest = ", ".join(f"{name} {pct:.0f}%" for pct, name in others[:3] if pct >= 2)
        return (
            f"CPU: target {100 * self.target_seconds() / cpu.seconds:.0f}%, redis-server {cpu.percent('redis-server'):.0f}%, "
            f"slapd {cpu.percent('slapd'):.0f}%, wrk {cpu.percent('generator'):.0f}%, "
            f"kernel irq/softirq {100 * cores * cpu.interrupts:.0f}%, other programs {cpu.others():.0f}%"
            + (f" ({busiest})" if busiest else "")
            + f"; machine busy {100 * cpu.machine_busy:.0f}% of {cores} cores"
        )


def run_wrk(wrk: str, port: int, client_id: str, tokens: list[str], connections: int, duration: float,
            server_pid: int, work: Path) -> Load:  # fmt: skip
    needed = connections + WRK_SPARE * WRK_THREADS
    if len(tokens) < needed:
        raise ValueError(f"wrk needs {needed} refresh tokens, got {len(tokens)}")
    script, token_file = work / "compare.lua", work / "compare.tokens"
    script.write_text(WRK_SCRIPT)
    token_file.write_text("\n".join(tokens[:needed]) + "\n")
    argv = [wrk, f"-t{WRK_THREADS}", f"-c{connections}", f"-d{duration:g}s", "--timeout", "10s", "-s", str(script),
            f"http://127.0.0.1:{port}/token", "--", str(token_file), client_id]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    first = snapshot(server_pid)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    last = snapshot(server_pid)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_seconds = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)  # gone from /proc
    found = re.search(r"^WRKRESULT (.*)$", done.stdout, re.M)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    fields = {k: int(v) for k, v in (item.split("=") for item in found.group(1).split())}
    sample = re.search(r"^WRKSAMPLE (.*)$", done.stdout, re.M)
    errors: Counter[str] = +Counter(
        {k: fields[k] for k in ("connect", "read", "write", "timeout")}
        | {"non-200": fields["bad"], "token pool empty": fields["empty"]}
    )
    return Load(
        ok=fields["ok"],
        refused=fields["refused"],
        errors=errors,
        sample=sample.group(1).strip() if sample else "",
        seconds=fields["duration_us"] / 1e6,
        p50=fields["p50_us"] / 1e6,
        p99=fields["p99_us"] / 1e6,
        cpu=CpuWindow.between(first, last, wrk_seconds),
    )


def _tree(root: int) -> list[tuple[int, str]]:
    """(pid, name) of ``root`` and every process below it."""
    parents: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with suppress(OSError, ValueError, IndexError):
            raw = (entry / "stat").read_text()
            name = raw[raw.index("(") + 1 : raw.rindex(")")]
            parents[int(entry.name)] = (int(raw[raw.rindex(")") + 2 :].split()[1]), name)
    found = []
    for pid, (_, name) in parents.items():
        walk = pid
        while walk > 1 and walk != root:
            walk = parents.get(walk, (0, ""))[0]
        if walk == root:
            found.append((pid, name))
    return found


def worker_rss_mb(server_pid: int) -> list[float]:
    """Resident memory of each serving process: uvicorn's workers (not the supervisor nor
    multiprocessing's resource tracker), else the one process; a dev stack's Redis and slapd aside."""
    pids = []
    for pid, name in _tree(server_pid):
        with suppress(OSError):
            if (
                name.startswith(("redis-server", "slapd"))
                or b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
            ):
                continue
            pids.append(pid)
    if len(pids) > 1:
        pids.remove(server_pid)
    sizes = []
    for pid in sorted(pids):
        with suppress(OSError):
            status = Path(f"/proc/{pid}/status").read_text()
            found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
            if found:
                sizes.append(int(found.group(1)) / 1024)
    return sizes


@dataclass
class Row:
    target: str
    load: Load | None = None
    rss: list[float] = field(default_factory=list)
    warm_ok: int = 0  # refreshes answered in the warm-up run
    notes: list[str] = field(default_factory=list)
    failure: str = ""  # the row could not be measured at all

    @property
    def flagged(self) -> bool:
        return bool(self.failure) or self.load is None or bool(self.load.errors) or self.load.refused > 0


@dataclass
class Target:
    """A server under test: how to start it, and how to get refresh tokens from it."""

    name: str
    child: ChildProcess
    port: int
    client_id: str
    tokens: Callable[[int], list[str]]


def measure(target: Target, wrk: str, args: argparse.Namespace, work: Path,
            before_refresh: Callable[[], list[str]] | None = None) -> tuple[Row, list[str]]:  # fmt: skip
    """Warm up, measure, read RSS. ``before_refresh`` (ours, production row) runs first and may
    hand over refresh tokens (from the sign-in flows)."""
    row = Row(target.name)
    assert target.child.proc is not None
    pid = target.child.proc.pid
    spare = before_refresh() if before_refresh else []
    needed = args.connections + WRK_SPARE * WRK_THREADS
    if len(spare) < 2 * needed:
        spare += target.tokens(2 * needed - len(spare))
    if args.warmup:
        warm = run_wrk(
            wrk, target.port, target.client_id, spare[needed : 2 * needed], args.connections, args.warmup, pid, work
        )
        row.warm_ok = warm.ok
        time.sleep(0.3)
    row.load = run_wrk(wrk, target.port, target.client_id, spare[:needed], args.connections, args.duration, pid, work)
    row.rss = worker_rss_mb(pid)
    return row, spare[2 * needed :]


# -- the targets ------------------------------------------------------------------------------------


def wait_http(url: str, child: ChildProcess, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        child.check_alive()
        with suppress(httpx.HTTPError):
            httpx.get(url, timeout=2)
            return
        time.sleep(0.1)
    raise RuntimeError(f"{child.name} did not answer within {timeout:.0f}s (see {child.log_file})")


@contextmanager
def started(child: ChildProcess) -> Iterator[ChildProcess]:
    child.start()
    try:
        yield child
    finally:
        child.stop()


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


# -- main -------------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> int:
    command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk is not installed: run `sudo apt-get install -y wrk`", file=sys.stderr)
        return 2
    node = shutil.which("node")
    peer_module = ROOT / "tests/oidc-op/node_modules/oidc-provider"
    python = sys.executable
    serve = Path(python).with_name("mcp-broker")
    rows: list[Row] = []
    flows: Phase | None = None
    memory: tuple[int, list[float]] | None = None
    audit: list[str] = []
    loaded = ""
    with tempfile.TemporaryDirectory(prefix="mcpb-compare-") as tmp:
        work = Path(tmp)
        redis_server = RedisServer(work, persist=True)
        slapd = Slapd(work)
        try:
            redis_server.start()
            slapd.start()
            store = redis.Redis.from_url(redis_server.url)

            def row_of(name: str, fn: Callable[[], Row]) -> None:
                print(f"{name} ...", file=sys.stderr, flush=True)
                store.flushall()
                try:
                    rows.append(fn())
                except (RuntimeError, OSError, ValueError, KeyError, httpx.HTTPError) as exc:
                    rows.append(Row(name, failure=f"{type(exc).__name__}: {exc}"[:300]))

            # -- the bare reference
            def reference() -> Row:
                port = free_port()
                pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
                env_keys = {"REFERENCE_REDIS_URL": redis_server.url, "REFERENCE_SIGNING_KEY": pem.decode()}
                os.environ.update(env_keys)  # the child inherits them
                try:
                    child = ChildProcess(
                        "reference", [python, str(HERE / "reference_app.py"), str(port), str(args.workers)],
                        work / "reference.log",
                    )  # fmt: skip
                    with started(child):
                        wait_http(f"http://127.0.0.1:{port}/", child)
                        target = Target(child.name, child, port, REFERENCE_CLIENT,
                                        lambda n: seed(redis_server.url, n, REFERENCE_CLIENT))  # fmt: skip
                        row, _ = measure(target, wrk, args, work)
                finally:
                    for key in env_keys:
                        os.environ.pop(key, None)
                row.target = f"bare reference (FastAPI form + 1 EVALSHA rotate + 1 ES256 sign), {args.workers} workers"
                return row

            row_of("reference", reference)

            # -- node-oidc-provider
            def peer() -> Row:
                if node is None or not peer_module.is_dir():
                    raise RuntimeError("node or tests/oidc-op/node_modules missing: run `make node-deps`")
                port = free_port()
                child = ChildProcess(
                    "node-oidc-provider", [node, str(HERE / "oidc_peer/server.mjs"), str(port), RESOURCE, REDIRECT],
                    work / "peer.log",
                )  # fmt: skip
                base = f"http://127.0.0.1:{port}"
                with started(child):
                    wait_http(f"{base}/.well-known/openid-configuration", child)
                    target = Target(child.name, child, port, PEER_CLIENT, lambda n: peer_tokens(base, n))
                    row, _ = measure(target, wrk, args, work)
                version = (peer_module / "package.json").read_text()
                found = re.search(r'"version":\s*"([^"]+)"', version)
                row.target = (
                    f"node-oidc-provider {found.group(1) if found else ''} (rotation, ES256 JWT AT, resource "
                    "indicators), 1 process, in-memory store"
                )
                return row

            if args.node:
                row_of("node-oidc-provider", peer)

            # -- ours
            def ours(interval: int, with_flows: bool) -> Row:
                nonlocal flows, memory, loaded
                port = free_port()
                config = work / f"broker-{interval}.yaml"
                config.write_text(broker_config(port, args.workers, redis_server, slapd, "info", interval))
                log = work / f"broker-{interval}.log"
                child = ChildProcess("mcp-broker", [str(serve), "serve", "--config", str(config)], log)
                base = f"http://127.0.0.1:{port}"
                with started(child):
                    wait_ready(base, child)
                    client_id = register_client(base)
                    assert child.proc is not None
                    pid = child.proc.pid

                    def sign_in_flows() -> list[str]:
                        nonlocal flows
                        ctx = multiprocessing.get_context("spawn")
                        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
                            list(pool.map(time.sleep, [0.5]))  # the generator process is up before timing
                            flows = python_phase(pool, 1, "flows", port, client_id, args.browsers, [], args.warmup,
                                                 args.duration, pid)  # fmt: skip
                        return flows.tokens

                    target = Target(child.name, child, port, client_id, lambda n: broker_tokens(port, client_id, n))
                    offset = log.stat().st_size
                    row, spare = measure(target, wrk, args, work, sign_in_flows if with_flows else None)
                    assert row.load is not None
                    audited = count_events(log, offset, "token_refreshed")
                    answered = row.warm_ok + row.load.ok
                    audit.append(
                        f"re-check {interval} s: {audited:,} token_refreshed audit events in the server log for "
                        f"{answered:,} refreshes answered 200 (warm-up included)"
                    )
                    loaded = worker_libraries(pid)
                    if with_flows and args.memory:
                        memory = memory_check(target, wrk, args, work, spare, row)
                row.target = f"`mcp-broker serve`, {args.workers} workers, upstream_recheck_interval: {interval}"
                return row

            row_of("ours, re-check 60 s", lambda: ours(60, True))
            row_of("ours, re-check at every refresh", lambda: ours(0, False))

            # -- make dev
            def dev() -> Row:
                broker_port, mcp_port = free_port(), free_port()
                resource = f"http://127.0.0.1:{mcp_port}/mcp"
                child = ChildProcess(
                    "mcp-broker dev",
                    [str(serve), "dev", "--state-dir", str(work / "dev"), "--broker-port", str(broker_port),
                     "--mcp-port", str(mcp_port), "--log-format", "json"],
                    work / "dev.log",
                )  # fmt: skip
                base = f"http://127.0.0.1:{broker_port}"
                with started(child):
                    wait_ready(base, child)
                    client_id = register_client(base)
                    target = Target(child.name, child, broker_port, client_id,
                                    lambda n: broker_tokens(broker_port, client_id, n, resource))  # fmt: skip
                    row, _ = measure(target, wrk, args, work)
                row.target = "`make dev` (`mcp-broker dev`, one process, re-check at every refresh)"
                return row

            if args.dev:
                row_of("make dev", dev)
        finally:
            slapd.stop()
            redis_server.stop()
    report(args, command, rows, flows, memory, audit, loaded)
    return 1 if any(row.flagged for row in rows) or (flows is not None and flows.errors) else 0


def memory_check(target: Target, wrk: str, args: argparse.Namespace, work: Path, spare: list[str],
                 row: Row) -> tuple[int, list[float]]:  # fmt: skip
    """Keep refreshing until the broker has answered MEMORY_REFRESHES refreshes in all; RSS then."""
    assert row.load is not None and target.child.proc is not None
    needed = args.connections + WRK_SPARE * WRK_THREADS
    done = row.warm_ok + row.load.ok
    rate = max(row.load.rate, 50.0)
    print(f"memory: refreshing up to {MEMORY_REFRESHES:,} ...", file=sys.stderr, flush=True)
    for _ in range(6):
        if done >= MEMORY_REFRESHES:
            break
        if len(spare) < needed:
            spare += target.tokens(needed - len(spare))
        seconds = min(600.0, (MEMORY_REFRESHES - done) / rate * 1.05 + 1)
        load = run_wrk(wrk, target.port, target.client_id, spare[:needed], args.connections, seconds,
                       target.child.proc.pid, work)  # fmt: skip
        spare = spare[needed:]
        done += load.ok
        rate = max(load.rate, 50.0)
        if load.errors or load.refused:
            row.notes.append(f"memory run: {load.refused} refused, errors {dict(load.errors)}: {load.sample}")
    return done, worker_rss_mb(target.child.proc.pid)


# -- report -----------------------------------------------------------------------------------------


def report(args: argparse.Namespace, command: str, rows: list[Row], flows: Phase | None,
           memory: tuple[int, list[float]] | None, audit: list[str], loaded: str) -> None:  # fmt: skip
    reference = rows[0].load.rate if rows and rows[0].load and not rows[0].flagged else float("nan")
    header = (
        "target",
        "refresh grants/s",
        "ratio to reference",
        "p99 ms",
        "server CPU ms/refresh",
        "RSS MB/worker",
        "check",
    )
    lines = []
    for row in rows:
        if row.load is None:
            lines.append((row.target, "-", "-", "-", "-", "-", f"FAILED: {row.failure}"))
            continue
        load = row.load
        check = "ok" if not row.flagged else f"FLAGGED: {load.refused} refused, errors {dict(load.errors)}"
        lines.append((
            row.target,
            f"{load.rate:,.0f}",
            f"{load.rate / reference:.2f}",
            f"{load.p99 * 1e3:.1f}",
            f"{load.server_cpu_ms():.2f}",
            " + ".join(f"{mb:.0f}" for mb in row.rss) or "-",
            check,
        ))  # fmt: skip
    widths = [max(len(str(x[i])) for x in [header, *lines]) for i in range(len(header))]
    print(
        f"mcp-broker ({source_revision()}), {os.cpu_count()} CPU cores shared with wrk; {args.connections} "
        f"connections, one request in flight per refresh-token family; {args.warmup:g} s warm-up, "
        f"{args.duration:g} s measured per row"
    )
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines:
        cells = [c.ljust(w) if i in (0, 6) else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))]
        print("| " + " | ".join(cells) + " |")
    print()
    for row in rows:
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
    if memory is not None:
        done, sizes = memory
        print(
            f"memory: RSS per worker after {done:,} refreshes (re-check 60 s row): "
            + " + ".join(f"{mb:.0f} MB" for mb in sizes)
            + f" (target ≤ 100 MB: {'met' if sizes and max(sizes) <= 100 else 'NOT met'})"
        )
    for entry in audit:
        print(f"audit: {entry}")
    if loaded:
        print(f"our workers loaded: {loaded}")
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
