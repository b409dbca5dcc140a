"""Pieces several benchmarks share; each script runs as ``python bench/<name>.py``, which puts this
folder first on ``sys.path``."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from broker.devstack import RedisServer, Slapd
from providers.ldap.config import LdapProviderConfig

BASE = "dc=demo,dc=local"


def demo_ldap_config(slapd: Slapd) -> LdapProviderConfig:
    """The LDAP provider's configuration for the demo directory ``slapd`` serves."""
    return LdapProviderConfig(
        id="demo-ldap",
        display_name="Demo directory",
        urls=[slapd.url],
        bind_dn=slapd.service_dn,
        bind_password=slapd.service_password,
        user_base_dn=f"ou=people,{BASE}",
        group_base_dn=f"ou=groups,{BASE}",
    )


@contextmanager
def work_dir_logging_to_file(prefix: str) -> Iterator[Path]:
    """A temporary work directory; inside, stdout (the broker's JSON log lines, as when served) goes
    to broker.log there."""
    from broker.log import configure_logging

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        work = Path(tmp)
        log = (work / "broker.log").open("w")
        sys.stdout = log
        configure_logging("info", "json")
        try:
            yield work
        finally:
            sys.stdout = sys.__stdout__
            log.close()


def run_with_services(work: Path, main: Callable[[RedisServer, Slapd], Coroutine[Any, Any, None]]) -> None:
    """``main(redis, slapd)`` under uvloop, with a Redis (no persistence) and slapd of their own in
    ``work``, stopped after."""
    redis, slapd = RedisServer(work, persist=False), Slapd(work)
    redis.start()
    slapd.start()
    try:
        import uvloop

        uvloop.run(main(redis, slapd))
    finally:
        slapd.stop()
        redis.stop()


def http_scope(
    method: str, path: str, headers: list[tuple[bytes, bytes]], *, query: bytes = b"", port: int = 80
) -> dict[str, Any]:
    """The ASGI scope of one HTTP/1.1 request from loopback to 127.0.0.1:``port``."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", port),
    }


async def asgi_request(
    app: Callable[..., Any], scope: dict[str, Any], body: bytes
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """``app`` answering one request in this process, with no server or socket: the status, the
    response's headers and its body."""
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    status, headers, chunks = 0, [], []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # no disconnect while the app answers
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status = message["status"]
            headers = message.get("headers", [])
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, headers, b"".join(chunks)
