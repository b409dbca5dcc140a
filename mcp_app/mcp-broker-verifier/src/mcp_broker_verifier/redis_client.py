"""One async Redis client built from a URL.

Supported forms (``rediss`` for TLS in each):

* ``redis://[[user]:password@]host[:port][/db]`` (or ``unix:///path/to/socket``), one node;
* ``redis+sentinel://[[user]:password@]host1:26379,host2:26379/service_name[/db]``: the master of
  ``service_name`` as the sentinels report it, followed across failovers;
* ``redis+cluster://[[user]:password@]host1:6379,host2:6379``: Redis Cluster from seed nodes.

A deployment that outgrows one node changes only the URL: every key that one Lua script
touches shares a hash tag (see :mod:`broker.store.keys`), so scripts run unchanged on Cluster.
Shared by the broker's store and the verifier (which imports nothing from the broker).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel

RedisClient: TypeAlias = "Redis | RedisCluster"

_SCHEMES: dict[str, tuple[Literal["single", "sentinel", "cluster"], bool]] = {
    "redis": ("single", False),
    "rediss": ("single", True),
    "unix": ("single", False),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}


@dataclass(frozen=True)
class RedisTarget:
    mode: Literal["single", "sentinel", "cluster"]
    tls: bool
    url: str
    hosts: list[tuple[str, int]] = field(default_factory=list)
    username: str | None = None
    password: str | None = None
    db: int = 0
    service_name: str | None = None


def _hosts(netloc: str, default_port: int) -> list[tuple[str, int]]:
    hostpart = netloc.rpartition("@")[2]
    hosts = []
    for item in hostpart.split(","):
        item = item.strip()
        if not item:
            raise ValueError("empty host in the Redis URL")
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = rest.lstrip(":")
        else:
            host, _, port = item.partition(":")
        try:
            hosts.append((host, int(port) if port else default_port))
        except ValueError:
            raise ValueError(f"bad port in Redis host {item!r}") from None
    return hosts


def parse_redis_url(url: str) -> RedisTarget:
    """Check and split a Redis URL; raise ValueError with a readable reason."""
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ValueError(
            f"unsupported Redis URL scheme {parts.scheme!r}; use redis://, rediss://, unix://, "
            "redis+sentinel:// or redis+cluster://"
        )
    mode, tls = _SCHEMES[parts.scheme]
    userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
    username, _, password = userinfo.partition(":")
    creds: dict[str, Any] = {
        "username": unquote(username) or None,
        "password": unquote(password) or None,
    }
    if mode == "single":
        return RedisTarget(mode=mode, tls=tls, url=url, **creds)
    path = [p for p in parts.path.split("/") if p]
    db = 0
    service = None
    if mode == "sentinel":
        if not path:
            raise ValueError("a redis+sentinel:// URL needs the service name as its path: /mymaster")
        service = path[0]
        if len(path) > 1:
            db = _db(path[1])
    elif path:
        raise ValueError("a redis+cluster:// URL takes no path (Cluster has only database 0)")
    hosts = _hosts(parts.netloc, 26379 if mode == "sentinel" else 6379)
    query = parse_qs(parts.query)
    if "db" in query:
        db = _db(query["db"][0])
    return RedisTarget(mode=mode, tls=tls, url=url, hosts=hosts, db=db, service_name=service, **creds)


def _db(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"bad Redis database number {text!r}")
    return int(text)


def create_redis(
    url: str,
    *,
    password: str | None = None,
    sentinel_password: str | None = None,
    ca_file: str | None = None,
    socket_timeout: float = 5.0,
    client_name: str = "mcp-broker",
) -> RedisClient:
    """Build the client for ``url``. Nothing connects until the first command."""
    target = parse_redis_url(url)
    common: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "health_check_interval": 30,
        "client_name": client_name,
    }
    tls: dict[str, Any] = {}
    if target.tls:
        tls = {"ssl": True, "ssl_cert_reqs": ssl.CERT_REQUIRED}
        if ca_file:
            tls["ssl_ca_certs"] = ca_file
    auth: dict[str, Any] = {"username": target.username, "password": password or target.password}

    if target.mode == "single":
        # redis-py lets options in the URL win over keyword arguments: a password written in
        # the URL beats ``password``; keep secrets out of the URL and in ``redis.password``.
        extra: dict[str, Any] = {"ssl_ca_certs": ca_file} if ca_file and target.tls else {}
        single: Redis = Redis.from_url(url, password=password, **common, **extra)
        return single
    if target.mode == "sentinel":
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            target.hosts,
            sentinel_kwargs={"password": sentinel_password, **common, **tls},
            **common,
            **tls,
            **auth,
            db=target.db,
        )
        assert target.service_name is not None
        master: Redis = sentinel.master_for(target.service_name)
        return master
    nodes = [ClusterNode(host, port) for host, port in target.hosts]
    return RedisCluster(startup_nodes=nodes, **common, **tls, **auth)
