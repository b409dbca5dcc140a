"""The refresh-time upstream re-check, shared: concurrent refreshes of one user wait on one
directory lookup, its answer serves every broker instance on one Redis for
``tokens.upstream_recheck_interval``, and a user gone from the directory is never kept as good.

Everything is real (redis-server, slapd, the LDAP provider); lookups are counted by a thin
subclass of the real provider (``CountingLdap``), which can also hold them at a gate so
"concurrent" is certain rather than likely.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, asynccontextmanager, contextmanager
from typing import Any

import httpx
import pytest

from broker.app import create_app
from broker.config import BrokerConfig, parse_config
from broker.devstack import RedisServer, Slapd, free_port
from broker.oauth import recheck
from broker.oauth.grants import identity_from, identity_record
from broker.oauth.recheck import Rechecks
from broker.oauth.sealing import Sealer
from broker.oauth.signing import new_kek
from broker.store.client import create_redis
from broker.store.keys import Keys
from broker.store.records import StoredIdentity
from broker.store.redis_store import RedisStore
from providers.base import Identity, InvalidCredentials
from providers.ldap.config import LdapProviderConfig
from providers.ldap.provider import LdapProvider
from tests.broker.flows import Broker, broker_yaml, fresh_broker_yaml, refresh, tokens_for
from tests.broker.oauth.test_refresh_paths import as_admin, directory_user
from tests.http import running

ADMIN_TOKEN = "admin-" + "t" * 40


class CountingLdap(LdapProvider):
    """The real LDAP provider, counting its refresh-time lookups (optionally held at a gate)."""

    def __init__(self, config: LdapProviderConfig, tally: list[str]) -> None:
        super().__init__(config)
        self.tally = tally
        self.gate: asyncio.Event | None = None

    async def refresh(self, identity: Identity) -> Identity:
        self.tally.append(identity.subject)
        if self.gate is not None:
            await self.gate.wait()
        return await super().refresh(identity)


def ldap_config(config: BrokerConfig) -> LdapProviderConfig:
    (settings,) = config.providers
    assert isinstance(settings, LdapProviderConfig)
    return settings


@contextmanager
def brokers(
    redis_server: RedisServer, slapd: Slapd, count: int, interval: int
) -> Iterator[tuple[list[Broker], list[str]]]:
    """``count`` broker instances on one Redis key space (replicas), each with its own counting
    provider: the instances and the tally of directory lookups they made."""
    port, text = fresh_broker_yaml(
        redis_server.url,
        slapd,
        tokens=f"  upstream_recheck_interval: {interval}",
        extra=f"admin:\n  token: {ADMIN_TOKEN}",
    )
    config = parse_config(text)
    tally: list[str] = []
    with ExitStack() as stack:
        instances = []
        for n in range(count):
            provider = CountingLdap(ldap_config(config), tally)
            app = create_app(config, providers={provider.id: provider})
            base = stack.enter_context(running(app, port if n == 0 else None))
            instances.append(Broker(base, config))
        yield instances, tally


def grants_of(broker: Broker, uid: str, count: int = 1) -> list[tuple[str, str]]:
    """``count`` grants of one user, each its own client and sign-in: (client id, refresh token)."""
    found = [tokens_for(broker, uid) for _ in range(count)]
    return [(client["client_id"], tokens["refresh_token"]) for client, tokens in found]


def refreshed(broker: Broker, grant: tuple[str, str]) -> httpx.Response:
    return refresh(broker, *grant)


def test_concurrent_refreshes_of_one_user_make_one_directory_lookup(redis_server: RedisServer, slapd: Slapd) -> None:
    with brokers(redis_server, slapd, 1, interval=60) as ((broker,), tally):
        grants = grants_of(broker, "alice", 6)
        with ThreadPoolExecutor(len(grants)) as pool:
            answers = list(pool.map(lambda grant: refreshed(broker, grant), grants))
        assert [a.status_code for a in answers] == [200] * len(grants), [a.text for a in answers]
        assert {a.json()["scope"] for a in answers} == {"notes:read notes:write"}
        assert len(tally) == 1


def test_broker_instances_on_one_redis_share_one_lookup_within_the_interval(
    redis_server: RedisServer, slapd: Slapd
) -> None:
    with brokers(redis_server, slapd, 2, interval=60) as ((first, second), tally):
        one, other = grants_of(first, "alice")[0], grants_of(second, "alice")[0]
        assert refreshed(first, one).json()["scope"] == "notes:read notes:write"
        assert len(tally) == 1
        assert refreshed(second, other).json()["scope"] == "notes:read notes:write"
        assert len(tally) == 1  # the second instance took the first one's answer from Redis


def test_without_an_interval_every_refresh_looks_the_user_up(redis_server: RedisServer, slapd: Slapd) -> None:
    with brokers(redis_server, slapd, 2, interval=0) as ((first, second), tally):
        grant = grants_of(first, "alice")[0]
        for n in range(4):
            answer = refreshed(first if n % 2 else second, grant)
            assert answer.status_code == 200, answer.text
            grant = (grant[0], answer.json()["refresh_token"])
        assert len(tally) == 4


def test_a_user_gone_from_the_directory_is_never_kept_as_good(redis_server: RedisServer, slapd: Slapd) -> None:
    """A kept answer serves the user's older grants; a newer sign-in is not served an answer
    older than itself, and when its lookup finds the user gone, the kept answer is dropped for
    every instance: their next refreshes look the user up again, and are refused."""
    with (
        directory_user(slapd, ("mcp-readers",)) as (uid, dn),
        brokers(redis_server, slapd, 2, interval=60) as ((first, second), tally),
    ):
        one, other = grants_of(first, uid)[0], grants_of(second, uid)[0]
        assert refreshed(first, one).status_code == 200
        assert len(tally) == 1
        time.sleep(1.1)  # sign-in times are whole seconds: the next one is newer than the answer
        newer = grants_of(first, uid)[0]
        as_admin(slapd, lambda admin: admin.delete(dn))
        gone = refreshed(first, newer)
        assert (gone.status_code, gone.json()["error"]) == (400, "invalid_grant")
        assert len(tally) == 2
        refused = refreshed(second, other)  # the answer the second instance would have used is gone
        assert (refused.status_code, refused.json()["error"]) == (400, "invalid_grant")
        assert len(tally) == 3


def test_revoking_a_user_drops_the_kept_answer(redis_server: RedisServer, slapd: Slapd) -> None:
    with brokers(redis_server, slapd, 1, interval=60) as ((broker,), tally):
        client, tokens = tokens_for(broker, "alice")
        answer = refresh(broker, client["client_id"], tokens["refresh_token"])
        assert answer.status_code == 200, answer.text
        subject = claims(answer.json()["access_token"])["sub"]
        assert kept_answer(redis_server, broker, subject) is not None
        revoked = httpx.post(
            f"{broker.base}/admin/users/{subject}/revoke", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert revoked.status_code == 200, revoked.text
        assert kept_answer(redis_server, broker, subject) is None
        assert len(tally) == 1


def claims(jwt: str) -> dict[str, Any]:
    payload = jwt.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def kept_answer(redis_server: RedisServer, broker: Broker, subject: str) -> StoredIdentity | None:
    async def read() -> StoredIdentity | None:
        client = create_redis(redis_server.url)
        try:
            store = RedisStore(client, Keys(broker.config.redis.key_prefix))
            claim = await store.claim_recheck("demo-ldap", subject, not_before=0.0, lock_seconds=0.1)
            return claim.identity
        finally:
            await client.aclose()

    return asyncio.run(read())


# -- the sharing itself, on the store and provider the broker uses -----------------------------


@asynccontextmanager
async def sharing(
    redis_server: RedisServer, slapd: Slapd, interval: int, processes: int
) -> AsyncIterator[tuple[list[Rechecks], list[CountingLdap], Identity]]:
    """``processes`` independent re-check sharers on one Redis key space (as broker processes
    are), each with its own provider; and alice's identity."""
    config = parse_config(broker_yaml(free_port(), redis_server.url, slapd, prefix=f"t{secrets.token_hex(6)}"))
    client = create_redis(redis_server.url)
    store = RedisStore(client, Keys(config.redis.key_prefix))
    sealer = Sealer(new_kek())
    tally: list[str] = []
    providers = [CountingLdap(ldap_config(config), tally) for _ in range(processes)]
    sharers = [
        Rechecks(
            store,
            lambda: interval,
            lambda identity: identity_record(identity, sealer),
            lambda record: identity_from(record, sealer),
        )
        for _ in providers
    ]
    try:
        alice = await providers[0].lookup("alice")
        yield sharers, providers, alice
    finally:
        for provider in providers:
            await provider.aclose()
        await client.aclose()


