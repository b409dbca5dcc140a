"""Test-only Node programs (a real OpenID provider, the MCP TypeScript SDK client): their packages."""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

NPM_TIMEOUT = 300


def ensure_npm_packages(folder: Path, needed_by: str) -> None:
    """``npm ci`` into ``folder`` unless node_modules already matches its package-lock.json.
    A file lock makes one xdist worker install while the others wait and reuse."""
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(f"npm is not installed: {needed_by} need Node.js 20+ and npm")
    lock_path = Path(tempfile.gettempdir()) / f"mcp-broker-npm-{hashlib.sha256(bytes(folder)).hexdigest()[:12]}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        installed = folder / "node_modules" / ".package-lock.json"
        if installed.exists() and installed.stat().st_mtime >= (folder / "package-lock.json").stat().st_mtime:
            return
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"npm ci in {folder} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
