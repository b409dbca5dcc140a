"""LDAPv3 on the wire (RFC 4511 §4, in BER as §5.1 restricts it) and search filters from their
string form (RFC 4515): the few messages the provider sends and reads, and nothing more.

Requests are bytes built directly (bind, search, StartTLS, unbind); answers are decoded from one
whole ``LDAPMessage`` at a time into a ``Result`` or an ``Entry``. Attribute values are text when
they are UTF-8 and bytes otherwise, as ldap3 gives them without a schema; attribute names are
lower-cased (names are case-insensitive, RFC 4512 §1.4).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

from ldap3.core.results import RESULT_CODES

BASE, ONE_LEVEL, SUBTREE = 0, 1, 2  # SearchRequest.scope
START_TLS_OID = "1.3.6.1.4.1.1466.20037"  # RFC 4511 §4.14
MAX_MESSAGE = 16 * 1024 * 1024  # a bigger answer is a broken (or hostile) server, not a user

_BIND_RESPONSE, _SEARCH_ENTRY, _SEARCH_DONE, _SEARCH_REFERENCE, _EXTENDED_RESPONSE = 0x61, 0x64, 0x65, 0x73, 0x78
_ATTRIBUTE = re.compile(r"^(?:[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)*)(?:;[A-Za-z0-9-]+)*$")


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


# -- encoding -----------------------------------------------------------------------------------
def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    size = (n.bit_length() + 7) // 8
    return bytes((0x80 | size,)) + n.to_bytes(size, "big")


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes((tag,)) + _length(len(content)) + content


def _integer(n: int, tag: int = 0x02) -> bytes:
    return _tlv(tag, n.to_bytes(n.bit_length() // 8 + 1, "big", signed=True))


def _octets(value: str | bytes, tag: int = 0x04) -> bytes:
    return _tlv(tag, value.encode("utf-8") if isinstance(value, str) else value)


def _message(message_id: int, operation: bytes) -> bytes:
    return _tlv(0x30, _integer(message_id) + operation)


def bind_request(message_id: int, name: str, password: bytes) -> bytes:
    """A simple bind (RFC 4511 §4.2); the password already SASLprepped and encoded."""
    return _message(message_id, _tlv(0x60, _integer(3) + _octets(name) + _octets(password, 0x80)))


def search_request(
    message_id: int,
    base: str,
    scope: int,
    search_filter: bytes,
    attributes: tuple[str, ...],
    size_limit: int = 0,
    time_limit: int = 0,
) -> bytes:
    """A search (RFC 4511 §4.5.1); ``search_filter`` is ``compile_filter``'s output. Aliases are
    dereferenced always, as ldap3 does by default."""
    return _message(message_id, _search(base, scope, search_filter, attributes, size_limit, time_limit))


@functools.lru_cache(maxsize=4096)  # the same searches come again and again (every re-check)
def _search(
    base: str, scope: int, search_filter: bytes, attributes: tuple[str, ...], size_limit: int, time_limit: int
) -> bytes:
    body = (
        _octets(base)
        + _integer(scope, 0x0A)
        + _integer(3, 0x0A)
        + _integer(size_limit)
        + _integer(time_limit)
        + b"\x01\x01\x00"  # typesOnly FALSE
        + search_filter
        + _tlv(0x30, b"".join(_octets(a) for a in attributes))
    )
    return _tlv(0x63, body)


def start_tls_request(message_id: int) -> bytes:
    return _message(message_id, _tlv(0x77, _octets(START_TLS_OID, 0x80)))


def unbind_request(message_id: int) -> bytes:
    return _message(message_id, b"\x42\x00")


# -- filters (RFC 4515) -------------------------------------------------------------------------
def compile_filter(text: str) -> bytes:
    """The BER encoding of a string filter; raises FilterError if it is not RFC 4515 text.
    A filter without its outer parentheses gets them (``uid=x`` is ``(uid=x)``)."""
    text = text.strip()
    if not text.startswith("("):
        text = f"({text})"
    encoded, end = _filter(text, 0)
    if end != len(text):
        raise FilterError(f"text after the end of the filter: {text[end:]!r}")
    return encoded


def _filter(text: str, i: int) -> tuple[bytes, int]:
    if text[i : i + 1] != "(":
        raise FilterError(f"'(' expected at {i}")
    i += 1
    kind = text[i : i + 1]
    if kind in ("&", "|"):
        i += 1
        parts = []
        while text[i : i + 1] == "(":
            part, i = _filter(text, i)
            parts.append(part)
        body = _tlv(0xA0 if kind == "&" else 0xA1, b"".join(parts))
    elif kind == "!":
        part, i = _filter(text, i + 1)
        body = _tlv(0xA2, part)
    else:
        end = text.find(")", i)
        if end < 0:
            raise FilterError("unbalanced parentheses")
        body, i = _item(text[i:end]), end
    if text[i : i + 1] != ")":
        raise FilterError(f"')' expected at {i}")
    return body, i + 1


def _attribute(name: str) -> str:
    if not _ATTRIBUTE.match(name):
        raise FilterError(f"not an attribute description or OID: {name!r}")
    return name


def _item(item: str) -> bytes:
    if "(" in item:
        raise FilterError(f"unescaped '(' in {item!r}")
    equals = item.find("=")
    if equals <= 0:
        raise FilterError(f"not a filter item: {item!r}")
    left, value = item[:equals], item[equals + 1 :]
    operator = {"~": 0xA8, ">": 0xA5, "<": 0xA6}.get(left[-1:])
    if operator is not None:
        return _tlv(operator, _octets(_attribute(left[:-1])) + _octets(_value(value)))
    if left.endswith(":"):
        return _extensible(left[:-1], value)
    if value == "*":
        return _octets(_attribute(left), 0x87)
    if "*" in value:
        pieces = value.split("*")
        parts = b""
        if pieces[0]:
            parts += _octets(_value(pieces[0]), 0x80)
        parts += b"".join(_octets(_value(p), 0x81) for p in pieces[1:-1] if p)
        if pieces[-1]:
            parts += _octets(_value(pieces[-1]), 0x82)
        return _tlv(0xA4, _octets(_attribute(left)) + _tlv(0x30, parts))
    return _tlv(0xA3, _octets(_attribute(left)) + _octets(_value(value)))


def _extensible(left: str, value: str) -> bytes:
    """``attr[:dn][:rule]:=value`` or ``[:dn]:rule:=value`` (RFC 4515 §3, RFC 4511 §4.5.1.7.7)."""
    attribute, *rest = left.split(":")
    dn = bool(rest) and rest[0].lower() == "dn"
    if dn:
        rest = rest[1:]
    if len(rest) > 1 or (not attribute and not rest) or (rest and not rest[0]):
        raise FilterError(f"not an extensible match: {left}:={value}")
    body = _octets(_attribute(rest[0]), 0x81) if rest else b""
    if attribute:
        body += _octets(_attribute(attribute), 0x82)
    body += _octets(_value(value), 0x83)
    if dn:
        body += b"\x84\x01\xff"
    return _tlv(0xA9, body)


def _value(text: str) -> bytes:
    """An assertion value: ``\\HH`` escapes are bytes, everything else UTF-8; '*' and '\\0' refused."""
    if "\\" not in text:
        if "*" in text or "\x00" in text:
            raise FilterError("unescaped '*' or NUL in a filter value")
        return text.encode("utf-8")
    out = bytearray()
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            pair = text[i + 1 : i + 3]
            if len(pair) != 2 or not all(c in "0123456789abcdefABCDEF" for c in pair):
                raise FilterError("a '\\' in a filter value must start two hex digits")
            out.append(int(pair, 16))
            i += 3
            continue
        if char in "*\x00":
            raise FilterError("unescaped '*' or NUL in a filter value")
        out += char.encode("utf-8")
        i += 1
    return bytes(out)


# -- decoding -----------------------------------------------------------------------------------
def message_length(buffer: bytes | bytearray) -> int | None:
    """The size of the whole LDAPMessage at the start of ``buffer``, or None if its header has
    not all arrived yet."""
    if len(buffer) < 2:
        return None
    if buffer[0] != 0x30:
        raise ProtocolError(f"an LDAPMessage starts with a SEQUENCE, not 0x{buffer[0]:02x}")
    first = buffer[1]
    if first < 0x80:
        return 2 + first
    size = first & 0x7F
    if not 0 < size <= 4:
        raise ProtocolError("indefinite or oversized BER length")
    if len(buffer) < 2 + size:
        return None
    length = int.from_bytes(buffer[2 : 2 + size], "big")
    if length > MAX_MESSAGE:
        raise ProtocolError(f"an LDAPMessage of {length} bytes")
    return 2 + size + length


def _read(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """The tag, content start and content end of the element at ``pos`` (which ends by ``end``)."""
    if pos + 2 > end:
        raise ProtocolError("truncated element")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first >= 0x80:
        size = first & 0x7F
        if not 0 < size <= 4:
            raise ProtocolError("indefinite or oversized BER length")
        first = int.from_bytes(data[pos : pos + size], "big")
        pos += size
    if pos + first > end:
        raise ProtocolError("element longer than what holds it")
    return tag, pos, pos + first


def _text(raw: bytes) -> str | bytes:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def decode(message: bytes) -> tuple[int, Result | Entry | None]:
    """One whole LDAPMessage: its message ID, and its answer (None for a search reference or any
    operation the provider never asks for)."""
    tag, pos, end = _read(message, 0, len(message))
    if tag != 0x30:
        raise ProtocolError("an LDAPMessage is a SEQUENCE")
    tag, start, stop = _read(message, pos, end)
    if tag != 0x02:
        raise ProtocolError("an LDAPMessage starts with its message ID")
    message_id = int.from_bytes(message[start:stop], "big", signed=True)
    tag, start, stop = _read(message, stop, end)
    if tag == _SEARCH_ENTRY:
        return message_id, _entry(message, start, stop)
    if tag in (_BIND_RESPONSE, _SEARCH_DONE, _EXTENDED_RESPONSE) or (tag & 0xE0 == 0x60 and tag != _SEARCH_REFERENCE):
        return message_id, _result(message, start, stop)
    return message_id, None


def _entry(data: bytes, pos: int, end: int) -> Entry:
    _, start, stop = _read(data, pos, end)
    entry = Entry(dn=data[start:stop].decode("utf-8", "replace"))
    _, pos, end = _read(data, stop, end)  # PartialAttributeList
    while pos < end:
        _, attr_start, attr_end = _read(data, pos, end)
        _, start, stop = _read(data, attr_start, attr_end)
        name = data[start:stop].decode("utf-8", "replace").lower()
        _, vals, vals_end = _read(data, stop, attr_end)  # SET OF value
        values = entry.attributes.setdefault(name, [])
        while vals < vals_end:
            _, start, stop = _read(data, vals, vals_end)
            values.append(_text(data[start:stop]))
            vals = stop
        pos = attr_end
    return entry


def _result(data: bytes, pos: int, end: int) -> Result:
    tag, start, stop = _read(data, pos, end)
    if tag != 0x0A:
        raise ProtocolError("an LDAPResult starts with its result code")
    code = int.from_bytes(data[start:stop], "big", signed=True)
    _, start, stop = _read(data, stop, end)
    matched = data[start:stop].decode("utf-8", "replace")
    _, start, pos = _read(data, stop, end)
    message = data[start:pos].decode("utf-8", "replace")
    name: str | None = None
    value: bytes | None = None
    while pos < end:  # referral [3], serverSaslCreds [7], responseName [10], responseValue [11]
        tag, start, pos = _read(data, pos, end)
        if tag == 0x8A:
            name = data[start:pos].decode("ascii", "replace")
        elif tag == 0x8B:
            value = data[start:pos]
    return Result(code, matched, message, name, value)
