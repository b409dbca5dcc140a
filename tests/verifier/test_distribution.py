"""The verifier distribution, installed alone, protects a minimal MCP server against a real broker.

``mcp_app/mcp-broker-verifier`` is built and installed into a clean virtual environment (no
system site packages, nothing of this checkout on its path) with the versions of
``constraints.txt``; none of the broker's dependencies may come with it. A small MCP server
using the README's integration (``protect``) then runs there under uvicorn, in front of a
running broker with its Redis and LDAP, and the MCP SDK client of the main environment checks
what the README promises: 401 with the metadata hint, the metadata naming the broker, scopes
per tool (403 ``insufficient_scope``), and a revoked grant refused.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.metadata
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import textwrap
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mcp.types import CallToolResult

from broker.devstack import free_port
from tests.broker.conftest import BrokerFactory
from tests.broker.flows import Broker, tokens_for
from tests.http import wait_ready
from tests.mcp_app.conftest import session

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTION = ROOT / "mcp_app" / "mcp-broker-verifier"
# What the broker needs and a resource server must not be made to install.
BROKER_ONLY = [
    "broker",
    "providers",
    "mcp_app",
    "fastapi",
    "ldap3",
    "msal",
    "authlib",
    "pydantic_settings",
    "jinja2",
    "prometheus_client",  # the distribution's `metrics` extra, not installed here
]

# The README's integration, as a user would write it (plus reading where to listen from the environment).
APP = textwrap.dedent(
    """
    import os

    import uvicorn
    from mcp.server.mcpserver import MCPServer
    from mcp_broker_verifier import protect

    server = MCPServer(name="notes")
    notes: list[str] = []

    @server.tool()
    def list_notes() -> list[str]:
        return notes

    @server.tool()
    def add_note(text: str) -> str:
        notes.append(text)
        return text

    app = protect(
        server,
        issuer=os.environ["BROKER_ISSUER"],
        resource=os.environ["RESOURCE"],
        tool_scopes={"list_notes": "notes:read", "add_note": "notes:write"},
        scope_implies={"notes:write": ["notes:read"]},
        redis_url=os.environ["BROKER_REDIS_URL"],
        redis_key_prefix=os.environ["BROKER_REDIS_PREFIX"],
    )
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]))
    """
)


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The distribution built from a copy of its sources (the checkout gets no build output) and
    installed into a fresh virtual environment by the main environment's pip."""
    work = tmp_path_factory.mktemp("verifier-dist")
    source = work / "source"
    shutil.copytree(DISTRIBUTION, source, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    env_dir = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=60)
    python = env_dir / "bin" / "python"
    started = time.monotonic()
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--disable-pip-version-check"]
    installed = subprocess.run(
        [*pip, "-c", str(ROOT / "constraints.txt"), str(source)],
        env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert installed.returncode == 0, installed.stderr[-4000:]
    print(f"mcp-broker-verifier installed into a clean venv in {time.monotonic() - started:.1f} s")
    return python


def _clean_env(**extra: str) -> dict[str, str]:
    """Nothing of the checkout or the main environment leaks in."""
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **extra}


def _payload(result: CallToolResult) -> object:
    assert not result.is_error, result
    content = result.structured_content
    return content.get("result", content) if isinstance(content, dict) else content


