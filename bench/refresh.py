"""Refresh-token grants per second and complete sign-in flows per second, end to end.

The broker runs as it does in production: ``mcp-broker serve`` with ``server.workers`` uvicorn
workers (uvicorn picks uvloop and httptools when installed), refresh-token rotation and audit
logging on (``logging.level: info``; server output goes to a file). Redis and the directory are a
private ``redis-server`` and ``slapd`` started for the run. Everything, the load generator
included, shares this machine and talks over loopback.

Phase 1, flows: browsers run authorize → consent → login page → LDAP login → code exchange back
to back; each completed flow yields a refresh token. Phase 2, refresh: ``--chains`` chains, each
on its own keep-alive connection, send a refresh grant, take the rotated refresh token from the
answer and send the next (a rotated token is dead, so every request needs the previous answer).

The generator is ``wrk`` with a Lua script when installed (C, cheap: the broker gets the CPU),
else a Python one: hand-written HTTP/1.1 on asyncio (uvloop), ``--generator-procs`` processes.
CPU time of every process is read from /proc, so the report says who used the cores.

Run: .venv/bin/python bench/refresh.py [--duration 10] [--chains 64] [--generator auto|wrk|python]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import multiprocessing
import os
import re
import resource
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from html import unescape
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

from broker.devstack import DemoDirectory, RedisServer, Slapd, free_port
from broker.devstack.process import ChildProcess
from broker.oauth.pkce import s256
from broker.oauth.signing import new_kek

TARGET_REFRESH_PER_SECOND = 2000
RESOURCE = "http://127.0.0.1:8001/mcp"
REDIRECT = "http://127.0.0.1:33418/callback"
FORM = {"content-type": "application/x-www-form-urlencoded"}
USERS = ("alice", "bob")  # both hold scopes on the resource; carol holds none
WRK_HINT = "wrk is not installed: run `sudo apt-get install -y wrk` (the Python generator is used instead)"
_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)"')
_CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- the broker under test ------------------------------------------------------------------------


def broker_config(
    port: int,
    workers: int,
    redis: RedisServer,
    slapd: Slapd,
    log_level: str,
    recheck_interval: int = 0,
    metrics_port: int | None = None,
) -> str:
    demo = DemoDirectory()
    metrics = f"metrics:\n  host: 127.0.0.1\n  port: {metrics_port}\n" if metrics_port else ""
    return f"""{metrics}
issuer: http://127.0.0.1:{port}
server:
  host: 127.0.0.1
  port: {port}
  workers: {workers}
redis:
  url: "{redis.url}"
  key_prefix: bench
signing:
  key_encryption_key: "{new_kek()}"
tokens:
  upstream_recheck_interval: {recheck_interval}
logging:
  level: {log_level}
  format: json
providers:
  - id: demo-ldap
    type: ldap
    display_name: Demo directory
    urls: ["{slapd.url}"]
    bind_dn: "{slapd.service_dn}"
    bind_password: "{slapd.service_password}"
    user_base_dn: {demo.people_dn}
    group_base_dn: {demo.groups_dn}
resources:
  - id: notes
    uri: {RESOURCE}
    name: Team notes
    scopes:
      - name: notes:read
        description: Read notes
      - name: notes:write
        description: Write notes
        implies: [notes:read]
mappings:
  - id: readers-read
    resource: notes
    provider: demo-ldap
    groups: [mcp-readers]
    scopes: [notes:read]
  - id: writers-write
    resource: notes
    provider: demo-ldap
    groups: [mcp-writers]
    scopes: [notes:write]
"""


def wait_ready(base: str, child: ChildProcess, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        child.check_alive()
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the broker did not become ready within {timeout:.0f}s (see {child.log_file})")


def register_client(base: str) -> str:
    body = {
        "redirect_uris": [REDIRECT],
        "client_name": "refresh benchmark",
        "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code", "refresh_token"],
        "application_type": "native",
    }
    response = httpx.post(f"{base}/register", json=body, timeout=10)
    response.raise_for_status()
    return str(response.json()["client_id"])


async def serve_in_loop(app: Any, port: int) -> tuple[Any, asyncio.Task[None], str]:
    """``app`` served by uvicorn on ``port`` in this event loop (for its lifespan and sign-ins),
    and a public client registered there: the server (set ``should_exit`` and await the task to
    stop it), its task and the client id. For the in-process benchmarks (flow_cpu, refresh_cpu)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    serving = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110  (uvicorn offers no event to await)
        await asyncio.sleep(0.05)
    return server, serving, await asyncio.to_thread(register_client, f"http://127.0.0.1:{port}")


