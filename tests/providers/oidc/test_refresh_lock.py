"""The upstream lock of a grant whose re-check spends an upstream refresh token (OIDC with
``use_upstream_refresh``): a refresh that finds another request asking the OP waits for that
request's answer, and gives up with ``temporarily_unavailable`` when none comes in time."""

from __future__ import annotations

import time

import httpx
import pytest
import redis

from broker.devstack import RedisServer
from broker.oauth import grants
from broker.store.keys import Keys
from broker.store.redis_store import RedisStore
from tests.broker.conftest import BrokerFactory
from tests.broker.flows import refresh
from tests.providers.oidc.op import TestOP
from tests.providers.oidc.test_broker_flows import oidc_broker, tokens_for

WAIT = 1.0  # the broker's wait for another request's re-check, shortened from 10 s for the test
MARGIN = 1.5  # a shared, slow test machine


def test_a_refresh_waiting_on_another_requests_recheck_times_out_and_leaves_the_grant_intact(
    broker_factory: BrokerFactory, op: TestOP, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(grants, "UPSTREAM_LOCK_SECONDS", WAIT)  # the broker runs in this process
    direct = redis.Redis.from_url(redis_server.url)
    with oidc_broker(broker_factory, op, upstream_refresh=True) as setup:
        client_id, alice = tokens_for(setup, "alice")
        grant_id = alice["refresh_token"].split(".")[1]
        lock = Keys(setup.broker.config.redis.key_prefix).grant_lock(grant_id)
        # Another replica's refresh of this grant is asking the OP, and never finishes.
        assert direct.set(lock, "another-replica", nx=True, px=30_000)
        before = op.hits("/token")
        started = time.monotonic()
        waited = refresh(setup.broker, client_id, alice["refresh_token"])
        elapsed = time.monotonic() - started
        assert (waited.status_code, waited.json()["error"]) == (503, "temporarily_unavailable"), waited.text
        assert WAIT <= elapsed < WAIT + MARGIN
        assert op.hits("/token") == before  # the waiter never asked the OP itself
        assert direct.get(lock) == b"another-replica"  # nor took or freed the other holder's lock

        direct.delete(lock)  # the other request is gone
        again = refresh(setup.broker, client_id, alice["refresh_token"])
        assert again.status_code == 200, again.text  # the refresh token was neither spent nor revoked
        assert op.hits("/token") == before + 1
    direct.close()


def test_a_refresh_that_takes_the_lock_after_another_rotated_answers_as_a_replay(
    broker_factory: BrokerFactory, op: TestOP, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two refreshes of one token: the second reads the grant, then the first asks the OP,
    rotates and frees the lock before the second takes it. The second must not ask the OP with
    the upstream refresh token the first already spent (the OP would refuse it as reused, and
    the broker would end the grant): it answers what the first answered."""
    real = RedisStore.lock_grant
    calls = 0

    async def winner_first(self: RedisStore, grant_id: str, seconds: float) -> str | None:
        nonlocal calls
        calls += 1
        if calls == 1:  # the second request, between its read and its lock: the first runs whole
            async with httpx.AsyncClient() as http:
                winner = await http.post(f"{base}/token", data=form)
            answers.append(winner)
        return await real(self, grant_id, seconds)

    monkeypatch.setattr(RedisStore, "lock_grant", winner_first)  # the broker runs in this process
    answers: list[httpx.Response] = []
    with oidc_broker(broker_factory, op, upstream_refresh=True) as setup:
        client_id, alice = tokens_for(setup, "alice")
        base = setup.broker.base
        form = {"grant_type": "refresh_token", "refresh_token": alice["refresh_token"], "client_id": client_id}
        before = op.hits("/token")
        late = refresh(setup.broker, client_id, alice["refresh_token"])
        assert late.status_code == 200, late.text
        assert answers, "the first refresh never ran"
        assert answers[0].status_code == 200, answers[0].text
        assert late.json()["refresh_token"] == answers[0].json()["refresh_token"]  # the same answer
        assert op.hits("/token") == before + 1  # the OP was asked once
        onward = refresh(setup.broker, client_id, late.json()["refresh_token"])
        assert onward.status_code == 200, onward.text  # the grant lives on
