"""STUN Binding (RFC 8489) codec and the responder's decision, as pure functions.

Bytes in, messages or bytes out: nothing here does I/O, reads a clock or imports
``twisted.internet``.  The registry's UDP adapter (:mod:`p2pd.registry.stun`) and the
peers' client both sit on top of this module.

The responder is deliberately narrow: it answers only a well-formed Binding request
carrying the magic cookie, with a 40-byte (IPv4) or 52-byte (IPv6) success response
holding XOR-MAPPED-ADDRESS and FINGERPRINT, and drops everything else without a word.
"""

from __future__ import annotations

import ipaddress
import struct
import zlib
from dataclasses import dataclass

MAGIC_COOKIE = 0x2112A442
HEADER_LENGTH = 20
TRANSACTION_ID_LENGTH = 12
FINGERPRINT_XOR = 0x5354554E  # "STUN" in ASCII, RFC 8489 section 14.7

# Message types: method Binding (0x001) in each of the four classes.
BINDING_REQUEST = 0x0001
BINDING_INDICATION = 0x0011
BINDING_SUCCESS = 0x0101
BINDING_ERROR = 0x0111

# Attribute types, RFC 8489 section 18.3, plus the ICE (RFC 8445) and
# NAT-behaviour-discovery (RFC 5780) ones a Binding request may carry.
MAPPED_ADDRESS = 0x0001
RESPONSE_ADDRESS = 0x0002  # RFC 3489, reserved since RFC 5389
CHANGE_REQUEST = 0x0003  # RFC 3489 and RFC 5780
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
UNKNOWN_ATTRIBUTES = 0x000A
REALM = 0x0014
NONCE = 0x0015
MESSAGE_INTEGRITY_SHA256 = 0x001C
PASSWORD_ALGORITHM = 0x001D
USERHASH = 0x001E
XOR_MAPPED_ADDRESS = 0x0020
PRIORITY = 0x0024
USE_CANDIDATE = 0x0025
RESPONSE_PORT = 0x0027  # RFC 5780
PASSWORD_ALGORITHMS = 0x8002
ALTERNATE_DOMAIN = 0x8003
SOFTWARE = 0x8022
ALTERNATE_SERVER = 0x8023
FINGERPRINT = 0x8028
ICE_CONTROLLED = 0x8029
ICE_CONTROLLING = 0x802A

#: Comprehension-required attributes (0x0000-0x7FFF) this codec understands.
#: The responder does not authenticate, so credentials are understood and ignored.
KNOWN_REQUIRED = frozenset(
    {
        MAPPED_ADDRESS,
        USERNAME,
        MESSAGE_INTEGRITY,
        ERROR_CODE,
        UNKNOWN_ATTRIBUTES,
        REALM,
        NONCE,
        MESSAGE_INTEGRITY_SHA256,
        PASSWORD_ALGORITHM,
        USERHASH,
        XOR_MAPPED_ADDRESS,
        PRIORITY,
        USE_CANDIDATE,
    }
)

#: Attributes asking the server to answer somewhere, or from somewhere, other than
#: where the request came from: requests carrying them are never answered.
REFUSED = frozenset({RESPONSE_ADDRESS, CHANGE_REQUEST, RESPONSE_PORT})

FAMILY_IPV4 = 0x01
FAMILY_IPV6 = 0x02

#: The largest reply :func:`answer` ever produces (IPv6 XOR-MAPPED-ADDRESS + FINGERPRINT).
MAX_REPLY_LENGTH = HEADER_LENGTH + 4 + 20 + 4 + 4

_HEADER = struct.Struct("!HHI")
_ATTRIBUTE_HEADER = struct.Struct("!HH")


class StunError(ValueError):
    """A datagram is not the STUN message it should be; the text says why."""


@dataclass(frozen=True)
class StunMessage:
    """One parsed STUN message.

    ``attributes`` keeps every attribute in wire order as ``(type, value)`` pairs,
    values without their padding.
    """

    msg_type: int
    transaction_id: bytes
    attributes: tuple[tuple[int, bytes], ...]

    @property
    def method(self) -> int:
        """The 12-bit method (0x001 for Binding), with the class bits removed."""
        t = self.msg_type
        return (t & 0x000F) | ((t & 0x00E0) >> 1) | ((t & 0x3E00) >> 2)

    @property
    def message_class(self) -> int:
        """The class: 0 request, 1 indication, 2 success response, 3 error response."""
        return ((self.msg_type >> 7) & 0b10) | ((self.msg_type >> 4) & 0b01)

    def get(self, attr_type: int) -> bytes | None:
        """The value of the first attribute of ``attr_type``, or None."""
        for found, value in self.attributes:
            if found == attr_type:
                return value
        return None


