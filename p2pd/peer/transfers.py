"""File transfers between peers: offers and consent on the TLS link, bytes on a data connection of their own.

Push (``p2pctl send bob FILE``):

1. The sender walks what it was given (a directory is sent with its tree; hidden and unsafe names, links and
   special files inside it are skipped and counted), hashes every file (:mod:`p2pd.core.filehash`, cached by
   inode and mtime so a re-run does not hash again), and sends ``offer`` on the link.
2. The receiver checks every name (:mod:`p2pd.core.filenames`; one bad name refuses the whole offer with a
   ``bad_name`` error), then applies its policy: ``ask`` holds the offer until ``p2pctl accept``/``reject``,
   ``auto`` accepts (optionally only from some peers and up to a size), ``deny`` refuses. Before it accepts it
   reserves the disk space the offer needs (free space minus what other running transfers will still write).
   ``accept`` carries a fresh secret and, per file, how many bytes the receiver has already verified.
3. The side that dialled the link dials the data connection (it knows that direction works through any NAT);
   it is the same TCP port as the link, told apart by its first bytes (:class:`Demux`). The sender streams
   each file from the verified offset as AES-GCM records (:mod:`p2pd.core.datastream`), driven by a push
   producer, so memory stays flat whatever the size: a chunk is read only when the socket has taken the
   last one.
4. The receiver writes into ``INBOX/.p2pd-partial/KEY.N.part`` (opened relative to a directory descriptor,
   ``O_NOFOLLOW``, created ``O_EXCL``), verifies each 4 MiB chunk as it completes, journals the verified
   length, and when a file is whole and verified links it into the inbox under a name that exists nowhere
   yet (``name (1).ext``): ``link()`` never replaces a file, and no path component is ever followed through a
   symbolic link. A sender that sends more than it declared, or bytes that do not match the hash, has the
   transfer aborted and the partial file removed.

Resume: if either daemon dies or the connection drops, running the same ``send`` (or ``get``) again makes an
offer with the same content; the receiver finds its unfinished transfer of it and answers with the verified
lengths, so only the rest travels, and is still verified chunk by chunk.

Pull (``p2pctl get bob NAME``): the asking peer sends ``get``; the owner resolves the name inside its
``--share`` folder only (every component checked, no symbolic link followed), and answers with an ``offer``
carrying the request's id, which the asking peer accepts by itself. ``ls`` lists a share folder.
"""

import base64
import collections
import hashlib
import json
import mimetypes
import os
import queue
import stat
import threading
import time

from twisted.internet import defer, endpoints, main, protocol
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from p2pd.core import datastream, filenames, filehash, wire
from p2pd.core.clock import now_ms
from p2pd.core.names import canonical_name
from p2pd.core.sizes import human_size as human
from p2pd.errors import BadRequest, NotFound, P2PDError

log = Logger()

PARTIAL_DIR = ".p2pd-partial"
SPACE_MARGIN = 16 << 20  # free bytes always left on the inbox's file system
JOURNAL_EVERY = 32 << 20  # verified bytes between two journal writes
DATA_TIMEOUT = 30.0  # seconds to set up a data connection, and of silence on one before it is dropped
TURN_BYTES = 4 << 20  # bytes a sender produces in one reactor turn before letting others run
SEND_BUFFER = 4 << 20  # bytes the transport may hold before it pauses the producer
RECV_SIZE = 4 << 20  # bytes a data connection reads at once
PROGRESS_EVERY = 0.25
MAX_LISTING = 1000
RECENT = 200  # finished transfers kept in memory for ``transfers``

UNFINISHED = ("offered", "accepted", "active", "interrupted")  # an incoming offer in one of these can resume


class TransferError(P2PDError):
    code = "transfer_failed"
    status = 409

    def __init__(self, message, code=None, **details):
        super().__init__(message, **details)
        if code:
            self.code = code


class FileProblem(TransferError):
    code = "file_error"


class LocalProblem(TransferError):
    """Our side cannot store the files (disk full, an unusable inbox): not the sender's fault, resumable."""

    code = "write_failed"


def _ids():
    return os.urandom(16).hex()


def fingerprint(items) -> str:
    canon = json.dumps([[i["path"], i["size"], i["hash"]] for i in items], separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def view(record, done, rate, eta, elapsed) -> dict:
    """What the control socket shows of a transfer (running: :meth:`Transfer.snapshot`; finished: its record)."""
    return {"tid": record["tid"], "direction": record["direction"], "peer": record["peer"],
            "status": record["status"], "names": [i["path"] for i in record["items"]][:20],
            "files": len(record["items"]), "bytes": record["total"], "done": done, "rate": rate, "eta": eta,
            "elapsed": elapsed}


# -- what a sender offers ---------------------------------------------------------------------------------------

def collect(paths):
    """``(entries, skipped)``: entries are ``(offer path, absolute local path)`` for every regular file in
    *paths* (directories walked; their hidden/unsafe names, links and special files skipped and counted)."""
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
        raise BadRequest("'paths' must be a non-empty list of file names")
    entries, skipped, tops = [], 0, set()
    for given in paths:
        path = os.path.abspath(given)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise FileProblem("no such file or directory: %s" % given, code="file_missing") from None
        except OSError as e:
            raise FileProblem("cannot read %s: %s" % (given, e.strerror), code="file_unreadable") from None
        top = filenames.sender_name(os.path.basename(path.rstrip("/")) or "file")
        n = 0
        candidate = top
        while candidate.casefold() in tops:
            n += 1
            candidate = filenames.numbered(top, n)
        tops.add(candidate.casefold())
        if stat.S_ISREG(st.st_mode):
            _check_readable(path, given)
            entries.append((candidate, path))
        elif stat.S_ISDIR(st.st_mode):
            skipped += _walk(path, candidate, entries)
        else:
            raise FileProblem("%s is not a regular file or a directory" % given, code="file_unreadable")
        if len(entries) > wire.MAX_ITEMS:
            raise FileProblem("too many files for one send (more than %d); send the folder in parts or as an "
                              "archive" % wire.MAX_ITEMS, code="too_many_files")
    if not entries:
        raise FileProblem("nothing to send: no regular files (%d hidden or unsupported entries skipped)" % skipped,
                          code="file_missing")
    return entries, skipped


def _check_readable(path, given):
    try:
        os.close(os.open(path, os.O_RDONLY))
    except OSError as e:
        raise FileProblem("cannot read %s: %s" % (given, e.strerror), code="file_unreadable") from None


def _walk(root, top, entries):
    skipped = 0
    for dirpath, dirnames, files in os.walk(root, followlinks=False):
        rel = os.path.relpath(dirpath, root)
        prefix = top if rel == "." else top + "/" + rel.replace(os.sep, "/")
        keep = []
        for d in sorted(dirnames):
            if filenames.is_hidden_or_unsafe(d) or os.path.islink(os.path.join(dirpath, d)):
                skipped += 1
            else:
                keep.append(d)
        dirnames[:] = keep
        for f in sorted(files):
            full = os.path.join(dirpath, f)
            offer = prefix + "/" + f
            try:
                st = os.lstat(full)
                filenames.check_relpath(offer)
            except (OSError, filenames.BadFileName):
                skipped += 1
                continue
            if not stat.S_ISREG(st.st_mode) or filenames.is_hidden_or_unsafe(f):
                skipped += 1
                continue
            _check_readable(full, full)
            entries.append((offer, full))
            if len(entries) > wire.MAX_ITEMS:
                return skipped
    return skipped


def check_offer(items):
    """The validated landing components of each offered item; :class:`filenames.BadFileName` if any name is
    unsafe, or if two items collide (the same path ignoring case, or a file that is also a folder)."""
    paths, seen, dirs = [], set(), set()
    for item in items:
        parts = tuple(filenames.safe_component(c) for c in filenames.check_relpath(item["path"]))
        key = "/".join(parts).casefold()
        if key in seen or key in dirs:
            raise filenames.BadFileName("refused file name %r: offered twice" % item["path"])
        seen.add(key)
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i]).casefold()
            if prefix in seen:
                raise filenames.BadFileName("refused file name %r: a file and a folder share a name"
                                            % item["path"])
            dirs.add(prefix)
        paths.append(parts)
    return paths


