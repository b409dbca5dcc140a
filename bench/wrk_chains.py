"""Refresh chains under wrk, and what they cost: the measuring half of bench/compare.py.

``wrk`` keeps ``connections`` refresh-token families in flight, one request each, every family
continuing with the successor it was just given. Around each run the CPU time of every process is
read from /proc (refresh.py's snapshots), so the cost of a refresh is the target's own CPU plus
Redis and slapd, per refresh answered; resident memory is read per serving process.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import resource
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from refresh import WRK_REQUEST, CpuWindow, snapshot

from broker.devstack.process import ChildProcess

WRK_THREADS = 1
WRK_SPARE = 4  # tokens beyond one per connection: wrk calls request() once more per thread

# refresh.py's chain script, with refused rotations (400 invalid_grant) counted apart from other
# failures: the pool of live tokens is per wrk thread, each response's successor goes back into it,
# so a family has one request in flight and always continues with the token it was just given.
WRK_SCRIPT = (
    r"""
local threads = {}
function setup(thread) table.insert(threads, thread) end
local pool = {}
ok, refused, bad, empty, sample = 0, 0, 0, 0, ""
function init(args)
  prefix = "grant_type=refresh_token&client_id=" .. args[2] .. "&refresh_token="
  for line in io.lines(args[1]) do table.insert(pool, line) end
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
)


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
    """One wrk run of whole seconds (wrk takes no fractions) over the first tokens needed."""
    needed = connections + WRK_SPARE * WRK_THREADS
    if len(tokens) < needed:
        raise ValueError(f"wrk needs {needed} refresh tokens, got {len(tokens)}")
    script, token_file = work / "compare.lua", work / "compare.tokens"
    script.write_text(WRK_SCRIPT)
    token_file.write_text("\n".join(tokens[:needed]) + "\n")
    argv = [wrk, f"-t{WRK_THREADS}", f"-c{connections}", f"-d{max(1, math.ceil(duration))}s", "--timeout", "10s", "-s", str(script),
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


# -- starting a target ------------------------------------------------------------------------------


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
