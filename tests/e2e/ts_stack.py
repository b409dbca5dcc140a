"""The stack and the Node side of the TypeScript SDK end-to-end test.

* :func:`ensure_packages` runs ``npm ci`` in ``tests/e2e/ts-client`` when its node_modules is
  missing or older than package-lock.json (under a file lock, so parallel workers install once).
* :func:`start_stack` runs the broker (LDAP provider on the session's slapd, the session's Redis)
  in-process and one ``mcp_app`` as a separate process, as in production, on loopback ports.
* :func:`run_client` runs ``client.mjs`` (the SDK's own OAuth client) for one scenario and parses
  the JSON lines it prints into a :class:`ClientRun`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from broker.app import create_app as create_broker
from broker.config import parse_config
from broker.devstack import RedisServer, Slapd, free_port
from tests.broker.flows import broker_yaml
from tests.http import running, wait_ready
from tests.node import ensure_npm_packages

CLIENT_DIR = Path(__file__).resolve().parent / "ts-client"
SDK_PACKAGE = "@modelcontextprotocol/sdk"
START_TIMEOUT = 30
SCRIPT_TIMEOUT = 120
REDIRECT_URI = "http://127.0.0.1:33419/callback"  # never listened on: the script stops at the redirect
PASSWORDS = {"alice": "demo-alice", "bob": "demo-bob", "carol": "demo-carol"}


def ensure_packages() -> None:
    ensure_npm_packages(CLIENT_DIR, "the TypeScript SDK tests")


def sdk_version() -> str:
    """The version of the SDK npm installed (pinned in package.json and package-lock.json)."""
    manifest = CLIENT_DIR / "node_modules" / SDK_PACKAGE / "package.json"
    return str(json.loads(manifest.read_text())["version"])


@dataclass(frozen=True)
class TsStack:
    issuer: str
    mcp_url: str  # the MCP endpoint, also its canonical resource URI
    mcp_log: Path

    @property
    def resource_metadata_url(self) -> str:
        """Where mcp_app serves its RFC 9728 metadata (path-inserted, as its challenges say)."""
        parts = urlsplit(self.mcp_url)
        return f"{parts.scheme}://{parts.netloc}/.well-known/oauth-protected-resource{parts.path}"


@contextmanager
def start_stack(redis_server: RedisServer, slapd: Slapd, state: Path) -> Iterator[TsStack]:
    broker_port, mcp_port, metrics_port = free_port(), free_port(), free_port()
    mcp_url = f"http://127.0.0.1:{mcp_port}/mcp"
    prefix = f"ts{secrets.token_hex(6)}"
    config = parse_config(broker_yaml(broker_port, redis_server.url, slapd, prefix=prefix, resource=mcp_url))
    env = {
        **{k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
        "MCP_APP_RESOURCE_URL": mcp_url,
        "MCP_APP_ISSUER": config.issuer,
        "MCP_APP_REDIS_URL": redis_server.url,
        "MCP_APP_REDIS_KEY_PREFIX": prefix,
        "MCP_APP_PORT": str(mcp_port),
        "MCP_APP_METRICS_HOST": "127.0.0.1",
        "MCP_APP_METRICS_PORT": str(metrics_port),
    }
    log = state / "mcp_app.log"
    with ExitStack() as stack:
        stack.enter_context(running(create_broker(config), broker_port))
        out = stack.enter_context(log.open("wb"))
        proc = subprocess.Popen(  # a separate mcp_app process, as in production
            [sys.executable, "-m", "mcp_app.cli", "serve"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
        stack.callback(_stop, proc)
        wait_ready(f"http://127.0.0.1:{mcp_port}/readyz", proc, describe=lambda: log.read_text()[-2000:])
        yield TsStack(issuer=config.issuer, mcp_url=mcp_url, mcp_log=log)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@dataclass
class Http:
    """One request the SDK (actor "sdk") or the scripted browser (actor "browser") sent."""

    phase: str
    actor: str
    method: str
    url: str
    status: int | None
    request: Any = None
    response: Any = None
    www_authenticate: str | None = None
    bearer: str | None = None
    cookies: list[str] = field(default_factory=list)  # names of the cookies the browser sent

    @property
    def path(self) -> str:
        return urlsplit(self.url).path


@dataclass
class ClientRun:
    """What client.mjs printed: its steps by name, its HTTP exchanges and authorization redirects."""

    lines: list[dict[str, Any]]
    stderr: str
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    http: list[Http] = field(default_factory=list)
    redirects: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for line in self.lines:
            if line["event"] == "step":
                self.steps[line["step"]] = line
            elif line["event"] == "http":
                self.http.append(
                    Http(
                        phase=line["phase"],
                        actor=line["actor"],
                        method=line["method"],
                        url=line["url"],
                        status=line.get("status"),
                        request=line.get("request"),
                        response=line.get("response"),
                        www_authenticate=line.get("www_authenticate"),
                        bearer=line.get("bearer"),
                        cookies=line.get("cookies", []),
                    )
                )
            elif line["event"] == "authorize":
                self.redirects.append(line)

    def step(self, name: str) -> dict[str, Any]:
        """A step that must have succeeded."""
        assert name in self.steps, f"step {name} never ran: {self.transcript()}"
        step = self.steps[name]
        assert step["ok"], f"step {name} failed: {step.get('error')}\n{self.transcript()}"
        return step

    def sdk(self, phase: str) -> list[Http]:
        """The SDK's requests during one step (phases of a retried step start with its name), less
        the GET that opens the standalone SSE stream: the SDK sends it without waiting for it after
        connecting, so it may be logged during the next step."""
        return [
            h
            for h in self.http
            if h.actor == "sdk"
            and (h.phase == phase or h.phase.startswith(f"{phase}#"))
            and not (h.method == "GET" and h.path == "/mcp")
        ]

    def transcript(self) -> str:
        return "\n".join(json.dumps(line) for line in self.lines) + (
            f"\nstderr:\n{self.stderr[-3000:]}" if self.stderr else ""
        )


def run_client(stack: TsStack, scenario: str, username: str) -> ClientRun:
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed: the TypeScript SDK test needs Node.js 20+")
    config = {
        "scenario": scenario,
        "mcp_url": stack.mcp_url,
        "redirect_uri": REDIRECT_URI,
        "username": username,
        "password": PASSWORDS[username],
        "timeout_ms": 15_000,
        "script_timeout_ms": (SCRIPT_TIMEOUT - 10) * 1000,
    }
    result = subprocess.run(
        [node, str(CLIENT_DIR / "client.mjs"), json.dumps(config)],
        cwd=CLIENT_DIR,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        check=False,
    )
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    run = ClientRun(lines, result.stderr)
    finished = result.returncode == 0 and bool(lines) and lines[-1]["event"] == "done"
    assert finished, f"client.mjs exited with {result.returncode}:\n{run.transcript()}"
    return run
