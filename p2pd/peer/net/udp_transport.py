"""The UDP stream as a Twisted transport, for a protocol to run over (TLS and the peer line protocol, when two
peers behind NATs can reach each other only by UDP: issue 16).

:class:`StreamTransport` is a :class:`~p2pd.peer.net.udp_stream.UDPStream` that hands what arrives to a
protocol's ``dataReceived`` instead of a transfer's opener. It is what ``TLSMemoryBIOProtocol`` needs below it:
``ITransport`` (write, writeSequence, loseConnection, getPeer, getHost), ``IConsumer`` (a producer is paused while
the stream's send buffer is full), ``IPushProducer`` (pausing it stops handing bytes up, and the peer is held by
its credit), and ``abortConnection``.
"""

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IConsumer, IPushProducer, ITransport
from zope.interface import implementer

from p2pd.peer.net.udp_stream import UDPStream


def _address(addr):
    host, port = addr[0], addr[1]
    return (IPv6Address if ":" in host else IPv4Address)("UDP", host, port)


@implementer(ITransport, IConsumer, IPushProducer)
class StreamTransport(UDPStream):
    def __init__(self, port, conn, protocol, reactor):
        super().__init__(port, conn, None, reactor)
        self.protocol = protocol
        self.disconnecting = False

    def start(self):
        """Register with the port and start *protocol* on this transport."""
        self.port.add(self)
        self.protocol.makeConnection(self)
        self.port.schedule(self)

    # what arrives goes to the protocol

    def _moving(self):
        pass

    def _deliver(self):
        if not self.receiving or self.closed:
            return
        data = self.conn.read()
        if data:
            self.protocol.dataReceived(data)

    def _ended(self, reason):
        self.protocol.connectionLost(reason)

    # ITransport

    def writeSequence(self, data):
        self.write(b"".join(data))

    def loseConnection(self):
        self.disconnecting = True
        self.close()

    def abortConnection(self):
        self.disconnecting = True
        self.close(abort=True)

    def getPeer(self):
        return _address(self.conn.paths.addr)

    def getHost(self):
        host = self.port.udp.transport.getHost()
        return _address((host.host, host.port))

    # IPushProducer: the protocol above is slow to take bytes

    def pauseProducing(self):
        self.pauseReceiving()

    def resumeProducing(self):
        self.resumeReceiving()

    def stopProducing(self):
        self.abortConnection()