# -- a small HTTP/1.1 client: a few microseconds of Python per request, unlike httpx -----------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    cookies: dict[str, str]
    body: bytes


class Connection:
    """One keep-alive HTTP/1.1 connection; requests on it run one after another."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, target: str, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> Reply:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self.reader, self.writer
        lines = [f"{method} {target} HTTP/1.1", f"host: 127.0.0.1:{self.port}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body or method == "POST":
            lines.append(f"content-length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            status = int(head[0].split(" ", 2)[1])
            fields: dict[str, str] = {}
            cookies: dict[str, str] = {}
            for line in head[1:]:
                if not line:
                    continue
                name, _, value = line.partition(":")
                name, value = name.strip().lower(), value.strip()
                if name == "set-cookie":
                    cookie_name, _, rest = value.partition("=")
                    cookies[cookie_name] = rest.partition(";")[0]
                fields[name] = value
            if fields.get("transfer-encoding", "").lower() == "chunked":
                chunks = []
                while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                    chunks.append((await reader.readexactly(size + 2))[:-2])
                await reader.readuntil(b"\r\n")
                data = b"".join(chunks)
            else:
                data = await reader.readexactly(int(fields.get("content-length", "0")))
        except BaseException:
            self.close()
            raise
        if fields.get("connection", "").lower() == "close":
            self.close()
        return Reply(status, fields, cookies, data)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class FlowFailed(Exception):
    pass


def _expect(reply: Reply, status: int, step: str) -> Reply:
    if reply.status != status:
        raise FlowFailed(f"{step}: HTTP {reply.status}: {reply.body[:200]!r}")
    return reply


def _path(location: str) -> str:
    parts = urlsplit(location)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


async def sign_in(conn: Connection, client_id: str, user: str, resource: str = RESOURCE) -> str:
    """authorize → consent → login page → LDAP login → code exchange; the refresh token."""
    verifier = secrets.token_urlsafe(48)
    query = urlencode(
        {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": REDIRECT,
            "code_challenge": s256(verifier),
            "code_challenge_method": "S256",
            "resource": resource,
            "state": secrets.token_hex(8),
        }
    )
    consent = _expect(await conn.request("GET", f"/authorize?{query}"), 200, "authorize")
    cookies = dict(consent.cookies)
    form = {k: unescape(v) for k, v in _HIDDEN.findall(consent.body.decode())}

    def jar() -> dict[str, str]:
        return {**FORM, "cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())}

    approved = await conn.request("POST", "/consent", urlencode({**form, "decision": "approve"}).encode(), jar())
    cookies.update(_expect(approved, 303, "consent").cookies)
    page = _expect(await conn.request("GET", _path(approved.headers["location"]), headers=jar()), 200, "login page")
    cookies.update(page.cookies)
    form = {k: unescape(v) for k, v in _HIDDEN.findall(page.body.decode())}
    form.update(username=user, password=f"demo-{user}")
    done = _expect(await conn.request("POST", "/login", urlencode(form).encode(), jar()), 303, "login")
    code = parse_qs(urlsplit(done.headers["location"]).query).get("code")
    if not code:
        raise FlowFailed(f"login: no code in {done.headers['location'][:200]}")
    token_form = {
        "grant_type": "authorization_code",
        "code": code[0],
        "redirect_uri": REDIRECT,
        "code_verifier": verifier,
        "client_id": client_id,
        "resource": resource,
    }
    tokens = _expect(await conn.request("POST", "/token", urlencode(token_form).encode(), FORM), 200, "token")
    return str(json.loads(tokens.body)["refresh_token"])


# -- the Python generator (runs in --generator-procs processes) --------------------------------------


@dataclass(frozen=True)
class Job:
    kind: str  # "flows" or "refresh"
    port: int
    client_id: str
    workers: int  # concurrent browsers or chains
    tokens: tuple[str, ...]  # refresh: one per chain
    start: float  # time.monotonic() (CLOCK_MONOTONIC, shared by the processes of this machine)
    measure_from: float
    measure_until: float


@dataclass
class JobResult:
    completed: int = 0  # inside the measured window
    succeeded: int = 0  # warm-up and tail included
    latencies: list[float] = field(default_factory=list)  # seconds, inside the window
    errors: Counter[str] = field(default_factory=Counter)
    error_sample: str = ""
    tokens: list[str] = field(default_factory=list)  # fresh refresh tokens at the end


async def _sleep_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.monotonic()))


async def _run_job(job: Job) -> JobResult:
    result = JobResult()

    def fail(exc: BaseException) -> None:
        result.errors[type(exc).__name__] += 1
        result.error_sample = result.error_sample or f"{type(exc).__name__}: {exc}"[:300]

    def record(began: float, ended: float) -> None:
        result.succeeded += 1
        if job.measure_from <= began and ended <= job.measure_until:
            result.completed += 1
            result.latencies.append(ended - began)

    def stagger(n: int) -> float:
        """Clients open their connections one by one over the first half of the warm-up, not in
        one burst: a burst lands on whichever uvicorn worker wakes first (they share one socket)."""
        return (job.measure_from - job.start) / 2 * n / max(1, job.workers)

    async def browser(n: int) -> None:
        await asyncio.sleep(stagger(n))
        conn = Connection(job.port)
        try:
            while time.monotonic() < job.measure_until:
                began = time.monotonic()
                try:
                    token = await sign_in(conn, job.client_id, USERS[n % len(USERS)])
                except (FlowFailed, OSError, asyncio.IncompleteReadError, ValueError, KeyError) as exc:
                    fail(exc)
                    conn.close()
                    await asyncio.sleep(0.05)
                    continue
                record(began, time.monotonic())
                result.tokens.append(token)
        finally:
            conn.close()

    async def chain(n: int, token: str) -> None:
        await asyncio.sleep(stagger(n))
        conn = Connection(job.port)
        prefix = f"grant_type=refresh_token&client_id={job.client_id}&refresh_token="
        try:
            while time.monotonic() < job.measure_until:
                began = time.monotonic()
                try:
                    reply = await conn.request("POST", "/token", (prefix + token).encode(), FORM)
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    fail(exc)  # the token may have rotated: a retry within the reuse grace gets the same answer
                    conn.close()
                    continue
                if reply.status != 200:
                    fail(FlowFailed(f"refresh: HTTP {reply.status}: {reply.body[:200]!r}"))
                    return  # this chain's token is spent or revoked
                token = json.loads(reply.body)["refresh_token"]
                record(began, time.monotonic())
            result.tokens.append(token)
        finally:
            conn.close()

    if time.monotonic() > job.measure_from:
        fail(RuntimeError("the generator process started after the measured window had begun"))
        return result
    await _sleep_until(job.start)
    if job.kind == "flows":
        tasks = [asyncio.create_task(browser(n)) for n in range(job.workers)]
    else:
        tasks = [asyncio.create_task(chain(n, t)) for n, t in enumerate(job.tokens)]
    _, pending = await asyncio.wait(tasks, timeout=max(1.0, job.measure_until - time.monotonic()) + 15)
    for task in pending:
        task.cancel()
        result.errors["unfinished"] += 1
    return result


def run_job(job: Job) -> JobResult:
    """Entry point of a generator process."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_run_job(job))
    return uvloop.run(_run_job(job))


