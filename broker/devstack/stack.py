"""``mcp-broker dev``: the whole stack on one machine, on embedded defaults.

A private redis-server and a throwaway demo slapd (children that die with this process),
the broker and the protected MCP server, in one process. Ctrl-C stops everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from broker.app import create_app
from broker.config.loader import parse_config
from broker.devstack.redis_server import RedisServer
from broker.devstack.slapd import DemoDirectory, Slapd
from broker.log import configure_logging
from broker.oauth.signing import new_kek


@dataclass(frozen=True)
class DevOptions:
    state_dir: Path
    broker_port: int = 8000
    mcp_port: int = 8001
    log_format: str = "auto"


class PortInUse(RuntimeError):
    """A port the dev stack was asked to serve on is taken."""


def _listen(port: int, option: str) -> socket.socket:
    """A loopback listening socket, bound before anything else starts: a taken port is reported
    at once, and no child service picking a free port can take it (0 picks any free port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        raise PortInUse(f"127.0.0.1:{port} is not free ({exc.strerror}); choose another with {option}") from exc
    sock.listen(2048)
    sock.set_inheritable(False)
    return sock


def server_config(app: ASGIApp, port: int, **options: Any) -> uvicorn.Config:
    """How the dev stack serves one app on loopback (``options``: more uvicorn settings, such as
    a certificate). No proxy stands in front of it, so ``X-Forwarded-*`` is ignored: uvicorn's
    default trusts it from 127.0.0.1, which would let any local caller pick the client address
    the throttles count and the audit log records."""
    return uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        proxy_headers=False,
        forwarded_allow_ips="",
        **options,
    )


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the dev supervisor."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _state_secret(state_dir: Path, name: str) -> str:
    """A random secret kept in the state folder (owner-only), the same on every run."""
    path = state_dir / name
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(new_kek())
    return path.read_text().strip()


def _write_effective_config(path: Path, template: str, env: dict[str, str]) -> None:
    """The running stack's configuration, for `mcp-broker explain --config` and check-config.
    It holds this run's throwaway secrets, so it is readable by the owner only."""
    text = template
    for name, value in env.items():
        if name.startswith("MCPB_DEV_"):
            text = text.replace("${" + name + "}", value)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(text)


def banner(opts: DevOptions, redis_url: str, ldap_url: str) -> str:
    demo = DemoDirectory()
    users = "\n".join(
        f"    {u.uid:<6} password {u.password:<11} groups: {', '.join(u.groups) or '(none)'}" for u in demo.users
    )
    return f"""
mcp-broker dev stack is running (Ctrl-C stops everything)

  Broker (authorization server)  http://127.0.0.1:{opts.broker_port}
    metadata                     http://127.0.0.1:{opts.broker_port}/.well-known/oauth-authorization-server
  MCP server (protected)         http://127.0.0.1:{opts.mcp_port}/mcp
  Redis (private, append-only)   {redis_url}   data in {opts.state_dir / "redis"}
  Demo directory (slapd)         {ldap_url}   base dc=demo,dc=local
  Demo users:
{users}

Point an MCP client at http://127.0.0.1:{opts.mcp_port}/mcp, for example:
  npx @modelcontextprotocol/inspector   (transport "Streamable HTTP", URL above)
  claude mcp add --transport http notes http://127.0.0.1:{opts.mcp_port}/mcp
The client discovers the broker from the server's 401 and opens the login page.

Admin API: bearer token in {opts.state_dir / "admin-token"}
Explain who gets what:
  .venv/bin/mcp-broker explain --config {opts.state_dir / "dev-config.yaml"} --provider demo-ldap --user alice
"""


async def _serve(servers: list[tuple[uvicorn.Server, socket.socket]], on_started: str) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(server.serve(sockets=[sock])) for server, sock in servers]
    waiter = asyncio.create_task(stop.wait())

    # uvicorn exposes `started` only as a flag, so poll it.
    def started() -> bool:
        return all(server.started for server, _ in servers)

    while not started() and not any(t.done() for t in tasks) and not stop.is_set():  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    if started():
        print(on_started, file=sys.stderr, flush=True)
    done, _ = await asyncio.wait([*tasks, waiter], return_when=asyncio.FIRST_COMPLETED)
    for server, _sock in servers:
        server.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)
    waiter.cancel()
    for task in done:
        error = None if task is waiter else task.exception()
        if error is not None:
            raise error


DEMO_API = "https://demo-api.example.com"  # the audience of dev-config.yaml's demo-api target


def run_dev(opts: DevOptions) -> int:
    from mcp_app.app import create_app as create_mcp_app
    from mcp_app.settings import McpAppSettings

    configure_logging("info", opts.log_format)
    opts.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    broker_sock = _listen(opts.broker_port, "--broker-port")
    try:
        mcp_sock = _listen(opts.mcp_port, "--mcp-port")
    except PortInUse:
        broker_sock.close()
        raise
    opts = replace(opts, broker_port=broker_sock.getsockname()[1], mcp_port=mcp_sock.getsockname()[1])
    redis_server = RedisServer(opts.state_dir, persist=True)
    slapd = Slapd(opts.state_dir)
    started: list[RedisServer | Slapd] = []
    try:
        for service in (redis_server, slapd):
            service.start()
            started.append(service)
        env = {
            **os.environ,
            "MCPB_DEV_BROKER_PORT": str(opts.broker_port),
            "MCPB_DEV_MCP_PORT": str(opts.mcp_port),
            "MCPB_DEV_REDIS_URL": redis_server.url,
            "MCPB_DEV_KEK": _state_secret(opts.state_dir, "key-encryption-key"),
            "MCPB_DEV_ADMIN_TOKEN": _state_secret(opts.state_dir, "admin-token"),
            "MCPB_DEV_NOTES_SERVER_SECRET": _state_secret(opts.state_dir, "notes-server-secret"),
            "MCPB_DEV_LDAP_URL": slapd.url,
            "MCPB_DEV_LDAP_BIND_DN": slapd.service_dn,
            "MCPB_DEV_LDAP_BIND_PASSWORD": slapd.service_password,
        }
        template = resources.files("broker.devstack").joinpath("dev-config.yaml").read_text()
        config = parse_config(template, source="dev-config.yaml", env=env)
        _write_effective_config(opts.state_dir / "dev-config.yaml", template, env)
        broker_app = create_app(config)
        mcp_settings = McpAppSettings(
            resource_url=f"http://127.0.0.1:{opts.mcp_port}/mcp",
            issuer=config.issuer,
            redis_url=redis_server.url,
            port=opts.mcp_port,
            delegation_client_id="notes-server",  # the demo's call_downstream tool (delegated access)
            delegation_client_secret=env["MCPB_DEV_NOTES_SERVER_SECRET"],
            downstreams={"demo-ldap": {"target": DEMO_API, "url": f"http://127.0.0.1:{opts.mcp_port}/demo-api/whoami"}},
            demo_api_audience=DEMO_API,
        )
        mcp_asgi = create_mcp_app(mcp_settings)
        servers: list[tuple[uvicorn.Server, socket.socket]] = [
            (_Server(server_config(broker_app, opts.broker_port)), broker_sock),
            (_Server(server_config(mcp_asgi, opts.mcp_port)), mcp_sock),
        ]
        asyncio.run(_serve(servers, banner(opts, redis_server.display_url, slapd.url)))
        return 0
    finally:
        for service in reversed(started):
            service.stop()
        broker_sock.close()
        mcp_sock.close()
