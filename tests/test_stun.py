"""The STUN responder (RFC 8489 Binding): the pure codec and the registry's UDP adapter (the peers' client:
tests/test_stun_client.py)."""

import ast
import pathlib
import random
import struct
import zlib

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.application.internet import UDPServer
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.internet.testing import FakeDatagramTransport
from twisted.logger import Logger

from p2pd.core import stun
from p2pd.core.stun import StunError, answer, binding_request, binding_success, parse_binding_success, parse_message
from p2pd.registry.stun import StunResponder, makeStunService

# RFC 5769 test vectors; all three share this transaction id.
RFC5769_TXID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
# Section 2.1: Binding request with SOFTWARE, PRIORITY, ICE-CONTROLLED, USERNAME
# (padded with spaces), MESSAGE-INTEGRITY (short-term credentials) and FINGERPRINT.
RFC5769_REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae"
    "80220010" "5354554e207465737420636c69656e74"
    "00240004" "6e0001ff"
    "80290008" "932ff9b151263b36"
    "00060009" "6576746a3a68367659202020"
    "00080014" "9aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"
    "80280004" "e57a3bcf"
)
# Section 2.2: IPv4 success response, mapped address 192.0.2.1:32853.
RFC5769_XOR_V4 = bytes.fromhex("00200008" "0001a147e112a643")
RFC5769_RESPONSE_V4 = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b" "7465737420766563746f7220"
    + RFC5769_XOR_V4.hex()
    + "00080014" "2b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004" "c07d4c96"
)
# Section 2.3: IPv6 success response, mapped address [2001:db8:1234:5678:11:2233:4455:6677]:32853.
RFC5769_XOR_V6 = bytes.fromhex("00200014" "0002a147" "0113a9faa5d3f179bc25f4b5bed2b9d9")
RFC5769_RESPONSE_V6 = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae"
    "8022000b" "7465737420766563746f7220"
    + RFC5769_XOR_V6.hex()
    + "00080014" "a382954e4be67bf11784c97c8292c275bfe3ed41"
    "80280004" "c8fb0b4c"
)
V6_HOST = "2001:db8:1234:5678:11:2233:4455:6677"

TXID = bytes(range(12))
SERVER = ("192.0.2.10", 3478)


def crc_fingerprint(prefix: bytes) -> bytes:
    """FINGERPRINT computed here, independently of the codec: CRC-32 XOR 0x5354554e."""
    return struct.pack("!I", zlib.crc32(prefix) ^ 0x5354554E)


def message(*attributes, msg_type=0x0001, txid=TXID, fingerprint=True, cookie=0x2112A442) -> bytes:
    """A STUN message built by hand: ``attributes`` are ``(type, value)``, padded with zeros."""
    body = b"".join(struct.pack("!HH", t, len(v)) + v + b"\0" * (-len(v) % 4) for t, v in attributes)
    length = len(body) + (8 if fingerprint else 0)
    data = struct.pack("!HHI", msg_type, length, cookie) + txid + body
    return data + (struct.pack("!HH", 0x8028, 4) + crc_fingerprint(data) if fingerprint else b"")


def fired(d):
    """The result a Deferred has already fired with (a Failure if it failed)."""
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


# RFC 5769 test vectors


def test_rfc5769_sample_request_parses():
    """The 2.1 request parses into its six attributes, in order, without their padding."""
    parsed = parse_message(RFC5769_REQUEST)
    assert parsed.msg_type == stun.BINDING_REQUEST
    assert parsed.transaction_id == RFC5769_TXID
    assert [t for t, _ in parsed.attributes] == [
        stun.SOFTWARE,
        stun.PRIORITY,
        stun.ICE_CONTROLLED,
        stun.USERNAME,
        stun.MESSAGE_INTEGRITY,
        stun.FINGERPRINT,
    ]
    assert parsed.get(stun.SOFTWARE) == b"STUN test client"
    assert parsed.get(stun.USERNAME) == b"evtj:h6vY"
    assert len(parsed.get(stun.MESSAGE_INTEGRITY)) == 20