def _call(url: str, token: str | None, name: str, arguments: dict[str, object]) -> httpx.Response:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
    headers = {"accept": "application/json, text/event-stream"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return httpx.post(url, json=body, headers=headers, timeout=10)


def _installed_alone(venv: Path, cwd: Path) -> None:
    """The distribution and uvicorn import in the clean environment; nothing of the broker is there."""
    probe = (
        "import importlib.util, json, mcp_broker_verifier, uvicorn\n"
        "from mcp_broker_verifier import protect\n"
        f"print(json.dumps({{'absent': [m for m in {BROKER_ONLY!r} if importlib.util.find_spec(m) is None],"
        " 'home': mcp_broker_verifier.__file__}))\n"
    )
    out = subprocess.run(
        [str(venv), "-I", "-c", probe], cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert found["absent"] == BROKER_ONLY
    assert found["home"].startswith(str(venv.parent.parent))  # the installed copy, not this checkout


@pytest.fixture
def served(venv: Path, broker_factory: BrokerFactory, tmp_path: Path) -> Iterator[tuple[Broker, str, str]]:
    """A running broker and the minimal app in the clean environment: (broker, resource, base)."""
    port, prefix = free_port(), f"t{secrets.token_hex(6)}"
    base = f"http://127.0.0.1:{port}"
    resource = f"{base}/mcp"
    with broker_factory(resource=resource, prefix=prefix) as broker:
        script = tmp_path / "notes_server.py"
        script.write_text(APP, encoding="utf-8")
        log = tmp_path / "notes_server.log"
        env = _clean_env(
            BROKER_ISSUER=broker.base,
            RESOURCE=resource,
            BROKER_REDIS_URL=str(broker.config.redis.url),
            BROKER_REDIS_PREFIX=prefix,
            PORT=str(port),
        )
        with log.open("wb") as out:
            proc = subprocess.Popen([str(venv), "-I", str(script)], cwd=tmp_path, env=env, stdout=out, stderr=out)
        try:
            wait_ready(f"{base}/.well-known/oauth-protected-resource/mcp", proc, describe=log.read_text)
            yield broker, resource, base
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
            print(log.read_text(errors="replace"))  # the server's own log, shown when the test fails


async def test_installed_alone_it_protects_a_minimal_mcp_server(
    venv: Path, served: tuple[Broker, str, str], tmp_path: Path
) -> None:
    """One test, so the one installation is not repeated on another xdist worker."""
    _installed_alone(venv, tmp_path)
    broker, resource, base = served
    issuer = broker.base
    mcp_url = f"{base}/mcp"
    metadata_url = f"{base}/.well-known/oauth-protected-resource/mcp"

    # No token: 401 pointing at the protected resource metadata, which names the broker.
    anonymous = _call(mcp_url, None, "list_notes", {})
    assert anonymous.status_code == 401
    assert f'resource_metadata="{metadata_url}"' in anonymous.headers["www-authenticate"]
    async with httpx.AsyncClient() as http:
        metadata = (await http.get(metadata_url)).json()
        broker_metadata = (await http.get(f"{issuer}/.well-known/oauth-authorization-server")).json()
        rebound = await http.post(mcp_url, json={}, headers={"host": "evil.example", "authorization": "Bearer x"})
    assert metadata["resource"] == resource
    assert metadata["authorization_servers"] == [issuer]
    assert set(metadata["scopes_supported"]) == {"notes:read", "notes:write"}
    assert broker_metadata["issuer"] == issuer
    assert rebound.status_code == 421  # a foreign Host is refused before authentication (DNS rebinding)

    # bob holds notes:read: he lists, and adding (notes:write) is a step-up challenge.
    _, bob = await asyncio.to_thread(tokens_for, broker, "bob", resource=resource)
    async with session(mcp_url, bob["access_token"]) as client:
        assert {t.name for t in (await client.list_tools()).tools} == {"list_notes", "add_note"}
        assert _payload(await client.call_tool("list_notes", {})) == []
    denied = _call(mcp_url, bob["access_token"], "add_note", {"text": "x"})
    assert denied.status_code == 403
    challenge = denied.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge
    assert 'scope="notes:read notes:write"' in challenge
    assert bob["access_token"] not in denied.text

    # alice holds notes:write: she adds, and lists.
    client_info, alice = await asyncio.to_thread(tokens_for, broker, "alice", resource=resource)
    async with session(mcp_url, alice["access_token"]) as client:
        assert _payload(await client.call_tool("add_note", {"text": "standup at 10"})) == "standup at 10"
        assert _payload(await client.call_tool("list_notes", {})) == ["standup at 10"]

    # Her grant revoked at the broker: the server refuses the token at once (pub/sub via Redis; the
    # bound is generous because CI runs this beside a thousand other tests on two cores).
    async with httpx.AsyncClient() as http:
        revoked = await http.post(
            f"{issuer}/revoke", data={"token": alice["access_token"], "client_id": client_info["client_id"]}
        )
    assert revoked.status_code == 200
    deadline = time.monotonic() + 10.0
    while _call(mcp_url, alice["access_token"], "list_notes", {}).status_code != 401:
        assert time.monotonic() < deadline, "the revoked token was still honoured after 10 s"
        await asyncio.sleep(0.02)
    refused = _call(mcp_url, alice["access_token"], "list_notes", {})
    assert 'error="invalid_token"' in refused.headers["www-authenticate"]


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_every_import_of_the_distribution_is_a_declared_dependency() -> None:
    """Declared directly, not inherited from the MCP SDK's own dependencies; prometheus_client in
    its extra, imported by its one module."""
    project = tomllib.loads((DISTRIBUTION / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {_requirement_name(r) for r in project["dependencies"]}
    extras = {_requirement_name(r) for reqs in project["optional-dependencies"].values() for r in reqs}
    providers = importlib.metadata.packages_distributions()
    undeclared = []
    for source in (DISTRIBUTION / "src" / "mcp_broker_verifier").glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for top in {name.split(".")[0] for name in names}:
                if top in sys.stdlib_module_names or top in ("__future__", "mcp_broker_verifier"):
                    continue
                dists = {d.lower().replace("_", "-") for d in providers.get(top, [])}
                allowed = declared | (extras if source.name == "prometheus.py" else set())
                if not dists & allowed:
                    undeclared.append(f"{source.name}: {top}")
    assert undeclared == []
