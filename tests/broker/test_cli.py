"""The command line, run as an admin runs it: a real subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import uvicorn

from broker.cli import proxy_options
from tests.broker.config.test_loader import VALID
from tests.forwarded import seen_by_the_app

CLI = [sys.executable, "-m", "broker.cli"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, env=env, check=False)


def test_check_config_lists_every_mistake_and_exits_non_zero(tmp_path: Path) -> None:
    bad = tmp_path / "broker.yaml"
    bad.write_text(
        """
issuer: http://auth.example.com
tokens:
  access_token_ttl: forever
providers:
  - id: okta
    type: oidc
    display_name: Okta
    issuer: https://example.okta.com
    client_id: abc
    client_secrett: typo
"""
    )
    result = run("check-config", str(bad))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == f"{bad}: 3 problems"
    assert any(line.startswith("  - issuer: issuer must use https") for line in lines)
    assert any(line.startswith("  - tokens.access_token_ttl: expected a duration") for line in lines)
    assert any(line.startswith("  - providers[0].client_secrett: unknown key") for line in lines)


def test_check_config_accepts_a_good_file(tmp_path: Path) -> None:
    good = tmp_path / "broker.yaml"
    good.write_text(VALID)
    env = {"REDIS_PASSWORD": "x", "KEK": "k" * 43, "LDAP_PASSWORD": "y", "ENTRA_SECRET": "z", "PATH": "/usr/bin:/bin"}
    result = run("check-config", str(good), env=env)
    assert result.returncode == 0, result.stderr
    assert "OK (issuer https://auth.example.com; 3 provider(s), 1 resource(s), 1 mapping rule(s))" in result.stdout


def test_check_config_on_a_missing_file(tmp_path: Path) -> None:
    result = run("check-config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 1
    assert "cannot read the file: No such file or directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_without_config_explains_itself() -> None:
    result = run("serve", env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "give --config FILE or set MCP_BROKER_CONFIG" in result.stderr


def test_serve_trusts_forwarded_headers_only_from_the_configured_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")  # uvicorn's own fallback: never consulted

    def served(trusted: list[str]) -> dict[str, str]:
        return seen_by_the_app(
            lambda app, port: uvicorn.Config(
                app, host="127.0.0.1", port=port, log_config=None, **proxy_options(trusted)
            )
        )

    assert served([]) == {"client": "127.0.0.1", "scheme": "http"}
    assert served(["10.0.0.0/8"]) == {"client": "127.0.0.1", "scheme": "http"}
    assert served(["127.0.0.1"]) == {"client": "203.0.113.9", "scheme": "https"}
