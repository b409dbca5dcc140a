"""``mcp-broker dev`` as a user runs it: everything comes up, and SIGINT leaves nothing behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from broker.devstack import free_port
from broker.devstack.stack import server_config
from tests.forwarded import seen_by_the_app
from tests.http import wait_ready


def _children_of(pid: int) -> dict[int, str]:
    """Live child processes of ``pid``, by name (redis-server retitles itself, so match on comm)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
            if int(ppid) == pid and state != "Z":
                found[int(entry.name)] = name
    return found


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2] != "Z":
            alive.append(pid)
    return alive


def _services(proc: subprocess.Popen[str] | subprocess.Popen[bytes]) -> list[int]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        children = _children_of(proc.pid)
        if sorted(children.values()) == ["redis-server", "slapd"]:
            return list(children)
        time.sleep(0.2)
    raise AssertionError(f"expected redis-server and slapd children, found {_children_of(proc.pid)}")


def dev_command(state_dir: Path, broker_port: int | str, mcp_port: int | str, *extra: str) -> list[str]:
    """``mcp-broker dev`` as a user types it (port 0: any free port)."""
    return [
        sys.executable,
        "-m",
        "broker.cli",
        "dev",
        "--state-dir",
        str(state_dir),
        "--broker-port",
        str(broker_port),
        "--mcp-port",
        str(mcp_port),
        *extra,
    ]


def test_dev_stack_comes_up_and_sigint_stops_everything(tmp_path: Path) -> None:
    broker_port, mcp_port = free_port(), free_port()
    proc = subprocess.Popen(
        dev_command(tmp_path, broker_port, mcp_port, "--log-format", "json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def log() -> str:  # the dev command's own words, when it exits early
            return proc.stdout.read() if proc.stdout is not None and proc.poll() is not None else ""

        broker = wait_ready(f"http://127.0.0.1:{broker_port}/readyz", proc, 60, log)
        mcp = wait_ready(f"http://127.0.0.1:{mcp_port}/readyz", proc, 60, log)
        assert broker.json()["checks"] == {"redis": "ok", "signing_keys": "ok"}
        assert mcp.json()["checks"] == {"redis": "ok", "signing_keys": "ok", "revocations": "ok"}
        unauthenticated = httpx.post(f"http://127.0.0.1:{mcp_port}/mcp", json={})
        assert unauthenticated.status_code == 401
        services = _services(proc)
        assert (tmp_path / "redis" / "appendonlydir").is_dir()  # append-only file on
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()  # never leave a stack behind, even when the test fails
            proc.communicate()
            raise
    assert proc.returncode == 0, output
    assert "mcp-broker dev stack is running" in output
    assert f"http://127.0.0.1:{mcp_port}/mcp" in output
    assert "alice  password demo-alice" in output
    assert "Traceback" not in output
    assert _alive(services) == []


def test_children_die_even_if_the_parent_is_killed(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        dev_command(tmp_path, free_port(), free_port()),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    services = _services(proc)
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 10
    while _alive(services) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _alive(services) == []


def test_missing_binary_is_a_one_line_error(tmp_path: Path) -> None:
    env = {**os.environ, "MCP_BROKER_REDIS_SERVER": str(tmp_path / "no-such-redis-server")}
    result = subprocess.run(
        dev_command(tmp_path, 0, 0),
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "mcp-broker dev: redis-server is not installed: run `sudo apt-get install redis-server` "
        "(or `make dev`, which installs it)"
    )


def test_a_taken_port_is_a_one_line_error_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run(
            dev_command(tmp_path, 0, port),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"mcp-broker dev: 127.0.0.1:{port} is not free (Address already in use); choose another with --mcp-port"
    )
    assert not (tmp_path / "redis").exists()  # no service was started


def test_dev_servers_ignore_forwarded_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing stands in front of `mcp-broker dev`: a local caller must not choose the address the
    throttles count and the audit log records (uvicorn's default trusts 127.0.0.1, or FORWARDED_ALLOW_IPS)."""
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")
    assert seen_by_the_app(server_config) == {"client": "127.0.0.1", "scheme": "http"}
