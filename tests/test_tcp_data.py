"""The TCP data connection (p2pd.peer.net.tcp_data) on real sockets: a private epoll reactor (never installed,
never run: the test iterates it) and a plain socket at the other end that the test controls. These are the
paths production uses: reads straight into the receiver's opener, writes from the producer's own buffer."""

import socket
import time

import pytest
from twisted.internet import protocol
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.testing import StringTransport
from zope.interface import implementer
from zope.interface.verify import verifyObject

from p2pd.core import datastream
from p2pd.peer.interfaces import IByteStream, IDataPaths, IStreamReceiver
from p2pd.peer.net.demux import DemuxFactory
from p2pd.peer.net.tcp_data import DataConnection
from p2pd.peer.net.tcp_paths import TCPDataPaths

KEYS = datastream.SessionKeys(b"\x07" * 32)


@implementer(IStreamReceiver)
class Receiver:
    def __init__(self):
        self.opener = datastream.Opener(KEYS.to_receiver)
        self.preamble = KEYS.preamble
        self.streams, self.records, self.lost = [], [], []
        self.moving = 0
        self.arrivals = 0

    def stream_started(self, stream):
        self.streams.append(stream)

    def stream_arrived(self):
        self.arrivals += 1
        self.records.extend(self.opener.records())

    def stream_moving(self):
        self.moving += 1

    def stream_lost(self, reason):
        self.lost.append(reason)


class Producer:
    def __init__(self):
        self.calls = []

    def pauseProducing(self):
        self.calls.append("pause")

    def resumeProducing(self):
        self.calls.append("resume")


class Net:
    def __init__(self):
        self.reactor = EPollReactor()
        self.conns, self.clients, self.ports = [], [], []

    def spin(self, until, timeout=5.0):
        end = time.monotonic() + timeout
        while not until() and time.monotonic() < end:
            self.reactor.runUntilCurrent()
            self.reactor.doIteration(0.005)
        return until()

    def listen(self, factory):
        port = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.ports.append(port)
        return port

    def connect(self, port, buffers=None):
        client = socket.socket()
        self.clients.append(client)
        if buffers:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffers)
        client.connect(("127.0.0.1", port.getHost().port))
        return client

    def pair(self, buffers=None):
        """A DataConnection (listening side) for a new Receiver, and the plain socket at the other end."""
        receiver = Receiver()
        reactor, conns = self.reactor, self.conns

        class Factory(protocol.Factory):
            def buildProtocol(self, addr):
                conn = DataConnection(receiver, reactor, dialer=False)
                conns.append(conn)
                return conn

        client = self.connect(self.listen(Factory()), buffers)
        assert self.spin(lambda: receiver.streams)
        conn = conns[-1]
        if buffers:
            conn.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffers)
        return conn, receiver, client

    def close(self):
        for conn in self.conns:
            if not conn.closed and conn.transport is not None:
                conn.transport.abortConnection()
        self.spin(lambda: all(c.closed for c in self.conns), 2)
        for port in self.ports:
            port.stopListening()
        self.spin(lambda: False, 0.05)
        for client in self.clients:
            client.close()
        r = self.reactor
        r.removeReader(r.waker)
        r.waker.connectionLost(None)
        r._poller.close()


@pytest.fixture
def net():
    world = Net()
    yield world
    world.close()


def test_the_connection_is_a_byte_stream_and_starts_its_receiver(net):
    conn, receiver, client = net.pair()
    assert verifyObject(IByteStream, conn) and verifyObject(IStreamReceiver, receiver)
    assert receiver.streams == [conn] and not conn.closed
    assert verifyObject(IDataPaths, TCPDataPaths(net.reactor))


def test_a_write_the_socket_takes_goes_out_at_once(net):
    """A write the socket takes whole is sent in the call: nothing waits, the producer is not paused."""
    conn, receiver, client = net.pair()
    producer = Producer()
    conn.registerProducer(producer, True)
    conn.write(memoryview(bytearray(b"record")))
    client.settimeout(5)
    assert client.recv(100) == b"record"
    assert producer.calls == [] and not conn.unsent and not conn.writing


def test_what_the_socket_does_not_take_waits_with_the_producer_paused(net):
    """A record bigger than the socket buffers: the producer is paused while part of it waits (as a view of its
    buffer, not a copy), and resumed once the reactor has sent the rest; the bytes arrive whole and in order."""
    conn, receiver, client = net.pair(buffers=64 * 1024)
    producer = Producer()
    conn.registerProducer(producer, True)
    record = bytearray(b"r" * (4 << 20))
    conn.write(memoryview(record))
    assert producer.calls == ["pause"] and conn.unsent and conn.writing
    assert isinstance(conn.unsent[0], memoryview) and conn.unsent[0].obj is record
    conn.write(b"next")  # queued behind, never sent ahead of the record
    got = bytearray()
    client.setblocking(False)
    assert net.spin(lambda: _drain(client, got) and not conn.unsent and len(got) == len(record) + 4, 10)
    assert bytes(got) == bytes(record) + b"next"
    assert producer.calls == ["pause", "resume"] and not conn.writing
    assert receiver.moving > 0  # each send of what waited told the receiver the path still moves