def test_rfc5769_sample_request_is_answered():
    """The 2.1 request is answered: credentials are ignored, PRIORITY is understood."""
    reply = answer(RFC5769_REQUEST, "192.0.2.1", 32853)
    assert parse_binding_success(reply, RFC5769_TXID) == ("192.0.2.1", 32853)


def test_rfc5769_ipv4_response_decodes():
    """The 2.2 response's XOR-MAPPED-ADDRESS is 192.0.2.1:32853."""
    assert parse_binding_success(RFC5769_RESPONSE_V4, RFC5769_TXID) == ("192.0.2.1", 32853)


def test_rfc5769_ipv6_response_decodes():
    """The 2.3 response's XOR-MAPPED-ADDRESS is [2001:db8:1234:5678:11:2233:4455:6677]:32853."""
    assert parse_binding_success(RFC5769_RESPONSE_V6, RFC5769_TXID) == (V6_HOST, 32853)


@pytest.mark.parametrize("vector", [RFC5769_REQUEST, RFC5769_RESPONSE_V4, RFC5769_RESPONSE_V6])
def test_rfc5769_fingerprints_match_byte_exactly(vector):
    """Our FINGERPRINT of each vector is the vector's own last four bytes."""
    assert stun.fingerprint(vector[:-8]) == vector[-4:]
    assert parse_message(vector).get(stun.FINGERPRINT) == vector[-4:]


@pytest.mark.parametrize(
    "host, attribute",
    [("192.0.2.1", RFC5769_XOR_V4), (V6_HOST, RFC5769_XOR_V6)],
    ids=["ipv4", "ipv6"],
)
def test_encoder_xor_mapped_address_matches_rfc5769(host, attribute):
    """Our response carries the vectors' XOR-MAPPED-ADDRESS attribute byte for byte, first."""
    reply = binding_success(RFC5769_TXID, host, 32853)
    assert reply[20 : 20 + len(attribute)] == attribute


@pytest.mark.parametrize("host", ["192.0.2.1", V6_HOST])
def test_encoder_fingerprint_matches_independent_crc(host):
    """Our response ends in a FINGERPRINT attribute equal to a CRC-32 recomputed here."""
    reply = binding_success(RFC5769_TXID, host, 32853)
    assert reply[-8:-4] == bytes.fromhex("80280004")
    assert reply[-4:] == crc_fingerprint(reply[:-8])


# Sizes


def test_ipv4_reply_to_minimal_request_is_40_bytes():
    """A 20-byte request from an IPv4 source gets header + XOR-MAPPED-ADDRESS(12) + FINGERPRINT(8)."""
    request = binding_request(TXID, fingerprint=False)
    assert len(request) == 20
    assert len(answer(request, "198.51.100.7", 40000)) == 40


def test_ipv6_reply_to_minimal_request_is_52_bytes():
    """A 20-byte request from an IPv6 source gets a 52-byte reply."""
    assert len(answer(binding_request(TXID, fingerprint=False), "2001:db8::7", 40000)) == 52


def test_binding_request_with_fingerprint_is_28_bytes_and_verifies():
    """The client's request is a bare header plus a FINGERPRINT that checks out."""
    request = binding_request(TXID)
    assert len(request) == 28
    assert request[-4:] == crc_fingerprint(request[:-8])
    assert parse_message(request).attributes == ((stun.FINGERPRINT, request[-4:]),)


def test_ipv4_mapped_source_is_answered_as_ipv4():
    """A dual-stack socket's ::ffff:a.b.c.d source is reported as the IPv4 address it is."""
    reply = answer(binding_request(TXID), "::ffff:198.51.100.7", 40000)
    assert len(reply) == 40
    assert parse_binding_success(reply, TXID) == ("198.51.100.7", 40000)


# What is answered, what is dropped

ANSWERED = {
    "no-fingerprint": message(fingerprint=False),
    "fingerprint": message(),
    "software": message((stun.SOFTWARE, b"p2pd test")),
    "unknown-optional": message((0xC0DE, b"\x01\x02\x03")),
    "username-unpadded-value": message((stun.USERNAME, b"abcde")),
}


