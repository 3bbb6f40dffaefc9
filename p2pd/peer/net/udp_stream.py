"""The UDP stream on the daemon's one UDP socket: the thin reactor side of :mod:`p2pd.core.udpstream`.

:class:`StreamPort` owns every stream connection of the daemon. It takes the datagrams whose first byte is
:data:`~p2pd.core.udppackets.FIRST_BYTE` from the :class:`~p2pd.peer.net.udp_port.UDPPort` and hands each to the
connection its connection id names (an unknown id is counted and dropped, never answered). Each connection's
datagrams go out once per reactor turn (one flush however many events asked for it), and each has one
``IDelayedCall``, re-armed to the core's ``get_timer()``.

:class:`UDPStream` is the :class:`~p2pd.peer.interfaces.IByteStream` of one transfer over it, feeding an
:class:`~p2pd.peer.interfaces.IStreamReceiver` as the TCP data connection does; :class:`UDPDataPaths` opens them.
A send that the kernel refuses for want of buffer space (``EAGAIN``, ``ENOBUFS``) is local backpressure, not
loss: the datagram waits and goes on the next try.
"""

import collections

from twisted.internet import defer, error
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from p2pd.core import udppackets, udpstream
from p2pd.peer.interfaces import IByteStream, IDataPaths
from p2pd.peer.net.tcp_data import feed

log = Logger()

BACKPRESSURE_RETRY = 0.001


class StreamPort:
    def __init__(self, reactor, udp_port):
        self.reactor = reactor
        self.udp = udp_port
        self.streams = {}  # the connection id our peers' datagrams carry -> UDPStream
        self.dirty = []
        self.flushing = None
        self.stats = collections.Counter()
        udp_port.route([udppackets.FIRST_BYTE], self.datagram)

    def add(self, stream):
        self.streams[stream.conn.opener.cid] = stream

    def remove(self, stream):
        if self.streams.get(stream.conn.opener.cid) is stream:
            del self.streams[stream.conn.opener.cid]
            self.stats.update(self._counts(stream.conn))

    @staticmethod
    def _counts(conn):
        return {"forged": conn.opener.forged, "replayed": conn.opener.replayed,
                "malformed": conn.stats["malformed"], "retransmitted_bytes": conn.send.resent,
                "lost_packets": conn.stats["lost_packets"], "path_changes": conn.paths.changes}

    def counters(self):
        """What the daemon's UDP streams dropped and did, all of them so far: ``p2pctl status`` shows it."""
        total = collections.Counter(self.stats)
        for stream in self.streams.values():
            total.update(self._counts(stream.conn))
        return dict(total, open=len(self.streams))

    def datagram(self, data, addr):
        stream = self.streams.get(udppackets.connection_id(data))
        if stream is None:
            self.stats["unknown"] += 1
            return
        stream.datagram(data, addr)

    def schedule(self, stream):
        """Flush *stream* at the end of this reactor turn."""
        if not stream.dirty:
            stream.dirty = True
            self.dirty.append(stream)
        if self.flushing is None:
            self.flushing = self.reactor.callLater(0, self.flush)

    def flush(self):
        self.flushing = None
        dirty, self.dirty = self.dirty, []
        for stream in dirty:
            stream.dirty = False
            stream.flush()

    def send(self, datagrams):
        """Send ``(datagram, addr)`` s; what the socket cannot take now is returned, to go later."""
        if not datagrams:
            return datagrams
        unsent = self.udp.send_batch(datagrams)
        if unsent:
            self.stats["backpressure"] += 1
        return unsent


