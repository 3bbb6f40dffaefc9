"""The Demux of the peer's TCP port (p2pd.peer.net.demux): TLS links to the TLS factory, data connections to the
receiver their session id names, anything else closed; on a StringTransport and a Clock."""

import pytest
from twisted.internet import defer, protocol
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from p2pd.core import datastream
from p2pd.peer.net.admission import Admission
from p2pd.peer.net.demux import DATA_TIMEOUT, DemuxFactory


class Transport(StringTransport):
    aborted = False

    def abortConnection(self):
        self.aborted = True
        super().abortConnection()


class Recorder(protocol.Protocol):
    def __init__(self):
        self.data = []
        self.lost = []

    def dataReceived(self, data):
        self.data.append(data)

    def connectionLost(self, reason=None):
        self.lost.append(reason)


class FakeTLSFactory:
    def __init__(self):
        self.built = []

    def buildProtocol(self, addr):
        p = Recorder()
        self.built.append((addr, p))
        return p


class FakeSession:
    def __init__(self, sid):
        self.sid = sid
        self.conns, self.data, self.lost_reasons = [], [], []


class FakeData(protocol.Protocol):
    """Stands for the data connection the demux builds (tests/test_tcp_data.py runs the real one on sockets)."""

    def __init__(self, receiver, reactor, dialer):
        self.receiver = receiver
        self.reactor = reactor
        self.dialer = dialer
        self.closed = False
        receiver.conns.append(self)

    def dataReceived(self, data):
        self.receiver.data.append(data)

    def connectionLost(self, reason=None):
        self.closed = True
        self.receiver.lost_reasons.append(reason)


class FakePaths:
    def __init__(self, sessions):
        self.sessions = dict(sessions)
        self.claimed = []

    def claim(self, sid):
        self.claimed.append(sid)
        return self.sessions.pop(sid, None)


SID = b"S" * 16


ADDR = IPv4Address("TCP", "192.0.2.7", 40000)


def demux(sessions=()):
    clock = Clock()
    tls = FakeTLSFactory()
    known = {sid: FakeSession(sid) for sid in sessions}
    factory = DemuxFactory(tls, FakePaths(known), clock, data=FakeData)
    proto = factory.buildProtocol(ADDR)
    transport = Transport()
    proto.makeConnection(transport)
    return proto, transport, clock, tls, factory.paths, known


def test_demux_hands_tls_to_the_tls_factory():
    proto, transport, clock, tls, transfers, _ = demux()
    proto.dataReceived(b"\x16\x03\x01rest of a client hello")
    assert len(tls.built) == 1 and tls.built[0][0] == ADDR
    inner = tls.built[0][1]
    assert inner.transport is transport and inner.data == [b"\x16\x03\x01rest of a client hello"]
    proto.dataReceived(b"more")
    assert inner.data[-1] == b"more"
    assert clock.getDelayedCalls() == [] and not transport.aborted and transfers.claimed == []
    proto.connectionLost(Failure(Exception("bye")))
    assert len(inner.lost) == 1


@pytest.mark.parametrize("cuts", [[], [1], [8], [23], [24], [3, 10, 24, 25]])
def test_demux_hands_a_known_session_its_data_connection(cuts):
    proto, transport, clock, tls, transfers, known = demux([SID])
    session = known[SID]
    stream = datastream.MAGIC + SID + b"first records"
    bounds = [0] + cuts + [len(stream)]
    for a, b in zip(bounds, bounds[1:]):
        proto.dataReceived(stream[a:b])
    assert transfers.claimed == [SID] and tls.built == []
    assert len(session.conns) == 1
    conn = session.conns[0]
    assert isinstance(conn, FakeData) and conn.reactor is clock and conn.transport is transport and not conn.dialer
    assert b"".join(session.data) == b"first records"
    assert transport.value() == b""  # the listening side writes no preamble
    assert not transport.aborted and clock.getDelayedCalls() == []
    proto.dataReceived(b"later")
    assert session.data[-1] == b"later"
    proto.connectionLost(Failure(Exception("bye")))
    assert conn.closed and len(session.lost_reasons) == 1


@pytest.mark.parametrize("data", [
    datastream.MAGIC + b"U" * 16,  # unknown session
    datastream.MAGIC + b"U" * 16 + b"records",
    b"GET / HTTP/1.1\r\n\r\n",
    b"P2PDDAT2" + SID,  # another version
    b"P2PX",  # a prefix of MAGIC gone wrong
    b"\x00",
    b"\x17\x03\x03",
])
def test_demux_aborts_anything_else(data):
    proto, transport, clock, tls, transfers, known = demux([SID])
    proto.dataReceived(data)
    assert transport.aborted
    assert tls.built == [] and known[SID].conns == []
    assert clock.getDelayedCalls() == []


