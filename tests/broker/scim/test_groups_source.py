"""``groups_source: true``: the provider's groups come from the SCIM data at sign-in and refresh
(real Redis and slapd). The directory puts the user in mcp-readers (notes:read); SCIM puts them in
mcp-writers (notes:write): what SCIM says wins, and only where the tenant asks for it."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import replace
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from broker.config.scim import ScimTenantConfig
from broker.devstack import RedisServer, Slapd
from broker.scim.groups import GroupSource
from broker.store.client import create_redis
from broker.store.keys import Keys
from broker.store.redis_store import RedisStore
from providers.base import AccountDisabled, Identity
from tests.broker.conftest import BrokerFactory
from tests.broker.flows import Broker, refresh, register, sign_in_attempt, tokens_for
from tests.broker.revocations import refused_within, verifier_for
from tests.broker.scim.conftest import SCIM_CONFIG, SCIM_TOKEN, TENANT, scim_client
from tests.broker.scim.test_scim import GROUP, directory_user, entra_user, patch

GROUPS_SOURCE = SCIM_CONFIG + "      groups_source: true\n"


def provision(broker: Broker, user_name: str, groups: tuple[str, ...], *, active: bool = True) -> dict[str, Any]:
    """The SCIM user ``user_name`` as a member of ``groups`` (created); the user's and groups' ids."""
    with scim_client(broker) as scim:
        user = scim.post("/Users", json={**entra_user(user_name), "active": active})
        assert user.status_code == 201, user.text
        user_id = user.json()["id"]
        created = {}
        for name in groups:
            group = scim.post(
                "/Groups", json={"schemas": [GROUP], "displayName": name, "members": [{"value": user_id}]}
            )
            assert group.status_code == 201, group.text
            created[name] = group.json()["id"]
    return {"user": user_id, "groups": created}


async def test_scim_groups_replace_the_directory_groups(
    broker_factory: BrokerFactory, slapd: Slapd, redis_server: RedisServer
) -> None:
    with broker_factory(extra=GROUPS_SOURCE) as broker, directory_user(slapd, ("mcp-readers",)) as uid:
        ids = provision(broker, uid.upper(), ("mcp-readers", "mcp-writers"))  # userName case-insensitive
        client, tokens = await asyncio.to_thread(tokens_for, broker, uid, password=f"pw-{uid}")
        assert "notes:write" in tokens["scope"].split()  # the directory alone gives notes:read
        # The refresh re-check takes SCIM's groups again (the directory's would narrow to notes:read).
        again = await asyncio.to_thread(refresh, broker, client["client_id"], tokens["refresh_token"])
        assert again.status_code == 200, again.text
        tokens = again.json()
        assert "notes:write" in tokens["scope"].split()
        async with verifier_for(broker, redis_server) as verifier:
            assert await verifier.verify_token(tokens["access_token"]) is not None
            async with httpx.AsyncClient(
                base_url=f"{broker.base}/scim/v2/demo-ldap", headers={"authorization": f"Bearer {SCIM_TOKEN}"}
            ) as scim:
                removed = await scim.patch(
                    f"/Groups/{ids['groups']['mcp-writers']}",
                    json=patch({"op": "remove", "path": f'members[value eq "{ids["user"]}"]'}),
                )
                assert removed.status_code == 200, removed.text
            # reapply_policy reads SCIM now: the grant loses notes:write, so it is narrowed in
            # place: the access tokens carrying notes:write end at once, the grant lives on.
            await refused_within(verifier, tokens["access_token"], bound=5.0)
            narrowed = await asyncio.to_thread(refresh, broker, client["client_id"], tokens["refresh_token"])
            assert narrowed.status_code == 200, narrowed.text
            assert narrowed.json()["scope"].split() == ["notes:read"]
            access = await verifier.verify_token(narrowed.json()["access_token"])
            assert access is not None
            assert access.scopes == ["notes:read"]
        _, fresh = await asyncio.to_thread(tokens_for, broker, uid, password=f"pw-{uid}")
        assert fresh["scope"].split() == ["notes:read"]  # SCIM's mcp-readers


def drop_members_unsignalled(redis_server: RedisServer, broker: Broker, group_id: str) -> None:
    """Empty a stored group as a lost signal would leave it: the store written, no effect run."""

    async def write() -> None:
        client = create_redis(redis_server.url)
        try:
            store = RedisStore(client, Keys(broker.config.redis.key_prefix))
            record = await store.get_scim_resource(TENANT, "Groups", group_id)
            assert record is not None
            resource = {**record["resource"], "members": []}
            index = {"displayname": str(resource["displayName"]).casefold()}
            outcome = await store.save_scim_resource(
                TENANT, "Groups", group_id, {"resource": resource}, index, create=False, expected=record
            )
            assert outcome == "ok"
        finally:
            await client.aclose()

    asyncio.run(write())


async def test_a_refresh_reads_scim_again(
    broker_factory: BrokerFactory, slapd: Slapd, redis_server: RedisServer
) -> None:
    """With no signal (the group emptied in the store directly), the next refresh reads SCIM and
    keeps only what the policy gives now: the scopes narrow, the grant stays."""
    with broker_factory(extra=GROUPS_SOURCE) as broker, directory_user(slapd, ("mcp-readers", "mcp-writers")) as uid:
        ids = provision(broker, uid, ("mcp-readers", "mcp-writers"))
        client, tokens = await asyncio.to_thread(tokens_for, broker, uid, password=f"pw-{uid}")
        assert tokens["scope"].split() == ["notes:read", "notes:write"]
        await asyncio.to_thread(drop_members_unsignalled, redis_server, broker, ids["groups"]["mcp-writers"])
        again = await asyncio.to_thread(refresh, broker, client["client_id"], tokens["refresh_token"])
        assert again.status_code == 200, again.text
        assert again.json()["scope"].split() == ["notes:read"]  # the directory still says mcp-writers


async def test_inactive_or_unknown_in_scim(broker_factory: BrokerFactory, slapd: Slapd) -> None:
    with (
        broker_factory(extra=GROUPS_SOURCE) as broker,
        directory_user(slapd, ("mcp-readers", "mcp-writers")) as inactive,
        directory_user(slapd, ("mcp-readers",)) as unknown,
    ):
        provision(broker, inactive, ("mcp-writers",), active=False)
        client = await asyncio.to_thread(register, broker)
        refused = await asyncio.to_thread(sign_in_attempt, broker, client["client_id"], inactive, f"pw-{inactive}")
        assert refused.status_code == 401
        assert "This account is disabled or locked" in refused.text  # as a disabled directory account
        # Unknown to SCIM: no groups, so no access (the directory's mcp-readers does not count).
        denied = await asyncio.to_thread(sign_in_attempt, broker, client["client_id"], unknown, f"pw-{unknown}")
        assert denied.status_code != 303
        assert "code=" not in denied.headers.get("location", "")


async def test_without_groups_source_the_directory_groups_stay(scim_broker: Broker, slapd: Slapd) -> None:
    with directory_user(slapd, ("mcp-readers",)) as uid:
        provision(scim_broker, uid, ("mcp-writers",))
        _, tokens = await asyncio.to_thread(tokens_for, scim_broker, uid, password=f"pw-{uid}")
        assert tokens["scope"].split() == ["notes:read"]


@pytest.mark.parametrize(
    ("template", "local"),
    [
        (None, "Ann@Example.com"),  # the username, case-insensitively
        ("tid:{externalId}", "tid:ext-1"),  # one index lookup
        ("{id}", "u1"),
        ("{userName}/{externalId}", "ann@example.com/ext-1"),  # a scan of the tenant's users
    ],
)
async def test_the_scim_user_is_found_as_the_tenant_matches_users(
    redis_client: aioredis.Redis, template: str | None, local: str
) -> None:
    store = RedisStore(redis_client, Keys(f"gs{secrets.token_hex(4)}:"))
    user = {"id": "u1", "userName": "ann@example.com", "externalId": "ext-1", "active": True}
    index = {"username": "ann@example.com", "externalid": "ext-1"}
    assert await store.save_scim_resource(TENANT, "Users", "u1", {"resource": user}, index, create=True) == "ok"
    for group_id, name, members in (("g1", "Writers", ["u1"]), ("g2", "Others", ["u2"])):
        group = {"id": group_id, "displayName": name, "members": [{"value": m} for m in members]}
        index = {"displayname": name.casefold()}
        assert (
            await store.save_scim_resource(TENANT, "Groups", group_id, {"resource": group}, index, create=True) == "ok"
        )
    tenant = ScimTenantConfig(provider=TENANT, token=SCIM_TOKEN, subject=template, groups_source=True)
    source = GroupSource(store, [tenant])
    identity = Identity(TENANT, f"{TENANT}:{local}", "Ann@Example.com", groups=frozenset({"cn=dir"}))
    found = await source.apply(identity)
    assert found.groups == {"g1"}
    assert dict(found.group_names) == {"g1": "Writers"}
    stranger = await source.apply(replace(identity, subject=f"{TENANT}:nobody", username="nobody"))
    assert stranger.groups == frozenset()
    other = Identity("elsewhere", "elsewhere:x", "x", groups=frozenset({"cn=dir"}))
    assert await source.apply(other) is other  # a provider without groups_source: untouched
    user["active"] = False
    saved = await store.get_scim_resource(TENANT, "Users", "u1")
    assert saved is not None
    index = {"username": "ann@example.com", "externalid": "ext-1"}
    await store.save_scim_resource(TENANT, "Users", "u1", {"resource": user}, index, create=False, expected=saved)
    with pytest.raises(AccountDisabled):
        await source.apply(identity)
