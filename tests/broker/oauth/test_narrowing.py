"""A grant narrowed in place (``Store.narrow_grant``: a signal took a group away) while a refresh of
it is under way: the refresh read the grant before the narrowing, so its rotation is refused as
stale and it mints again from the narrowed grant; the answer carries the narrower scopes and the
new token handle, never the wider scopes nor the handle the narrowing ended. Both refresh paths:
the grant read from the store, and the grant this process kept from its last rotation.

Everything is real (redis-server, slapd, the LDAP provider); the provider's refresh-time lookup
is held at a gate so the narrowing lands while the refresh is surely under way.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from broker.app import create_app
from broker.config import BrokerConfig, parse_config
from broker.devstack import RedisServer, Slapd
from broker.store.base import NarrowOutcome
from broker.store.client import create_redis
from broker.store.keys import Keys
from broker.store.redis_store import RedisStore
from providers.base import Identity
from providers.ldap.config import LdapProviderConfig
from providers.ldap.provider import LdapProvider
from tests.broker.flows import Broker, fresh_broker_yaml, refresh, tokens_for
from tests.broker.oauth.test_recheck_cache import claims, ldap_config
from tests.broker.oauth.test_refresh_paths import introspect
from tests.http import running


class HeldLdap(LdapProvider):
    """The real LDAP provider whose refresh-time lookup waits for ``release`` once it started."""

    def __init__(self, config: LdapProviderConfig) -> None:
        super().__init__(config)
        self.started = threading.Event()
        self.release = threading.Event()

    async def refresh(self, identity: Identity) -> Identity:
        self.started.set()
        await asyncio.to_thread(self.release.wait, 20)
        return await super().refresh(identity)


def narrow(redis_server: RedisServer, config: BrokerConfig, grant_id: str, epoch: int) -> NarrowOutcome:
    """What a signal's ``reapply_policy`` does to the grant: notes:write taken away."""

    async def run() -> NarrowOutcome:
        client = create_redis(redis_server.url)
        try:
            store = RedisStore(client, Keys(config.redis.key_prefix))
            return await store.narrow_grant(grant_id, "notes:read", epoch=epoch, tokens_expire_at=2e9, reason="test")
        finally:
            await client.aclose()

    return asyncio.run(run())


def ended(redis_server: RedisServer, config: BrokerConfig) -> list[str]:
    async def run() -> list[str]:
        client = create_redis(redis_server.url)
        try:
            return await RedisStore(client, Keys(config.redis.key_prefix)).revoked()
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_a_refresh_racing_a_narrowing_mints_again_from_the_narrowed_grant(
    redis_server: RedisServer, slapd: Slapd
) -> None:
    port, text = fresh_broker_yaml(redis_server.url, slapd, tokens="  upstream_recheck_interval: 0")
    config = parse_config(text)
    provider = HeldLdap(ldap_config(config))
    with running(create_app(config, providers={provider.id: provider}), port) as base, ThreadPoolExecutor(1) as pool:
        broker = Broker(base, config)
        client, tokens = tokens_for(broker, "alice")
        assert tokens["scope"] == "notes:read notes:write"
        grant_id = claims(tokens["access_token"])["sid"]
        refresh_token = tokens["refresh_token"]
        for epoch in (0, 1):  # first from the store, then from the grant kept after a rotation
            provider.started.clear()
            provider.release.clear()
            pending = pool.submit(refresh, broker, client["client_id"], refresh_token)
            assert provider.started.wait(20)
            assert narrow(redis_server, config, grant_id, epoch) == "ok"
            provider.release.set()
            answer = pending.result(30)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["scope"] == "notes:read"
            assert claims(body["access_token"])["sid"] == f"{grant_id}.{epoch + 1}"
            assert claims(body["access_token"])["scope"] == "notes:read"
            refresh_token = body["refresh_token"]
        assert {grant_id, f"{grant_id}.1"} <= set(ended(redis_server, config))
        assert introspect(broker, tokens["access_token"]) == {"active": False}  # the wider, ended token
        assert introspect(broker, body["access_token"])["active"] is True
        assert f"{grant_id}.2" not in ended(redis_server, config)
        provider.release.set()
        again = refresh(broker, client["client_id"], refresh_token)
        assert again.status_code == 200, again.text
        assert claims(again.json()["access_token"])["sid"] == f"{grant_id}.2"
