"""The provider's own LDAP encoding: filters byte for byte as ldap3 encodes them, injection stays
data, malformed filters and answers are refused."""

from __future__ import annotations

import pytest
from ldap3.operation.search import compile_filter as ldap3_compile
from ldap3.operation.search import parse_filter
from ldap3.utils.conv import escape_filter_chars
from pyasn1.codec.ber import encoder
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


@pytest.mark.parametrize("text", FILTERS)
def test_filters_encode_as_ldap3_encodes_them(text: str) -> None:
    theirs = encoder.encode(ldap3_compile(parse_filter(text, None, True, True, None, False).elements[0]))
    assert wire.compile_filter(text) == theirs


def test_dn_attributes_is_true_as_ldap_requires() -> None:
    # RFC 4511 §5.1: BOOLEAN TRUE is 0xFF (pyasn1's BER, under ldap3, sends 0x01).
    encoded = wire.compile_filter("(cn:dn:2.4.6.8.10:=x)")
    assert encoded.endswith(b"\x84\x01\xff")
    assert wire.compile_filter("(:dn:2.4.6.8.10:=x)").endswith(b"\x84\x01\xff")


@pytest.mark.parametrize("username", ["*", "*)(uid=*", "admin)(|(a=*", "alice)(uid=bob", "a\\", "\x00"])
def test_an_escaped_username_stays_one_equality_value(username: str) -> None:
    encoded = wire.compile_filter(f"(&(objectClass=inetOrgPerson)(uid={escape_filter_chars(username)}))")
    class_is_person = tlv(0xA3, tlv(0x04, b"objectClass") + tlv(0x04, b"inetOrgPerson"))
    assert encoded == tlv(0xA0, class_is_person + tlv(0xA3, tlv(0x04, b"uid") + tlv(0x04, username.encode())))


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
        "(uid=a)x",
    ],
)
def test_malformed_filters_are_refused(text: str) -> None:
    with pytest.raises(wire.FilterError):
        wire.compile_filter(text)


def test_a_filter_without_its_parentheses_gets_them() -> None:
    assert wire.compile_filter("uid=alice") == wire.compile_filter("(uid=alice)")


def test_the_configuration_refuses_a_broken_filter() -> None:
    common = {"id": "corp", "display_name": "Corp", "urls": ["ldap://x"], "user_base_dn": "dc=x"}
    with pytest.raises(ValidationError, match="not an RFC 4515 search filter"):
        LdapProviderConfig(**common, user_filter="(&(uid={username})")
    with pytest.raises(ValidationError, match="not an RFC 4515 search filter"):
        LdapProviderConfig(**common, group_filter="member={dn})")


def tlv(tag: int, content: bytes) -> bytes:
    length = bytes((len(content),)) if len(content) < 0x80 else b"\x82" + len(content).to_bytes(2, "big")
    return bytes((tag,)) + length + content


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
