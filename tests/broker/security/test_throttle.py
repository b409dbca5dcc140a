"""Brute-force protection: failures per username and client address, per username from every
address, and per address, counted in Redis, with a lockout."""

from __future__ import annotations

import asyncio
import secrets

import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError
from structlog.testing import capture_logs

from broker.config.models import LoginProtectionConfig
from broker.security.throttle import LoginThrottle
from broker.store.keys import Keys
from broker.store.redis_store import RedisStore
from tests.broker.conftest import BrokerFactory
from tests.broker.flows import Broker, login_form, register
from tests.broker.flows import sign_in_attempt as attempt


def test_a_username_is_locked_after_repeated_failures(broker_factory: BrokerFactory) -> None:
    with broker_factory(
        extra="login_protection: {max_failures_per_user: 3, max_failures_per_ip: 100, window: 60}"
    ) as b:
        client = register(b)["client_id"]
        assert [attempt(b, client, "bob", "wrong").status_code for _ in range(3)] == [401, 401, 401]
        locked = attempt(b, client, "bob", "demo-bob")  # the right password no longer helps
        assert locked.status_code == 429
        assert "Try again in 1 minute" in locked.text
        assert attempt(b, client, "BOB", "demo-bob").status_code == 429  # case does not dodge the lock
        assert attempt(b, client, "alice", "demo-alice").status_code == 303  # others are unaffected
        # Unknown users are locked the same way, so the lock reveals nothing.
        for _ in range(3):
            attempt(b, client, "nobody", "x")
        assert attempt(b, client, "nobody", "x").status_code == 429


def test_an_ip_is_locked_after_failures_across_usernames(broker_factory: BrokerFactory) -> None:
    with broker_factory(
        extra="login_protection: {max_failures_per_user: 100, max_failures_per_ip: 4, window: 60}"
    ) as b:
        client = register(b)["client_id"]
        for name in ("u1", "u2", "u3", "u4"):
            assert attempt(b, client, name, "wrong").status_code == 401
        assert attempt(b, client, "alice", "demo-alice").status_code == 429


def test_success_clears_the_username_counter(broker_factory: BrokerFactory) -> None:
    with broker_factory(
        extra="login_protection: {max_failures_per_user: 3, max_failures_per_ip: 100, window: 60}"
    ) as b:
        client = register(b)["client_id"]
        for _ in range(2):
            attempt(b, client, "bob", "wrong")
        assert attempt(b, client, "bob", "demo-bob").status_code == 303
        for _ in range(2):
            assert attempt(b, client, "bob", "wrong").status_code == 401
        assert attempt(b, client, "bob", "demo-bob").status_code == 303


def _parallel_logins(b: Broker, client: str, username: str, password: str, n: int) -> list[int]:
    """``n`` sign-in pages made ready one by one, then all posted at once: their statuses."""
    from concurrent.futures import ThreadPoolExecutor

    forms, browsers = [], []
    try:
        for _ in range(n):
            browser = b.client()
            browsers.append(browser)
            forms.append({**login_form(browser, client), "username": username, "password": password})
        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(lambda i: browsers[i].post("/login", data=forms[i]).status_code, range(n)))
    finally:
        for browser in browsers:
            browser.close()


def test_parallel_guesses_cannot_outrun_the_count(broker_factory: BrokerFactory) -> None:
    """Ten wrong passwords for one user at once: the lock admits exactly its limit of them."""
    with broker_factory(
        extra="login_protection: {max_failures_per_user: 3, max_failures_per_ip: 100, window: 60}"
    ) as b:
        client = register(b)["client_id"]
        assert sorted(_parallel_logins(b, client, "bob", "wrong", 10)) == [401] * 3 + [429] * 7


def test_parallel_sign_ins_of_one_user_are_not_refused(broker_factory: BrokerFactory) -> None:
    """Someone signing in from several clients at once waits a moment rather than being locked out."""
    with broker_factory(
        extra="login_protection: {max_failures_per_user: 2, max_failures_per_ip: 100, window: 60}"
    ) as b:
        client = register(b)["client_id"]
        assert _parallel_logins(b, client, "alice", "demo-alice", 8) == [303] * 8


def test_failures_from_one_address_lock_the_username_for_that_address_only(broker_factory: BrokerFactory) -> None:
    """Lockout is not a weapon: guessing from elsewhere does not lock the user out at their desk."""
    with broker_factory(
        extra="login_protection: {max_failures_per_user: 3, max_failures_per_account: 6, max_failures_per_ip: 100, window: 60}"
    ) as b:
        client = register(b)["client_id"]
        assert [attempt(b, client, "bob", "wrong", "127.0.0.2").status_code for _ in range(3)] == [401] * 3
        assert attempt(b, client, "bob", "demo-bob", "127.0.0.2").status_code == 429
        assert attempt(b, client, "bob", "demo-bob", "127.0.0.3").status_code == 303