# -- the data connection ----------------------------------------------------------------------------------------

class DataConnection(protocol.Protocol):
    """One data connection; *session* does the work. The dialling side writes the preamble first."""

    def __init__(self, session, dialer):
        self.session = session
        self.dialer = dialer
        self.closed = False

    def connectionMade(self):
        self.session.attach(self)
        if self.dialer:
            self.session.write(self.session.keys.preamble)  # before any record: a sender produces in a later turn
        self.read_directly()

    def dataReceived(self, data):
        self.session.received(data)

    def read_directly(self):
        """Has the TCP transport ``recv_into`` the session's opener instead of calling ``dataReceived``.

        Twisted's ``doRead`` receives into a new bytes object each time (4 MiB here), and a record that
        straddles two reads must then be joined; reading into the opener's buffer, up to the end of the record
        in hand, leaves every record whole where it arrived, to be decrypted from there. Transports without a
        socket (tests' ``StringTransport``) keep ``dataReceived``."""
        transport = self.transport
        sock = getattr(transport, "socket", None)
        if sock is None or not callable(getattr(transport, "doRead", None)):
            return
        recv_into = sock.recv_into
        opener = self.session.opener
        arrived = self.session.arrived

        def doRead():
            try:
                n = recv_into(opener.space())
            except (BlockingIOError, InterruptedError):
                return None
            except (OSError, datastream.StreamError):
                return main.CONNECTION_LOST
            if not n:
                return main.CONNECTION_DONE
            opener.filled(n)
            arrived()
            return None

        transport.doRead = doRead

    def connectionLost(self, reason=protocol.connectionDone):
        self.closed = True
        self.session.lost(reason)


class Demux(protocol.Protocol):
    """The peer's TCP port carries both TLS links and data connections: the first bytes tell which.

    TLS starts with a handshake record (0x16); a data connection with :data:`datastream.MAGIC` and a session
    id that must name a session waiting for its connection. Anything else is closed."""

    def __init__(self, factory, addr):
        self.factory = factory
        self.addr = addr
        self.inner = None
        self.buffer = b""
        self.timer = None

    def connectionMade(self):
        self.timer = self.factory.clock.callLater(DATA_TIMEOUT, self.transport.abortConnection)

    def dataReceived(self, data):
        if self.inner is not None:
            return self.inner.dataReceived(data)
        self.buffer += data
        if self.buffer[:1] == b"\x16":
            inner = self.factory.tls.buildProtocol(self.addr)
        elif len(self.buffer) < datastream.PREAMBLE:
            if datastream.MAGIC.startswith(self.buffer[:len(datastream.MAGIC)]):
                return
            inner = None
        elif self.buffer.startswith(datastream.MAGIC):
            session = self.factory.transfers.claim(self.buffer[len(datastream.MAGIC):datastream.PREAMBLE])
            inner = DataConnection(session, dialer=False) if session is not None else None
            self.buffer = self.buffer[datastream.PREAMBLE:]
        else:
            inner = None
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        if inner is None:
            return self.transport.abortConnection()
        self.inner = inner
        inner.makeConnection(self.transport)
        data, self.buffer = self.buffer, b""
        if data:
            inner.dataReceived(data)

    def connectionLost(self, reason=protocol.connectionDone):
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        if self.inner is not None:
            self.inner.connectionLost(reason)


class DemuxFactory(protocol.Factory):
    def __init__(self, tls_factory, transfers, clock):
        self.tls = tls_factory
        self.transfers = transfers
        self.clock = clock

    def startFactory(self):
        self.tls.doStart()

    def stopFactory(self):
        self.tls.doStop()

    def buildProtocol(self, addr):
        return Demux(self, addr)


@implementer(IConsumer)
class DirectConsumer:
    """The consumer a sender writes file records to, over a TCP transport: it hands each write to ``send`` at
    once, from the caller's own buffer.

    Twisted's transport would queue the write and later join everything queued into one new string (a second
    copy of every byte) before sending it. Here what the socket does not take waits as a view of the caller's
    buffer, the registered push producer is paused, and it is resumed once the transport's ``doWrite`` (which
    this consumer takes over) has sent it all: a producer must not touch a buffer it wrote until then. Twisted's
    ``doWrite`` still runs after that, so ``loseConnection`` works as usual."""

    def __init__(self, transport, sent=None):
        self.transport = transport
        self.sock = transport.socket
        self.unsent = collections.deque()
        self.producer = None
        self.sent = sent  # called when the socket took bytes that had waited (a slow link is still moving)
        transport.doWrite = self.doWrite

    @classmethod
    def over(cls, transport, sent=None):
        """A DirectConsumer for a TCP transport; the transport itself (Twisted's buffering, data copied to
        bytes) for one without a socket, such as tests' ``StringTransport``."""
        if getattr(transport, "socket", None) is not None and callable(getattr(transport, "doWrite", None)):
            return cls(transport, sent)
        return CopyingConsumer(transport)

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        t = self.transport
        if t.disconnected or t.disconnecting or getattr(t, "_aborting", False):
            return
        if not self.unsent:
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = 0  # the connection is broken: doWrite will say so
            if sent == len(data):
                return
            data = data[sent:]
            self.transport.startWriting()
            if self.producer is not None:
                self.producer.pauseProducing()
        self.unsent.append(data)

    def doWrite(self):
        while self.unsent:
            data = self.unsent[0]
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError:
                return main.CONNECTION_LOST
            if sent and self.sent is not None:
                self.sent()
            if sent < len(data):
                self.unsent[0] = data[sent:]
                return None
            self.unsent.popleft()
        if self.producer is not None and not self.transport.disconnecting:
            self.producer.resumeProducing()
        # Twisted's own: its buffer is empty, so it stops writing (or ends a loseConnection() that waited for us)
        return type(self.transport).doWrite(self.transport)

    def discard(self):
        """Forget what was not sent (the connection is being aborted, or is gone)."""
        self.unsent.clear()


class CopyingConsumer:
    """The transport as the consumer, for transports without a socket: writes are copied to bytes (a view of a
    buffer the producer reuses must not be queued as it is), and the transport pauses the producer itself."""

    def __init__(self, transport):
        self.transport = transport
        transport.bufferSize = SEND_BUFFER

    def registerProducer(self, producer, streaming):
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self):
        self.transport.unregisterProducer()

    def write(self, data):
        self.transport.write(bytes(data))

    def discard(self):
        pass