def _drain(client, got):
    try:
        while True:
            chunk = client.recv(1 << 20)
            if not chunk:
                return True
            got.extend(chunk)
    except BlockingIOError:
        return True


def test_reads_land_in_the_openers_space_and_records_arrive_whole(net):
    """Records sent in odd pieces come up whole: the connection reads into ``opener.space()`` (up to the end of
    the record in hand), calls ``filled`` and ``stream_arrived``."""
    conn, receiver, client = net.pair()
    sealer = datastream.Sealer(KEYS.to_receiver)
    stream = sealer.json({"t": "file", "i": 0}) + b"".join(sealer.data(b"x" * 300000)) + sealer.end(0)
    for i in range(0, len(stream), 65537):
        client.sendall(stream[i:i + 65537])
    assert net.spin(lambda: len(receiver.records) == 3)
    assert receiver.records[0] == (datastream.JSON, {"t": "file", "i": 0})
    assert bytes(receiver.records[1][1]) == b"x" * 300000 and receiver.records[2] == (datastream.END, 0)


def test_pause_receiving_stops_reading_until_resumed(net):
    conn, receiver, client = net.pair()
    conn.pauseReceiving()
    client.sendall(datastream.Sealer(KEYS.to_receiver).end(3))
    net.spin(lambda: False, 0.2)
    assert receiver.records == [] and receiver.arrivals == 0
    conn.resumeReceiving()
    assert net.spin(lambda: receiver.records == [(datastream.END, 3)])


def test_a_graceful_close_sends_what_waits_then_ends_the_connection(net):
    conn, receiver, client = net.pair(buffers=64 * 1024)
    conn.write(memoryview(bytearray(b"z" * (2 << 20))))
    assert conn.unsent
    conn.close()
    conn.write(b"late")  # dropped: nothing written after close is sent
    got = bytearray()
    client.setblocking(False)
    assert net.spin(lambda: _drain(client, got) and conn.closed, 10)
    assert bytes(got) == b"z" * (2 << 20)
    assert len(receiver.lost) == 1


def test_an_abort_drops_what_waits(net):
    conn, receiver, client = net.pair(buffers=64 * 1024)
    conn.write(memoryview(bytearray(4 << 20)))
    assert conn.unsent
    conn.close(abort=True)
    assert not conn.unsent
    assert net.spin(lambda: conn.closed) and len(receiver.lost) == 1


def test_the_peer_going_away_is_reported_to_the_receiver(net):
    conn, receiver, client = net.pair()
    client.close()
    assert net.spin(lambda: conn.closed) and len(receiver.lost) == 1


def test_a_broken_connection_with_bytes_waiting_is_reported(net):
    conn, receiver, client = net.pair(buffers=64 * 1024)
    conn.write(memoryview(bytearray(4 << 20)))
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    client.close()  # a reset
    assert net.spin(lambda: conn.closed) and len(receiver.lost) == 1 and not conn.unsent


def test_a_dialling_data_connection_writes_the_preamble_first(net):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    receiver = Receiver()
    conn = DataConnection(receiver, net.reactor, dialer=True)
    net.conns.append(conn)
    net.reactor.connectTCP("127.0.0.1", server.getsockname()[1], protocol.ClientFactory.forProtocol(lambda: conn))
    server.setblocking(False)
    net.clients.append(server)
    accepted = []

    def accept():
        try:
            accepted.append(server.accept()[0])
        except BlockingIOError:
            pass
        return accepted

    assert net.spin(accept)
    peer = accepted[0]
    net.clients.append(peer)
    assert net.spin(lambda: receiver.streams == [conn])
    peer.settimeout(5)
    assert peer.recv(100) == KEYS.preamble


class FakeTLS:
    def buildProtocol(self, addr):
        raise AssertionError("not a TLS connection")

    def doStart(self):
        pass

    def doStop(self):
        pass


def test_the_demux_hands_a_claimed_session_its_data_connection_with_the_bytes_that_came_along(net):
    """Through the port's demux on a real socket: the preamble names a waiting receiver; the records sent in
    the same packet reach it, and later ones are read by the data connection itself."""
    paths = TCPDataPaths(net.reactor)
    receiver = Receiver()
    link = type("Link", (), {"outgoing": False})()
    paths.open(link, KEYS.sid, receiver)
    port = net.listen(DemuxFactory(FakeTLS(), paths, net.reactor))
    client = net.connect(port)
    sealer = datastream.Sealer(KEYS.to_receiver)
    client.sendall(KEYS.preamble + sealer.end(0))
    assert net.spin(lambda: receiver.records == [(datastream.END, 0)])
    assert paths.waiting == {} and len(receiver.streams) == 1
    client.sendall(sealer.end(1))
    assert net.spin(lambda: receiver.records == [(datastream.END, 0), (datastream.END, 1)])
    net.conns.append(receiver.streams[0])


def test_a_data_connection_needs_a_socket():
    """There is no second path for transports without one (the sessions' unit tests use a fake IByteStream)."""
    conn = DataConnection(Receiver(), None, dialer=False)
    with pytest.raises(AttributeError):
        conn.makeConnection(StringTransport())
