"""LDAP on the event loop: many operations in flight on one connection, no thread held, broken
connections failing at once, and nested groups in one search where the directory says it can."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Awaitable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from broker.devstack import Slapd
from providers.base import Identity, InvalidCredentials, UpstreamUnavailable
from providers.ldap import wire
from providers.ldap.connection import open_connection
from providers.ldap.provider import LdapProvider
from providers.ldap.resolver import Resolver
from tests.providers.ldap.test_outages import until
from tests.providers.ldap.test_provider import BASE, NESTED, config_for


async def test_many_lookups_share_one_connection_with_operations_in_flight(slapd: Slapd) -> None:
    ldap = LdapProvider(config_for(slapd, pool_size=1))
    try:
        await ldap.lookup("alice")  # the service connection
        threads = threading.active_count()
        lookups = asyncio.gather(*(ldap.lookup(name) for name in ["alice", "bob", "carol"] * 10))
        most = 0
        while not lookups.done():
            most = max(most, ldap._idle[0].conn.in_flight)
            await asyncio.sleep(0)
        assert [i.username for i in await lookups] == ["alice", "bob", "carol"] * 10
        assert most > 1  # several searches were out at once on the one connection
        assert len(ldap._idle) == 1
        assert threading.active_count() == threads  # no thread of any pool was started or held
    finally:
        await ldap.aclose()


async def test_operations_beyond_the_limit_wait_their_turn(slapd: Slapd) -> None:
    ldap = LdapProvider(config_for(slapd, pool_size=2, operations_per_connection=2))
    try:
        found = await asyncio.gather(*(ldap.lookup("bob") for _ in range(12)))
        assert {i.username for i in found} == {"bob"}
        assert ldap._slots.busy == 0
        assert 1 <= len(ldap._idle) <= 2
    finally:
        await ldap.aclose()


async def test_a_connection_the_directory_dropped_is_replaced(slapd: Slapd) -> None:
    ldap = LdapProvider(config_for(slapd, pool_size=1))
    try:
        await ldap.lookup("alice")
        dropped = ldap._idle[0].conn
        dropped.abort()  # as a directory restart or an idle time-out would
        assert (await ldap.lookup("bob")).username == "bob"
        assert [link.conn for link in ldap._idle] != [dropped]
        assert not ldap._failed_at  # a dropped idle connection is no failed server
    finally:
        await ldap.aclose()


async def test_sign_in_connections_are_kept_anonymous_and_used_again(slapd: Slapd) -> None:
    alice = f"uid=alice,ou=people,{BASE}"
    readable = "(objectClass=*)"
    control = await open_connection(slapd.url, None, 2, Resolver("test"))
    assert (await control.bind(alice, b"demo-alice", 2)).code == 0
    assert len((await control.search(alice, wire.BASE, readable, ("uid",), 2))[0]) == 1  # alice reads herself
    control.close()
    ldap = LdapProvider(config_for(slapd))
    try:
        await ldap.login("alice", "demo-alice")
        await until(lambda: bool(ldap._binders))  # made anonymous again off the sign-in's path
        kept = ldap._binders[0].conn
        assert (await kept.search(alice, wire.BASE, readable, ("uid",), 2))[0] == []  # no longer alice
        with pytest.raises(InvalidCredentials):
            await ldap.login("alice", "wrong")
        await until(lambda: bool(ldap._binders))
        assert [link.conn for link in ldap._binders] == [kept]  # the same connection, bound again
        assert len(ldap._idle) == 1  # searches never run on it: the service connection is apart
    finally:
        await ldap.aclose()
    assert ldap._binders == []


@pytest.fixture
async def hangs_up() -> tuple[str, list[float]]:
    """A server that reads the first request, waits a moment, then closes the connection."""
    closed: list[float] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        await asyncio.sleep(0.2)
        closed.append(time.monotonic())
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"ldap://127.0.0.1:{port}", closed


async def test_operations_on_a_connection_that_breaks_fail_at_once_not_at_their_timeout(
    slapd: Slapd, hangs_up: tuple[str, list[float]]
) -> None:
    url, closed = hangs_up
    ldap = LdapProvider(config_for(slapd, urls=[url], operation_timeout=5, failure_backoff=0))
    try:
        outcomes = await asyncio.gather(*(ldap.lookup("alice") for _ in range(5)), return_exceptions=True)
        assert all(isinstance(o, UpstreamUnavailable) for o in outcomes), outcomes
        assert "closed the connection" in str(outcomes[0])
        assert time.monotonic() - closed[0] < 1.0  # answered when the server hung up, not after 5 s
    finally:
        await ldap.aclose()


async def test_a_host_name_is_resolved_without_the_default_executor(slapd: Slapd) -> None:
    # localhost may be ::1 first, where slapd does not listen: the next address is tried.
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
    release = threading.Event()
    held = asyncio.ensure_future(asyncio.to_thread(release.wait, 10))  # the default executor's one thread
    await asyncio.sleep(0.05)
    ldap = LdapProvider(config_for(slapd, urls=[f"ldap://localhost:{slapd.port}"], request_deadline=3))
    try:
        start = time.monotonic()
        assert (await ldap.lookup("alice")).username == "alice"
        assert time.monotonic() - start < 2.0
    finally:
        release.set()
        await held
        await ldap.aclose()


async def test_a_name_that_does_not_resolve_says_so(slapd: Slapd) -> None:
    ldap = LdapProvider(config_for(slapd, urls=["ldap://no-such-host.invalid:389"], request_deadline=5))
    try:
        with pytest.raises(UpstreamUnavailable, match=r"cannot resolve no-such-host\.invalid"):
            await ldap.lookup("alice")
    finally:
        await ldap.aclose()


def test_a_provider_used_from_a_second_event_loop_starts_afresh(slapd: Slapd) -> None:
    # Connections belong to the loop that opened them (as with two ``asyncio.run`` calls).
    ldap = LdapProvider(config_for(slapd))
    assert asyncio.run(ldap.lookup("alice")).username == "alice"
    assert asyncio.run(ldap.lookup("bob")).username == "bob"
    asyncio.run(ldap.aclose())


# The root DSE of Active Directory lists its capabilities (MS-ADTS 3.1.1.3.4.3); slapd can be made
# to say the same. slapd has no LDAP_MATCHING_RULE_IN_CHAIN: a filter with it matches nothing
# there, so what the provider finds shows which way it took.
AD_ROOT_DSE_SCHEMA = """
attributetype ( 1.3.6.1.4.1.4203.666.11.99.3 NAME 'supportedCapabilities'
  EQUALITY objectIdentifierMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.38 )
