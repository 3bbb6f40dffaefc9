"""The peer's TCP port: its first bytes tell a TLS link from the data connection of a file transfer."""

from twisted.internet import protocol

from p2pd.core import datastream
from p2pd.peer.net.admission import Admission
from p2pd.peer.net.tcp_data import DataConnection
from p2pd.peer.timers import Timer

DATA_TIMEOUT = 30.0  # seconds a new connection has to say what it is


class Demux(protocol.Protocol):
    """The peer's TCP port carries both TLS links and data connections: the first bytes tell which.

    TLS starts with a handshake record (0x16); a data connection with :data:`datastream.MAGIC` and a session
    id that must name a session waiting for its connection. Anything else is closed.

    The connection holds a pending slot of the factory's :class:`Admission` until it is verified: a data
    connection once its session claimed it, a TLS link once the link is ready (its ``when_ready`` fired)."""

    def __init__(self, factory, addr):
        self.factory = factory
        self.addr = addr
        self.inner = None
        self.buffer = b""
        self.timer = Timer(factory.clock, DATA_TIMEOUT, self._silent)
        self.admitted = True  # holds a slot of factory.admission

    def _watch(self, inner):
        """Give the slot back once the ILink inside *inner* (TLS wraps it) is verified."""
        link = getattr(inner, "wrappedProtocol", inner)
        ready = getattr(link, "when_ready", None)
        if ready is None:
            self.verified()
        else:
            ready.addCallback(self.verified)

    def verified(self, _=None):
        if self.admitted:
            self.admitted = False
            self.factory.admission.leave(self.addr.host)
        return _

    def connectionMade(self):
        self.timer.arm()

    def _silent(self):
        self.transport.abortConnection()

    def dataReceived(self, data):
        if self.inner is not None:
            return self.inner.dataReceived(data)
        self.buffer += data
        if self.buffer[:1] == b"\x16":
            inner = self.factory.tls.buildProtocol(self.addr)
            if inner is not None:
                self._watch(inner)
        elif len(self.buffer) < datastream.PREAMBLE:
            if datastream.MAGIC.startswith(self.buffer[:len(datastream.MAGIC)]):
                return
            inner = None
        elif self.buffer.startswith(datastream.MAGIC):
            receiver = self.factory.paths.claim(self.buffer[len(datastream.MAGIC):datastream.PREAMBLE])
            inner = self.factory.data(receiver, self.factory.reactor, dialer=False) if receiver is not None else None
            self.buffer = self.buffer[datastream.PREAMBLE:]
            if inner is not None:
                self.verified()
        else:
            inner = None
        self.timer.cancel()
        if inner is None:
            return self.transport.abortConnection()
        self.inner = inner
        inner.makeConnection(self.transport)
        data, self.buffer = self.buffer, b""
        if data:
            inner.dataReceived(data)

    def connectionLost(self, reason=protocol.connectionDone):
        self.timer.cancel()
        self.verified()
        if self.inner is not None:
            self.inner.connectionLost(reason)


class DemuxFactory(protocol.Factory):
    """The factory of the peer's TCP port: TLS links go to *tls_factory*, data connections to the receiver that
    *paths* (a :class:`~p2pd.peer.net.tcp_paths.TCPDataPaths`) holds for their session id."""

    def __init__(self, tls_factory, paths, reactor, data=DataConnection, admission=None):
        self.data = data  # builds the data connection of a claimed session: (receiver, reactor, dialer)
        self.tls = tls_factory
        self.paths = paths
        self.reactor = self.clock = reactor
        self.admission = admission or Admission(reactor)

    def startFactory(self):
        self.tls.doStart()

    def stopFactory(self):
        self.tls.doStop()

    def buildProtocol(self, addr):
        if not self.admission.enter(addr.host):
            return None  # closed at once
        return Demux(self, addr)