def merge(results: list[JobResult]) -> JobResult:
    total = JobResult()
    for r in results:
        total.completed += r.completed
        total.succeeded += r.succeeded
        total.latencies += r.latencies
        total.errors += r.errors
        total.error_sample = total.error_sample or r.error_sample
        total.tokens += r.tokens
    return total


def split(items: list[Any], parts: int) -> list[list[Any]]:
    return [items[i::parts] for i in range(parts)]


# -- CPU accounting from /proc ----------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int, float] | None:
    """(command name, parent pid, CPU seconds) of a live process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = raw[raw.index("(") + 1 : raw.rindex(")")]
    rest = raw[raw.rindex(")") + 2 :].split()
    return name, int(rest[1]), (int(rest[11]) + int(rest[12])) / _CLK_TCK


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def process_roles(broker_pid: int) -> dict[int, tuple[str, float]]:
    """pid → (role, CPU seconds so far) of every process: the broker's (each worker apart),
    redis-server, slapd, this benchmark with its generator processes, and everything else."""
    table = {int(p.name): s for p in Path("/proc").iterdir() if p.name.isdigit() and (s := _stat(int(p.name)))}

    def under(pid: int, root: int) -> bool:
        while pid > 1:
            if pid == root:
                return True
            pid = table[pid][1] if pid in table else 0
        return False

    me = os.getpid()
    out: dict[int, tuple[str, float]] = {}
    for pid, (name, parent, seconds) in table.items():
        if pid == broker_pid:
            role = "broker supervisor"
        elif under(pid, broker_pid):
            tracker = b"resource_tracker" in _cmdline(pid)  # multiprocessing's helper, not a worker
            role = "broker supervisor" if tracker else f"broker worker {pid}"
        elif parent == me and name.startswith("redis-server"):
            role = "redis-server"
        elif parent == me and name == "slapd":
            role = "slapd"
        elif pid == me or under(pid, me):
            role = "generator"  # this process (mostly asleep) and the generator processes
        elif pid == 2 or parent == 2:
            role = "kernel threads"  # kworkers: writeback of the AOF and the server log, among others
        else:
            role = f"other {name}"
        out[pid] = (role, seconds)
    return out


@dataclass(frozen=True)
class Snapshot:
    at: float  # time.monotonic()
    processes: dict[int, tuple[str, float]]
    busy: int  # jiffies of all cores, not idle
    interrupts: int  # jiffies in irq and softirq (loopback TCP is mostly softirq)
    total: int


def snapshot(broker_pid: int) -> Snapshot:
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return Snapshot(time.monotonic(), process_roles(broker_pid), sum(values) - idle, values[5] + values[6], sum(values))


def snapshots_at(broker_pid: int, moments: list[float]) -> tuple[threading.Thread, list[Snapshot]]:
    """Take snapshots at the given monotonic moments in a thread, so the caller may block meanwhile."""
    taken: list[Snapshot] = []

    def run() -> None:
        for moment in moments:
            time.sleep(max(0.0, moment - time.monotonic()))
            taken.append(snapshot(broker_pid))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, taken


@dataclass(frozen=True)
class CpuWindow:
    seconds: float
    roles: dict[str, float]  # CPU seconds used in the window
    interrupts: float  # fraction of all cores
    machine_busy: float

    @classmethod
    def between(cls, first: Snapshot, last: Snapshot, extra_generator_seconds: float = 0.0) -> CpuWindow:
        roles: Counter[str] = Counter({"generator": extra_generator_seconds})
        for pid, (role, seconds) in last.processes.items():
            before = first.processes.get(pid)
            roles[role] += seconds - (before[1] if before and before[0] == role else 0.0)
        jiffies = max(1, last.total - first.total)
        return cls(
            last.at - first.at,
            dict(roles),
            (last.interrupts - first.interrupts) / jiffies,
            (last.busy - first.busy) / jiffies,
        )

    def percent(self, role: str) -> float:
        return 100 * self.roles.get(role, 0.0) / self.seconds

    def workers(self) -> list[float]:
        return [self.percent(k) for k in sorted(self.roles) if k.startswith("broker worker")]

    def others(self) -> float:
        return sum(self.percent(k) for k in self.roles if k.startswith("other "))

    def diagnosis(self, generator_threads: int) -> str:
        """Who limits the figure, as far as CPU accounting can tell."""
        generator = self.percent("generator")
        if generator >= 85 * generator_threads:
            return f"the load generator is saturated ({generator:.0f}% CPU): the broker could do more"
        if self.machine_busy < 0.9:
            return (
                f"the cores are not saturated ({100 * self.machine_busy:.0f}% busy): "
                "the broker is waiting (on locks, threads, Redis or the directory), not short of CPU"
            )
        text = f"every core is busy: CPU-bound; the generator took {generator:.0f}% of one core"
        workers = self.workers()
        if len(workers) > 1 and min(workers) < max(workers) / 2:
            text += (
                f"; the broker workers are unevenly loaded ({' vs '.join(f'{w:.0f}%' for w in workers)}): "
                "they share one listening socket and keep-alive connections stay where they were accepted"
            )
        if self.others() >= 10:
            text += f"; other programs took {self.others():.0f}% (not a quiet machine: figures are low)"
        return text

    def cost(self, done: int, what: str) -> str:
        """CPU per request of the broker side, and the rate the cores would allow it alone."""
        if not done:
            return f"CPU per {what}: nothing completed"
        cores = os.cpu_count() or 1
        ms = {
            "broker": sum(v for k, v in self.roles.items() if k.startswith("broker")) * 1e3 / done,
            "redis-server": self.roles.get("redis-server", 0.0) * 1e3 / done,
            "slapd": self.roles.get("slapd", 0.0) * 1e3 / done,
            "kernel irq": self.interrupts * cores * self.seconds * 1e3 / done,
        }
        total = sum(ms.values())
        return (
            f"CPU per {what}: "
            + " + ".join(f"{k} {v:.2f} ms" for k, v in ms.items())
            + f" = {total:.2f} ms, so {cores} cores given to nothing else would allow ~{cores * 1e3 / total:,.0f}/s"
        )

    def render(self, generator_name: str) -> str:
        cores = os.cpu_count() or 1
        others = sorted(((self.percent(k), k[6:]) for k in self.roles if k.startswith("other ")), reverse=True)
        busiest = ", ".join(f"{name} {pct:.0f}%" for pct, name in others[:3] if pct >= 2)
        parts = [
            f"broker workers {sum(self.workers()):.0f}% ({' + '.join(f'{v:.0f}%' for v in self.workers())})",
            f"supervisor {self.percent('broker supervisor'):.0f}%",
            f"redis-server {self.percent('redis-server'):.0f}%",
            f"slapd {self.percent('slapd'):.0f}%",
            f"{generator_name} {self.percent('generator'):.0f}%",
            f"kernel irq/softirq {100 * cores * self.interrupts:.0f}%",
            f"kernel threads {self.percent('kernel threads'):.0f}%",
            f"other programs {self.others():.0f}%" + (f" ({busiest})" if busiest else ""),
        ]
        return f"CPU (100% = one core of {cores}): {', '.join(parts)}; machine busy {100 * self.machine_busy:.0f}%"


# -- phases -----------------------------------------------------------------------------------------


@dataclass
class Phase:
    rate: float
    completed: int  # in the measured window
    succeeded: int  # every successful request, warm-up and tail included
    latencies: list[float]
    errors: Counter[str]
    error_sample: str
    cpu: CpuWindow | None
    generator: str
    tokens: list[str]


def python_phase(
    pool: concurrent.futures.Executor, procs: int, kind: str, port: int, client_id: str, concurrency: int,
    tokens: list[str], warmup: float, duration: float, broker_pid: int,
) -> Phase:  # fmt: skip
    start = time.monotonic() + 0.5  # every job has reached its process by then (the pool is warm)
    measure_from, measure_until = start + warmup, start + warmup + duration
    if kind == "flows":
        jobs = [
            Job(kind, port, client_id, len(part), (), start, measure_from, measure_until)
            for part in split(list(range(concurrency)), procs)
            if part
        ]
    else:
        jobs = [
            Job(kind, port, client_id, len(part), tuple(part), start, measure_from, measure_until)
            for part in split(tokens, procs)
            if part
        ]
    sampler, snaps = snapshots_at(broker_pid, [measure_from, measure_until])
    total = merge(list(pool.map(run_job, jobs)))
    sampler.join(timeout=5)
    return Phase(
        rate=total.completed / duration,
        completed=total.completed,
        succeeded=total.succeeded,
        latencies=total.latencies,
        errors=total.errors,
        error_sample=total.error_sample,
        cpu=CpuWindow.between(*snaps) if len(snaps) == 2 else None,
        generator=f"Python generator ({len(jobs)} process{'es' if len(jobs) > 1 else ''})",
        tokens=total.tokens,
    )


# A refresh chain's request() in wrk: the next live token of the pool, POSTed to the URL's path
# (/token); when the pool is empty, a token the target refuses, counted in ``empty``. wrk_chains.py's
# script has it too.
WRK_REQUEST = r"""function request()
  local token = table.remove(pool)
  if token == nil then
    empty = empty + 1
    token = "rt.pool-empty"
  end
  return wrk.format("POST", nil, headers, prefix .. token)
