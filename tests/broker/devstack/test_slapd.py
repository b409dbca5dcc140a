"""The demo directory: a real slapd with the memberof overlay, seeded with the demo users."""

from __future__ import annotations

import ldap3

from broker.devstack import Slapd


def test_demo_users_and_groups(slapd: Slapd) -> None:
    server = ldap3.Server(slapd.url)
    service = ldap3.Connection(server, slapd.service_dn, slapd.service_password, auto_bind=True)
    service.search("ou=people,dc=demo,dc=local", "(objectClass=inetOrgPerson)", attributes=["uid", "memberOf"])
    groups = {str(e.uid): sorted(str(g).split(",")[0].removeprefix("cn=") for g in e.memberOf) for e in service.entries}
    assert groups == {"alice": ["mcp-readers", "mcp-writers"], "bob": ["mcp-readers"], "carol": []}
    service.unbind()


def test_users_bind_with_their_demo_passwords(slapd: Slapd) -> None:
    server = ldap3.Server(slapd.url)
    for uid in ("alice", "bob", "carol"):
        conn = ldap3.Connection(server, f"uid={uid},ou=people,dc=demo,dc=local", f"demo-{uid}")
        assert conn.bind(), uid
        conn.unbind()
    wrong = ldap3.Connection(server, "uid=alice,ou=people,dc=demo,dc=local", "demo-bob")
    assert not wrong.bind()


def test_passwords_are_stored_hashed_and_unreadable(slapd: Slapd) -> None:
    admin = slapd.admin_connection()
    admin.search("uid=alice,ou=people,dc=demo,dc=local", "(objectClass=*)", attributes=["userPassword"])
    assert admin.entries[0].userPassword.value.startswith(b"{SSHA}")
    admin.unbind()
    anonymous = ldap3.Connection(ldap3.Server(slapd.url), auto_bind=True)
    anonymous.search("ou=people,dc=demo,dc=local", "(uid=alice)", attributes=["userPassword"])
    assert anonymous.entries == []
