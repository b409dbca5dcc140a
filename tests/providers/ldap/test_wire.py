"""The LDAP messages through ldap3: every request the very bytes ldap3 sends (its envelope built
here around ldap3's encoded operation), injection stays data, filters RFC 4515 refuses are
refused (also those ldap3's parser lets through), malformed answers are refused."""

from __future__ import annotations

from typing import Any

import pytest
from ldap3 import ANONYMOUS, SIMPLE
from ldap3.operation.bind import bind_operation
from ldap3.operation.extended import extended_operation
from ldap3.operation.search import search_operation
from ldap3.operation.unbind import unbind_operation
from ldap3.protocol.rfc4511 import LDAPMessage, MessageID, ProtocolOp
from ldap3.utils.asn1 import encode
from ldap3.utils.conv import escape_filter_chars
from pydantic import ValidationError

from providers.ldap import wire
from providers.ldap.config import LdapProviderConfig

FILTERS = [
    "(&(objectClass=inetOrgPerson)(uid=alice))",
    "(|(member=cn=a,dc=x)(uniqueMember=cn=a,dc=x))",
    "(&(objectClass=user)(sAMAccountName=" + escape_filter_chars("a\\b*c(d)") + "))",
    "(member:1.2.840.113556.1.4.1941:=" + escape_filter_chars("CN=Joe (HR)*,DC=corp") + ")",
    "(cn:=x)",
    "(cn=*)",
    "(cn=a*b*c)",
    "(cn=*b*)",
    "(cn=a*)",
    "(cn=*a)",
    "(!(cn=a))",
    "(uidNumber>=5)",
    "(uidNumber<=5)",
    "(cn~=joe)",
    "(uid=\\2a\\28)",
    "(cn=Zoë Ünal)",
    "(userCertificate;binary=\\00\\ff)",
    "(2.5.4.3=x)",
    "(cn=" + "x" * 300 + ")",
]


BASE_DN = "ou=people,dc=example,dc=org"
ATTRIBUTES = ("uid", "cn", "mail", "memberOf")
MESSAGE_IDS = [1, 127, 128, 255, 256, 65535, 2**31 - 1]


def ldap3_sends(message_id: int, kind: str, operation: Any) -> bytes:
    """A whole message as ldap3 builds and encodes it (ldap3.strategy.base.BaseStrategy.send)."""
    message = LDAPMessage()
    message["messageID"] = MessageID(message_id)
    message["protocolOp"] = ProtocolOp().setComponentByName(kind, operation)
    return bytes(encode(message))


def ldap3_search(message_id: int, text: str) -> bytes:
    operation = search_operation(BASE_DN, text, wire.SUBTREE, 3, list(ATTRIBUTES), 1000, 0, False, False, False)
    return ldap3_sends(message_id, "searchRequest", operation)


@pytest.mark.parametrize("text", FILTERS)
def test_searches_are_the_bytes_ldap3_sends(text: str) -> None:
    wire.check_filter(text)
    for message_id in MESSAGE_IDS:
        assert wire.search_request(message_id, BASE_DN, wire.SUBTREE, text, ATTRIBUTES, 1000) == ldap3_search(
            message_id, text
        )


def test_a_search_longer_than_64_kib_is_the_bytes_ldap3_sends() -> None:
    text = "(|" + "".join(f"(member=cn=user{i:05},ou=people,dc=example,dc=org)" for i in range(1500)) + ")"
    request = wire.search_request(7, BASE_DN, wire.SUBTREE, text, ATTRIBUTES, 1000)
    assert len(request) > 65536
    assert request == ldap3_search(7, text)