end
"""


WRK_SCRIPT = (
    r"""
-- Refresh chains for wrk: each response's rotated refresh token feeds the next request.
local threads, counter = {}, 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end
local pool = {}
ok, bad, empty, sample = 0, 0, 0, ""  -- globals: done() reads them with thread:get
function init(args)
  prefix = "grant_type=refresh_token&client_id=" .. args[2] .. "&refresh_token="
  for line in io.lines(args[1] .. "." .. id) do table.insert(pool, line) end
  headers = {["Content-Type"] = "application/x-www-form-urlencoded"}
end
"""
    + WRK_REQUEST
    + r"""function response(status, headers, body)
  local token = status == 200 and body:match('"refresh_token":"([^"]+)"')
  if token then
    ok = ok + 1
    table.insert(pool, token)
  else
    bad = bad + 1
    if sample == "" then sample = status .. " " .. body:sub(1, 200) end
  end
end
function done(summary, latency, requests)
  local good, failed, starved, first = 0, 0, 0, ""
  for _, thread in ipairs(threads) do
    good = good + thread:get("ok")
    failed = failed + thread:get("bad")
    starved = starved + thread:get("empty")
    if first == "" then first = thread:get("sample") end
  end
  local e = summary.errors
  io.write(string.format(
    "WRKRESULT ok=%d bad=%d empty=%d duration_us=%d p50_us=%d p99_us=%d connect=%d read=%d write=%d timeout=%d\n",
    good, failed, starved, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.timeout))
  io.write("WRKSAMPLE " .. first:gsub("\n", " ") .. "\n")