def test_failures_from_many_addresses_lock_the_username_everywhere(broker_factory: BrokerFactory) -> None:
    with broker_factory(
        extra="login_protection: {max_failures_per_user: 2, max_failures_per_account: 4, max_failures_per_ip: 100, window: 60}"
    ) as b:
        client = register(b)["client_id"]
        for source in ("127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.4"):
            assert attempt(b, client, "bob", "wrong", source).status_code == 401
        for source in ("127.0.0.2", "127.0.0.3", "127.0.0.5"):  # even one that never failed
            locked = attempt(b, client, "bob", "demo-bob", source)
            assert locked.status_code == 429
            assert "Try again in 1 minute" in locked.text
        assert attempt(b, client, "alice", "demo-alice", "127.0.0.5").status_code == 303


def test_the_account_limit_is_unset_by_default_and_not_below_the_pair_limit() -> None:
    assert LoginProtectionConfig().max_failures_per_account is None
    with pytest.raises(ValidationError, match="at least max_failures_per_user"):
        LoginProtectionConfig(max_failures_per_user=5, max_failures_per_account=4)


def throttle_for(client: aioredis.Redis, per_user: int, per_account: int | None = None) -> LoginThrottle:
    return LoginThrottle(
        RedisStore(client, Keys(f"t{secrets.token_hex(4)}")),
        per_user=per_user,
        per_account=per_account,
        per_ip=1000,
        window=60,
        failure_floor=0,
    )


async def fail(throttle: LoginThrottle, username: str, ip: str) -> bool:
    """One wrong password from ``ip``, if the throttle lets it start: whether it did."""
    verdict = await throttle.reserve("ldap", username, ip)
    if verdict.allowed:
        await throttle.settle("ldap", username, ip, "failed")
    return verdict.allowed


async def test_lock_events_name_their_scope(redis_client: aioredis.Redis) -> None:
    throttle = throttle_for(redis_client, per_user=2, per_account=3)
    with capture_logs() as logs:
        for ip in ("10.0.0.1", "10.0.0.1", "10.0.0.2"):
            assert await fail(throttle, "Bob", ip)
    locks = [(e["scope"], e["client_ip"]) for e in logs if e["event"] == "account_locked"]
    assert locks == [("pair", "10.0.0.1"), ("global", None)]
    assert all(e["audit"] and e["username"] == "Bob" and e["provider"] == "ldap" for e in logs)


async def test_the_default_account_limit_is_four_pair_limits(redis_client: aioredis.Redis) -> None:
    throttle = throttle_for(redis_client, per_user=2)
    assert [await fail(throttle, "bob", f"10.0.0.{i // 2}") for i in range(9)] == [True] * 8 + [False]


async def test_a_success_clears_its_pair_but_not_the_global_count(redis_client: aioredis.Redis) -> None:
    throttle = throttle_for(redis_client, per_user=2, per_account=4)
    for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.2"):
        assert await fail(throttle, "bob", ip)
    assert (await throttle.reserve("ldap", "bob", "10.0.0.1")).allowed
    await throttle.settle("ldap", "bob", "10.0.0.1", "succeeded")
    assert await fail(throttle, "bob", "10.0.0.1")  # the pair starts again from nothing
    assert not await fail(throttle, "bob", "10.0.0.3")  # four failures in the window: locked everywhere


async def test_unlock_clears_every_count_of_the_username(redis_client: aioredis.Redis) -> None:
    throttle = throttle_for(redis_client, per_user=2, per_account=4)
    assert not await throttle.unlock("ldap", "bob")  # nothing to clear
    for ip in ("10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.2"):
        assert await fail(throttle, "bob", ip)
    assert await fail(throttle, "alice", "10.0.0.1")
    assert await throttle.unlock("ldap", "BOB")
    assert [await fail(throttle, "bob", ip) for ip in ("10.0.0.1", "10.0.0.1", "10.0.0.1")] == [True, True, False]
    assert await fail(throttle, "bob", "10.0.0.2")  # its pair was cleared too
    assert isinstance(throttle.store, RedisStore)
    assert await redis_client.get(throttle.store._user_base("ldap", "alice")) == b"1"  # others keep theirs


async def test_parallel_guesses_from_many_addresses_cannot_outrun_the_global_count(
    redis_client: aioredis.Redis,
) -> None:
    throttle = throttle_for(redis_client, per_user=100, per_account=4)
    started = await asyncio.gather(*(fail(throttle, "bob", f"10.0.1.{i}") for i in range(12)))
    assert sorted(started) == [False] * 8 + [True] * 4