def fingerprint(prefix: bytes) -> bytes:
    """The FINGERPRINT value for a message whose bytes before the attribute are ``prefix``.

    ``prefix`` must already carry the final message length in its header.
    """
    return struct.pack("!I", zlib.crc32(prefix) ^ FINGERPRINT_XOR)


def parse_message(data: bytes) -> StunMessage:
    """Parse and strictly validate one STUN message (RFC 8489 sections 5, 6.3 and 14).

    Raise :class:`StunError` unless ``data`` is exactly one message: a 20-byte header
    with the top two bits clear and the magic cookie, a length field that is a multiple
    of 4 and matches the datagram, attributes that tile the body exactly (each padded to
    4 bytes; padding content is ignored), and, if FINGERPRINT is present, that it is
    the last attribute and matches.  MESSAGE-INTEGRITY is parsed but not verified.
    """
    data = bytes(data)
    if len(data) < HEADER_LENGTH:
        raise StunError(f"{len(data)} bytes is shorter than a STUN header")
    msg_type, length, cookie = _HEADER.unpack_from(data)
    if msg_type & 0xC000:
        raise StunError("the first two bits are not zero: not a STUN message")
    if cookie != MAGIC_COOKIE:
        raise StunError("no magic cookie (RFC 3489 or not STUN)")
    if length % 4:
        raise StunError(f"message length {length} is not a multiple of 4")
    if length != len(data) - HEADER_LENGTH:
        raise StunError(f"message length {length} but {len(data) - HEADER_LENGTH} bytes follow the header")
    attributes = []
    offset = HEADER_LENGTH
    # The body length is a multiple of 4, so at least a full attribute header remains here.
    while offset < len(data):
        if attributes and attributes[-1][0] == FINGERPRINT:
            raise StunError("an attribute follows FINGERPRINT")
        attr_type, attr_length = _ATTRIBUTE_HEADER.unpack_from(data, offset)
        start = offset + _ATTRIBUTE_HEADER.size
        end = start + ((attr_length + 3) & ~3)
        if end > len(data):
            raise StunError(f"attribute 0x{attr_type:04x} runs past the end of the message")
        value = data[start : start + attr_length]
        _check_attribute(attr_type, value, data[:offset])
        attributes.append((attr_type, value))
        offset = end
    return StunMessage(msg_type, data[8:HEADER_LENGTH], tuple(attributes))


def _check_attribute(attr_type: int, value: bytes, prefix: bytes) -> None:
    """Validate the attributes whose length is fixed, and verify FINGERPRINT."""
    if attr_type == FINGERPRINT:
        if len(value) != 4:
            raise StunError("FINGERPRINT is not 4 bytes long")
        if value != fingerprint(prefix):
            raise StunError("FINGERPRINT does not match")
    elif attr_type == MESSAGE_INTEGRITY and len(value) != 20:
        raise StunError("MESSAGE-INTEGRITY is not 20 bytes long")


def _message(msg_type: int, transaction_id: bytes, body: bytes, with_fingerprint: bool) -> bytes:
    """Header + ``body`` (already-encoded attributes) + FINGERPRINT if asked for."""
    if len(transaction_id) != TRANSACTION_ID_LENGTH:
        raise StunError(f"a transaction id is 12 bytes, not {len(transaction_id)}")
    length = len(body) + (8 if with_fingerprint else 0)
    message = _HEADER.pack(msg_type, length, MAGIC_COOKIE) + bytes(transaction_id) + body
    if with_fingerprint:
        message += _attribute(FINGERPRINT, fingerprint(message))
    return message


def _attribute(attr_type: int, value: bytes) -> bytes:
    """One attribute, zero-padded to a multiple of 4."""
    padding = b"\x00" * (-len(value) % 4)
    return _ATTRIBUTE_HEADER.pack(attr_type, len(value)) + value + padding


def binding_request(transaction_id: bytes, fingerprint: bool = True) -> bytes:
    """A Binding request with no attributes but (by default) FINGERPRINT: 28 or 20 bytes."""
    return _message(BINDING_REQUEST, transaction_id, b"", fingerprint)