rootDSE {ldif}
"""


@pytest.fixture(scope="module")
def says_it_is_ad(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    state = tmp_path_factory.mktemp("ad-root-dse")
    (state / "root.ldif").write_text("dn:\nsupportedCapabilities: 1.2.840.113556.1.4.800\n")
    (state / "ad.schema").write_text(AD_ROOT_DSE_SCHEMA.format(ldif=state / "root.ldif"))
    server = Slapd(state, NESTED, schemas=(state / "ad.schema",)).start()
    yield server
    server.stop()


async def test_nested_groups_in_one_search_where_the_root_dse_says_active_directory(says_it_is_ad: Slapd) -> None:
    direct = {f"cn=mcp-readers,ou=groups,{BASE}", f"cn=mcp-writers,ou=groups,{BASE}"}
    asked = LdapProvider(config_for(says_it_is_ad))  # active_directory_in_chain unset: ask the directory
    walk = LdapProvider(config_for(says_it_is_ad, active_directory_in_chain=False))
    chain = LdapProvider(config_for(says_it_is_ad, active_directory_in_chain=True))
    try:
        # One in-chain search (which slapd cannot answer), the direct groups from memberOf kept:
        assert (await asked.lookup("alice")).groups == direct
        assert asked._in_chain is True
        # The walk, one search per level, finds staff and everyone above mcp-writers:
        assert set((await walk.lookup("alice")).group_names.values()) >= {"staff", "everyone"}
        assert walk._in_chain is False
        # Configured, the in-chain search alone gives the groups, and memberOf is not even asked:
        assert (await chain.lookup("alice")).groups == frozenset()
        assert "memberOf" not in chain._user_attributes[True]
    finally:
        for provider in (asked, walk, chain):
            await provider.aclose()


async def most_in_flight(ldap: LdapProvider, work: Awaitable[Identity]) -> tuple[Identity, int]:
    """The outcome of ``work``, and the most operations it had in flight at once."""
    task = asyncio.ensure_future(work)
    most = 0
    while not task.done():
        most = max(most, sum(link.conn.in_flight for link in ldap._idle))
        await asyncio.sleep(0)
    return await task, most


async def test_an_active_directory_refresh_asks_the_user_and_the_groups_side_by_side(says_it_is_ad: Slapd) -> None:
    ldap = LdapProvider(config_for(says_it_is_ad, pool_size=1))
    try:
        alice = await ldap.login("alice", "demo-alice")
        fresh, most = await most_in_flight(ldap, ldap.refresh(alice))
        assert most == 2  # the user search and the in-chain search of the DN she signed in with
        assert (fresh.subject, fresh.groups, fresh.private) == (alice.subject, alice.groups, alice.private)
        # Without the DN (a broker that keeps no private data), one after the other:
        bare = dataclasses.replace(alice, private={})
        fresh, most = await most_in_flight(ldap, ldap.refresh(bare))
        assert most == 1
        assert fresh.groups == alice.groups
    finally:
        await ldap.aclose()


async def test_a_directory_that_is_not_active_directory_gets_the_walk(slapd: Slapd) -> None:
    ldap = LdapProvider(config_for(slapd))
    try:
        assert set((await ldap.lookup("alice")).group_names.values()) == {"mcp-readers", "mcp-writers"}
        assert ldap._in_chain is False
    finally:
        await ldap.aclose()