@pytest.mark.parametrize("message_id", MESSAGE_IDS)
def test_binds_start_tls_and_unbind_are_the_bytes_ldap3_sends(message_id: int) -> None:
    dn = "uid=alice,ou=people,dc=example,dc=org"
    assert wire.bind_request(message_id, dn, "Zoë".encode()) == ldap3_sends(
        message_id, "bindRequest", bind_operation(3, SIMPLE, dn, "Zoë".encode())
    )
    assert wire.bind_request(message_id, "", b"") == ldap3_sends(
        message_id, "bindRequest", bind_operation(3, ANONYMOUS)
    )
    assert wire.start_tls_request(message_id) == ldap3_sends(
        message_id, "extendedReq", extended_operation(wire.START_TLS_OID)
    )
    assert wire.unbind_request(message_id) == ldap3_sends(message_id, "unbindRequest", unbind_operation())


def test_dn_attributes_is_true_as_ldap_requires() -> None:
    # RFC 4511 §5.1: BOOLEAN TRUE is 0xFF (ldap3's encoder sends it so; pyasn1's own sends 0x01).
    for text in ("(cn:dn:2.4.6.8.10:=x)", "(:dn:2.4.6.8.10:=x)"):
        assert wire.search_request(1, BASE_DN, wire.SUBTREE, text, ()).endswith(b"\x84\x01\xff" + tlv(0x30, b""))


@pytest.mark.parametrize("username", ["*", "*)(uid=*", "admin)(|(a=*", "alice)(uid=bob", "a\\", "\x00", "Zoë"])
def test_an_escaped_username_stays_one_equality_value(username: str) -> None:
    text = f"(&(objectClass=inetOrgPerson)(uid={escape_filter_chars(username)}))"
    wire.check_filter(text)
    request = wire.search_request(1, BASE_DN, wire.SUBTREE, text, ())
    class_is_person = tlv(0xA3, tlv(0x04, b"objectClass") + tlv(0x04, b"inetOrgPerson"))
    expected = tlv(0xA0, class_is_person + tlv(0xA3, tlv(0x04, b"uid") + tlv(0x04, username.encode())))
    assert request.endswith(expected + tlv(0x30, b""))


@pytest.mark.parametrize(
    "text",
    [
        "(uid=a)(uid=b)",
        "(uid=a",
        "uid=(a)",
        "(uid=a\\zz)",
        "(uid=a\\2)",
        "(=a)",
        "(&(uid=a)",
        "(u id=a)",
        "(uid=a\x00)",
        "(:=x)",
        "(cn:1.2:3.4:=x)",
        "(cn:1.2 3:=x)",
        "(cn=a*\\q*b)",
        "(uid=a)x",
        "(!(uid=a)(uid=b))",
    ],
)
def test_malformed_filters_are_refused(text: str) -> None:
    with pytest.raises(wire.FilterError):
        wire.check_filter(text)


@pytest.mark.parametrize("text", ["(uid=a)(uid=b)", "(uid=a", "(&(uid=a)", "(:=x)", "(uid=a)x"])
def test_a_search_with_a_filter_ldap3_cannot_parse_is_refused(text: str) -> None:
    with pytest.raises(wire.FilterError):
        wire.search_request(1, BASE_DN, wire.SUBTREE, text, ())


def test_a_filter_without_its_parentheses_gets_them() -> None:
    wire.check_filter("uid=alice")
    assert wire.search_request(1, BASE_DN, 2, "uid=alice", ()) == wire.search_request(1, BASE_DN, 2, "(uid=alice)", ())


def test_the_configuration_refuses_a_broken_filter() -> None:
    common = {"id": "corp", "display_name": "Corp", "urls": ["ldap://x"], "user_base_dn": "dc=x"}
    with pytest.raises(ValidationError, match="not an RFC 4515 search filter"):
        LdapProviderConfig(**common, user_filter="(&(uid={username})")
    with pytest.raises(ValidationError, match="not an RFC 4515 search filter"):
        LdapProviderConfig(**common, group_filter="member={dn})")
    with pytest.raises(ValidationError, match="not an RFC 4515 search filter"):
        LdapProviderConfig(**common, user_filter="(uid={username}\\)")