def encode_xor_address(transaction_id: bytes, host: str, port: int) -> bytes:
    """The XOR-MAPPED-ADDRESS value for ``host``:``port`` (RFC 8489 section 14.2).

    An IPv4-mapped IPv6 address (``::ffff:192.0.2.1``, as a dual-stack socket reports
    an IPv4 client) is encoded as the IPv4 address it stands for.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise StunError(f"{host!r} is not an IP address") from None
    if not 0 <= port <= 0xFFFF:
        raise StunError(f"{port} is not a port number")
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    family = FAMILY_IPV4 if address.version == 4 else FAMILY_IPV6
    mask = _xor_mask(transaction_id)[: len(address.packed)]
    xored = bytes(a ^ m for a, m in zip(address.packed, mask))
    return struct.pack("!BBH", 0, family, port ^ (MAGIC_COOKIE >> 16)) + xored


def decode_xor_address(transaction_id: bytes, value: bytes) -> tuple[str, int]:
    """The ``(host, port)`` an XOR-MAPPED-ADDRESS value stands for."""
    if len(value) == 8 and value[1] == FAMILY_IPV4:
        address = ipaddress.IPv4Address(bytes(a ^ m for a, m in zip(value[4:], _xor_mask(transaction_id))))
    elif len(value) == 20 and value[1] == FAMILY_IPV6:
        address = ipaddress.IPv6Address(bytes(a ^ m for a, m in zip(value[4:], _xor_mask(transaction_id))))
    else:
        raise StunError("XOR-MAPPED-ADDRESS has an unknown family or the wrong length")
    (xport,) = struct.unpack_from("!H", value, 2)
    return str(address), xport ^ (MAGIC_COOKIE >> 16)


def _xor_mask(transaction_id: bytes) -> bytes:
    """Magic cookie followed by the transaction id: what addresses are XOR-ed with."""
    if len(transaction_id) != TRANSACTION_ID_LENGTH:
        raise StunError(f"a transaction id is 12 bytes, not {len(transaction_id)}")
    return struct.pack("!I", MAGIC_COOKIE) + bytes(transaction_id)


def binding_success(transaction_id: bytes, host: str, port: int) -> bytes:
    """The Binding success response telling a client it was seen at ``host``:``port``.

    Only XOR-MAPPED-ADDRESS and FINGERPRINT: 40 bytes for IPv4, 52 for IPv6.
    """
    body = _attribute(XOR_MAPPED_ADDRESS, encode_xor_address(transaction_id, host, port))
    return _message(BINDING_SUCCESS, transaction_id, body, with_fingerprint=True)


def parse_binding_success(data: bytes, transaction_id: bytes) -> tuple[str, int]:
    """The mapped ``(host, port)`` in a Binding success response to ``transaction_id``.

    Raise :class:`StunError` if ``data`` is malformed, answers another transaction, is
    an error response (the server's code and reason are in the message) or has no
    XOR-MAPPED-ADDRESS.
    """
    message = parse_message(data)
    if message.transaction_id != bytes(transaction_id):
        raise StunError("the response is for another transaction")
    if message.msg_type == BINDING_ERROR:
        raise StunError(f"the STUN server refused: {_describe_error(message.get(ERROR_CODE))}")
    if message.msg_type != BINDING_SUCCESS:
        raise StunError(f"message type 0x{message.msg_type:04x} is not a Binding success response")
    value = message.get(XOR_MAPPED_ADDRESS)
    if value is None:
        raise StunError("the response has no XOR-MAPPED-ADDRESS")
    return decode_xor_address(transaction_id, value)


def _describe_error(value: bytes | None) -> str:
    """``"420 Unknown Attribute"`` from an ERROR-CODE value (RFC 8489 section 14.8)."""
    if value is None or len(value) < 4:
        raise StunError("an error response without a valid ERROR-CODE")
    code = (value[2] & 0x07) * 100 + value[3]
    reason = value[4:].decode("utf-8", "replace")
    return f"{code} {reason}".strip()


def check_binding_request(data: bytes) -> StunMessage:
    """Parse ``data`` as a Binding request this responder will answer, or say why not.

    Beyond :func:`parse_message`: the type must be Binding request, and no attribute may
    be comprehension-required and unknown (RFC 8489 would answer 420; we drop, so a
    spoofed source gets nothing) or ask for the reply to go, or come from, elsewhere.
    """
    message = parse_message(data)
    if message.msg_type != BINDING_REQUEST:
        raise StunError(f"message type 0x{message.msg_type:04x} is not a Binding request")
    for attr_type, _ in message.attributes:
        if attr_type in REFUSED:
            raise StunError(f"attribute 0x{attr_type:04x} asks for a reply elsewhere")
        if attr_type < 0x8000 and attr_type not in KNOWN_REQUIRED:
            raise StunError(f"unknown comprehension-required attribute 0x{attr_type:04x}")
    return message


def answer(data: bytes, host: str, port: int) -> bytes | None:
    """The reply to datagram ``data`` received from ``host``:``port``, or None to drop it.

    Never raises: anything but a Binding request we answer (see
    :func:`check_binding_request`) yields None.  A reply is at most
    :data:`MAX_REPLY_LENGTH` (52) bytes.
    """
    try:
        request = check_binding_request(data)
        return binding_success(request.transaction_id, host, port)
    except StunError:
        return None