async def test_at_interval_0_concurrent_refreshes_wait_on_the_lookup_under_way(
    redis_server: RedisServer, slapd: Slapd
) -> None:
    async with sharing(redis_server, slapd, 0, 1) as ((sharer,), (provider,), alice):
        provider.gate = asyncio.Event()
        waiting = [asyncio.create_task(sharer.check(provider, alice, 0.0)) for _ in range(5)]
        await asyncio.sleep(0.1)
        provider.gate.set()
        answers = await asyncio.gather(*waiting)
        assert provider.tally == [alice.subject]  # one lookup for the five
        assert [a.looked_up for a in answers] == [True, False, False, False, False]  # only its own is stored
        assert {a.identity.groups for a in answers} == {alice.groups}
        await sharer.check(provider, alice, 0.0)
        assert len(provider.tally) == 2  # nothing kept: the next refresh looks up again


async def test_another_process_waits_for_the_lookup_under_way_and_looks_up_itself_if_it_hangs(
    redis_server: RedisServer, slapd: Slapd, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with sharing(redis_server, slapd, 60, 2) as ((one, two), (slow, quick), alice):
        slow.gate = asyncio.Event()
        holder = asyncio.create_task(one.check(slow, alice, 0.0))
        await asyncio.sleep(0.1)  # it holds the user's lookup lock, and waits at the gate
        waiter = asyncio.create_task(two.check(quick, alice, 0.0))
        await asyncio.sleep(0.1)
        slow.gate.set()
        held, waited = await holder, await waiter
        assert (held.looked_up, waited.looked_up) == (True, False)
        assert waited.identity.groups == alice.groups
        assert slow.tally == [alice.subject]  # one lookup for both (the two providers share a tally)

    monkeypatch.setattr(recheck, "WAIT_SECONDS", 0.3)
    async with sharing(redis_server, slapd, 60, 2) as ((one, two), (stuck, quick), alice):
        stuck.gate = asyncio.Event()
        holder = asyncio.create_task(one.check(stuck, alice, 0.0))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        fallback = await two.check(quick, alice, 0.0)  # the holder hangs: a bounded wait, then its own lookup
        assert fallback.looked_up
        assert time.monotonic() - started < 2
        assert len(quick.tally) == 2
        stuck.gate.set()
        await holder


async def test_a_failed_lookup_reaches_every_waiter_and_keeps_nothing(redis_server: RedisServer, slapd: Slapd) -> None:
    async with sharing(redis_server, slapd, 60, 1) as ((sharer,), (provider,), alice):
        ghost = Identity(
            provider_id=alice.provider_id, subject=alice.subject, username="nobody-" + secrets.token_hex(3)
        )
        provider.gate = asyncio.Event()
        waiting = [asyncio.create_task(sharer.check(provider, ghost, 0.0)) for _ in range(3)]
        await asyncio.sleep(0.1)
        provider.gate.set()
        failed = await asyncio.gather(*waiting, return_exceptions=True)
        assert [type(f) for f in failed] == [InvalidCredentials] * 3
        assert len(provider.tally) == 1
        provider.gate = None
        with pytest.raises(InvalidCredentials):
            await sharer.check(provider, ghost, 0.0)
        assert len(provider.tally) == 2  # nothing was kept as good
