"""The peers' STUN client (p2pd.peer.nat.stun_client) and the UDP port it sends from (p2pd.peer.net.udp_port):
queries go out of the daemon's own socket, on RFC 8489 timers, and only our server's answer to our transaction
ends one."""

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.internet.testing import FakeDatagramTransport

from p2pd.core import stun
from p2pd.core.stun import StunError, binding_success, parse_message
from p2pd.peer.nat.stun_client import StunClient
from p2pd.peer.net.udp_port import STUN_BYTES, UDPPort
from p2pd.registry.stun import StunResponder
from tests.test_stun import SERVER, fired, message


class Rig:
    """A StunClient on a Clock whose datagrams go to a FakeDatagramTransport."""

    def __init__(self, family=4):
        self.clock = Clock()
        self.transport = FakeDatagramTransport()
        self.client = StunClient(self.clock, lambda data, addr: self.transport.write(data, addr), lambda: family)

    def sent(self, to=SERVER):
        """The transaction id of each request sent so far (all to *to*)."""
        assert {addr for _, addr in self.transport.written} <= {to}
        return [parse_message(data).transaction_id for data, _ in self.transport.written]

    def answer(self, data, addr=SERVER):
        self.client.datagram_received(data, addr)

    def idle(self):
        return self.clock.getDelayedCalls() == [] and self.client.transactions == {}


def test_query_retransmits_on_rfc_timers_then_times_out():
    """Sends at 0, 0.5, 1.5 and 3.5 s (RTO 0.5 s doubling), fails at 5.5 s and forgets the transaction."""
    rig = Rig()
    d = rig.client.query(*SERVER, timeout=2.0, retries=3)
    assert len(rig.sent()) == 1
    for elapsed, sends in [(0.49, 1), (0.5, 2), (1.49, 2), (1.5, 3), (3.5, 4), (5.49, 4)]:
        rig.clock.advance(elapsed - rig.clock.seconds())
        assert len(rig.sent()) == sends, elapsed
    assert not d.called
    rig.clock.advance(0.01)
    fired(d).trap(TimeoutError)
    assert rig.idle()
    assert len(set(rig.sent())) == 1


def test_query_rto_is_bounded_by_timeout():
    """Retransmission intervals never exceed ``timeout``."""
    rig = Rig()
    d = rig.client.query(*SERVER, timeout=1.0, retries=5)
    rig.clock.pump([0.5] * 11)
    assert len(rig.sent()) == 6  # at 0, 0.5, 1.5, 2.5, 3.5 and 4.5 s
    fired(d).trap(TimeoutError)  # at 5.5 s


def test_query_fires_with_the_mapped_address_and_stops():
    """The server's answer to the retransmitted request fires the query; nothing more is sent."""
    rig = Rig()
    d = rig.client.query(*SERVER)
    rig.clock.advance(0.5)
    txid = rig.sent()[-1]
    rig.answer(binding_success(txid, "203.0.113.9", 61000))
    assert fired(d) == ("203.0.113.9", 61000)
    assert rig.idle()
    rig.clock.advance(10)
    assert len(rig.sent()) == 2


def test_query_ignores_strangers_and_other_transactions():
    """Datagrams from another address, for another transaction, or not STUN, do not end the query."""
    rig = Rig()
    d = rig.client.query(*SERVER)
    txid = rig.sent()[0]
    rig.answer(binding_success(txid, "6.6.6.6", 666), ("192.0.2.66", 3478))
    rig.answer(binding_success(bytes(12), "6.6.6.6", 666))
    rig.answer(b"not stun")
    assert not d.called and rig.client.ignored == 3
    rig.answer(binding_success(txid, "203.0.113.9", 61000))
    assert fired(d) == ("203.0.113.9", 61000)


def test_concurrent_queries_are_told_apart_by_transaction_id():
    """Two queries to two servers share the socket; each ends only with its own server's answer."""
    rig = Rig()
    other = ("198.51.100.7", 3478)
    first = rig.client.query(*SERVER)
    second = rig.client.query(*other)
    (first_txid, _), (second_txid, _) = [(parse_message(d).transaction_id, a) for d, a in rig.transport.written]
    assert first_txid != second_txid
    rig.answer(binding_success(second_txid, "203.0.113.2", 2000), other)
    assert fired(second) == ("203.0.113.2", 2000) and not first.called
    rig.answer(binding_success(first_txid, "203.0.113.1", 1000))
    assert fired(first) == ("203.0.113.1", 1000)
    assert rig.idle()