class Session:
    """A data session of one transfer; *transfer* is the Outgoing or Incoming it works for."""

    def __init__(self, transfer, secret):
        self.transfer = transfer
        self.keys = datastream.SessionKeys(secret)
        self.opener = None
        self.conn = None
        self.closing = None  # the limit on a graceful close
        self.timer = None
        self.done = False

    @property
    def clock(self):
        return self.transfer.manager.clock

    def arm(self):
        if self.timer is not None and self.timer.active():
            self.timer.reset(DATA_TIMEOUT)
        else:
            self.timer = self.clock.callLater(DATA_TIMEOUT, self.timed_out)

    def disarm(self):
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def timed_out(self):
        self.timer = None
        if self.conn is None:
            self.transfer.manager.sessions.pop(self.keys.sid, None)
        self.done = True
        self.transfer.interrupted("no data for %d s" % DATA_TIMEOUT)
        self.close(abort=True)

    def close(self, abort=False):
        self.disarm()
        if self.conn is not None and not self.conn.closed:
            if abort:
                self.conn.transport.abortConnection()
            else:
                # waits until what is queued is sent: a peer that stops reading would hold it open for ever
                self.conn.transport.loseConnection()
                if self.closing is None:
                    self.closing = self.clock.callLater(DATA_TIMEOUT, self._close_timed_out)

    def _close_timed_out(self):
        self.closing = None
        self.close(abort=True)

    def lost(self, reason):
        self.disarm()
        if self.closing is not None and self.closing.active():
            self.closing.cancel()
        self.closing = None
        if self.opener is not None:
            self.opener.release()  # a finished transfer is kept for the listing; its buffers are not
        if not self.done:
            self.transfer.interrupted("the data connection closed")

    def write(self, data):
        self.conn.transport.write(data)

    def received(self, data):
        """Bytes from Twisted's ``doRead`` (or what came with the preamble)."""
        self.arm()
        self.handle(self.opener.feed(data))

    def arrived(self):
        """Bytes were read straight into the opener (:meth:`DataConnection.read_directly`)."""
        self.arm()
        self.handle(self.opener.records())


