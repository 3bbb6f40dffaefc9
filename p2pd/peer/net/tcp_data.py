"""The TCP data connection of one transfer: an :class:`~p2pd.peer.interfaces.IByteStream` that feeds an
:class:`~p2pd.peer.interfaces.IStreamReceiver`, with the zero-copy paths that let a file move at socket speed.

Once the connection is made, :class:`DataConnection` takes the socket's I/O over from Twisted's transport, by
public means only: it stops the transport reading and writing (``stopReading``/``stopWriting``) and registers
a reader/writer of its own, :class:`SocketIO`, for the same socket (``getHandle()``) with the reactor. Then

- reading: ``recv_into`` goes straight into the receiver's ``opener.space()``, which never reaches past the
  record in hand, so every record is decrypted where it arrived (Twisted would receive into a new bytes
  object each time and a record across two reads would have to be joined);
- writing: each write goes to ``send`` at once, from the caller's own buffer; what the socket does not take
  waits as a view of that buffer and the producer is paused until it has all gone (Twisted would queue the
  write and later join what is queued into a new string: a second copy of every byte).

Closing hands the socket back: our reader/writer is removed, then the transport's ``loseConnection`` (after
what waits is sent) or ``abortConnection`` ends the connection as usual, and its ``connectionLost`` tells the
receiver. There is one code path: the tests run it on real sockets.
"""

import collections

from twisted.internet import error, main, protocol
from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor
from zope.interface import implementer

from p2pd.core import datastream
from p2pd.peer.interfaces import IByteStream


def feed(receiver, data, stopped):
    """Copy *data* into *receiver*'s opener, record by record, telling it as each lands, until ``stopped()``;
    False if the bytes are not a valid record stream (the path must be dropped)."""
    view = memoryview(data)
    opener = receiver.opener
    while len(view) and not stopped():
        try:
            room = opener.space()
        except datastream.StreamError:
            return False
        n = min(len(room), len(view))
        room[:n] = view[:n]
        opener.filled(n)
        view = view[n:]
        receiver.stream_arrived()
    return True


@implementer(IReadDescriptor, IWriteDescriptor)
class SocketIO:
    """What the reactor watches for a :class:`DataConnection`: its socket, read and written by it."""

    def __init__(self, conn, sock):
        self.conn = conn
        self.sock = sock

    def fileno(self):
        return self.sock.fileno()

    def logPrefix(self):
        return "p2pd-data"

    def doRead(self):
        return self.conn.read()

    def doWrite(self):
        return self.conn.flush()

    def connectionLost(self, reason):
        self.conn.io_lost(reason)


@implementer(IByteStream)
class DataConnection(protocol.Protocol):
    """One data connection for *receiver*; the dialling side (*dialer*) writes the receiver's preamble first."""

    def __init__(self, receiver, reactor, dialer):
        self.receiver = receiver
        self.reactor = reactor
        self.dialer = dialer
        self.closed = False  # the connection is gone
        self.closing = False  # close() was called: nothing more is written
        self.handed_back = False  # the transport has the socket again, and ends the connection
        self.reading = False
        self.writing = False
        self.io = None
        self.unsent = collections.deque()
        self.producer = None

    # Twisted's side

    def connectionMade(self):
        self.transport.stopReading()
        self.transport.stopWriting()
        self.io = SocketIO(self, self.transport.getHandle())
        self.receiver.stream_started(self)
        if self.dialer:
            self.write(self.receiver.preamble)  # before any record: a sender produces in a later turn
        if not self.closing:
            self.resumeReceiving()

    def dataReceived(self, data):
        """Bytes that came before we owned the socket (with the preamble, through the demux)."""
        if not feed(self.receiver, data, lambda: self.closing):
            self.close(abort=True)

    def connectionLost(self, reason=protocol.connectionDone):
        self.closed = True
        self._unwatch()
        self.unsent.clear()
        self.receiver.stream_lost(reason)

    # the reactor's side (SocketIO)

    def read(self):
        try:
            n = self.io.sock.recv_into(self.receiver.opener.space())
        except (BlockingIOError, InterruptedError):
            return None
        except (OSError, datastream.StreamError):
            return main.CONNECTION_LOST
        if not n:
            return main.CONNECTION_DONE
        self.receiver.opener.filled(n)
        self.receiver.stream_arrived()
        return None

    def flush(self):
        while self.unsent:
            data = self.unsent[0]
            try:
                sent = self.io.sock.send(data)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError:
                return main.CONNECTION_LOST
            if sent:
                self.receiver.stream_moving()
            if sent < len(data):
                self.unsent[0] = data[sent:]
                return None
            self.unsent.popleft()
        self._stop_writing()
        if self.closing:
            self._hand_back(abort=False)
        elif self.producer is not None:
            self.producer.resumeProducing()
        return None

    def io_lost(self, reason):
        """The reactor dropped our reader/writer (an error or EOF it returned, or the reactor stopping)."""
        self.reading = self.writing = False
        self.unsent.clear()
        self._hand_back(abort=not reason.check(error.ConnectionDone))

    # IByteStream

    def write(self, data):
        if self.closing or self.closed:
            return
        if not self.unsent:
            try:
                sent = self.io.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = 0  # the connection is broken: the next flush says so
            if sent == len(data):
                return
            data = data[sent:]
            self._start_writing()
            if self.producer is not None:
                self.producer.pauseProducing()
        self.unsent.append(data)

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def pauseReceiving(self):
        if self.reading:
            self.reading = False
            self.reactor.removeReader(self.io)

    def resumeReceiving(self):
        if not self.reading and not self.closing and not self.closed:
            self.reading = True
            self.reactor.addReader(self.io)

    def close(self, abort=False):
        if self.closed:
            return
        if self.handed_back:
            if abort:
                self.transport.abortConnection()  # a close that was handed back, cut short
            return
        self.closing = True
        self.producer = None
        if abort:
            self.unsent.clear()
        if abort or not self.unsent:
            self._hand_back(abort)
        else:
            self.pauseReceiving()  # flush() hands the socket back once what waits is sent

    # internals

    def _start_writing(self):
        if not self.writing:
            self.writing = True
            self.reactor.addWriter(self.io)

    def _stop_writing(self):
        if self.writing:
            self.writing = False
            self.reactor.removeWriter(self.io)

    def _unwatch(self):
        self.pauseReceiving()
        self._stop_writing()

    def _hand_back(self, abort):
        if self.handed_back or self.closed:
            return
        self.handed_back = self.closing = True
        self._unwatch()
        if abort:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

