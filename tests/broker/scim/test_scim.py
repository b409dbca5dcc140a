"""The SCIM service provider against a real broker (loopback, real Redis and slapd): Entra's and
Okta's provisioning request shapes as they document them, bad input answered as RFC 7644 §3.12
says with nothing changed, and the effects: a user set inactive or deleted loses every grant (the
verifier refuses their access token), a group membership removed re-applies the policy."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import ldap3
import pytest

from broker.devstack import RedisServer, Slapd
from broker.devstack.slapd import ssha
from tests.broker.conftest import BrokerFactory
from tests.broker.flows import Broker, refresh, tokens_for
from tests.broker.revocations import refused_within, verifier_for
from tests.broker.scim.conftest import SCIM_CONFIG, SCIM_TOKEN, scim_client

PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"


def entra_user(user_name: str, external_id: str | None = None) -> dict[str, Any]:
    """Entra's POST /Users (learn.microsoft.com, "Develop a SCIM endpoint", Create User)."""
    return {
        "schemas": [USER, ENTERPRISE],
        "externalId": external_id or secrets.token_hex(8),
        "userName": user_name,
        "active": True,
        "emails": [{"primary": True, "type": "work", "value": f"{user_name.partition('@')[0]}@testuser.com"}],
        "meta": {"resourceType": "User"},
        "name": {"formatted": "givenName familyName", "familyName": "familyName", "givenName": "givenName"},
        "roles": [],
        ENTERPRISE: {"department": "Engineering", "employeeNumber": "42"},
    }


def patch(*operations: dict[str, Any]) -> dict[str, Any]:
    return {"schemas": [PATCH], "Operations": list(operations)}


