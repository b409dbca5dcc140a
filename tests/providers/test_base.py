"""Declaring a capability is checked: ``mypy --strict`` refuses a provider class that lacks a
member of a protocol it inherits, or implements one with the wrong signature."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

DECLARED_BUT_MISSING = """
from providers.base import FormOrigins, Identity, Lifecycle, PasswordProvider, RefreshProvider


class Broken(PasswordProvider, RefreshProvider, FormOrigins, Lifecycle):
    def __init__(self) -> None:
        self.id = "broken"

    async def login(self, username: str) -> Identity:
        raise NotImplementedError


Broken()
"""

DECLARED_AND_PRESENT = """
from providers.base import Identity, Lifecycle, PasswordProvider


class Minimal(PasswordProvider, Lifecycle):
    def __init__(self) -> None:
        self.id = "minimal"
        self.display_name = "Minimal"

    async def login(self, username: str, password: str) -> Identity:
        raise NotImplementedError


Minimal()
"""


def mypy(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    module = tmp_path / "declared.py"
    module.write_text(source)
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"), str(module)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_mypy_refuses_a_provider_missing_what_it_declares(tmp_path: Path) -> None:
    result = mypy(tmp_path, DECLARED_BUT_MISSING)
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'Signature of "login" incompatible with supertype "providers.base.PasswordProvider"' in result.stdout
    assert (
        'Cannot instantiate abstract class "Broken" with abstract attributes "display_name", "origins", '
        '"refresh" and "refresh_spends_upstream_token"' in result.stdout
    )


def test_mypy_accepts_a_provider_with_what_it_declares(tmp_path: Path) -> None:
    result = mypy(tmp_path, DECLARED_AND_PRESENT)
    assert result.returncode == 0, result.stdout + result.stderr
