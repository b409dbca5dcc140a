"""Session-wide real services: a redis-server and a slapd per test worker, on free loopback ports.

Nothing here fakes Redis or LDAP. A skipped test fails the run (see ``pytest_sessionfinish``):
in CI a skipped integration test is a failing one.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from broker.devstack import RedisServer, Slapd

_skipped: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    """Each xdist worker (and every process it starts) picks free ports from its own slice of
    20000-32000, so two workers never race for one port between choosing it and binding it."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if worker.startswith("gw") and worker[2:].isdigit() and count.isdigit() and int(count) > 0:
        size = 12000 // int(count)
        low = 20000 + int(worker[2:]) * size
        os.environ["MCP_BROKER_FREE_PORTS"] = f"{low}-{low + size}"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _skipped and not os.environ.get("MCPB_ALLOW_SKIPS") and not hasattr(session.config, "workerinput"):
        session.config.pluginmanager.get_plugin("terminalreporter").write_line(  # type: ignore[union-attr]
            f"FAILED: {len(_skipped)} test(s) skipped; skipped tests count as failures here: "
            + ", ".join(_skipped[:10]),
            red=True,
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), persist=False).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    server = Slapd(tmp_path_factory.mktemp("slapd")).start()
    yield server
    server.stop()


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A client on the session's Redis, database flushed before each test."""
    client: aioredis.Redis = aioredis.Redis.from_url(redis_server.url)
    await client.flushdb()
    yield client
    await client.aclose()


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def base_config(redis_url: str, **extra: Any) -> str:
    """A small valid configuration for tests, with its own key prefix so tests sharing a Redis never meet."""
    return f"""
issuer: http://127.0.0.1:8000
redis:
  url: "{redis_url}"
  key_prefix: "t{secrets.token_hex(6)}"
signing:
  key_encryption_key: "{extra.get("kek", "0" * 43)}"
resources:
  - id: notes
    uri: http://127.0.0.1:8001/mcp
    name: Notes
    scopes:
      - name: notes:read
        description: Read notes
"""
