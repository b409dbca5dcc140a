"""Pieces several benchmarks share; each script runs as ``python bench/<name>.py``, which puts this
folder first on ``sys.path``."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
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