def test_demux_waits_for_a_whole_preamble():
    proto, transport, clock, tls, transfers, known = demux([SID])
    proto.dataReceived(datastream.MAGIC[:5])
    proto.dataReceived(datastream.MAGIC[5:] + SID[:15])
    assert not transport.aborted and transfers.claimed == [] and known[SID].conns == []


@pytest.mark.parametrize("sent", [b"", datastream.MAGIC[:4], datastream.MAGIC + SID[:15]])
def test_demux_drops_a_silent_connection(sent):
    proto, transport, clock, tls, transfers, known = demux([SID])
    if sent:
        proto.dataReceived(sent)
    clock.advance(DATA_TIMEOUT - 0.1)
    assert not transport.aborted
    clock.advance(0.1)
    assert transport.aborted and tls.built == [] and known[SID].conns == []


def test_demux_cancels_its_timer_when_the_connection_closes_early():
    proto, transport, clock, tls, transfers, known = demux()
    proto.connectionLost(Failure(Exception("gone")))
    assert clock.getDelayedCalls() == []


class LinkInTLS(Recorder):
    """What the TLS factory builds in production: TLS around a link that becomes ready once verified."""

    def __init__(self):
        super().__init__()
        self.wrappedProtocol = self
        self.when_ready = defer.Deferred()


def test_unverified_connections_are_bounded_in_all_and_per_address():
    """Issue 12, finding 2: past the limits a new connection is closed as it is accepted (buildProtocol gives
    None); the slots come back when a link is verified, a data connection claimed, or a connection closes."""
    clock = Clock()
    links = []

    class TLS(FakeTLSFactory):
        def buildProtocol(self, addr):
            links.append(LinkInTLS())
            return links[-1]

    factory = DemuxFactory(TLS(), FakePaths({SID: FakeSession(SID)}), clock, data=FakeData,
                           admission=Admission(clock, total=5, per_host=3))
    a, b = (IPv4Address("TCP", "192.0.2.%d" % n, 1000) for n in (1, 2))
    conns = [factory.buildProtocol(a) for _ in range(4)]
    assert [c is None for c in conns] == [False, False, False, True]  # 3 per address
    more = [factory.buildProtocol(b) for _ in range(3)]
    assert [c is None for c in more] == [False, False, True]  # 5 in all
    for c in conns[:3] + more[:2]:
        c.makeConnection(Transport())
    conns[0].dataReceived(b"\x16hello")  # a TLS link: its slot comes back once it is verified
    assert factory.buildProtocol(a) is None
    links[0].when_ready.callback(links[0])
    assert factory.buildProtocol(a) is not None
    more[0].dataReceived(datastream.MAGIC + SID)  # a claimed data connection: verified at once
    assert factory.buildProtocol(b) is not None
    conns[1].connectionLost(Failure(Exception("gone")))  # closed: its slot comes back, once
    conns[1].connectionLost(Failure(Exception("gone again")))
    assert factory.admission.pending == 4 and factory.admission.by_host == {"192.0.2.1": 2, "192.0.2.2": 2}


def test_an_unverified_link_that_fails_gives_its_slot_back_when_it_closes():
    clock = Clock()
    link = LinkInTLS()

    class TLS(FakeTLSFactory):
        def buildProtocol(self, addr):
            return link

    factory = DemuxFactory(TLS(), FakePaths({}), clock, data=FakeData, admission=Admission(clock, 1, 1))
    conn = factory.buildProtocol(ADDR)
    conn.makeConnection(Transport())
    conn.dataReceived(b"\x16")
    link.when_ready.addErrback(lambda f: None)
    link.when_ready.errback(Exception("handshake timed out"))
    assert factory.buildProtocol(ADDR) is None
    conn.connectionLost(Failure(Exception("closed")))
    assert factory.buildProtocol(ADDR) is not None


def test_new_connections_from_one_address_are_rate_limited():
    """Issue 12, finding 10: every handshake costs crypto and perhaps a registry lookup, so one address gets a
    burst and then a steady rate of new connections; others are not affected."""
    clock = Clock()
    admission = Admission(clock, rate=1, burst=2)
    assert [admission.enter("192.0.2.1") for _ in range(3)] == [True, True, False]
    assert admission.enter("192.0.2.2") is True
    clock.advance(1)
    assert admission.enter("192.0.2.1") is True
