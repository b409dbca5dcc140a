"""Critical token-endpoint paths pinned against the real broker, directory and Redis: the
``tokens.upstream_recheck_interval`` reuse, the end of a grant's absolute lifetime, and one
code exchanged by many requests at once."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import ldap3

from broker.devstack import Slapd
from broker.devstack.slapd import ssha
from tests.broker.conftest import BrokerFactory
from tests.broker.flows import (
    INTROSPECTOR_SECRET,
    REDIRECT,
    RESOURCE,
    Broker,
    exchange,
    login,
    refresh,
    register,
    tokens_for,
)


def as_admin(slapd: Slapd, change: Callable[[ldap3.Connection], bool]) -> None:
    """One change to the directory as its administrator, which must succeed."""
    admin = slapd.admin_connection()
    try:
        assert change(admin), admin.result
    finally:
        admin.unbind()


def leave_group(slapd: Slapd, dn: str, group: str) -> None:
    as_admin(
        slapd, lambda admin: admin.modify(slapd.directory.group_dn(group), {"member": [(ldap3.MODIFY_DELETE, [dn])]})
    )


def introspect(broker: Broker, token: str) -> object:
    """The introspection answer the notes resource server gets for ``token``."""
    answer = httpx.post(f"{broker.base}/introspect", data={"token": token}, auth=("notes-server", INTROSPECTOR_SECRET))
    return answer.json()


RECHECK = 3  # seconds; generous against a slow, shared test machine


@contextmanager
def directory_user(slapd: Slapd, groups: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    """A user of this test's own in the shared directory (password ``demo-<uid>``), removed at the
    end: its uid and DN. The demo users stay untouched for other tests."""
    uid = f"temp{secrets.token_hex(4)}"
    dn = slapd.directory.user_dn(uid)
    admin = slapd.admin_connection()
    try:
        attributes = {"uid": uid, "cn": "Temp User", "sn": "User", "userPassword": ssha(f"demo-{uid}")}
        assert admin.add(dn, ["inetOrgPerson"], attributes), admin.result
        for group in groups:
            assert admin.modify(slapd.directory.group_dn(group), {"member": [(ldap3.MODIFY_ADD, [dn])]}), admin.result
        yield uid, dn
    finally:
        admin.delete(dn)  # memberof's referential integrity drops it from its groups; absent already: fine
        admin.unbind()


def test_an_upstream_recheck_is_reused_within_the_interval_and_asked_again_after_it(
    broker_factory: BrokerFactory, slapd: Slapd
) -> None:
    """What lets a disabled user keep access: for ``upstream_recheck_interval`` seconds after a
    refresh asked the directory, later refreshes reuse that answer; the first refresh after it
    asks again, so a removed group narrows the grant and a removed user loses it."""
    with (
        directory_user(slapd, ("mcp-readers", "mcp-writers")) as (uid, dn),
        broker_factory(tokens=f"  upstream_recheck_interval: {RECHECK}") as broker,
    ):
        client, tokens = tokens_for(broker, uid)
        client_id = client["client_id"]
        assert tokens["scope"] == "notes:read notes:write"
        asked = time.monotonic()
        first = refresh(broker, client_id, tokens["refresh_token"]).json()  # asks the directory
        assert first["scope"] == "notes:read notes:write"

        leave_group(slapd, dn, "mcp-writers")
        stale = refresh(broker, client_id, first["refresh_token"]).json()
        assert time.monotonic() - asked < RECHECK, "the machine was too slow to stay within the interval"
        assert stale["scope"] == "notes:read notes:write"  # the directory was not asked again

        time.sleep(max(0.0, asked + RECHECK + 0.5 - time.monotonic()))
        asked = time.monotonic()
        narrowed = refresh(broker, client_id, stale["refresh_token"]).json()  # asks again
        assert narrowed["scope"] == "notes:read"

        as_admin(slapd, lambda admin: admin.delete(dn))  # the user is gone from the directory
        kept = refresh(broker, client_id, narrowed["refresh_token"])
        assert time.monotonic() - asked < RECHECK, "the machine was too slow to stay within the interval"
        assert kept.status_code == 200, kept.text  # still the answer of the last re-check
        assert kept.json()["scope"] == "notes:read"

        time.sleep(max(0.0, asked + RECHECK + 0.5 - time.monotonic()))
        refused = refresh(broker, client_id, kept.json()["refresh_token"])
        assert (refused.status_code, refused.json()["error"]) == (400, "invalid_grant")
        # The grant is revoked, not only this refresh refused: its access token is dead too.
        assert introspect(broker, kept.json()["access_token"]) == {"active": False}


def test_without_a_recheck_interval_every_refresh_asks_the_directory(
    broker_factory: BrokerFactory, slapd: Slapd
) -> None:
    with directory_user(slapd, ("mcp-readers", "mcp-writers")) as (uid, dn), broker_factory() as broker:
        client, tokens = tokens_for(broker, uid)
        first = refresh(broker, client["client_id"], tokens["refresh_token"]).json()
        assert first["scope"] == "notes:read notes:write"
        leave_group(slapd, dn, "mcp-writers")
        assert refresh(broker, client["client_id"], first["refresh_token"]).json()["scope"] == "notes:read"


ABSOLUTE = 4  # seconds


def test_a_grant_ends_at_its_absolute_lifetime_however_recently_refreshed(broker_factory: BrokerFactory) -> None:
    with broker_factory(tokens=f"  refresh_token_absolute_ttl: {ABSOLUTE}") as broker:
        client = register(broker)
        auth = login(broker, client["client_id"], "bob")
        started = time.monotonic()
        issued = exchange(broker, client["client_id"], auth)
        assert issued.status_code == 200, issued.text
        token = issued.json()["refresh_token"]
        for _ in range(2):  # refreshes within the lifetime work, and do not extend it
            answer = refresh(broker, client["client_id"], token)
            assert answer.status_code == 200, answer.text
            token = answer.json()["refresh_token"]
        assert time.monotonic() - started < ABSOLUTE, "the machine was too slow to stay within the lifetime"
        time.sleep(max(0.0, started + ABSOLUTE + 0.5 - time.monotonic()))
        ended = refresh(broker, client["client_id"], token)
        assert (ended.status_code, ended.json()["error"]) == (400, "invalid_grant")


async def test_one_code_exchanged_concurrently_issues_tokens_once(broker_factory: BrokerFactory) -> None:
    """Exactly one of many simultaneous exchanges of one code gets tokens; every other one gets
    invalid_grant (code spent, or replayed). A later replay revokes what was issued."""
    with broker_factory() as broker:
        client = register(broker)
        auth = login(broker, client["client_id"], "bob")
        data = {
            "grant_type": "authorization_code",
            "code": auth.code,
            "redirect_uri": REDIRECT,
            "code_verifier": auth.verifier,
            "client_id": client["client_id"],
            "resource": RESOURCE,
        }
        async with httpx.AsyncClient(base_url=broker.base, timeout=30) as http:
            answers = await asyncio.gather(*(http.post("/token", data=data) for _ in range(10)))
        winners = [a for a in answers if a.status_code == 200]
        assert len(winners) == 1, [a.text for a in answers]
        losers = [a for a in answers if a.status_code != 200]
        assert all((a.status_code, a.json()["error"]) == (400, "invalid_grant") for a in losers)
        assert all("access_token" not in a.json() for a in losers)
        issued = winners[0].json()

        replay = await asyncio.to_thread(exchange, broker, client["client_id"], auth)
        assert (replay.status_code, replay.json()["error"]) == (400, "invalid_grant")
        dead = await asyncio.to_thread(refresh, broker, client["client_id"], issued["refresh_token"])
        assert (dead.status_code, dead.json()["error"]) == (400, "invalid_grant")
        assert await asyncio.to_thread(introspect, broker, issued["access_token"]) == {"active": False}