@pytest.mark.parametrize("request_bytes", ANSWERED.values(), ids=ANSWERED.keys())
def test_well_formed_binding_requests_are_answered(request_bytes):
    """A Binding request with cookie and only known or optional attributes gets our reply."""
    reply = answer(request_bytes, "203.0.113.5", 5000)
    assert parse_binding_success(reply, TXID) == ("203.0.113.5", 5000)


def _fingerprint_not_last():
    """A valid fingerprinted request with SOFTWARE appended after the FINGERPRINT."""
    valid = message()
    tail = struct.pack("!HH", stun.SOFTWARE, 4) + b"abcd"
    return valid[:2] + struct.pack("!H", len(valid) - 20 + 8) + valid[4:] + tail


def _flip_last_bit(data):
    """``data`` with its very last bit inverted."""
    return data[:-1] + bytes([data[-1] ^ 1])


DROPPED = {
    "empty": b"",
    "19-bytes": message(fingerprint=False)[:19],
    "bad-cookie": message(cookie=0x2112A443),
    "rfc3489-no-cookie": struct.pack("!HH", 0x0001, 0) + bytes(range(16)),
    "top-bits-set": message(msg_type=0xC001, fingerprint=False),
    "length-not-multiple-of-4": struct.pack("!HHI", 0x0001, 2, 0x2112A442) + TXID + b"\0\0",
    "length-disagrees-with-datagram": message(fingerprint=False) + b"\0\0\0\0",
    "truncated-tlv": struct.pack("!HHI", 0x0001, 8, 0x2112A442) + TXID + struct.pack("!HH", 0x8022, 8) + b"abcd",
    "binding-success-response": binding_success(TXID, "192.0.2.1", 1),
    "binding-error-response": message(msg_type=stun.BINDING_ERROR),
    "binding-indication": message(msg_type=stun.BINDING_INDICATION),
    "other-method-request": message(msg_type=0x0003),
    "response-address": message((stun.RESPONSE_ADDRESS, b"\0\x01\x00\x50\xc0\x00\x02\x01")),
    "change-request": message((stun.CHANGE_REQUEST, b"\0\0\0\x06")),
    "response-port": message((stun.RESPONSE_PORT, b"\x00\x50\0\0")),
    "unknown-comprehension-required": message((0x7FFF, b"")),
    "wrong-fingerprint": _flip_last_bit(message()),
    "fingerprint-not-last": _fingerprint_not_last(),
    "short-message-integrity": message((stun.MESSAGE_INTEGRITY, b"\0" * 16)),
    "tampered-rfc5769-request": _flip_last_bit(RFC5769_REQUEST),
    "http-request": b"GET / HTTP/1.1\r\nHost: registry\r\n\r\n",
    "random-garbage": random.Random(5769).randbytes(64),
}


@pytest.mark.parametrize("datagram", DROPPED.values(), ids=DROPPED.keys())
def test_anything_else_is_dropped(datagram):
    """Everything but a well-formed Binding request is dropped: answer() returns None."""
    assert answer(datagram, "203.0.113.5", 5000) is None


@pytest.mark.parametrize(
    "datagram",
    [DROPPED[k] for k in ("bad-cookie", "truncated-tlv", "wrong-fingerprint", "fingerprint-not-last")],
    ids=["bad-cookie", "truncated-tlv", "wrong-fingerprint", "fingerprint-not-last"],
)
def test_malformed_messages_raise_stun_error(datagram):
    """parse_message() reports malformed input as StunError, a ValueError."""
    with pytest.raises(StunError):
        parse_message(datagram)
    assert issubclass(StunError, ValueError)


# The client side of the codec


def test_parse_binding_success_rejects_another_transaction():
    """A response to someone else's transaction id is an error."""
    with pytest.raises(StunError, match="another transaction"):
        parse_binding_success(RFC5769_RESPONSE_V4, TXID)


def test_parse_binding_success_reports_the_servers_error():
    """An error response says the server's code and reason."""
    error_code = b"\0\0\x04\x14" + b"Unknown Attribute"
    response = message((stun.ERROR_CODE, error_code), msg_type=stun.BINDING_ERROR)
    with pytest.raises(StunError, match="420 Unknown Attribute"):
        parse_binding_success(response, TXID)


