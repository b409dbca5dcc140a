"""LDAPv3 on the wire through ldap3's own protocol code: the few messages the provider sends
(bind, search, StartTLS, unbind) and the answers it reads, for the asyncio transport in
``connection.py`` (ldap3's strategies block a thread per operation; its protocol code does not).

Requests are built by ldap3's operation functions (``bind_operation``, ``search_operation`` with
its RFC 4515 filter parser and compiler, ``extended_operation``, ``unbind_operation``) and BER
encoded with ldap3's encoder (pyasn1's, sending BOOLEAN TRUE as 0xFF as RFC 4511 §5.1 asks).
Answers are framed with ldap3's ``compute_ber_size`` and decoded with its fast decoder
(``decode_message_fast`` and the ``*_to_dict_fast`` helpers) into a ``Result`` or an
``Entry``. Attribute values are text when they are UTF-8 and bytes otherwise; attribute names are
lower-cased (names are case-insensitive, RFC 4512 §1.4).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ldap3 import ANONYMOUS, SIMPLE
from ldap3.core.exceptions import LDAPException
from ldap3.core.results import RESULT_CODES
from ldap3.operation.bind import bind_operation, bind_response_to_dict_fast
from ldap3.operation.extended import extended_operation, extended_response_to_dict_fast
from ldap3.operation.search import FilterNode, parse_filter, raw_attributes_to_dict_fast, search_operation
from ldap3.operation.unbind import unbind_operation
from ldap3.utils.asn1 import compute_ber_size, decode_message_fast, encode, ldap_result_to_dict_fast
from ldap3.utils.conv import to_unicode

BASE, ONE_LEVEL, SUBTREE = 0, 1, 2  # SearchRequest.scope
START_TLS_OID = "1.3.6.1.4.1.1466.20037"  # RFC 4511 §4.14
MAX_MESSAGE = 16 * 1024 * 1024  # a bigger answer is a broken (or hostile) server, not a user
_DEREF_ALWAYS = 3  # ldap3's default
# protocolOp numbers (RFC 4511 §4.2-4.12): a search's entry, and the answers with an LDAPResult
_BIND_RESPONSE, _SEARCH_ENTRY, _EXTENDED_RESPONSE = 1, 4, 24
_RESULTS = frozenset((_BIND_RESPONSE, 5, 7, 9, 11, 13, 15, _EXTENDED_RESPONSE))  # 5: searchResDone

# What ldap3's filter parser lets through but RFC 4515 does not: a blank or malformed attribute
# description (``(u id=x)``), a '\' not starting two hex digits (ldap3 sends it as it is), a NUL.
_NAME = re.compile(r"(?:[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)*)(?:;[A-Za-z0-9-]+)*")
_VALUE = re.compile(rb"(?:[^\\\x00]|\\[0-9A-Fa-f]{2})*")


class ProtocolError(Exception):
    """The server sent something that is not an LDAP message."""


class FilterError(ValueError):
    """A search filter that is not RFC 4515 text."""


@dataclass(frozen=True, slots=True)
class Result:
    """An LDAPResult (RFC 4511 §4.1.9), with an ExtendedResponse's name and value."""

    code: int
    matched_dn: str = ""
    message: str = ""
    name: str | None = None
    value: bytes | None = None

    @property
    def description(self) -> str:
        return str(RESULT_CODES.get(self.code, f"result code {self.code}"))


@dataclass(slots=True)
class Entry:
    """A SearchResultEntry: its DN and attributes (lower-cased names, values as ldap3 gives them)."""

    dn: str
    attributes: dict[str, list[str | bytes]] = field(default_factory=dict)


# -- requests -----------------------------------------------------------------------------------
def _message(message_id: int, operation: bytes) -> bytes:
    """The LDAPMessage envelope (SEQUENCE {messageID INTEGER, protocolOp}) around an operation
    ldap3 built and encoded: the very bytes ldap3 sends for the whole message (test_wire checks
    it). Built here so that a search is encoded once, not again for every message ID: wrapped
    in ldap3's LDAPMessage, which pyasn1 encodes whole each time, a lookup took 0.55-0.63 ms of
    CPU instead of 0.19-0.26 ms, a sign-in 1.0 ms instead of 0.7 (bench/ldap_pool.py)."""
    size = message_id.bit_length() // 8 + 1
    body = b"\x02" + bytes((size,)) + message_id.to_bytes(size, "big", signed=True) + operation
    return b"\x30" + _length(len(body)) + body


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    size = (n.bit_length() + 7) // 8
    return bytes((0x80 | size,)) + n.to_bytes(size, "big")


def bind_request(message_id: int, name: str, password: bytes) -> bytes:
    """A simple bind (RFC 4511 §4.2), the password already SASLprepped and encoded; an empty
    name and password make the anonymous bind."""
    if not name and not password:
        return _message(message_id, _ANONYMOUS_BIND)
    return _message(message_id, encode(bind_operation(3, SIMPLE, name, password)))


def search_request(
    message_id: int,
    base: str,
    scope: int,
    search_filter: str,
    attributes: tuple[str, ...],
    size_limit: int = 0,
    time_limit: int = 0,
) -> bytes:
    """A search (RFC 4511 §4.5.1) with ``search_filter`` as RFC 4515 text (outer parentheses
    optional); aliases are dereferenced always, as ldap3 does by default. Raises FilterError."""
    return _message(message_id, _search(base, scope, search_filter, attributes, size_limit, time_limit))