def test_query_fails_on_an_error_response():
    """An error response to our transaction fails the query with StunError."""
    rig = Rig()
    d = rig.client.query(*SERVER)
    error = message((stun.ERROR_CODE, b"\0\0\x04\x14Unknown"), msg_type=stun.BINDING_ERROR, txid=rig.sent()[0])
    rig.answer(error)
    failure = fired(d)
    failure.trap(StunError)
    assert "420 Unknown" in str(failure.value)
    assert rig.idle()


def test_query_can_be_cancelled():
    """Cancelling stops the retransmissions and forgets the transaction."""
    rig = Rig()
    d = rig.client.query(*SERVER)
    d.cancel()
    fired(d).trap(CancelledError)
    assert rig.idle()


def test_stop_cancels_every_query():
    rig = Rig()
    queries = [rig.client.query(*SERVER), rig.client.query("198.51.100.7", 3478)]
    rig.client.stop()
    for d in queries:
        fired(d).trap(CancelledError)
    assert rig.idle()


def test_query_needs_an_ip_address():
    """A host name is refused with StunError, without sending anything."""
    rig = Rig()
    fired(rig.client.query("stun.example.com", 3478)).trap(StunError)
    assert rig.transport.written == []


def test_query_to_a_server_of_the_other_family_fails_at_once():
    """An IPv4 socket cannot reach an IPv6 server (and the reverse): StunError, nothing sent."""
    rig = Rig(family=4)
    failure = fired(rig.client.query("2001:db8::1", 3478))
    failure.trap(StunError)
    assert "IPv4" in str(failure.value) and rig.transport.written == []
    rig6 = Rig(family=6)
    rig6.client.query("2001:db8::1", 3478)
    assert rig6.transport.written[0][1] == ("2001:db8::1", 3478)


def test_a_send_error_fails_the_query():
    def send(data, addr):
        raise OSError(101, "Network is unreachable")

    client = StunClient(Clock(), send)
    fired(client.query(*SERVER)).trap(OSError)
    assert client.transactions == {}


def test_udp_port_routes_by_first_byte_and_drops_the_rest():
    """STUN (first byte 0-3) goes to its handler; unclaimed first bytes and empty datagrams are counted."""
    port = UDPPort()
    got = []
    port.route(STUN_BYTES, lambda data, addr: got.append((data, addr)))
    port.datagramReceived(b"\x01\x01rest", SERVER)
    port.datagramReceived(b"\x80media", SERVER)
    port.datagramReceived(b"", SERVER)
    assert got == [(b"\x01\x01rest", SERVER)] and port.dropped == 2
    with pytest.raises(ValueError):
        port.route(range(3, 5), got.append)


def test_a_failing_handler_does_not_escape_the_port():
    port = UDPPort()
    port.route(STUN_BYTES, lambda data, addr: 1 / 0)
    port.datagramReceived(b"\x00\x01", SERVER)
    assert port.dropped == 1


def _own_socket_round_trip(host):
    """A query through a real UDPPort on *host* against a real responder: the mapping is that very port's."""
    from twisted.internet import reactor

    responder = StunResponder(reactor)
    server = reactor.listenUDP(0, responder, interface=host)
    udp = UDPPort()
    ours = reactor.listenUDP(0, udp, interface=host)
    client = StunClient(reactor, udp.send, udp.family)
    udp.route(STUN_BYTES, client.datagram_received)

    def stop(outcome):
        server.stopListening()
        ours.stopListening()
        return outcome

    d = client.query(host, server.getHost().port)
    return d.addBoth(stop), ours.getHost().port, responder


@pytest_twisted.inlineCallbacks
def test_query_round_trip_over_loopback_from_our_own_port():
    """A real query from the daemon's UDP port learns 127.0.0.1 and that port's own number."""
    d, our_port, responder = _own_socket_round_trip("127.0.0.1")
    host, mapped_port = yield d
    assert (host, mapped_port) == ("127.0.0.1", our_port)
    assert (responder.answered, responder.dropped, responder.limited) == (1, 0, 0)


@pytest_twisted.inlineCallbacks
def test_query_round_trip_over_ipv6_loopback():
    """The same over ::1, if this host has IPv6 loopback."""
    from twisted.internet import reactor
    from twisted.internet.error import CannotListenError

    try:
        reactor.listenUDP(0, UDPPort(), interface="::1").stopListening()
    except CannotListenError:
        pytest.skip("no IPv6 loopback")
    d, our_port, responder = _own_socket_round_trip("::1")
    host, mapped_port = yield d
    assert (host, mapped_port) == ("::1", our_port)
    assert responder.answered == 1