def test_parse_binding_success_needs_xor_mapped_address():
    """A success response without XOR-MAPPED-ADDRESS is an error (MAPPED-ADDRESS is not enough)."""
    response = message((stun.MAPPED_ADDRESS, b"\0\x01\x00\x50\xc0\x00\x02\x01"), msg_type=stun.BINDING_SUCCESS)
    with pytest.raises(StunError, match="no XOR-MAPPED-ADDRESS"):
        parse_binding_success(response, TXID)


def test_parse_binding_success_rejects_an_unknown_family():
    """An XOR-MAPPED-ADDRESS of family 3 is an error."""
    response = message((stun.XOR_MAPPED_ADDRESS, b"\0\x03\x00\x50\xc0\x00\x02\x01"), msg_type=stun.BINDING_SUCCESS)
    with pytest.raises(StunError, match="family"):
        parse_binding_success(response, TXID)


@given(txid=st.binary(min_size=12, max_size=12), address=st.ip_addresses(), port=st.integers(0, 65535))
def test_binding_success_round_trips(txid, address, port):
    """Whatever address and port we encode, the client decodes the same."""
    host = str(address.ipv4_mapped or address) if address.version == 6 else str(address)
    assert parse_binding_success(binding_success(txid, str(address), port), txid) == (host, port)


# Never raising


@given(st.binary(max_size=200))
def test_answer_never_raises_on_arbitrary_bytes(data):
    """For any bytes, answer() returns None or a reply of at most 52 bytes."""
    reply = answer(data, "2001:db8::1", 65535)
    assert reply is None or len(reply) <= stun.MAX_REPLY_LENGTH == 52


@given(msg_type=st.integers(0, 0x3FFF), body=st.lists(st.integers(0, 2**32 - 1), max_size=16))
def test_answer_never_raises_on_cookie_bearing_headers(msg_type, body):
    """A correct header over an arbitrary body reaches the attribute parser without raising."""
    payload = b"".join(struct.pack("!I", word) for word in body)
    data = struct.pack("!HHI", msg_type, len(payload), 0x2112A442) + TXID + payload
    reply = answer(data, "192.0.2.1", 1)
    assert reply is None or len(reply) <= 52