end
"""
)


WRK_SPARE = 4  # tokens per wrk thread beyond one per connection: wrk calls request() once more per thread


def wrk_phase(
    wrk: str, threads: int, port: int, client_id: str, connections: int, tokens: list[str], duration: float,
    broker_pid: int, work: Path,
) -> Phase:  # fmt: skip
    if len(tokens) < connections + WRK_SPARE * threads:
        raise ValueError(f"wrk needs {connections + WRK_SPARE * threads} refresh tokens, got {len(tokens)}")
    script = work / "refresh.lua"
    script.write_text(WRK_SCRIPT)
    for n, part in enumerate(split(tokens, threads)):
        (work / f"tokens.{n}").write_text("\n".join(part) + "\n")
    argv = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}/token",
        "--",
        str(work / "tokens"),
        client_id,
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    first = snapshot(broker_pid)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    last = snapshot(broker_pid)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    found = re.search(r"^WRKRESULT (.*)$", done.stdout, re.M)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    fields = {k: int(v) for k, v in (item.split("=") for item in found.group(1).split())}
    sample = re.search(r"^WRKSAMPLE (.*)$", done.stdout, re.M)
    errors: Counter[str] = Counter(
        {k: fields[k] for k in ("connect", "read", "write", "timeout")}
        | {"non-200": fields["bad"], "token pool empty": fields["empty"]}
    )
    seconds = fields["duration_us"] / 1e6
    return Phase(
        rate=fields["ok"] / seconds,
        completed=fields["ok"],
        succeeded=fields["ok"],
        latencies=[fields["p50_us"] / 1e6, fields["p99_us"] / 1e6],  # already the two quantiles
        errors=+errors,
        error_sample=sample.group(1).strip() if sample else "",
        cpu=CpuWindow.between(first, last, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)),
        generator=f"wrk {threads} thread{'s' if threads > 1 else ''}",
        tokens=[],
    )


def quantiles(phase: Phase, wrk: bool) -> tuple[float, float]:
    if wrk:
        return phase.latencies[0], phase.latencies[1]
    if len(phase.latencies) < 2:
        return float("nan"), float("nan")
    q = statistics.quantiles(phase.latencies, n=100)
    return statistics.median(phase.latencies), q[98]


def directory_lookups(metrics_port: int) -> int:
    """Refresh-time re-checks the broker's workers have asked the directory for so far (its
    ``mcpb_upstream_latency_seconds`` histogram counts one per lookup, not per refresh)."""
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    return round(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("mcpb_upstream_latency_seconds_count{") and 'operation="refresh"' in line
        )
    )


def count_events(log: Path, offset: int, event: str) -> int:
    """Occurrences of an audit event name from ``offset`` on (not lines: lines can be glued together)."""
    with log.open("rb") as f:
        f.seek(offset)
        return f.read().count(event.encode())


def log_lines(log: Path) -> tuple[int, int]:
    """(lines, lines that are one JSON object) of the server's output."""
    total = good = 0
    with log.open("rb") as f:
        for line in f:
            total += 1
            with suppress(ValueError):
                good += isinstance(json.loads(line), dict)
    return total, good