@implementer(IPushProducer)
class SendSession(Session):
    """Streams the files of an outgoing transfer from the offsets the receiver already verified.

    A push producer over a :class:`DirectConsumer`: each chunk is read into one reused buffer, sealed into one
    reused record buffer and written; the consumer pauses the session while the socket holds part of a record,
    and both buffers are used again only once it is resumed."""

    def __init__(self, transfer, secret, have):
        super().__init__(transfer, secret)
        self.have = have
        self.index = 0
        self.fd = None
        self.position = 0
        self.paused = True
        self.scheduled = None
        self.finished_sending = False
        self.out = None  # the consumer
        self.plain = self.record = None

    def attach(self, conn):
        self.conn = conn
        self.sealer = datastream.Sealer(self.keys.to_receiver)
        self.opener = datastream.Opener(self.keys.to_sender)
        self.out = DirectConsumer.over(conn.transport, sent=self.arm)
        self.out.registerProducer(self, True)
        self.plain = bytearray(datastream.CHUNK)
        self.record = bytearray(datastream.STANDARD)
        self.transfer.started_data()
        self.arm()
        self.resumeProducing()

    def write(self, data):
        self.out.write(data)

    def close(self, abort=False):
        if abort and self.out is not None:
            self.out.discard()
        super().close(abort)

    # IPushProducer
    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        if self.scheduled is None and not self.finished_sending:
            self.scheduled = self.clock.callLater(0, self.produce)

    def stopProducing(self):
        self.paused = True
        self._close_file()

    def produce(self):
        self.scheduled = None
        if self.plain is None:  # the connection is gone
            return
        self.arm()  # bytes are moving: the silence timer starts again
        budget = TURN_BYTES
        write = self.write
        items = self.transfer.items
        plain = memoryview(self.plain)
        try:
            while not self.paused and not self.done and not self.finished_sending and not self.conn.closed:
                if self.fd is None:
                    if self.index >= len(items):
                        write(self.sealer.finish())
                        self.finished_sending = True
                        self.out.unregisterProducer()
                        break
                    self._open(self.index)
                    write(self.sealer.json({"t": "file", "i": self.index,
                                            "d": base64.b64encode(self.transfer.digests[self.index]).decode()}))
                size = items[self.index]["size"]
                if self.position >= size:
                    self._check_unchanged(self.index)
                    self._close_file()
                    write(self.sealer.end(self.index))
                    self.index += 1
                    continue
                n = os.preadv(self.fd, [plain[:min(datastream.CHUNK, size - self.position)]], self.position)
                if not n:
                    raise FileProblem("%s shrank while it was being sent" % self.transfer.local[self.index],
                                      code="file_changed")
                write(self.sealer.data_into(plain[:n], self.record))
                self.position += n
                self.transfer.progress(n)
                budget -= n
                if budget <= 0:
                    if not self.paused:
                        self.scheduled = self.clock.callLater(0, self.produce)
                    break
        except (OSError, P2PDError) as e:
            self._close_file()
            error = e if isinstance(e, P2PDError) else FileProblem(
                "cannot read %s: %s" % (self.transfer.local[self.index], e.strerror), code="file_unreadable")
            self.done = True
            if not self.conn.closed:
                self.write(self.sealer.json({"t": "fail", "code": error.code, "message": error.message}))
            self.close()
            self.transfer.fail(error)

    def _open(self, index):
        path = self.transfer.local[index]
        try:
            self.fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise FileProblem("cannot read %s: %s" % (path, e.strerror), code="file_unreadable") from None
        self._check_unchanged(index)
        self.position = self.have[index]

    def _check_unchanged(self, index):
        st = os.fstat(self.fd)
        hashed = self.transfer.stats[index]
        if (st.st_size, st.st_mtime_ns) != hashed:
            raise FileProblem("%s changed while it was being sent; send it again" % self.transfer.local[index],
                              code="file_changed")

    def _close_file(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def handle(self, records):
        try:
            for kind, obj in records:
                if kind != datastream.JSON:
                    raise datastream.StreamError("unexpected record from the receiver")
                if obj.get("t") == "complete":
                    self.done = True
                    self.close()
                    saved = obj.get("saved")
                    self.transfer.complete(saved if isinstance(saved, list) else [])
                    return
                if obj.get("t") == "fail":
                    self.done = True
                    self.close()
                    self.transfer.fail(TransferError(
                        "%s stopped the transfer: %s" % (self.transfer.peer, _text(obj.get("message"))),
                        code=_code(obj.get("code"))))
                    return
        except datastream.StreamError as e:
            self.done = True
            self.close(abort=True)
            self.transfer.fail(TransferError("the receiver's data stream is corrupt (%s)" % e, code=e.code))

    def lost(self, reason):
        self._close_file()
        self.plain = self.record = None
        if self.out is not None:
            self.out.discard()
        if self.scheduled is not None and self.scheduled.active():
            self.scheduled.cancel()
        self.scheduled = None
        super().lost(reason)


def _text(value, limit=300):
    return value[:limit] if isinstance(value, str) else "(no reason given)"


def _code(value):
    return value if isinstance(value, str) and value.replace("_", "").isalnum() and len(value) <= 40 else "failed"


class DiskWriter:
    """Writes and verifies the file bytes of one receive session, in a thread of its own.

    The reactor thread receives and decrypts; this consumer writes each chunk to the partial file and hashes it
    (both release the GIL), so the two overlap. It is the TCP transport's consumer: past :data:`HIGH` queued
    bytes the transport is paused (TCP then slows the sender), and resumed below :data:`LOW`. Results come
    back to the reactor thread through ``callFromThread``: ``verified(index, length)``, ``ended(index)``,
    ``finished()``, ``failed(error)``, ``stopped()``. With a reactor that has no threads (tests' ``Clock``) the
    work is done inline, with the same callbacks."""

    HIGH = 16 << 20
    LOW = 4 << 20

    def __init__(self, reactor, session):
        self.reactor = reactor
        self.session = session
        self.pool = session.transfer.manager.buffers
        self.threaded = hasattr(reactor, "callFromThread") and hasattr(reactor, "getThreadPool")
        self.fd = None
        self.hasher = None
        self.digests = None
        self.index = None
        self.broken = False
        self.stopping = False
        self.pending = 0
        self.paused = False
        self.lock = threading.Lock()
        if self.threaded:
            self.queue = queue.SimpleQueue()
            self.thread = threading.Thread(target=self._run, name="p2pd-writer", daemon=True)
            self.thread.start()

    def submit(self, op, *args, size=0):
        if not self.threaded:
            return self._do(op, args)
        with self.lock:
            self.pending += size
            pause = self.pending > self.HIGH and not self.paused
            if pause:
                self.paused = True
        self.queue.put((op, args, size))
        if pause:
            self.session.pause()

    def _run(self):
        while True:
            op, args, size = self.queue.get()
            try:
                self._do(op, args)
            finally:
                if size:
                    with self.lock:
                        self.pending -= size
                        resume = self.paused and self.pending < self.LOW
                        if resume:
                            self.paused = False
                    if resume:
                        self.reactor.callFromThread(self.session.resume)
            if op == "stop":
                return

    def _report(self, name, *args):
        callback = getattr(self.session, name)
        if self.threaded:
            self.reactor.callFromThread(callback, *args)
        else:
            callback(*args)

    def _do(self, op, args):
        if self.broken and op != "stop":
            if op == "data":
                self.pool.give(args[0])
            return
        try:
            getattr(self, "_" + op)(*args)
        except TransferError as e:
            self.broken = True
            self._close()
            self._report("failed", e, True)
        except OSError as e:
            self.broken = True
            self._close()
            self._report("failed", TransferError(
                "cannot write to the inbox: %s" % e.strerror, code="disk_full" if e.errno == 28 else "write_failed"),
                False)

    def _open(self, index, fd, hasher, digests):
        self.index, self.fd, self.hasher, self.digests = index, fd, hasher, digests

    def stop(self):
        """No more work: the thread closes the file and ends after what is queued (once, however called)."""
        if not self.stopping:
            self.stopping = True
            self.submit("stop")

    def cancel(self):
        """Drop what is still queued (the session is over); the thread stops after the chunk in hand."""
        self.broken = True
        self.stop()

    def _data(self, chunk):
        try:
            written = 0
            view = memoryview(chunk)
            while written < len(chunk):
                written += os.write(self.fd, view[written:])
            first = self.hasher.index
            verified = None
            for k, digest in enumerate(self.hasher.update(chunk)):
                n = first + k
                if digest != self.digests[n * filehash.DIGEST:(n + 1) * filehash.DIGEST]:
                    raise TransferError("hash mismatch in chunk %d: the bytes are not those of the file offered; "
                                        "nothing was kept" % n, code="hash_mismatch")
                verified = min((n + 1) * self.hasher.chunk, self.hasher.size)
        finally:
            self.pool.give(chunk)  # written and hashed (or failed): the buffer can take the next record
        if verified is not None:
            self._report("verified", self.index, verified)

    def _end(self, index):
        self._close()
        self._report("ended", index)

    def _finish(self):
        self._report("finished")

    def _stop(self):
        self._close()
        self._report("stopped")

    def _close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class ReceiveSession(Session):
    """Receives, verifies and lands the files of an incoming transfer: the reactor thread checks the stream
    and the declared sizes; a :class:`DiskWriter` writes and verifies the bytes."""

    def __init__(self, transfer, secret):
        super().__init__(transfer, secret)
        self.index = None  # the file being received
        self.position = 0  # bytes of it received (not necessarily verified yet)
        self.open = False
        self.writer = None
        self.unjournaled = 0
        self.paused = False

    def attach(self, conn):
        self.conn = conn
        self.opener = datastream.Opener(self.keys.to_receiver, self.transfer.manager.buffers)
        self.sealer = datastream.Sealer(self.keys.to_sender)
        conn.transport.bufferSize = RECV_SIZE
        self.writer = DiskWriter(self.transfer.manager.reactor, self)
        self.transfer.started_data()
        self.arm()

    # flow control, called by the writer
    def pause(self):
        if not self.done and not self.conn.closed:
            self.paused = True
            self.conn.transport.pauseProducing()

    def resume(self):
        if self.paused and not self.done and not self.conn.closed:
            self.paused = False
            self.conn.transport.resumeProducing()
            self.arm()

    def handle(self, records):
        t = self.transfer
        try:
            for kind, obj in records:
                if self.done:
                    if kind == datastream.DATA:
                        t.manager.buffers.give(obj)
                    return
                if kind == datastream.DATA:
                    self._data(obj)
                elif kind == datastream.JSON:
                    self._json(obj)
                elif kind == datastream.END:
                    self._end(obj)
                elif kind == datastream.FINISH:
                    self.writer.submit("finish")
        except LocalProblem as e:
            self.failed(e, False)
        except TransferError as e:
            self.failed(e, True)
        except datastream.StreamError as e:
            self.failed(TransferError("%s sent a corrupt data stream (%s)" % (t.peer, e), code=e.code), False)
        except OSError as e:
            self.failed(TransferError("cannot write to the inbox: %s" % e.strerror,
                                      code="disk_full" if e.errno == 28 else "write_failed"), False)

    def _json(self, obj):
        t = self.transfer
        if obj.get("t") == "fail":
            raise TransferError("%s stopped the transfer: %s" % (t.peer, _text(obj.get("message"))),
                                code=_code(obj.get("code")))
        if obj.get("t") != "file":
            raise datastream.StreamError("unexpected JSON record")
        index = obj.get("i")
        expected = 0 if self.index is None else self.index + 1
        if index != expected or self.open or index >= len(t.items):
            raise datastream.StreamError("files out of order")
        try:
            digests = base64.b64decode(obj.get("d", ""), validate=True)
        except (TypeError, ValueError):
            raise datastream.StreamError("malformed hash list") from None
        item = t.items[index]
        self.index = index
        if len(digests) != filehash.chunk_count(item["size"]) * filehash.DIGEST \
                or filehash.root_of(digests) != item["hash"]:
            raise TransferError("hash mismatch: the hash list %s sent for %s does not match its offer"
                                % (t.peer, item["path"]), code="hash_mismatch")
        if t.record["saved"][index] is None:
            fd, have = t.open_part(index)
            t.have[index] = have
            self.position = have
            self.open = True
            self.writer.submit("open", index, fd, filehash.ChunkHasher(item["size"], have), digests)

    def _data(self, chunk):
        t = self.transfer
        if not self.open:
            t.manager.buffers.give(chunk)
            raise TransferError("%s sent data outside a file" % t.peer, code="bad_stream")
        size = t.items[self.index]["size"]
        if self.position + len(chunk) > size:
            t.manager.buffers.give(chunk)
            raise TransferError("%s sent more than the %d bytes it declared for %s; nothing was kept"
                                % (t.peer, size, t.items[self.index]["path"]), code="size_mismatch")
        n = len(chunk)
        self.position += n
        self.writer.submit("data", chunk, size=n)  # the writer owns the buffer from here on
        t.progress(n)

    def _end(self, index):
        t = self.transfer
        if index != self.index:
            raise datastream.StreamError("end of a file that is not the current one")
        if not self.open:
            return  # already landed in an earlier session
        size = t.items[index]["size"]
        if self.position != size:
            raise TransferError("%s ended %s after %d of %d bytes" % (t.peer, t.items[index]["path"],
                                                                     self.position, size), code="size_mismatch")
        self.open = False
        self.writer.submit("end", index)

    # results from the writer (reactor thread)

    def verified(self, index, length):
        t = self.transfer
        if self.done:
            return
        self.unjournaled += length - t.have[index]
        t.have[index] = length
        if self.unjournaled >= JOURNAL_EVERY:
            self.unjournaled = 0
            t.save()

    def ended(self, index):
        t = self.transfer
        if self.done:
            return
        if t.have[index] != t.items[index]["size"]:
            return self.failed(TransferError("%s is incomplete" % t.items[index]["path"], code="size_mismatch"),
                               False)
        try:
            t.land(index)
        except (TransferError, OSError) as e:
            self.failed(e if isinstance(e, TransferError) else
                        TransferError("cannot land %s: %s" % (t.items[index]["path"], e.strerror),
                                      code="write_failed"), False)

    def finished(self):
        t = self.transfer
        if self.done:
            return
        if self.open or None in t.record["saved"]:
            return self.failed(TransferError("%s ended the transfer before every file was sent" % t.peer,
                                             code="size_mismatch"), False)
        self.done = True
        self.writer.stop()
        self.conn.transport.write(self.sealer.json({"t": "complete", "saved": t.record["saved"]}))
        self.close()
        t.complete(t.record["saved"])

    def failed(self, error, remove):
        """Stop: tell the sender why, and remove the partial file of a sender that lied (size, hash)."""
        if self.done:
            return
        self.done = True
        self.writer.cancel()
        if not self.conn.closed:
            self.conn.transport.write(self.sealer.json({"t": "fail", "code": error.code, "message": error.message}))
        self.close()
        if remove and self.index is not None and self.transfer.record["saved"][self.index] is None:
            try:
                self.transfer.discard_part(self.index)
            except (TransferError, OSError) as e:
                log.warn("could not remove a partial file: {error}", error=e)
        self.transfer.fail(error, resumable=not remove)

    def stopped(self):
        pass

    def lost(self, reason):
        if self.writer is not None and not self.writer.stopping:
            self.writer.cancel()  # closes the partial file and ends the thread, however the session ended
        if not self.done:
            self.done = True
            self.transfer.interrupted("the data connection closed")
        super().lost(reason)


# -- transfers --------------------------------------------------------------------------------------------------

class Transfer:
    """What both directions share: the record (persisted), progress, and the Deferred of the outcome."""

    direction = None

    def __init__(self, manager, record):
        self.manager = manager
        self.record = record
        self.items = record["items"]
        self.peer = record["peer"]
        self.tid = record["tid"]
        self.session = None
        self.result = defer.Deferred()
        self.watchers = []  # callables given progress dicts
        self.bytes_now = 0  # bytes moved in this session
        self.t0 = None
        self.last_progress = 0.0

    @property
    def clock(self):
        return self.manager.clock

    def save(self):
        self.record["updated"] = now_ms(self.clock)
        self.manager.storage.put_transfer(self.record, self.record["updated"])
        self.manager.daemon.schedule_flush()

    def set_status(self, status, **changes):
        self.record.update(changes)
        self.record["status"] = status
        self.save()
        self.manager.event(self)

    def started_data(self):
        self.t0 = self.clock.seconds()
        self.set_status("active", started=now_ms(self.clock))

    def progress(self, n):
        self.bytes_now += n
        now = self.clock.seconds()
        if now - self.last_progress >= PROGRESS_EVERY:
            self.last_progress = now
            self.tell(self.snapshot())

    def tell(self, snapshot):
        for watcher in list(self.watchers):
            try:
                watcher(snapshot)
            except Exception:
                log.failure("progress watcher failed")

    def done_bytes(self):
        return self.record.get("resumed_from", 0) + self.bytes_now

    def snapshot(self):
        r = self.record
        elapsed = self.clock.seconds() - self.t0 if self.t0 is not None else 0.0
        rate = self.bytes_now / elapsed if elapsed > 0 else 0.0
        done = min(self.done_bytes(), r["total"])
        left = (r["total"] - done) / rate if rate > 0 else None
        return view(r, done, round(rate), None if left is None else round(left, 1), round(elapsed, 3))

    def outcome(self):
        s = self.snapshot()
        s.update(saved=self.record.get("saved"), resumed_from=self.record.get("resumed_from", 0),
                 sent=self.bytes_now, seconds=s.pop("elapsed"), hash_seconds=self.record.get("hash_seconds"),
                 skipped=self.record.get("skipped", 0), error=self.record.get("error"))
        return s

    def finish(self, status, error=None):
        if self.result.called:
            return
        self.record["finished"] = now_ms(self.clock)
        snapshot = self.snapshot()
        self.record.update(rate=snapshot["rate"], seconds=snapshot["elapsed"], sent=self.bytes_now)
        if error is not None:
            self.set_status(status, error={"code": error.code, "message": error.message})
        else:
            self.set_status(status, error=None)
        self.manager.finished(self)
        if error is not None:
            error.details.update(self.outcome())
            self.result.errback(Failure(error))
        else:
            self.result.callback(self.outcome())

    def fail(self, error, resumable=False):
        self.finish("interrupted" if resumable else "failed", error)

    def interrupted(self, why):
        self.finish("interrupted", TransferError(
            "transfer with %s interrupted: %s; run the same command again to resume" % (self.peer, why),
            code="interrupted"))


class Outgoing(Transfer):
    direction = "out"

    def __init__(self, manager, record, local, stats, digests):
        super().__init__(manager, record)
        self.local = local
        self.stats = stats
        self.digests = digests
        self.answer = defer.Deferred()
        self.link = None

    def complete(self, saved):
        self.record["saved"] = [s if isinstance(s, str) else None for s in saved][:len(self.items)]
        self.finish("done")

    def cancel(self, why):
        if self.session is not None:
            self.session.done = True
            self.session.close(abort=True)
        if self.link is not None and not self.link.closed:
            self.link.send({"t": "cancel", "tid": self.tid, "code": "cancelled", "message": why})
        if not self.answer.called:
            self.answer.errback(TransferError(why, code="cancelled"))
        self.finish("cancelled", TransferError(why, code="cancelled"))


class Incoming(Transfer):
    direction = "in"

    def __init__(self, manager, record):
        super().__init__(manager, record)
        self.have = record["have"]
        self.link = None

    def complete(self, saved):
        self.finish("done")

    def save(self):
        self.record["have"] = self.have
        super().save()

    def done_bytes(self):
        return sum(self.have)

    # partial files

    def part_name(self, index):
        return "%s.%d.part" % (self.record["key"], index)

    def open_part(self, index):
        """An fd of the partial file of *index*, positioned at the verified length (which it returns)."""
        dfd = self.manager.partial_fd()
        try:
            name = self.part_name(index)
            have = self.have[index]
            flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                fd = os.open(name, flags, dir_fd=dfd)
            except FileNotFoundError:
                fd = os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dfd)
                have = 0
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                raise LocalProblem("partial file %s is not a regular file" % name)
            size = self.items[index]["size"]
            if st.st_size != size:
                if st.st_size < have:  # shorter than the journal says (a power cut): keep whole chunks
                    chunk = filehash.chunk_size(size)
                    have = st.st_size // chunk * chunk
                os.ftruncate(fd, min(st.st_size, size))
                if size:
                    try:
                        # Claims the space now (a full disk fails here, not halfway) and makes the writes that
                        # follow cheaper: the blocks exist, and writes no longer allocate them piece by piece.
                        os.posix_fallocate(fd, 0, size)
                        self.record.setdefault("allocated", [False] * len(self.items))[index] = True
                    except OSError as e:
                        os.close(fd)
                        raise LocalProblem("cannot reserve %s in %s: %s" % (human(size), self.manager.inbox,
                                                                            e.strerror),
                                           code="disk_full" if e.errno == 28 else "write_failed") from None
            os.lseek(fd, have, os.SEEK_SET)
            return fd, have
        finally:
            os.close(dfd)

    def unallocated(self) -> int:
        """Bytes this transfer will still take from the disk: files neither landed nor preallocated yet (a
        partial file is preallocated to its full size when its first byte comes)."""
        allocated = self.record.get("allocated") or [False] * len(self.items)
        return sum(i["size"] for i, saved, done in zip(self.items, self.record["saved"], allocated)
                   if saved is None and not done)

    def discard_part(self, index):
        self.have[index] = 0
        if self.record.get("allocated"):
            self.record["allocated"][index] = False
        dfd = self.manager.partial_fd()
        try:
            os.unlink(self.part_name(index), dir_fd=dfd)
        except FileNotFoundError:
            pass
        finally:
            os.close(dfd)
        self.save()

    def discard_parts(self):
        for index, saved in enumerate(self.record["saved"]):
            if saved is None:
                self.discard_part(index)

    def land(self, index):
        """Move the verified partial file of *index* into the inbox under a name nothing has yet."""
        parts = self.record["landing"][index]
        saved = self.manager.land(self.part_name(index), parts, self.record["tops"])
        self.record["saved"][index] = saved
        self.save()
        log.info("received {path} from {peer} ({size} bytes, verified)", path=saved, peer=self.peer,
                 size=self.items[index]["size"])