def assert_error(response: httpx.Response, status: int, scim_type: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/scim+json")
    body: dict[str, Any] = response.json()
    assert body["schemas"] == [ERROR]
    assert str(body["status"]) == str(status)
    if scim_type is not None:
        assert body.get("scimType") == scim_type, body
    return body


# -- Entra's provisioning requests ----------------------------------------------------------------
def test_entra_user_lifecycle(scim_broker: Broker) -> None:
    with scim_client(scim_broker) as scim:
        name = f"Test_User_{secrets.token_hex(4)}@contoso.com"
        probe = scim.get("/Users", params={"filter": f'userName eq "{name}"'})
        assert probe.status_code == 200
        assert probe.json()["totalResults"] == 0
        assert probe.json()["Resources"] == []

        created = scim.post("/Users", json=entra_user(name, "0a21f0f2-8d2a"))
        assert created.status_code == 201, created.text
        user = created.json()
        assert created.headers["location"] == user["meta"]["location"]
        assert user["userName"] == name
        assert user["active"] is True
        assert user[ENTERPRISE]["department"] == "Engineering"

        for query in (f'userName eq "{name.upper()}"', 'externalId eq "0a21f0f2-8d2a"'):
            found = scim.get("/Users", params={"filter": query}).json()
            assert found["totalResults"] == 1, query
            assert found["Resources"][0]["id"] == user["id"], query
        assert scim.get("/Users", params={"filter": 'externalId eq "0A21F0F2-8D2A"'}).json()["totalResults"] == 0

        duplicate = scim.post("/Users", json=entra_user(name.lower()))
        assert_error(duplicate, 409, "uniqueness")

        updated = scim.patch(
            f"/Users/{user['id']}",
            json=patch(
                {"op": "Replace", "path": 'emails[type eq "work"].value', "value": "updated@contoso.com"},
                {"op": "Replace", "path": "name.familyName", "value": "updatedFamilyName"},
                {"op": "Add", "path": f"{ENTERPRISE}:manager", "value": "manager-id"},
            ),
        )
        assert updated.status_code == 200, updated.text
        assert updated.json()["emails"][0]["value"] == "updated@contoso.com"
        assert updated.json()["name"]["familyName"] == "updatedFamilyName"

        disabled = scim.patch(f"/Users/{user['id']}", json=patch({"op": "Replace", "path": "active", "value": "False"}))
        assert disabled.status_code == 200, disabled.text
        assert disabled.json()["active"] is False
        assert scim.get(f"/Users/{user['id']}").json()["active"] is False

        assert scim.delete(f"/Users/{user['id']}").status_code == 204
        assert_error(scim.get(f"/Users/{user['id']}"), 404)
        assert_error(scim.delete(f"/Users/{user['id']}"), 404)


def test_entra_group_requests(scim_broker: Broker) -> None:
    with scim_client(scim_broker) as scim:
        users = [scim.post("/Users", json=entra_user(f"member-{secrets.token_hex(4)}")).json()["id"] for _ in range(2)]
        name = f"Group {secrets.token_hex(4)}"
        created = scim.post(
            "/Groups",
            json={
                "schemas": [GROUP, "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group"],
                "externalId": secrets.token_hex(8),
                "displayName": name,
                "meta": {"resourceType": "Group"},
            },
        )
        assert created.status_code == 201, created.text
        group = created.json()["id"]
        found = scim.get("/Groups", params={"excludedAttributes": "members", "filter": f'displayName eq "{name}"'})
        assert found.json()["totalResults"] == 1
        assert "members" not in found.json()["Resources"][0]

        added = scim.patch(
            f"/Groups/{group}",
            json=patch({"op": "Add", "path": "members", "value": [{"$ref": None, "value": u} for u in users]}),
        )
        assert added.status_code == 200, added.text
        assert {m["value"] for m in scim.get(f"/Groups/{group}").json()["members"]} == set(users)

        removed = scim.patch(
            f"/Groups/{group}",
            json=patch({"op": "Remove", "path": "members", "value": [{"$ref": None, "value": users[0]}]}),
        )
        assert removed.status_code == 200, removed.text
        assert [m["value"] for m in scim.get(f"/Groups/{group}").json()["members"]] == [users[1]]

        renamed = scim.patch(
            f"/Groups/{group}", json=patch({"op": "Replace", "path": "displayName", "value": "1879db59"})
        )
        assert renamed.status_code == 200
        assert renamed.json()["displayName"] == "1879db59"
        assert scim.delete(f"/Users/{users[1]}").status_code == 204  # a deleted user leaves their groups
        assert scim.get(f"/Groups/{group}").json().get("members", []) == []
        assert scim.delete(f"/Groups/{group}").status_code == 204


async def test_concurrent_member_changes_all_land(scim_broker: Broker) -> None:
    """Each PATCH is a read-modify-write of the group: concurrent ones are retried, none is lost."""
    async with httpx.AsyncClient(
        base_url=f"{scim_broker.base}/scim/v2/demo-ldap", headers={"authorization": f"Bearer {SCIM_TOKEN}"}
    ) as scim:
        group = (
            await scim.post("/Groups", json={"schemas": [GROUP], "displayName": f"g-{secrets.token_hex(4)}"})
        ).json()
        members = [f"m{n}" for n in range(8)]
        answers = await asyncio.gather(
            *(
                scim.patch(
                    f"/Groups/{group['id']}", json=patch({"op": "add", "path": "members", "value": [{"value": m}]})
                )
                for m in members
            )
        )
        assert [a.status_code for a in answers] == [200] * len(members)
        stored = (await scim.get(f"/Groups/{group['id']}")).json()
        assert sorted(m["value"] for m in stored["members"]) == members


def test_okta_shapes(scim_broker: Broker) -> None:
    """Okta: PATCH ``replace`` without a path (``{"active": false}``), PUT of the whole user,
    group members removed through a filtered path."""
    with scim_client(scim_broker) as scim:
        body = {"schemas": [USER], "userName": f"okta-{secrets.token_hex(4)}@example.com", "active": True}
        user = scim.post("/Users", json=body).json()
        replaced = scim.put(f"/Users/{user['id']}", json={**body, "displayName": "Okta User", "id": user["id"]})
        assert replaced.status_code == 200
        assert replaced.json()["displayName"] == "Okta User"
        off = scim.patch(f"/Users/{user['id']}", json=patch({"op": "replace", "value": {"active": False}}))
        assert off.status_code == 200
        assert off.json()["active"] is False
        group = scim.post(
            "/Groups",
            json={
                "schemas": [GROUP],
                "displayName": f"okta-{secrets.token_hex(4)}",
                "members": [{"value": user["id"]}],
            },
        ).json()
        gone = scim.patch(
            f"/Groups/{group['id']}", json=patch({"op": "remove", "path": f'members[value eq "{user["id"]}"]'})
        )
        assert gone.status_code == 200
        assert not gone.json().get("members")


def test_discovery(scim_broker: Broker) -> None:
    with scim_client(scim_broker) as scim:
        config = scim.get("/ServiceProviderConfig").json()
        assert config["patch"]["supported"] is True
        assert config["filter"]["supported"] is True
        assert not any(config[f]["supported"] for f in ("bulk", "sort", "etag", "changePassword"))
        types = {t["id"]: t for t in scim.get("/ResourceTypes").json()["Resources"]}
        assert types["User"]["schemaExtensions"][0]["schema"] == ENTERPRISE
        assert {s["id"] for s in scim.get("/Schemas").json()["Resources"]} == {USER, ENTERPRISE, GROUP}
        assert scim.get(f"/Schemas/{USER}").json()["id"] == USER
        assert_error(scim.delete("/ServiceProviderConfig"), 405)


# -- bad input: the spec's error, and nothing changes -----------------------------------------
def test_bad_input_changes_nothing(scim_broker: Broker) -> None:
    with scim_client(scim_broker) as scim:
        name = f"bad-{secrets.token_hex(4)}"
        user = scim.post("/Users", json=entra_user(name)).json()
        before = scim.get(f"/Users/{user['id']}").json()
        assert_error(scim.post("/Users", content=b"{not json"), 400, "invalidSyntax")
        assert_error(scim.post("/Users", json=["a list"]), 400, "invalidSyntax")
        assert_error(scim.post("/Users", json={"schemas": [USER], "userName": "x", "shoeSize": 44}), 400)
        assert_error(scim.post("/Users", json={"schemas": [USER], "displayName": "no userName"}), 400)
        assert_error(scim.get("/Users", params={"filter": "userName eq"}), 400, "invalidFilter")
        assert_error(scim.get("/Users", params={"filter": 'shoeSize eq "44"'}), 400, "invalidFilter")
        assert_error(scim.patch(f"/Users/{user['id']}", content=b"]"), 400, "invalidSyntax")
        assert_error(scim.patch(f"/Users/{user['id']}", json=patch({"op": "frobnicate", "path": "active"})), 400)
        assert_error(
            scim.patch(f"/Users/{user['id']}", json=patch({"op": "replace", "path": "shoeSize", "value": 1})), 400
        )
        assert_error(
            scim.patch(
                f"/Users/{user['id']}", json={"Operations": [{"op": "replace", "path": "active", "value": False}]}
            ),
            400,
        )
        assert_error(
            scim.put(f"/Users/{user['id']}", json={"schemas": [USER], "userName": name, "id": user["id"], "bogus": 1}),
            400,
        )
        assert_error(scim.put("/Users/does-not-exist", json={"schemas": [USER], "userName": "ghost"}), 404)
        assert_error(
            scim.patch("/Users/does-not-exist", json=patch({"op": "replace", "path": "active", "value": False})), 404
        )
        assert_error(scim.get("/Widgets"), 404)
        after = scim.get(f"/Users/{user['id']}").json()
        assert after == before
        assert scim.get("/Users", params={"filter": 'userName eq "x"'}).json()["totalResults"] == 0


@pytest.mark.parametrize("header", [None, "Bearer wrong-token-" + "w" * 32, "Basic Zm9vOmJhcg==", "Bearer"])
def test_missing_or_wrong_token_is_401_and_changes_nothing(scim_broker: Broker, header: str | None) -> None:
    headers = {"content-type": "application/scim+json"} | ({"authorization": header} if header else {})
    with httpx.Client(base_url=f"{scim_broker.base}/scim/v2/demo-ldap", headers=headers, timeout=10) as anonymous:
        name = f"intruder-{secrets.token_hex(4)}"
        response = anonymous.post("/Users", json=entra_user(name))
        assert_error(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert_error(anonymous.get("/Users"), 401)
        assert_error(anonymous.get("/ServiceProviderConfig"), 401)
    with scim_client(scim_broker) as scim:
        assert scim.get("/Users", params={"filter": f'userName eq "{name}"'}).json()["totalResults"] == 0
        assert_error(scim.get("/Users/../../other-tenant/Users"), 401)  # another tenant: this token opens nothing
    with httpx.Client(base_url=f"{scim_broker.base}/scim/v2/unknown", timeout=10) as other:
        assert_error(other.get("/Users", headers={"authorization": "Bearer " + "x" * 40}), 401)


# -- effects on grants ----------------------------------------------------------------------------
@contextmanager
def directory_user(slapd: Slapd, groups: tuple[str, ...]) -> Iterator[str]:
    """A throwaway user of the demo directory in ``groups`` (password ``pw-<uid>``)."""
    uid = f"scim{secrets.token_hex(4)}"
    connection = slapd.admin_connection()
    dn = slapd.directory.user_dn(uid)
    assert connection.add(dn, ["inetOrgPerson"], {"uid": uid, "cn": uid, "sn": uid, "userPassword": ssha(f"pw-{uid}")})
    for group in groups:
        assert connection.modify(slapd.directory.group_dn(group), {"member": [(ldap3.MODIFY_ADD, [dn])]})
    try:
        yield uid
    finally:
        connection.delete(dn)  # memberof-refint drops the memberships
        connection.unbind()


def access_subject(access_token: str) -> str:
    payload = access_token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims["sub"])


async def test_a_subject_template_matches_by_external_id(
    broker_factory: BrokerFactory, slapd: Slapd, redis_server: RedisServer
) -> None:
    """With ``subject: "{externalId}"`` the user is found by the provider's own id, whatever the
    SCIM userName says (here one the directory never heard of)."""
    extra = SCIM_CONFIG + '      subject: "{externalId}"\n'
    with broker_factory(extra=extra) as broker, directory_user(slapd, ("mcp-readers",)) as uid:
        _, tokens = await asyncio.to_thread(tokens_for, broker, uid, password=f"pw-{uid}")
        local = access_subject(tokens["access_token"]).removeprefix("demo-ldap:")
        async with verifier_for(broker, redis_server) as verifier:
            async with httpx.AsyncClient(
                base_url=f"{broker.base}/scim/v2/demo-ldap", headers={"authorization": f"Bearer {SCIM_TOKEN}"}
            ) as scim:
                user = (await scim.post("/Users", json=entra_user("renamed@example.com", local))).json()
                answer = await scim.patch(
                    f"/Users/{user['id']}", json=patch({"op": "replace", "value": {"active": False}})
                )
                assert answer.status_code == 200, answer.text
            await refused_within(verifier, tokens["access_token"], bound=5.0)


@pytest.mark.parametrize("how", ["patch_active_string", "put_inactive", "delete"])
async def test_deactivated_user_loses_access(
    scim_broker: Broker, slapd: Slapd, redis_server: RedisServer, how: str
) -> None:
    with directory_user(slapd, ("mcp-readers",)) as uid:
        client, tokens = await asyncio.to_thread(tokens_for, scim_broker, uid, password=f"pw-{uid}")
        _, other = await asyncio.to_thread(tokens_for, scim_broker, "bob")
        async with verifier_for(scim_broker, redis_server) as verifier:
            assert await verifier.verify_token(tokens["access_token"]) is not None
            async with httpx.AsyncClient(
                base_url=f"{scim_broker.base}/scim/v2/demo-ldap",
                headers={"authorization": f"Bearer {SCIM_TOKEN}"},
            ) as scim:
                body = entra_user(uid.upper())  # userName matched case-insensitively
                user = (await scim.post("/Users", json=body)).json()
                assert await verifier.verify_token(tokens["access_token"]) is not None  # created: no effect
                if how == "patch_active_string":
                    answer = await scim.patch(
                        f"/Users/{user['id']}", json=patch({"op": "Replace", "path": "active", "value": "False"})
                    )
                elif how == "put_inactive":
                    answer = await scim.put(f"/Users/{user['id']}", json={**body, "active": False})
                else:
                    answer = await scim.delete(f"/Users/{user['id']}")
                assert answer.status_code in (200, 204), answer.text
            await refused_within(verifier, tokens["access_token"], bound=5.0)
            assert await verifier.verify_token(other["access_token"]) is not None  # bob untouched
        again = await asyncio.to_thread(refresh, scim_broker, client["client_id"], tokens["refresh_token"])
        assert again.status_code == 400
        assert again.json()["error"] == "invalid_grant"


async def test_removed_group_membership_reapplies_the_policy(
    scim_broker: Broker, slapd: Slapd, redis_server: RedisServer
) -> None:
    """IT takes the user out of mcp-writers: the directory changes, and the SCIM PATCH removing the
    member re-applies the policy at once. The grant (notes:write) would lose a scope: revoked."""
    with directory_user(slapd, ("mcp-readers", "mcp-writers")) as uid:
        _client, tokens = await asyncio.to_thread(tokens_for, scim_broker, uid, password=f"pw-{uid}")
        assert "notes:write" in tokens["scope"]
        async with verifier_for(scim_broker, redis_server) as verifier:
            async with httpx.AsyncClient(
                base_url=f"{scim_broker.base}/scim/v2/demo-ldap",
                headers={"authorization": f"Bearer {SCIM_TOKEN}"},
            ) as scim:
                user = (await scim.post("/Users", json=entra_user(uid))).json()
                writers = (
                    await scim.post(
                        "/Groups",
                        json={"schemas": [GROUP], "displayName": "mcp-writers", "members": [{"value": user["id"]}]},
                    )
                ).json()
                connection = slapd.admin_connection()
                assert connection.modify(
                    slapd.directory.group_dn("mcp-writers"),
                    {"member": [(ldap3.MODIFY_DELETE, [slapd.directory.user_dn(uid)])]},
                )
                connection.unbind()
                assert await verifier.verify_token(tokens["access_token"]) is not None
                removed = await scim.patch(
                    f"/Groups/{writers['id']}",
                    json=patch({"op": "Remove", "path": "members", "value": [{"value": user["id"]}]}),
                )
                assert removed.status_code == 200, removed.text
                await scim.delete(f"/Groups/{writers['id']}")
            await refused_within(verifier, tokens["access_token"], bound=5.0)
        # A new sign-in gets what the policy gives now: read only.
        _, fresh = await asyncio.to_thread(tokens_for, scim_broker, uid, password=f"pw-{uid}")
        assert fresh["scope"].split() == ["notes:read"]
