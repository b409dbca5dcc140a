"""A refresh that starts from the grant this process last rotated (broker.oauth.grant_memo) answers
exactly as one that reads the store: what another replica did meanwhile (a revocation, a rotation of
the same token) wins, through the rotation's own atomic checks."""

from __future__ import annotations

import secrets
import time

import httpx

from broker.oauth.grant_memo import GrantMemo
from broker.store.records import Grant, StoredIdentity
from tests.broker.conftest import BrokerFactory
from tests.broker.flows import refresh, tokens_for


def test_the_memo_answers_only_for_the_token_it_was_kept_for_and_only_once() -> None:
    memo = GrantMemo(size=2)
    grants = [Grant(grant_id=f"g{n}", subject="alice", expires_at=time.time() + 60) for n in range(3)]
    memo.put("h0", grants[0])
    assert memo.take("g0", "another") is None
    assert memo.take("g0", "h0") == grants[0]
    assert memo.take("g0", "h0") is None  # taken
    memo.put("h0", grants[0])
    memo.put("h1", grants[1])
    memo.put("h2", grants[2])  # the oldest goes
    assert len(memo) == 2
    assert memo.take("g0", "h0") is None
    assert memo.take("g2", "h2") == grants[2]


def test_the_memo_holds_a_bounded_number_of_group_entries() -> None:
    memo = GrantMemo(size=100, group_budget=25)

    def of_groups(grant_id: str, count: int) -> Grant:
        groups = tuple(f"cn=g{n}" for n in range(count))
        identity = StoredIdentity(
            provider_id="ldap", subject="alice", username="alice", groups=groups, group_names=dict.fromkeys(groups, "g")
        )
        return Grant(grant_id=grant_id, subject="alice", expires_at=time.time() + 60, identity=identity)

    memo.put("h", of_groups("big", 13))  # 1 + 26 entries: more than the whole budget, never kept
    assert len(memo) == 0
    for n in range(4):
        memo.put(f"h{n}", of_groups(f"g{n}", 5))  # 11 each: two fit
    assert len(memo) == 2
    assert memo.take("g3", "h3") is not None
    assert memo.take("g2", "h2") is not None
    memo.put("h4", of_groups("g4", 5))
    memo.put("h5", of_groups("g5", 5))
    assert len(memo) == 2


def test_a_grant_revoked_through_another_replica_does_not_refresh_from_the_memo(broker_factory: BrokerFactory) -> None:
    prefix = f"t{secrets.token_hex(6)}"
    with broker_factory(prefix=prefix) as one, broker_factory(prefix=prefix) as two:
        client, first = tokens_for(one)
        second = refresh(one, client["client_id"], first["refresh_token"])  # one keeps the grant it wrote
        assert second.status_code == 200, second.text
        revoked = httpx.post(
            f"{two.base}/revoke", data={"token": second.json()["refresh_token"], "client_id": client["client_id"]}
        )
        assert revoked.status_code == 200
        again = refresh(one, client["client_id"], second.json()["refresh_token"])
        assert again.status_code == 400
        assert again.json()["error"] == "invalid_grant"


def test_a_token_another_replica_rotated_gets_that_replicas_answer_here_too(broker_factory: BrokerFactory) -> None:
    prefix = f"t{secrets.token_hex(6)}"
    with broker_factory(prefix=prefix) as one, broker_factory(prefix=prefix) as two:
        client, first = tokens_for(one)
        second = refresh(one, client["client_id"], first["refresh_token"]).json()
        elsewhere = refresh(two, client["client_id"], second["refresh_token"])  # a retry landed on two
        assert elsewhere.status_code == 200, elsewhere.text
        here = refresh(one, client["client_id"], second["refresh_token"])  # one's memo: refused, then replayed
        assert here.status_code == 200, here.text
        assert here.json() == elsewhere.json()  # within the reuse grace: the winner's answer, once issued
        time.sleep(2.2)  # past refresh_reuse_grace (2 s): reuse now ends the grant
        reused = refresh(one, client["client_id"], second["refresh_token"])
        assert reused.json()["error"] == "invalid_grant"
        after = refresh(two, client["client_id"], elsewhere.json()["refresh_token"])
        assert after.json()["error"] == "invalid_grant"  # the whole family is revoked


def test_refreshes_from_the_memo_keep_rotating_and_narrowing(broker_factory: BrokerFactory) -> None:
    with broker_factory() as one:
        client, tokens = tokens_for(one, scope="notes:read notes:write")
        for _ in range(3):
            answer = refresh(one, client["client_id"], tokens["refresh_token"])
            assert answer.status_code == 200, answer.text
            tokens = answer.json()
        narrowed = refresh(one, client["client_id"], tokens["refresh_token"], scope="notes:read")
        assert narrowed.json()["scope"] == "notes:read"
        # The grant keeps what it holds (a narrowed request narrows the answer, not the grant).
        wide = refresh(one, client["client_id"], narrowed.json()["refresh_token"], scope="notes:read notes:write")
        assert wide.status_code == 200, wide.text
        assert wide.json()["scope"] == "notes:read notes:write"