@given(txid=st.binary(min_size=12, max_size=12), with_fingerprint=st.booleans(), bit=st.integers(0, 28 * 8 - 1))
def test_answer_never_raises_on_bit_flipped_requests(txid, with_fingerprint, bit):
    """Flipping any one bit of a valid request never makes answer() raise or misreport."""
    request = bytearray(binding_request(txid, fingerprint=with_fingerprint))
    bit %= len(request) * 8
    request[bit // 8] ^= 0x80 >> (bit % 8)
    reply = answer(bytes(request), "192.0.2.1", 1)
    if reply is not None:
        assert parse_binding_success(reply, bytes(request[8:20])) == ("192.0.2.1", 1)


def test_codec_imports_nothing_from_twisted_or_time():
    """The codec is pure: it imports neither Twisted nor time."""
    tree = ast.parse(pathlib.Path(stun.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {name for name in imported if name.split(".")[0] in ("twisted", "time")}


# The responder adapter


def responder(**kwargs):
    """A StunResponder on a fake clock and a fake datagram transport."""
    clock = Clock()
    protocol = StunResponder(clock, **kwargs)
    protocol.makeConnection(FakeDatagramTransport())
    return protocol, clock


def test_reply_goes_only_to_the_source():
    """The reply is written once, to the address the request came from, naming that address."""
    protocol, _ = responder()
    protocol.datagramReceived(binding_request(TXID), ("198.51.100.7", 4242))
    [(reply, addr)] = protocol.transport.written
    assert addr == ("198.51.100.7", 4242)
    assert parse_binding_success(reply, TXID) == ("198.51.100.7", 4242)
    assert (protocol.answered, protocol.dropped, protocol.limited) == (1, 0, 0)


def test_ipv6_four_tuple_source_is_answered():
    """An IPv6 (host, port, flowinfo, scopeid) source gets a 52-byte reply at that exact address."""
    protocol, _ = responder()
    source = ("2001:db8::7", 4242, 0, 0)
    protocol.datagramReceived(binding_request(TXID), source)
    [(reply, addr)] = protocol.transport.written
    assert addr == source
    assert len(reply) == 52
    assert parse_binding_success(reply, TXID) == ("2001:db8::7", 4242)


def test_garbage_is_counted_and_not_answered():
    """A datagram that is not a request we answer is counted as dropped; nothing is sent."""
    protocol, _ = responder()
    protocol.datagramReceived(b"garbage", ("198.51.100.7", 4242))
    assert protocol.transport.written == []
    assert (protocol.answered, protocol.dropped, protocol.limited) == (0, 1, 0)


def test_rate_limit_kicks_in_after_burst():
    """One source gets `burst` replies at once; the next is withheld and counted as limited."""
    protocol, _ = responder(rate=20, burst=40)
    for _ in range(41):
        protocol.datagramReceived(binding_request(TXID), ("198.51.100.7", 4242))
    assert (protocol.answered, protocol.limited) == (40, 1)
    assert len(protocol.transport.written) == 40


def test_rate_limit_recovers_as_time_passes():
    """After a second, a limited source has `rate` more replies."""
    protocol, clock = responder(rate=20, burst=40)
    for _ in range(41):
        protocol.datagramReceived(binding_request(TXID), ("198.51.100.7", 4242))
    clock.advance(1)
    for _ in range(21):
        protocol.datagramReceived(binding_request(TXID), ("198.51.100.7", 4242))
    assert (protocol.answered, protocol.limited) == (60, 2)


def test_rate_limit_is_per_source_ip():
    """A source that used up its burst does not limit another IP."""
    protocol, _ = responder(rate=20, burst=40)
    for _ in range(41):
        protocol.datagramReceived(binding_request(TXID), ("198.51.100.7", 4242))
    protocol.datagramReceived(binding_request(TXID), ("198.51.100.8", 4242))
    assert protocol.transport.written[-1][1] == ("198.51.100.8", 4242)


def test_probe_answered_after_ten_thousand_garbage_datagrams():
    """Garbage costs no tokens: a valid probe from the same source is still answered."""
    protocol, _ = responder()
    for i in range(10_000):
        protocol.datagramReceived(i.to_bytes(4, "big") * 7, ("198.51.100.7", 4242))
    protocol.datagramReceived(binding_request(TXID), ("198.51.100.7", 4242))
    assert protocol.dropped == 10_000
    assert [addr for _, addr in protocol.transport.written] == [("198.51.100.7", 4242)]


def test_bucket_table_is_bounded():
    """Replies to more sources than max_sources keep only the most recent ones in memory."""
    protocol, _ = responder(max_sources=100)
    for i in range(1000):
        protocol.datagramReceived(binding_request(TXID), (f"10.0.{i // 256}.{i % 256}", 4242))
    assert protocol.answered == 1000
    assert len(protocol.limiter.buckets) == 100


def test_bucket_table_defaults_to_ten_thousand_sources():
    """By default at most 10,000 source IPs are remembered."""
    protocol, _ = responder()
    assert protocol.limiter.max_keys == 10_000


def test_drops_are_logged_at_most_once_per_interval():
    """A flood of garbage yields one debug event per LOG_INTERVAL, not one per datagram."""
    protocol, clock = responder()
    events = []
    protocol.log = Logger(observer=events.append)
    for _ in range(1000):
        protocol.datagramReceived(b"garbage", ("198.51.100.7", 4242))
    clock.advance(protocol.LOG_INTERVAL)
    protocol.datagramReceived(b"garbage", ("198.51.100.7", 4242))
    assert len(events) == 2
    assert {e["log_level"].name for e in events} == {"debug"}
    assert events[1]["dropped"] == 1001


def test_make_stun_service_is_a_udp_server():
    """makeStunService() builds a UDPServer for a StunResponder on the given port and interface."""
    clock = Clock()
    service = makeStunService(3478, "127.0.0.1", clock)
    assert isinstance(service, UDPServer)
    port, protocol = service.args
    assert port == 3478 and isinstance(protocol, StunResponder) and protocol.clock is clock
    assert service.kwargs == {"interface": "127.0.0.1"}