# -- main -------------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> int:
    command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
    wrk = shutil.which("wrk")
    use_wrk = args.generator == "wrk" or (args.generator == "auto" and wrk is not None)
    if use_wrk and wrk is None:
        print(WRK_HINT.replace("(the Python generator is used instead)", "(or use --generator python)"))
        return 2
    if args.generator == "auto" and wrk is None:
        print(WRK_HINT)
    cores = os.cpu_count() or 1
    serve = Path(sys.executable).with_name("mcp-broker")
    with tempfile.TemporaryDirectory(prefix="mcpb-bench-") as tmp:
        work = Path(tmp)
        redis_server = RedisServer(work, persist=args.aof)
        slapd = Slapd(work)
        broker: ChildProcess | None = None
        ctx = multiprocessing.get_context("spawn")
        try:
            redis_server.start()
            slapd.start()
            port, metrics_port = free_port(), free_port()
            config = work / "broker.yaml"
            config.write_text(
                broker_config(
                    port, args.workers, redis_server, slapd, args.log_level, args.recheck_interval, metrics_port
                )
            )
            log = work / "broker.log"
            broker = ChildProcess("mcp-broker", [str(serve), "serve", "--config", str(config)], log)
            broker.start()
            assert broker.proc is not None
            base = f"http://127.0.0.1:{port}"
            wait_ready(base, broker)
            client_id = register_client(base)
            with concurrent.futures.ProcessPoolExecutor(args.generator_procs, mp_context=ctx) as pool:
                list(pool.map(time.sleep, [1.0] * args.generator_procs))  # start every process now
                print(
                    f"flows: {args.browsers} browsers for {args.duration:g} s (after {args.warmup:g} s warm-up) ...",
                    file=sys.stderr,
                )
                offset = log.stat().st_size
                flows = python_phase(
                    pool, args.generator_procs, "flows", port, client_id, args.browsers, [],
                    args.warmup, args.duration, broker.proc.pid,
                )  # fmt: skip
                tokens = flows.tokens
                needed = 2 * (args.chains + WRK_SPARE * args.wrk_threads) if use_wrk else args.chains
                for _ in range(10):  # a very short flow phase: top up
                    if len(tokens) >= needed:
                        break
                    more = python_phase(pool, 1, "flows", port, client_id, args.browsers, [], 0, 2, broker.proc.pid)
                    tokens += more.tokens
                else:
                    raise RuntimeError(f"only {len(tokens)} of {needed} refresh tokens: {flows.error_sample}")
                flow_logins = count_events(log, offset, "login_succeeded")
                print(f"refresh: {args.chains} chains for {args.duration:g} s ...", file=sys.stderr)
                offset, looked_up = log.stat().st_size, directory_lookups(metrics_port)
                if use_wrk:
                    assert wrk is not None
                    half = len(tokens) // 2
                    if args.warmup:
                        wrk_phase(
                            wrk, args.wrk_threads, port, client_id, args.chains, tokens[half:], args.warmup,
                            broker.proc.pid, work,
                        )  # fmt: skip
                        time.sleep(0.5)  # let the warm-up run's last requests finish
                        offset, looked_up = log.stat().st_size, directory_lookups(metrics_port)
                    refresh = wrk_phase(
                        wrk, args.wrk_threads, port, client_id, args.chains, tokens[:half], args.duration,
                        broker.proc.pid, work,
                    )  # fmt: skip
                else:
                    refresh = python_phase(
                        pool, args.generator_procs, "refresh", port, client_id, args.chains, tokens[: args.chains],
                        args.warmup, args.duration, broker.proc.pid,
                    )  # fmt: skip
                audited = count_events(log, offset, "token_refreshed")
                lookups = directory_lookups(metrics_port) - looked_up
                lines, json_lines = log_lines(log)
                workers_seen = len(refresh.cpu.workers()) if refresh.cpu else 0
                loaded = worker_libraries(broker.proc.pid)
        finally:
            if broker is not None:
                broker.stop()
                if args.server_log:
                    shutil.copyfile(broker.log_file, args.server_log)
            slapd.stop()
            redis_server.stop()

    report(
        args, command, cores, refresh, flows, use_wrk, audited, flow_logins, lines, json_lines, workers_seen, loaded,
        lookups,
    )  # fmt: skip
    return 0 if not refresh.errors and not flows.errors else 1