def tlv(tag: int, content: bytes) -> bytes:
    if len(content) < 0x80:
        return bytes((tag, len(content))) + content
    return bytes((tag,)) + b"\x82" + len(content).to_bytes(2, "big") + content


def test_an_entry_decodes_with_binary_values_kept_and_names_in_lower_case() -> None:
    guid = bytes.fromhex("b1d0f3c7e9a2ff004d2e8b7a9c0d1e2f")  # not UTF-8, as AD's objectGUID
    attributes = tlv(
        0x30,
        tlv(0x30, tlv(0x04, b"objectGUID") + tlv(0x31, tlv(0x04, guid)))
        + tlv(0x30, tlv(0x04, b"memberOf") + tlv(0x31, tlv(0x04, b"cn=a,dc=x") + tlv(0x04, "cn=é,dc=x".encode()))),
    )
    message = tlv(0x30, b"\x02\x01\x07" + tlv(0x64, tlv(0x04, b"cn=joe,dc=x") + attributes))
    assert wire.message_length(message) == len(message)
    message_id, entry = wire.decode(message)
    assert message_id == 7
    assert entry == wire.Entry("cn=joe,dc=x", {"objectguid": [guid], "memberof": ["cn=a,dc=x", "cn=é,dc=x"]})


def test_a_result_decodes_with_its_message() -> None:
    message = tlv(
        0x30, b"\x02\x01\x02" + tlv(0x61, b"\x0a\x01\x31" + tlv(0x04, b"") + tlv(0x04, b"80090308: data 533"))
    )
    assert wire.decode(message) == (2, wire.Result(49, "", "80090308: data 533"))
    assert wire.Result(49).description == "invalidCredentials"


def test_partial_oversized_and_foreign_messages() -> None:
    assert wire.message_length(b"\x30") is None
    assert wire.message_length(b"\x30\x84\x00") is None  # the length itself has not all arrived
    with pytest.raises(wire.ProtocolError):
        wire.message_length(b"\x30\x84\x7f\xff\xff\xff")  # 2 GiB: a broken or hostile server
    with pytest.raises(wire.ProtocolError):
        wire.message_length(b"HTTP/1.1 400 Bad Request\r\n")
    with pytest.raises(wire.ProtocolError):
        wire.decode(b"\x30\x05\x02\x01\x01\x65\x05")  # the result claims more than the message holds


def test_an_extended_response_keeps_its_name_and_value_and_references_are_skipped() -> None:
    response = tlv(
        0x78,
        b"\x0a\x01\x00" + tlv(0x04, b"") + tlv(0x04, b"") + tlv(0x8A, wire.START_TLS_OID.encode()) + tlv(0x8B, b"v"),
    )
    assert wire.decode(tlv(0x30, b"\x02\x01\x01" + response)) == (1, wire.Result(0, "", "", wire.START_TLS_OID, b"v"))
    reference = tlv(0x73, tlv(0x04, b"ldap://other/dc=x"))
    assert wire.decode(tlv(0x30, b"\x02\x01\x03" + reference)) == (3, None)


def test_a_result_code_ldap3_has_no_name_for() -> None:
    done = tlv(0x65, b"\x0a\x02\x10\x92" + tlv(0x04, b"") + tlv(0x04, b"vendor says no"))
    assert wire.decode(tlv(0x30, b"\x02\x01\x04" + done)) == (4, wire.Result(4242, "", "vendor says no"))
    assert wire.Result(4242).description == "result code 4242"


@pytest.mark.parametrize(
    "message",
    [
        b"\x30\x03\x04\x01\x41",  # no message ID
        b"\x30\x06\x02\x01\x01\x65\x01\x04",  # a result without its result code
        b"\x30\x08\x02\x01\x01\x64\x03\x04\x01\x41",  # an entry without its attributes
    ],
)
def test_malformed_answers_are_refused(message: bytes) -> None:
    assert wire.message_length(message) == len(message)
    with pytest.raises(wire.ProtocolError):
        wire.decode(message)
