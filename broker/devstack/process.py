"""Child processes that cannot outlive the parent (Linux ``PR_SET_PDEATHSIG``)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

_PR_SET_PDEATHSIG = 1


class MissingBinary(RuntimeError):
    """A system program the dev stack needs is not installed."""


def find_binary(name: str, package: str, extra_dirs: tuple[str, ...] = ("/usr/sbin", "/usr/local/sbin")) -> str:
    """The program's path; ``MCP_BROKER_<NAME>`` (e.g. ``MCP_BROKER_REDIS_SERVER``) overrides the search."""
    override = os.environ.get("MCP_BROKER_" + name.upper().replace("-", "_"))
    found: str | None
    if override is not None:
        found = override if os.access(override, os.X_OK) else None
    else:
        found = shutil.which(name) or next(
            (str(Path(d) / name) for d in extra_dirs if (Path(d) / name).is_file()), None
        )
    if found is None:
        raise MissingBinary(
            f"{name} is not installed: run `sudo apt-get install {package}` (or `make dev`, which installs it)"
        )
    return found


_DEFAULT_PORTS = (20000, 32000)  # below Linux's ephemeral range (32768-60999)
_handed_out: set[int] = set()


def _port_range() -> range:
    """Where :func:`free_port` looks: ``MCP_BROKER_FREE_PORTS`` (``LOW-HIGH``) or 20000-32000.
    Processes that pick ports side by side (test workers) give each other disjoint ranges."""
    spec = os.environ.get("MCP_BROKER_FREE_PORTS", "")
    low, _, high = spec.partition("-")
    if low.isdigit() and high.isdigit() and 1024 <= int(low) < int(high) <= 65535:
        return range(int(low), int(high))
    return range(*_DEFAULT_PORTS)


def free_port() -> int:
    """A loopback port free right now, never handed out before by this process, chosen outside
    the ephemeral range: between this check and the server's bind, outgoing connections (which
    take ephemeral ports) cannot grab it, nor can a second call here."""
    ports = _port_range()
    for _ in range(200):
        port = secrets.randbelow(len(ports)) + ports.start
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # a crowded range: let the kernel pick
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ChildProcess:
    """A long-running program started in its own session (the terminal's Ctrl-C reaches only
    the parent, which stops children in order), killed by the kernel if the parent dies."""

    def __init__(self, name: str, argv: list[str], log_file: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - argv built from fixed programs and our own paths
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
            raise RuntimeError(f"{self.name} exited with status {self.proc.returncode}:\n{tail}")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def wait_until(check: object, timeout: float, what: str, child: ChildProcess) -> None:
    """Poll ``check()`` (a callable returning truthy) until it succeeds or time runs out."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        child.check_alive()
        try:
            if check():  # type: ignore[operator]
                return
        except Exception as exc:
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not become ready within {timeout:.0f}s ({last})")
