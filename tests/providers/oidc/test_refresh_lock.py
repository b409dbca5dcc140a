"""The upstream lock of a grant whose re-check spends an upstream refresh token (OIDC with
``use_upstream_refresh``): a refresh that finds another request asking the OP waits for that
request's answer, and gives up with ``temporarily_unavailable`` when none comes in time."""

from __future__ import annotations

import time

import pytest
import redis

from broker.devstack import RedisServer
from broker.oauth import grants
from broker.store.keys import Keys
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