def source_revision() -> str:
    """The commit the broker's code comes from, marked when the working tree differs from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "broker", "providers"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    return f"{head} with uncommitted changes" if dirty else head


def worker_libraries(broker_pid: int) -> str:
    """Which event loop and HTTP parser the broker's workers really loaded (from /proc/PID/maps)."""
    found: set[str] = set()
    for pid_dir in Path("/proc").iterdir():
        stat = _stat(int(pid_dir.name)) if pid_dir.name.isdigit() else None
        if stat is None or stat[1] != broker_pid:
            continue
        try:
            maps = (pid_dir / "maps").read_text()
        except OSError:
            continue
        found |= {lib for lib in ("uvloop", "httptools") if f"/{lib}/" in maps}
    return " + ".join(sorted(found, reverse=True)) or "asyncio + h11 (neither uvloop nor httptools loaded)"


def report(
    args: argparse.Namespace, command: str, cores: int, refresh: Phase, flows: Phase, use_wrk: bool,
    audited: int, flow_logins: int, lines: int, json_lines: int, workers_seen: int, loaded: str,
    lookups: int,
) -> None:  # fmt: skip
    r50, r99 = quantiles(refresh, use_wrk)
    f50, f99 = quantiles(flows, False)
    redis_mode = "appendonly yes, everysec" if args.aof else "appendonly no"
    print(
        f"mcp-broker {version('mcp-broker')} ({source_revision()}): `mcp-broker serve`, "
        f"{args.workers} uvicorn workers ({loaded}), "
        f"refresh rotation on, upstream re-check every {args.recheck_interval or 0} s (0: every refresh), "
        f"logging.level {args.log_level}; redis-server ({redis_mode}) and slapd on loopback; "
        f"{cores} CPU cores shared with the load generator"
    )
    print(
        f"refresh_token grants  {refresh.rate:8,.0f}/s   p50 {r50 * 1e3:6.1f} ms   p99 {r99 * 1e3:6.1f} ms   "
        f"n={refresh.completed:,} in {args.duration:g} s, {args.chains} chains, {refresh.generator}"
    )
    if refresh.cpu:
        print("  " + refresh.cpu.render(refresh.generator.split(" (")[0]))
        print("  " + refresh.cpu.cost(refresh.completed, "refresh"))
        print("  bottleneck: " + refresh.cpu.diagnosis(args.wrk_threads if use_wrk else args.generator_procs))
    if args.log_level == "info":
        print(
            f"  audit: {audited:,} token_refreshed events in the server log for {refresh.succeeded:,} refreshes "
            f"answered 200 during the phase{' (wrk warm-up run excluded)' if use_wrk else ' (warm-up included)'}"
        )
    else:
        print(f"  audit: off (logging.level {args.log_level} drops the info-level audit events)")
    print(
        f"  directory lookups: {lookups:,} for {audited:,} token_refreshed events"
        + (f" ({lookups / audited:.3f} per refresh)" if audited else "")
        + " (concurrent refreshes of one user share a lookup; with an interval its answer is kept in Redis)"
    )
    print(
        f"authorization flows   {flows.rate:8,.1f}/s   p50 {f50 * 1e3:6.1f} ms   p99 {f99 * 1e3:6.1f} ms   "
        f"n={flows.completed:,} in {args.duration:g} s, {args.browsers} browsers "
        "(authorize → consent → login page → LDAP login → code exchange: 5 requests each)"
    )
    if flows.cpu:
        print("  " + flows.cpu.render("Python generator"))
        print("  " + flows.cpu.cost(flows.completed, "flow"))
        print("  bottleneck: " + flows.cpu.diagnosis(args.generator_procs))
    if args.log_level == "info":
        print(f"  audit: {flow_logins:,} login_succeeded events in the server log for {flows.succeeded:,} flows")
    for name, phase in (("refresh", refresh), ("flows", flows)):
        if phase.errors:
            print(f"ERRORS in {name}: {dict(phase.errors)}; first: {phase.error_sample}")
    if json_lines < lines:
        print(
            f"note: {lines - json_lines:,} of {lines:,} server log lines are not JSON although logging.format is "
            "json: the worker processes never configured logging (no redaction, level ignored)"
        )
    if workers_seen != args.workers:
        print(f"note: {workers_seen} broker worker processes seen, {args.workers} configured")
    verdict = "met" if refresh.rate >= TARGET_REFRESH_PER_SECOND else "NOT met"
    print(f"target {TARGET_REFRESH_PER_SECOND:,} refresh grants/s: {verdict}")
    print(f"command: {command}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per phase (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each phase (default 2)")
    parser.add_argument("--chains", type=int, default=64, help="concurrent refresh chains = connections (default 64)")
    parser.add_argument("--browsers", type=int, default=16, help="concurrent sign-in flows (default 16)")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers, server.workers (default 2)")
    parser.add_argument("--log-level", choices=["info", "warning"], default="info", help="info keeps audit events on")
    parser.add_argument("--aof", action=argparse.BooleanOptionalAction, default=True, help="Redis append-only file")
    parser.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto", help="auto: wrk if installed")
    parser.add_argument("--generator-procs", type=int, default=1, help="processes of the Python generator")
    parser.add_argument("--server-log", help="keep the broker's output in this file")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument(
        "--recheck-interval",
        type=int,
        default=0,
        help="tokens.upstream_recheck_interval: 0 asks LDAP at every refresh (the default), N reuses a user's "
        "re-check for N seconds",
    )
    raise SystemExit(main(parser.parse_args()))
