"""The data paths of file transfers over TCP (:class:`~p2pd.peer.interfaces.IDataPaths`): the side that dialled
the link dials the data connection too (it knows that direction works through any NAT); the other side waits
for it on its own port, where the :mod:`demux <p2pd.peer.net.demux>` hands it to the session it names."""

from twisted.internet import defer, endpoints
from zope.interface import implementer

from p2pd.peer.interfaces import IDataPaths
from p2pd.peer.net.tcp_data import DataConnection

CONNECT_TIMEOUT = 10


@implementer(IDataPaths)
class TCPDataPaths:
    def __init__(self, reactor):
        self.reactor = reactor
        self.waiting = {}  # session id -> IStreamReceiver waiting for its data connection

    def open(self, link, session_id, receiver, transport="tcp"):
        if not link.outgoing:
            self.waiting[session_id] = receiver
            return defer.succeed(None)
        peer = link.peer_address()
        kind = endpoints.TCP6ClientEndpoint if ":" in peer.host else endpoints.TCP4ClientEndpoint
        endpoint = kind(self.reactor, peer.host, peer.port, timeout=CONNECT_TIMEOUT)
        d = endpoints.connectProtocol(endpoint, DataConnection(receiver, self.reactor, dialer=True))
        return d.addCallback(lambda _: None)

    def claim(self, session_id):
        """The receiver a data connection that opened with *session_id* belongs to, once (None: drop it)."""
        return self.waiting.pop(session_id, None)

    def forget(self, session_id):
        self.waiting.pop(session_id, None)
