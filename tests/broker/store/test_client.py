"""One Redis client from a URL: single node, TLS form, Sentinel and Cluster, against real servers."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from broker.devstack import RedisServer
from broker.store.client import create_redis, parse_redis_url
from broker.store.keys import Keys
from tests.faults import die_after
from tests.services import ClusterSetup, SentinelSetup


@pytest.mark.parametrize(
    ("url", "mode", "tls", "hosts", "db", "service"),
    [
        ("redis://localhost:6379/2", "single", False, [], 0, None),
        ("rediss://:pw@redis.example.com:6380/0", "single", True, [], 0, None),
        ("unix:///run/redis.sock", "single", False, [], 0, None),
        (
            "redis+sentinel://s1:26379,s2,[::1]:26380/mymaster/3",
            "sentinel",
            False,
            [("s1", 26379), ("s2", 26379), ("::1", 26380)],
            3,
            "mymaster",
        ),
        ("rediss+sentinel://s1/mymaster", "sentinel", True, [("s1", 26379)], 0, "mymaster"),
        ("redis+cluster://n1:7000,n2:7001", "cluster", False, [("n1", 7000), ("n2", 7001)], 0, None),
        ("rediss+cluster://user:pw@n1", "cluster", True, [("n1", 6379)], 0, None),
    ],
)
def test_parse(url: str, mode: str, tls: bool, hosts: list[tuple[str, int]], db: int, service: str | None) -> None:
    target = parse_redis_url(url)
    assert (target.mode, target.tls, target.hosts, target.db, target.service_name) == (mode, tls, hosts, db, service)


def test_parse_credentials() -> None:
    target = parse_redis_url("redis+cluster://app:p%40ss@n1:7000")
    assert (target.username, target.password) == ("app", "p@ss")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://x", "unsupported Redis URL scheme"),
        ("redis+sentinel://s1:26379", "service name"),
        ("redis+cluster://n1/2", "takes no path"),
        ("redis+cluster://n1:port", "bad port"),
        ("redis+sentinel://s1,,s2/m", "empty host"),
    ],
)
def test_parse_rejects(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_redis_url(url)


async def test_single_node(redis_server: RedisServer) -> None:
    client = create_redis(redis_server.display_url, password=redis_server.password)
    try:
        assert await client.ping()
        await client.set("mcpb:test", "1", ex=5)
        assert await client.get("mcpb:test") == b"1"
    finally:
        await client.aclose()


async def test_wrong_password_fails_clearly(redis_server: RedisServer) -> None:
    from redis.exceptions import AuthenticationError

    client = create_redis(redis_server.display_url, password="wrong")
    with pytest.raises(AuthenticationError):
        await client.ping()
    await client.aclose()


async def test_sentinel_finds_the_master(sentinel: SentinelSetup) -> None:
    client = create_redis(sentinel.url, password=sentinel.master.password)
    try:
        await client.set("k", "v")
        assert await client.get("k") == b"v"
        info = await client.info("server")
        assert int(info["tcp_port"]) == sentinel.master.port
    finally:
        await client.aclose()


async def test_cluster_runs_a_script_over_one_grants_keys(cluster: ClusterSetup) -> None:
    client = create_redis(cluster.url, password=cluster.password)
    assert isinstance(client, RedisCluster)
    keys = Keys("mcpb")
    grant_keys = [keys.grant("g1"), keys.refresh("g1", "abc"), keys.code("g1")]
    script = client.register_script(
        "redis.call('SET', KEYS[1], ARGV[1]); redis.call('SET', KEYS[2], ARGV[1]);"
        " redis.call('SET', KEYS[3], ARGV[1]); return redis.call('GET', KEYS[2])"
    )
    try:
        assert await script(keys=grant_keys, args=["x"]) == b"x"
    finally:
        await client.aclose()


def test_keys_of_one_grant_share_a_slot(tmp_path: Path) -> None:
    keys = Keys("mcpb")
    for grant in ("g1", "0f3a9c", "x" * 40):
        slots = {key_slot(k.encode()) for k in (keys.grant(grant), keys.refresh(grant, "h"), keys.code(grant))}
        assert len(slots) == 1
    # ... but the hash tag is the grant, not the shared prefix: different grants spread over the
    # cluster's slots instead of piling onto one node.
    assert key_slot(keys.grant("a").encode()) != key_slot(keys.grant("b").encode())
    spread = {key_slot(keys.grant(f"grant-{i}").encode()) for i in range(64)}
    assert len(spread) >= 60
    # A brace inside a subject cannot move the hash tag.
    assert keys.user_grants("evil}{x").count("{") == 1


async def test_the_token_store_works_on_a_cluster(cluster: ClusterSetup) -> None:
    """Every multi-key step of a grant's life (create, rotate, revoke, the user's index) on Cluster."""
    import time

    from broker.store.records import Grant
    from broker.store.redis_store import RedisStore

    client = create_redis(cluster.url, password=cluster.password)
    store = RedisStore(client, Keys("clustertest"))
    now = time.time()
    grant = Grant(grant_id="g-cl", subject="alice", status="active", expires_at=now + 600, scopes="a")
    try:
        await store.create_grant(grant, "h1", refresh_ttl=600, grant_ttl=600)
        assert await store.user_grant_ids("alice") == ["g-cl"]
        first = await store.rotate_refresh("g-cl", "h1", "h2", successor="s", new_ttl=600, rotated_ttl=600, scopes="a")
        assert first.outcome == "ok"
        again = await store.rotate_refresh("g-cl", "h1", "h3", successor="t", new_ttl=600, rotated_ttl=600, scopes="a")
        assert (again.outcome, again.successor) == ("rotated", "s")
        assert await store.revoke_grant("g-cl", "test")
        assert "g-cl" in await store.revoked()
        gone = await store.rotate_refresh("g-cl", "h2", "h4", successor="u", new_ttl=600, rotated_ttl=600, scopes="a")
        assert gone.outcome == "revoked"
    finally:
        await client.aclose()


async def test_on_a_cluster_no_grant_is_revoked_before_it_is_recorded(
    cluster: ClusterSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Cluster the grant and the revoked set sit in different slots, so revoking takes two
    scripts: whichever step a crash cuts short, a grant marked revoked is in the set resource
    servers load (and a grant in the set but not yet marked is refused by them: fail closed)."""
    import time

    from broker.store.records import Grant
    from broker.store.redis_store import RedisStore

    keys = Keys("clustercrash")
    admin = RedisStore(create_redis(cluster.url, password=cluster.password), keys)
    try:
        for survived in range(8):
            client = create_redis(cluster.url, password=cluster.password)
            store = RedisStore(client, keys)
            grant_id = f"g-crash-{survived}"
            grant = Grant(grant_id=grant_id, subject="bob", status="active", expires_at=time.time() + 600)
            await store.create_grant(grant, "h", refresh_ttl=600, grant_ttl=600)
            die_after(monkeypatch, client, survived)
            with contextlib.suppress(ConnectionError):
                await store.revoke_grant(grant_id, "test")
            await client.aclose()
            stored = await admin.get_grant(grant_id)
            assert stored is not None
            if stored.status == "revoked":
                assert grant_id in await admin.revoked()
        assert stored.status == "revoked"  # the last run was not cut short
    finally:
        await admin.redis.aclose()