@functools.lru_cache(maxsize=4096)  # the same searches come again and again (every re-check)
def _search(
    base: str, scope: int, search_filter: str, attributes: tuple[str, ...], size_limit: int, time_limit: int
) -> bytes:
    text = _parenthesised(search_filter)
    try:
        operation = search_operation(
            base, text, scope, _DEREF_ALWAYS, list(attributes), size_limit, time_limit, False, False, False
        )
    except LDAPException as exc:
        raise FilterError(str(exc)) from None
    return bytes(encode(operation))


def start_tls_request(message_id: int) -> bytes:
    return _message(message_id, _START_TLS)


def unbind_request(message_id: int) -> bytes:
    return _message(message_id, _UNBIND)


_ANONYMOUS_BIND = bytes(encode(bind_operation(3, ANONYMOUS)))
_START_TLS = bytes(encode(extended_operation(START_TLS_OID)))
_UNBIND = bytes(encode(unbind_operation()))


# -- filters (RFC 4515) -------------------------------------------------------------------------
def check_filter(text: str) -> None:
    """Raises FilterError if ``text`` is not an RFC 4515 filter: ldap3's parser refuses it, or
    one of its items has a name or a value RFC 4515 does not allow. A filter without its outer
    parentheses gets them (``uid=x`` is ``(uid=x)``)."""
    try:
        root = parse_filter(_parenthesised(text), None, False, False, None, False)
    except LDAPException as exc:
        raise FilterError(str(exc)) from None
    for node in _items(root):
        assertion = node.assertion
        for name in (assertion.get("attr"), assertion.get("matchingRule")):
            if name is not False and name is not None and not _NAME.fullmatch(name):
                raise FilterError(f"not an attribute description or OID: {name!r}")
        values = [assertion.get("value"), assertion.get("initial"), assertion.get("final")]
        for value in values + list(assertion.get("any") or ()):
            if isinstance(value, bytes) and not _VALUE.fullmatch(value):
                raise FilterError("a '\\' in a filter value must start two hex digits, and NUL must be escaped")


def _items(node: FilterNode) -> Iterator[FilterNode]:
    if node.assertion is not None:
        yield node
    for element in node.elements:
        yield from _items(element)


def _parenthesised(text: str) -> str:
    text = text.strip()
    return text if text.startswith("(") else f"({text})"


# -- answers ------------------------------------------------------------------------------------
def message_length(buffer: bytes | bytearray) -> int | None:
    """The size of the whole LDAPMessage at the start of ``buffer``, or None if its header has
    not all arrived yet."""
    if len(buffer) < 2:
        return None
    if buffer[0] != 0x30:
        raise ProtocolError(f"an LDAPMessage starts with a SEQUENCE, not 0x{buffer[0]:02x}")
    size = buffer[1] & 0x7F if buffer[1] & 0x80 else 0
    if buffer[1] & 0x80 and not 0 < size <= 4:
        raise ProtocolError("indefinite or oversized BER length")
    if len(buffer) < 2 + size:
        return None
    length, offset = compute_ber_size(bytes(buffer[: 2 + size]))
    if length > MAX_MESSAGE:
        raise ProtocolError(f"an LDAPMessage of {length} bytes")
    return int(offset + length)


def decode(message: bytes) -> tuple[int, Result | Entry | None]:
    """One whole LDAPMessage: its message ID, and its answer (None for a search reference or any
    operation the provider never asks for)."""
    try:
        decoded = decode_message_fast(message)
        message_id, op, payload = decoded["messageID"], decoded["protocolOp"], decoded["payload"]
        if not isinstance(message_id, int):
            raise ProtocolError("an LDAPMessage starts with its message ID")
        if op == _SEARCH_ENTRY:
            return message_id, _entry(payload)
        if op in _RESULTS:
            return message_id, _result(op, payload)
        return message_id, None
    except ProtocolError:
        raise
    except (IndexError, KeyError, TypeError, ValueError, AttributeError) as exc:  # not the shape it should be
        raise ProtocolError(f"malformed LDAPMessage ({type(exc).__name__})") from None


def _entry(payload: list[Any]) -> Entry:
    # The raw half of ldap3's search_result_entry_response_to_dict_fast: its text half would
    # give binary values (AD's objectGUID) as Latin-1 text, and costs 3 to 5 times as much.
    attributes = raw_attributes_to_dict_fast(payload[1][3])
    return Entry(
        to_unicode(payload[0][3], from_server=True),
        {name.lower(): [_text(v) for v in values or ()] for name, values in attributes.items()},
    )


def _text(raw: bytes) -> str | bytes:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _result(op: int, payload: list[Any]) -> Result:
    code = payload[0][3]
    if not isinstance(code, int):
        raise ProtocolError("an LDAPResult starts with its result code")
    if code not in RESULT_CODES:  # ldap3's helpers name the code, and know no name for this one
        return Result(code, to_unicode(payload[1][3], from_server=True), to_unicode(payload[2][3], from_server=True))
    if op == _BIND_RESPONSE:
        result = bind_response_to_dict_fast(payload)
    elif op == _EXTENDED_RESPONSE:
        result = extended_response_to_dict_fast(payload)
        return Result(code, result["dn"], result["message"], result["responseName"], result["responseValue"])
    else:
        result = ldap_result_to_dict_fast(payload)
    return Result(code, result["dn"], result["message"])