class Transfers:
    """All transfers of one daemon (the facade delegates its file commands here)."""

    def __init__(self, daemon, inbox, share=None, policy="ask", accept_from=(), accept_max=None):
        self.daemon = daemon
        self.storage = daemon.storage
        self.clock = daemon.clock
        self.reactor = daemon.reactor
        self.inbox = inbox
        self.share = share
        self.policy = policy
        self.accept_from = tuple(accept_from or ())
        self.accept_max = accept_max
        self.buffers = datastream.BufferPool()  # shared by all receive sessions
        self.live = {}  # tid -> Outgoing/Incoming still running or waiting
        self.sessions = {}  # sid -> Session waiting for its data connection
        self.requests = {}  # rid -> (peer, kind, Deferred) of our ls/get requests
        self.pulls = {}  # tid -> rid: incoming transfers that answer one of our get requests
        self.recent = []
        os.makedirs(inbox, mode=0o700, exist_ok=True)
        for record in self.storage.transfers(limit=10 ** 6, statuses=("active", "offered", "accepted")):
            record["status"] = "interrupted"  # the daemon stopped while they ran
            record["error"] = {"code": "interrupted", "message": "the daemon stopped during the transfer"}
            self.storage.put_transfer(record, now_ms(self.clock))

    def stop(self):
        """The daemon is stopping: every running transfer is interrupted (and resumable)."""
        for t in list(self.live.values()):
            if t.session is not None:
                t.session.done = True
                t.session.close(abort=True)
            if t.record["status"] != "offered" or isinstance(t, Outgoing):
                t.interrupted("the daemon stopped")
            t.result.addErrback(lambda f: None)

    # -- helpers -------------------------------------------------------------------------------------------------

    def _thread(self, f, *args):
        pool = getattr(self.reactor, "getThreadPool", None)
        if pool is None:
            return defer.maybeDeferred(f, *args)
        from twisted.internet.threads import deferToThreadPool

        return deferToThreadPool(self.reactor, pool(), f, *args)

    def partial_fd(self):
        inbox_fd = self.inbox_fd()
        try:
            try:
                os.mkdir(PARTIAL_DIR, 0o700, dir_fd=inbox_fd)
            except FileExistsError:
                pass
            return os.open(PARTIAL_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=inbox_fd)
        except OSError as e:
            raise LocalProblem("cannot use %s/%s: %s" % (self.inbox, PARTIAL_DIR, e.strerror)) from None
        finally:
            os.close(inbox_fd)

    def inbox_fd(self):
        try:
            return os.open(self.inbox, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise LocalProblem("cannot use the inbox %s: %s" % (self.inbox, e.strerror)) from None

    def event(self, transfer):
        snapshot = transfer.snapshot()
        snapshot["event"] = "transfer"
        if transfer.record["status"] == "offered" and transfer.direction == "in":
            snapshot["sizes"] = [i["size"] for i in transfer.items][:20]
            snapshot["types"] = [mimetypes.guess_type(i["path"])[0] or "application/octet-stream"
                                 for i in transfer.items][:20]
        if transfer.record.get("error"):
            snapshot["error"] = transfer.record["error"]
        if transfer.record.get("saved"):
            snapshot["saved"] = transfer.record["saved"][:20]
        self.daemon.emit(snapshot)

    def finished(self, transfer):
        self.live.pop(transfer.tid, None)
        for sid, session in list(self.sessions.items()):
            if session.transfer is transfer:
                session.disarm()
                del self.sessions[sid]
        self.recent.append(transfer)
        del self.recent[:-RECENT]

    def claim(self, sid):
        """The session a data connection that opened with *sid* belongs to (None: drop the connection)."""
        session = self.sessions.pop(sid, None)
        if session is not None:
            session.disarm()
        return session

    # -- facade: listing --------------------------------------------------------------------------------------

    def list(self, limit=100):
        live = {t.tid: t for t in self.live.values()}
        out = []
        for record in self.storage.transfers(limit=limit):
            t = live.get(record["tid"])
            if t is not None:
                entry = t.snapshot()
            else:
                done = sum(record.get("have") or []) if record["direction"] == "in" else \
                    record["total"] if record["status"] == "done" else \
                    record.get("resumed_from", 0) + record.get("sent", 0)
                entry = view(record, done, record.get("rate", 0), None, record.get("seconds"))
            entry.update(error=record.get("error"), saved=(record.get("saved") or [])[:20],
                         created=record.get("created"), finished=record.get("finished"))
            out.append(entry)
        return out

    # -- facade: push --------------------------------------------------------------------------------------------

    def send(self, to, paths, progress=None, rid=None, link=None):
        """Deferred[outcome]: offer *paths* to *to* and send them once accepted."""
        return defer.ensureDeferred(self._send(to, paths, progress, rid, link))

    async def _send(self, to, paths, progress, rid, link):
        to = canonical_name(to)
        if to == self.daemon.name:
            raise BadRequest("you cannot send files to yourself")
        entries, skipped = collect(paths)
        t0 = time.monotonic()
        items, local, stats, digests = [], [], [], []
        for offer_path, path in entries:
            st = os.stat(path)
            cached = self.storage.cached_hash(path, st)
            if cached is None:
                try:
                    root, digest_list, _ = await self._thread(filehash.hash_file, path, st.st_size)
                except OSError as e:
                    raise FileProblem("cannot read %s: %s" % (path, e.strerror or e), code="file_unreadable") \
                        from None
                self.storage.put_hash(path, st, root, digest_list)
                self.daemon.schedule_flush()
            else:
                root, digest_list = cached
            items.append({"path": offer_path, "size": st.st_size, "hash": root})
            local.append(path)
            stats.append((st.st_size, st.st_mtime_ns))
            digests.append(digest_list)
        hash_seconds = round(time.monotonic() - t0, 3)
        if link is None:
            link = await self.daemon.dial(to)
        record = {"tid": _ids(), "direction": "out", "peer": to, "status": "offered",
                  "fingerprint": fingerprint(items), "items": items, "total": sum(i["size"] for i in items),
                  "local": local, "kind": "pull" if rid else "push", "rid": rid, "saved": None, "error": None,
                  "created": now_ms(self.clock), "hash_seconds": hash_seconds, "skipped": skipped}
        out = Outgoing(self, record, local, stats, digests)
        out.link = link
        if progress is not None:
            out.watchers.append(progress)
        self.live[out.tid] = out
        out.save()
        self.event(out)
        frame = {"t": "offer", "tid": out.tid, "items": items}
        if rid:
            frame["rid"] = rid
        line = wire.encode(frame)
        if len(line) >= wire.MAX_LINE:
            out.fail(FileProblem("the list of files is too long for one offer; send fewer files at once",
                                 code="too_many_files"))
            return await out.result
        link.send(frame)
        out.tell(out.snapshot())
        try:
            accepted = await out.answer
        except P2PDError as e:
            out.finish("rejected" if e.code in ("rejected", "denied", "no_space", "offer_too_large", "bad_name")
                       else "failed", e)
            return await out.result
        have = accepted["have"]
        if len(have) != len(items) or any(h > i["size"] for h, i in zip(have, items)):
            out.fail(TransferError("%s answered the offer with bad offsets" % to, code="bad_frame"))
            return await out.result
        out.record["resumed_from"] = sum(have)
        session = SendSession(out, base64.urlsafe_b64decode(accepted["secret"] + "="), have)
        self.start_session(out, session, link)
        return await out.result

    def start_session(self, transfer, session, link):
        transfer.session = session
        if link.outgoing:
            peer = link.transport.getPeer()
            endpoint = endpoints.TCP4ClientEndpoint(self.reactor, peer.host, peer.port, timeout=10) \
                if ":" not in peer.host else endpoints.TCP6ClientEndpoint(self.reactor, peer.host, peer.port,
                                                                           timeout=10)
            d = endpoints.connectProtocol(endpoint, DataConnection(session, dialer=True))
            d.addErrback(lambda f: transfer.interrupted("cannot open the data connection (%s)"
                                                        % f.getErrorMessage()))
        else:
            self.sessions[session.keys.sid] = session
            session.arm()

    # -- link frames ---------------------------------------------------------------------------------------------

    def frame(self, link, frame):
        kind = frame["t"]
        handler = getattr(self, "_on_" + kind)
        try:
            handler(link, frame)
        except P2PDError as e:
            link.send(wire.error(e.code, e.message, frame.get("tid") or frame.get("rid")))

    def _on_accept(self, link, frame):
        out = self.live.get(frame["tid"])
        if not isinstance(out, Outgoing) or out.peer != link.peer or out.answer.called:
            raise TransferError("no offer %s is waiting for an answer" % frame["tid"], code="unknown_transfer")
        out.link = link
        out.answer.callback(frame)

    def _on_reject(self, link, frame):
        out = self.live.get(frame["tid"])
        if isinstance(out, Outgoing) and out.peer == link.peer and not out.answer.called:
            refusals = ("denied", "no_space", "offer_too_large", "bad_name")
            code = frame["code"] if frame["code"] in refusals else "rejected"
            out.answer.errback(TransferError("%s refused the files: %s" % (link.peer, _text(frame["message"])),
                                             code=code))

    def _on_cancel(self, link, frame):
        t = self.live.get(frame["tid"])
        if t is None or t.peer != link.peer:
            return
        why = "%s cancelled the transfer: %s" % (link.peer, _text(frame["message"]))
        if isinstance(t, Outgoing):
            if not t.answer.called:
                t.answer.errback(TransferError(why, code="cancelled"))
            elif t.session is not None:
                t.session.done = True
                t.session.close(abort=True)
                t.fail(TransferError(why, code="cancelled"))
        else:
            if t.session is not None:
                t.session.done = True
                t.session.close(abort=True)
            t.fail(TransferError(why, code="cancelled"), resumable=t.record["status"] == "active")

    def link_error(self, link, frame):
        """An ``error`` frame whose ``ref`` may name one of our transfers or requests; True if it did."""
        ref = frame.get("ref")
        error = TransferError("%s: %s" % (link.peer, _text(frame["message"])), code=_code(frame["code"]))
        t = self.live.get(ref)
        if isinstance(t, Outgoing) and t.peer == link.peer:
            if not t.answer.called:
                t.answer.errback(error)
            return True
        if isinstance(t, Incoming) and t.peer == link.peer:
            t.fail(error, resumable=True)
            return True
        request = self.requests.get(ref)
        if request is not None and request[0] == link.peer:
            self.requests.pop(ref)
            request[2].errback(error)
            return True
        return False

    def link_down(self, link):
        for t in list(self.live.values()):
            if t.link is link and isinstance(t, Outgoing) and not t.answer.called:
                t.answer.errback(TransferError("lost the link to %s before it answered; run the same command "
                                               "again" % link.peer, code="interrupted"))
        for rid, (peer, kind, d) in list(self.requests.items()):
            if peer == link.peer and getattr(d, "link", None) is link:
                del self.requests[rid]
                d.errback(TransferError("lost the link to %s before it answered" % peer, code="interrupted"))

    # -- receiving offers ----------------------------------------------------------------------------------------

    def _on_offer(self, link, frame):
        peer = link.peer
        items = [{"path": i["path"], "size": i["size"], "hash": i["hash"]} for i in frame["items"]]
        if frame["tid"] in self.live:
            raise TransferError("offer %s already exists" % frame["tid"], code="bad_frame")
        try:
            landing = check_offer(items)
        except filenames.BadFileName as e:
            log.warn("refused an offer from {peer}: {error}", peer=peer, error=e.message)
            self.daemon.emit({"event": "transfer", "tid": frame["tid"], "direction": "in", "peer": peer,
                              "status": "refused", "error": {"code": e.code, "message": e.message}})
            raise
        total = sum(i["size"] for i in items)
        rid = frame.get("rid")
        fp = fingerprint(items)
        previous = self.storage.find_transfer(peer, "in", fp, UNFINISHED)
        if previous is not None and previous["tid"] in self.live:
            previous = None  # still running under its own tid: this is a second, separate offer
        if previous is not None:
            record = previous
            self.storage.put_transfer(dict(record, status="replaced"), now_ms(self.clock))
            record.update(tid=frame["tid"], status="offered", error=None, rid=rid)
        else:
            n = len(items)
            record = {"tid": frame["tid"], "direction": "in", "peer": peer, "status": "offered", "fingerprint": fp,
                      "items": items, "total": total, "have": [0] * n, "saved": [None] * n, "key": _ids(),
                      "landing": ["/".join(parts) for parts in landing], "tops": {}, "kind": "pull" if rid else
                      "push", "rid": rid, "created": now_ms(self.clock), "error": None, "accepted": False}
        t = Incoming(self, record)
        t.link = link
        self.live[t.tid] = t
        request = self.requests.get(rid) if rid else None
        if rid and (request is None or request[0] != peer or request[1] != "get"):
            self.live.pop(t.tid)
            raise TransferError("offer answers no request of ours", code="unexpected_offer")
        if request is not None:
            self.requests.pop(rid)
            self.pulls[t.tid] = request[2]
            request[2].callback(t)
            return self.accept(t.tid)
        if record.get("accepted"):
            return self.accept(t.tid)  # the same offer again, which we accepted before: resume it
        if self.policy == "deny":
            return self._refuse(t, "denied", "this peer does not accept files")
        if self.policy == "auto":
            if self.accept_from and peer not in self.accept_from:
                return self._refuse(t, "denied", "this peer accepts files only from some peers")
            if self.accept_max is not None and total > self.accept_max:
                return self._refuse(t, "offer_too_large", "this peer accepts offers up to %s; this one is %s"
                                    % (human(self.accept_max), human(total)))
            return self.accept(t.tid)
        t.save()
        self.event(t)
        log.info("{peer} offers {n} file(s), {size}: waiting for accept/reject {tid}", peer=peer, n=len(items),
                 size=human(total), tid=t.tid)

    def _refuse(self, t, code, message):
        if t.link is not None and not t.link.closed:
            t.link.send({"t": "reject", "tid": t.tid, "code": code, "message": message})
        t.finish("rejected", TransferError(message, code=code))
        t.result.addErrback(lambda f: None)

    def _find_incoming(self, tid):
        t = self.live.get(tid) if isinstance(tid, str) else None
        if not isinstance(t, Incoming):
            raise NotFound("no offer %s is waiting (p2pctl transfers lists them)" % (tid,))
        return t

    def accept(self, tid):
        """Accept the waiting offer *tid* (or resume it): check space, choose names, answer with a secret."""
        t = self._find_incoming(tid)
        if t.record["status"] != "offered":
            raise TransferError("transfer %s is %s, not waiting for an answer" % (tid, t.record["status"]),
                                code="bad_state")
        need = t.unallocated()
        free = self.free_space()
        reserved = sum(o.unallocated() for o in self.live.values()
                       if isinstance(o, Incoming) and o is not t and o.record["status"] in ("accepted", "active"))
        if need + reserved + SPACE_MARGIN > free:
            message = ("not enough free space in the inbox: the files need %s, %s is free (%s of it promised to "
                       "other transfers)" % (human(need), human(max(0, free - SPACE_MARGIN)), human(reserved)))
            self._refuse(t, "no_space", message)
            return {"tid": tid, "status": "rejected", "error": message}
        if not t.record.get("accepted"):
            t.record["tops"] = self.choose_tops(t)
        secret = datastream.new_secret()
        t.record.update(accepted=True, resumed_from=sum(t.have))
        t.set_status("accepted")  # 'active' once the data connection is up
        answer = {"t": "accept", "tid": tid, "secret": base64.urlsafe_b64encode(secret).decode().rstrip("="),
                  "have": list(t.have)}
        session = ReceiveSession(t, secret)

        def answered(link):
            t.link = link
            link.send(answer)
            self.start_session(t, session, link)

        if t.link is not None and not t.link.closed:
            answered(t.link)
        else:
            d = self.daemon.dial(t.peer)
            d.addCallbacks(answered, lambda f: t.interrupted("cannot reach %s to answer: %s"
                                                             % (t.peer, f.getErrorMessage())))
        t.result.addErrback(lambda f: None)  # outcomes of offers nobody waits on are in ``transfers``
        return {"tid": tid, "status": "accepted"}

    def reject(self, tid):
        t = self._find_incoming(tid)
        if t.record["status"] != "offered":
            raise TransferError("transfer %s is %s, not waiting for an answer" % (tid, t.record["status"]),
                                code="bad_state")
        self._refuse(t, "rejected", "%s rejected the files" % self.daemon.name)
        t.discard_parts()
        return {"tid": tid, "status": "rejected"}

    def cancel(self, tid):
        t = self.live.get(tid)
        if t is None:
            raise NotFound("no transfer %s is running" % tid)
        if isinstance(t, Outgoing):
            t.cancel("%s cancelled it" % self.daemon.name)
        else:
            if t.link is not None and not t.link.closed:
                t.link.send({"t": "cancel", "tid": tid, "code": "cancelled", "message": "receiver cancelled"})
            if t.session is not None:
                t.session.done = True
                t.session.close(abort=True)
            t.fail(TransferError("cancelled", code="cancelled"), resumable=True)
        return {"tid": tid, "status": "cancelled"}

    def free_space(self):
        st = os.statvfs(self.inbox)
        return st.f_bavail * st.f_frsize

    def choose_tops(self, t):
        """Top-level names in the inbox for this transfer's files, each one nothing else has or will have."""
        taken = set()
        for other in self.live.values():
            if isinstance(other, Incoming) and other is not t:
                taken.update(n.casefold() for n in other.record.get("tops", {}).values())
        tops = {}
        for landing in t.record["landing"]:
            top = landing.split("/", 1)[0]
            if top in tops:
                continue
            n = 0
            candidate = top
            while candidate.casefold() in taken or os.path.lexists(os.path.join(self.inbox, candidate)):
                n += 1
                candidate = filenames.numbered(top, n)
            taken.add(candidate.casefold())
            tops[top] = candidate
        return tops

    def land(self, part, landing, tops):
        """Link the partial file *part* to its place in the inbox; the path actually used (inbox-relative)."""
        components = landing.split("/")
        components[0] = tops.get(components[0], components[0])
        dfd = self.inbox_fd()
        pfd = self.partial_fd()
        try:
            for name in components[:-1]:
                try:
                    os.mkdir(name, 0o755, dir_fd=dfd)
                except FileExistsError:
                    pass
                try:
                    nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
                except OSError as e:
                    raise TransferError("cannot create the folder %s in the inbox: %s" % (name, e.strerror),
                                        code="write_failed") from None
                os.close(dfd)
                dfd = nfd
            base = components[-1]
            n = 0
            while True:
                name = base if n == 0 else filenames.numbered(base, n)
                try:
                    os.link(part, name, src_dir_fd=pfd, dst_dir_fd=dfd, follow_symlinks=False)
                    break
                except FileExistsError:
                    n += 1
            os.unlink(part, dir_fd=pfd)
            components[-1] = name
            return "/".join(components)
        finally:
            os.close(dfd)
            os.close(pfd)

    # -- pull: ls and get ---------------------------------------------------------------------------------------

    def _request(self, peer, frame, kind):
        d = defer.Deferred()

        def send(link):
            d.link = link
            self.requests[frame["rid"]] = (peer, kind, d)
            link.send(frame)
            return d

        peer = canonical_name(peer)
        return self.daemon.dial(peer).addCallback(send)

    def ls(self, peer, path=""):
        frame = {"t": "ls", "rid": _ids(), "path": path or ""}
        d = self._request(peer, frame, "ls")
        return d.addCallback(lambda listing: {"peer": canonical_name(peer), "path": path or "",
                                              "items": listing["items"], "truncated": listing.get("truncated")})

    def get(self, peer, path, progress=None):
        if not isinstance(path, str) or not path:
            raise BadRequest("'name' must be a file or folder name in the peer's share")
        frame = {"t": "get", "rid": _ids(), "path": path}

        def offered(t):
            if progress is not None:
                t.watchers.append(progress)
            return t.result

        return self._request(peer, frame, "get").addCallback(offered)

    def _on_listing(self, link, frame):
        request = self.requests.get(frame["rid"])
        if request is not None and request[0] == link.peer and request[1] == "ls":
            del self.requests[frame["rid"]]
            request[2].callback(frame)

    def _share_path(self, path):
        """An fd of *path* inside the share (a directory fd for ""), no symbolic link followed anywhere."""
        if self.share is None:
            raise TransferError("%s shares no folder" % self.daemon.name, code="no_share")
        fd = os.open(self.share, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if not path:
            return fd
        try:
            components = filenames.check_relpath(path)
        except filenames.BadFileName:
            os.close(fd)
            raise NotFound("%s is not in %s's share" % (path, self.daemon.name)) from None
        try:
            for name in components:
                nfd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=fd)
                os.close(fd)
                fd = nfd
        except OSError:
            os.close(fd)
            raise NotFound("%s is not in %s's share" % (path, self.daemon.name)) from None
        return fd

    def _on_ls(self, link, frame):
        fd = self._share_path(frame["path"])
        try:
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                raise TransferError("%s is a file, not a folder" % frame["path"], code="not_a_folder")
            items = []
            with os.scandir(fd) as entries:
                for entry in sorted(entries, key=lambda e: e.name):
                    if filenames.is_hidden_or_unsafe(entry.name) or entry.is_symlink():
                        continue
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        items.append({"name": entry.name, "type": "dir"})
                    elif stat.S_ISREG(st.st_mode):
                        items.append({"name": entry.name, "type": "file", "size": st.st_size})
        finally:
            os.close(fd)
        listing = {"t": "listing", "rid": frame["rid"], "items": items[:MAX_LISTING]}
        if len(items) > MAX_LISTING:
            listing["truncated"] = True
        while len(wire.encode(listing)) >= wire.MAX_LINE:
            listing["items"] = listing["items"][:len(listing["items"]) // 2]
            listing["truncated"] = True
        link.send(listing)

    def _on_get(self, link, frame):
        fd = self._share_path(frame["path"])
        try:
            mode = os.fstat(fd).st_mode
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise NotFound("%s is not in %s's share" % (frame["path"], self.daemon.name))
        finally:
            os.close(fd)
        # The path was checked component by component without following links; walking it again by name is
        # safe because collect() and the sender re-check every entry (links and specials are skipped).
        real = os.path.join(self.share, *filenames.check_relpath(frame["path"]))
        d = self.send(link.peer, [real], rid=frame["rid"], link=link)

        def failed(f):
            if isinstance(f.value, P2PDError) and f.value.code in ("file_missing", "file_unreadable",
                                                                    "too_many_files"):
                link.send(wire.error(f.value.code, f.value.message, frame["rid"]))
            log.info("serving {path} to {peer} failed: {error}", path=frame["path"], peer=link.peer,
                     error=f.getErrorMessage())

        d.addErrback(failed)
