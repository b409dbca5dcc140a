"""The LDAP provider against a real slapd: search-then-bind, groups, outcomes, TLS, failover."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ldap3
import pytest

from broker.devstack import DemoDirectory, Slapd, free_port
from providers.base import AccountDisabled, InvalidCredentials, UpstreamUnavailable, qualified_subject
from providers.ldap.config import LdapProviderConfig
from providers.ldap.provider import LdapProvider
from tests.tls import make_ca

BASE = "dc=demo,dc=local"


def config_for(slapd: Slapd, **over: Any) -> LdapProviderConfig:
    values: dict[str, Any] = {
        "id": "corp",
        "display_name": "Corp",
        "urls": [slapd.url],
        "bind_dn": slapd.service_dn,
        "bind_password": slapd.service_password,
        "user_base_dn": f"ou=people,{BASE}",
        "group_base_dn": f"ou=groups,{BASE}",
    }
    values.update(over)
    return LdapProviderConfig(**values)


@pytest.fixture
async def provider(slapd: Slapd) -> Any:
    ldap = LdapProvider(config_for(slapd))
    yield ldap
    await ldap.aclose()


async def test_alice_logs_in_with_groups(provider: LdapProvider) -> None:
    identity = await provider.login("alice", "demo-alice")
    assert identity.username == "alice"
    assert identity.username_is_unique  # the search refuses a name that matches two entries
    assert identity.email == "alice@demo.local"
    assert identity.display_name == "Alice Example"
    assert identity.subject.startswith("corp:")  # qualified_subject(provider id, entryUUID)
    assert len(identity.subject) == len("corp:") + 36
    assert identity.groups == {f"cn=mcp-readers,ou=groups,{BASE}", f"cn=mcp-writers,ou=groups,{BASE}"}
    assert sorted(identity.group_names.values()) == ["mcp-readers", "mcp-writers"]
    assert identity.private == {"dn": f"uid=alice,ou=people,{BASE}"}


async def test_carol_has_no_groups(provider: LdapProvider) -> None:
    assert (await provider.login("carol", "demo-carol")).groups == frozenset()


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("alice", "wrong"),
        ("nobody", "demo-alice"),
        ("alice", ""),  # an empty password is an anonymous bind that many servers accept
        ("*", "demo-alice"),
        ("*)(uid=*", "x"),
        ("admin)(|(a=*", "x"),
        ("alice)(uid=bob", "demo-bob"),
        ("a" * 200, "x"),
        ("alice\x00", "demo-alice"),
    ],
)
async def test_refused_logins_all_look_alike(provider: LdapProvider, username: str, password: str) -> None:
    with pytest.raises(InvalidCredentials) as caught:
        await provider.login(username, password)
    assert caught.value.public == "The username or password is incorrect."


async def test_ambiguous_search_result_is_refused(slapd: Slapd) -> None:
    ldap = LdapProvider(config_for(slapd, user_filter="(&(objectClass=inetOrgPerson)(|(uid={username})(uid=bob)))"))
    with pytest.raises(InvalidCredentials):
        await ldap.login("alice", "demo-alice")
    await ldap.aclose()


async def test_directory_down_is_not_a_wrong_password(slapd: Slapd) -> None:
    ldap = LdapProvider(config_for(slapd, urls=[f"ldap://127.0.0.1:{free_port()}"], connect_timeout=1))
    with pytest.raises(UpstreamUnavailable) as caught:
        await ldap.login("alice", "demo-alice")
    assert "try again" in caught.value.public
    await ldap.aclose()


async def test_searches_run_side_by_side_on_a_bounded_pool_of_connections(slapd: Slapd) -> None:
    ldap = LdapProvider(config_for(slapd, pool_size=3))
    found = await asyncio.gather(*(ldap.lookup(name) for name in ["alice", "bob", "carol"] * 8))
    assert [i.username for i in found] == ["alice", "bob", "carol"] * 8
    assert 1 <= len(ldap._idle) <= 3  # kept for the next searches, never more than the pool
    await ldap.aclose()
    assert ldap._idle == []


async def test_a_pool_that_stays_busy_is_unavailable_not_a_wrong_password(slapd: Slapd) -> None:
    ldap = LdapProvider(config_for(slapd, pool_size=1, operations_per_connection=1, request_deadline=0.3))
    await ldap._slots.acquire()  # one long search holds the directory's only place
    try:
        with pytest.raises(UpstreamUnavailable, match="directory connections stayed busy"):
            await ldap.lookup("alice")
    finally:
        ldap._slots.release()
    assert (await ldap.lookup("alice")).username == "alice"
    await ldap.aclose()


async def test_bad_service_account_is_unavailable_not_wrong_password(slapd: Slapd) -> None:
    ldap = LdapProvider(config_for(slapd, bind_password="not-the-password"))
    with pytest.raises(UpstreamUnavailable):
        await ldap.login("alice", "demo-alice")
    await ldap.aclose()


async def test_failover_to_the_second_server(slapd: Slapd) -> None:
    ldap = LdapProvider(config_for(slapd, urls=[f"ldap://127.0.0.1:{free_port()}", slapd.url], connect_timeout=1))
    assert (await ldap.login("bob", "demo-bob")).username == "bob"
    await ldap.aclose()


async def test_lookup_without_password(provider: LdapProvider) -> None:
    bob = await provider.lookup("bob")
    assert bob.group_names
    assert set(bob.group_names.values()) == {"mcp-readers"}
    with pytest.raises(InvalidCredentials):
        await provider.lookup("nobody")


# Active Directory's account-control attributes, with AD's own OIDs, for a real slapd to serve.
AD_SCHEMA = """
attributetype ( 1.2.840.113556.1.4.8 NAME 'userAccountControl'
  EQUALITY integerMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
attributetype ( 1.2.840.113556.1.4.1460 NAME 'msDS-User-Account-Control-Computed'
  EQUALITY integerMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
objectclass ( 1.3.6.1.4.1.4203.666.11.99.1 NAME 'adAccountControl' AUXILIARY
  MAY ( userAccountControl $ msDS-User-Account-Control-Computed ) )
"""


@pytest.fixture(scope="module")
def ad_like_slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    state = tmp_path_factory.mktemp("ad-like-slapd")
    (state / "ad.schema").write_text(AD_SCHEMA)
    server = Slapd(state, schemas=(state / "ad.schema",)).start()
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("attribute", "value"),
    [("userAccountControl", "514"), ("msDS-User-Account-Control-Computed", "16")],  # disabled; locked out
)
async def test_an_ad_account_disabled_or_locked_is_refused_at_sign_in_and_at_refresh(
    ad_like_slapd: Slapd, attribute: str, value: str
) -> None:
    admin = ad_like_slapd.admin_connection()
    alice = f"uid=alice,ou=people,{BASE}"
    assert admin.modify(alice, {"objectClass": [(ldap3.MODIFY_ADD, ["adAccountControl"])]}), admin.result
    ldap = LdapProvider(config_for(ad_like_slapd))
    try:
        assert admin.modify(alice, {"userAccountControl": [(ldap3.MODIFY_REPLACE, ["512"])]}), admin.result
        identity = await ldap.login("alice", "demo-alice")  # a normal account
        assert admin.modify(alice, {attribute: [(ldap3.MODIFY_REPLACE, [value])]}), admin.result
        with pytest.raises(AccountDisabled):
            await ldap.login("alice", "demo-alice")
        with pytest.raises(AccountDisabled):
            await ldap.refresh(identity)
    finally:
        for name in ("userAccountControl", "msDS-User-Account-Control-Computed"):  # each may be absent
            admin.modify(alice, {name: [(ldap3.MODIFY_DELETE, [])]})
        assert admin.modify(alice, {"objectClass": [(ldap3.MODIFY_DELETE, ["adAccountControl"])]}), admin.result
        admin.unbind()
        await ldap.aclose()


def test_locked_account_markers() -> None:
    # As ldap3 returns them without a schema: text.
    assert LdapProvider._locked({"attributes": {"userAccountControl": ["514"]}})  # AD: ACCOUNTDISABLE
    assert LdapProvider._locked({"attributes": {"userAccountControl": "528"}})  # AD: LOCKOUT
    assert LdapProvider._locked({"attributes": {"msDS-User-Account-Control-Computed": ["16"]}})
    assert not LdapProvider._locked({"attributes": {"userAccountControl": ["512"]}})
    assert not LdapProvider._locked({"attributes": {"userAccountControl": ["not a number"]}})
    assert LdapProvider._locked({"attributes": {"pwdAccountLockedTime": ["000001010000Z"]}})  # OpenLDAP ppolicy
    assert not LdapProvider._locked({"attributes": {}})


# -- a directory of our own for nesting, mutation and TLS ----------------------------------------

NESTED = DemoDirectory(
    extra_groups={
        # staff ⊃ mcp-writers ⊃ alice; a cycle between loop-a and loop-b that contains bob
        "staff": (f"cn=mcp-writers,ou=groups,{BASE}",),
        "everyone": (f"cn=staff,ou=groups,{BASE}",),
        "loop-a": (f"uid=bob,ou=people,{BASE}", f"cn=loop-b,ou=groups,{BASE}"),
        "loop-b": (f"cn=loop-a,ou=groups,{BASE}",),
    }
)


@pytest.fixture(scope="module")
def tls_slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Slapd, Path]]:
    folder = tmp_path_factory.mktemp("ldap-tls")
    ca = make_ca(folder)
    cert, key = ca.issue(folder, hosts=["127.0.0.1", "localhost"])
    server = Slapd(folder, NESTED, tls=(cert, key)).start()
    yield server, ca.cert_path
    server.stop()


async def test_nested_groups_with_cycle_guard(tls_slapd: tuple[Slapd, Path]) -> None:
    slapd, _ = tls_slapd
    ldap = LdapProvider(config_for(slapd))
    alice = await ldap.login("alice", "demo-alice")
    assert set(alice.group_names.values()) >= {"mcp-readers", "mcp-writers", "staff", "everyone"}
    bob = await ldap.login("bob", "demo-bob")
    assert {"loop-a", "loop-b", "mcp-readers"} <= set(bob.group_names.values())
    shallow = LdapProvider(config_for(slapd, nested_depth=1))
    assert "everyone" not in set((await shallow.login("alice", "demo-alice")).group_names.values())
    flat = LdapProvider(config_for(slapd, nested_groups=False))
    assert set((await flat.login("alice", "demo-alice")).group_names.values()) == {"mcp-readers", "mcp-writers"}
    for provider in (ldap, shallow, flat):
        await provider.aclose()


async def test_groups_by_search_when_memberof_is_not_used(tls_slapd: tuple[Slapd, Path]) -> None:
    slapd, _ = tls_slapd
    ldap = LdapProvider(config_for(slapd, use_member_of=False, nested_groups=False))
    assert set((await ldap.login("alice", "demo-alice")).group_names.values()) == {"mcp-readers", "mcp-writers"}
    await ldap.aclose()


async def test_ldaps_with_the_test_ca(tls_slapd: tuple[Slapd, Path]) -> None:
    slapd, ca = tls_slapd
    ldap = LdapProvider(config_for(slapd, urls=[f"ldaps://127.0.0.1:{slapd.ldaps_port}"], ca_file=str(ca)))
    assert (await ldap.login("alice", "demo-alice")).username == "alice"
    await ldap.aclose()


async def test_starttls_with_the_test_ca(tls_slapd: tuple[Slapd, Path]) -> None:
    slapd, ca = tls_slapd
    ldap = LdapProvider(config_for(slapd, start_tls=True, ca_file=str(ca)))
    assert (await ldap.login("bob", "demo-bob")).username == "bob"
    await ldap.aclose()


async def test_starttls_follows_failover_to_a_plain_url(tls_slapd: tuple[Slapd, Path]) -> None:
    slapd, ca = tls_slapd
    dead = f"ldaps://127.0.0.1:{free_port()}"  # the first server is down: the pool moves to ldap://
    ldap = LdapProvider(config_for(slapd, urls=[dead, slapd.url], start_tls=True, ca_file=str(ca), connect_timeout=1))
    assert (await ldap.login("bob", "demo-bob")).username == "bob"
    assert [link.conn.tls_started for link in ldap._idle] == [True]  # the service connection, at least, ran StartTLS
    await ldap.aclose()


async def test_a_server_that_cannot_starttls_gets_no_password(slapd: Slapd) -> None:
    ldap = LdapProvider(config_for(slapd, start_tls=True))  # the session's slapd has no TLS
    with pytest.raises(UpstreamUnavailable, match="StartTLS failed"):
        await ldap.login("alice", "demo-alice")
    await ldap.aclose()


async def test_connections_are_not_kept_after_use(slapd: Slapd) -> None:
    # ldap3's server pool remembered every connection made through it (password included):
    # after many sign-ins only the idle service connections remain, and no user's connection.
    ldap = LdapProvider(config_for(slapd))
    for n in range(20):
        password = "demo-alice" if n % 2 else "wrong"
        with contextlib.suppress(InvalidCredentials):
            await ldap.login("alice", password)
    gc.collect()
    alive = [o for o in gc.get_objects() if isinstance(o, ldap3.Connection) and o.user and "alice" in o.user]
    assert alive == []
    assert len(ldap._idle) <= ldap.config.pool_size
    await ldap.aclose()
    assert ldap._idle == []


async def test_tls_verification_is_on_by_default(tls_slapd: tuple[Slapd, Path]) -> None:
    slapd, _ = tls_slapd
    ldap = LdapProvider(config_for(slapd, urls=[f"ldaps://127.0.0.1:{slapd.ldaps_port}"], connect_timeout=2))
    with pytest.raises(UpstreamUnavailable):  # the test CA is not trusted without ca_file
        await ldap.login("alice", "demo-alice")
    await ldap.aclose()


async def test_refresh_sees_group_changes_and_deletion(tls_slapd: tuple[Slapd, Path]) -> None:
    slapd, _ = tls_slapd
    ldap = LdapProvider(config_for(slapd))
    carol = await ldap.login("carol", "demo-carol")
    admin = slapd.admin_connection()
    group = f"cn=mcp-readers,ou=groups,{BASE}"
    carol_dn = f"uid=carol,ou=people,{BASE}"
    try:
        admin.modify(group, {"member": [(ldap3.MODIFY_ADD, [carol_dn])]})
        assert "mcp-readers" in set((await ldap.refresh(carol)).group_names.values())
        admin.modify(group, {"member": [(ldap3.MODIFY_DELETE, [carol_dn])]})
        assert "mcp-readers" not in set((await ldap.refresh(carol)).group_names.values())
        admin.delete(carol_dn)
        with pytest.raises(InvalidCredentials):
            await ldap.refresh(carol)
    finally:
        admin.unbind()
        await ldap.aclose()


async def test_two_providers_on_one_directory_give_two_subjects(slapd: Slapd) -> None:
    # One rule for every provider: "{provider id}:{local id}", so grants never mix between them.
    first, second = LdapProvider(config_for(slapd)), LdapProvider(config_for(slapd, id="corp-2"))
    try:
        one, two = await first.login("alice", "demo-alice"), await second.login("alice", "demo-alice")
        assert one.subject != two.subject
        assert one.subject == qualified_subject("corp", one.subject.removeprefix("corp:"))
        assert two.subject == "corp-2:" + one.subject.removeprefix("corp:")
        assert (await first.refresh(one)).subject == one.subject
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_grant_from_before_the_subject_rule_ends_at_its_refresh(provider: LdapProvider) -> None:
    alice = await provider.login("alice", "demo-alice")
    old = dataclasses.replace(alice, subject=alice.subject.removeprefix("corp:"))  # the raw entryUUID
    with pytest.raises(InvalidCredentials, match="replaced by another account"):
        await provider.refresh(old)


async def test_a_starttls_certificate_failure_says_so(tls_slapd: tuple[Slapd, Path]) -> None:
    slapd, _ = tls_slapd
    ldap = LdapProvider(config_for(slapd, start_tls=True))  # the test CA is not trusted without ca_file
    try:
        with pytest.raises(UpstreamUnavailable, match=r"StartTLS failed: .*certificate verify failed"):
            await ldap.login("alice", "demo-alice")
    finally:
        await ldap.aclose()