@implementer(IByteStream)
class UDPStream:
    """One connection's bytes, as a transfer's data path."""

    def __init__(self, port, conn, receiver, reactor):
        self.port = port
        self.conn = conn
        self.receiver = receiver
        self.reactor = reactor
        self.closed = False
        self.closing = False  # close() was called: nothing more is written
        self.receiving = True
        self.producer = None
        self.paused = False
        self.dirty = False
        self.timer = None
        self.unsent = []

    # the network's side

    def datagram(self, data, addr):
        acked = self.conn.send.acked_to
        self.conn.receive_datagram(data, addr, self.reactor.seconds())
        if self.conn.send.acked_to > acked:
            self._moving()
        self.port.schedule(self)  # its events, and what it sends, at the end of this turn: once for a batch

    def flush(self):
        if self.conn.state == "closed":
            self._events()  # the idle timeout closes it at once: its receiver is told before it is forgotten
            return self._gone()
        now = self.reactor.seconds()
        self.unsent = self.port.send(self.unsent + self.conn.datagrams_to_send(now))
        self._events()
        self._arm(BACKPRESSURE_RETRY if self.unsent else None)

    def _arm(self, soon=None):
        when = self.conn.get_timer()
        if when is None:
            if self.conn.state == "closed":
                self._gone()
            return
        delay = max(when - self.reactor.seconds(), 0.0)
        if soon is not None:
            delay = min(delay, soon)
        if self.timer is not None and self.timer.active():
            self.timer.reset(delay)
        else:
            self.timer = self.reactor.callLater(delay, self._fire)

    def _fire(self):
        self.timer = None
        self.conn.handle_timer(self.reactor.seconds())
        self.flush()

    def _events(self):
        conn = self.conn
        while conn.events:
            event = conn.events.popleft()
            kind = event[0]
            if kind == "data":
                self._deliver()
            elif kind == "writable":
                if self.producer is not None and self.paused:
                    self.paused = False
                    self.producer.resumeProducing()
            elif kind == "closed":
                self._lost(event[1], event[2], event[3])
            elif kind == "path":
                log.info("UDP stream: the peer moved to {addr}", addr=event[1])
        if self.closing and not self.closed and conn.state == "open" and conn.all_acked:
            conn.close(udpstream.CODE_OK, "", self.reactor.seconds())
            self.port.schedule(self)
            self._events()

    def _moving(self):
        self.receiver.stream_moving()  # the peer takes our bytes: a slow path is still a moving one

    def _deliver(self):
        if not self.receiving or self.closed:
            return
        data = self.conn.read()
        if not data:
            return
        if not feed(self.receiver, data, lambda: self.closed):
            self.close(abort=True)

    def _lost(self, code, reason, by_peer):
        if self.closed:
            return
        self.closed = True
        self.producer = None
        if code == udpstream.CODE_OK:
            why = error.ConnectionDone("the UDP stream closed")
        else:
            why = error.ConnectionLost("the UDP stream %s: %s" % ("was closed by the peer" if by_peer else "ended",
                                                                 reason or "code %d" % code))
        self._ended(Failure(why))

    def _ended(self, reason):
        self.receiver.stream_lost(reason)

    def _gone(self):
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.port.remove(self)

    # IByteStream

    def write(self, data):
        if self.closing or self.closed:
            return
        self.conn.write(data)
        self.port.schedule(self)
        if self.conn.writable_wanted and self.producer is not None and not self.paused:
            self.paused = True
            self.producer.pauseProducing()

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def pauseReceiving(self):
        self.receiving = False

    def resumeReceiving(self):
        if not self.receiving and not self.closed:
            self.receiving = True
            self._deliver()
            self.port.schedule(self)  # the credit this frees goes to the sender

    def close(self, abort=False):
        if self.closed:
            return
        self.closing = True
        self.producer = None
        if abort:
            self.conn.close(udpstream.CODE_ABORT, "the transfer was stopped", self.reactor.seconds())
        else:
            self.conn.finish()
        self.port.schedule(self)
        self._events()


@implementer(IDataPaths)
class UDPDataPaths:
    """Opens a transfer's UDP stream beside its TLS link. Both sides open it at once (no dialling over UDP): its
    keys come from the link's TLS exporter and the session id, the peer's address from the link (its host) and
    the UDP port its hello named. If a NAT maps the peer elsewhere, its first authentic datagram says where, and
    the connection moves there once that address answers a challenge."""

    def __init__(self, reactor, port, idle_timeout=udpstream.IDLE_TIMEOUT):
        self.reactor = reactor
        self.port = port
        self.idle_timeout = idle_timeout

    def open(self, link, session_id, receiver, transport="udp"):
        udp = getattr(link, "peer_udp_port", None)
        if not udp:
            return defer.fail(error.ConnectError("the peer did not say where its UDP stream listens"))
        exporter = link.keying_material(udppackets.EXPORTER_LABEL, 32)
        send, recv = udppackets.derive(exporter, session_id, initiator=link.outgoing)
        conn = udpstream.Connection(send, recv, (link.peer_address().host, udp), self.reactor.seconds(),
                                    idle_timeout=self.idle_timeout, migrate=not link.outgoing)
        conn.owed.ping = True  # the first datagram tells the peer where we are, data or not
        stream = UDPStream(self.port, conn, receiver, self.reactor)
        self.port.add(stream)
        receiver.stream_started(stream)
        self.port.schedule(stream)
        return defer.succeed(None)

    def forget(self, session_id):
        pass  # nothing waits: a stream exists from open() until it closes


@implementer(IDataPaths)
class ChosenPaths:
    """The data paths by transport name: ``open(link, session_id, receiver, transport)`` goes to the one named
    (``"tcp"`` or ``"udp"``)."""

    def __init__(self, **paths):
        self.paths = paths

    def open(self, link, session_id, receiver, transport="tcp"):
        return self.paths[transport].open(link, session_id, receiver)

    def forget(self, session_id):
        for paths in self.paths.values():
            paths.forget(session_id)

    def claim(self, session_id):
        return self.paths["tcp"].claim(session_id)
