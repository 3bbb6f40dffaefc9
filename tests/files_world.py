"""Fakes and helpers shared by the unit tests of p2pd.peer.files: a fake daemon (events, commits, dialer), fake
data paths, a fake IByteStream that drives a session as a data path does, and builders of offers and streams."""


import base64
import hashlib
import os
import stat
import threading

import pytest
from twisted.internet import defer, protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from p2pd.core import datastream, filehash, filenames, wire
from p2pd.errors import BadRequest
from p2pd.errors import NotFound
from p2pd.peer.files import diskwriter as dmod
from p2pd.peer.files.errors import FileProblem, TransferError
from p2pd.peer.files.inbox import PARTIAL_DIR
from p2pd.peer.files.manager import Transfers
from p2pd.peer.files.offers import check_offer, collect, fingerprint
from p2pd.peer.files.sessions import DATA_TIMEOUT
from p2pd.peer.files.transfer import Incoming
from p2pd.peer.files.states import BadTransition
from p2pd.peer.interfaces import IByteStream, IDataPaths, IFrameHandler, IStreamReceiver
from p2pd.peer.net.demux import DemuxFactory
from p2pd.peer.net.tcp_data import DataConnection
from p2pd.peer.storage import Storage
from p2pd.peer.threads import InlineThreads, ReactorThreads
from zope.interface import implementer
from zope.interface.verify import verifyObject


# -- fakes -------------------------------------------------------------------------------------------------------

class FakeDaemon:
    name = "alice"

    def __init__(self, tmp_path):
        self.storage = Storage(str(tmp_path / "p2pd.sqlite3"), name="alice")
        self.clock = Clock()
        self.events = []
        self.flushes = 0
        self.dialled = []

    def emit(self, event):
        self.events.append(event)

    def schedule_flush(self):
        self.flushes += 1

    def dial(self, peer):
        self.dialled.append(peer)
        return defer.Deferred()


@implementer(IDataPaths)
class FakePaths:
    """Data paths that hold every session for the test to connect (as the listening side does)."""

    def __init__(self):
        self.waiting = {}
        self.transports = []

    def open(self, link, session_id, receiver, transport="tcp"):
        self.transports.append(transport)
        self.waiting[session_id] = receiver
        return defer.succeed(None)

    def claim(self, session_id):
        return self.waiting.pop(session_id, None)

    def forget(self, session_id):
        self.waiting.pop(session_id, None)


@implementer(IByteStream)
class FakeStream:
    """An in-memory IByteStream for one session (written bytes kept, as a StringTransport would), driven like
    a data connection: ``dataReceived`` puts bytes into the session's opener as a path does, then
    ``stream_arrived``; ``connectionLost`` is the path going away."""

    def __init__(self, session):
        self.session = session
        self.transport = self  # tests read .transport.value(), .disconnecting, .aborted
        self.written = bytearray()
        self.closed = self.disconnecting = self.aborted = False
        self.producer = None
        self.receiving = True

    def start(self):
        self.session.stream_started(self)
        return self

    def value(self):
        return bytes(self.written)

    def write(self, data):
        if not self.closed:
            self.written += data

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def pauseReceiving(self):
        self.receiving = False

    def resumeReceiving(self):
        self.receiving = True

    def close(self, abort=False):
        self.disconnecting = True
        self.aborted = self.aborted or abort

    def dataReceived(self, data):
        view = memoryview(data)
        opener = self.session.opener
        while len(view) and not self.disconnecting:  # as a path: nothing is handed up once the stream is closing
            room = opener.space()
            n = min(len(room), len(view))
            room[:n] = view[:n]
            opener.filled(n)
            view = view[n:]
            self.session.stream_arrived()

    def connectionLost(self, reason):
        self.closed = True
        self.session.stream_lost(reason)


def make_transfers(daemon, inbox, threads=None, **options):
    manager = Transfers(daemon.name, daemon.storage, daemon.clock, threads or InlineThreads(), daemon, daemon,
                        daemon, FakePaths(), inbox, **options)
    manager.start()
    return manager


class FakeLink:
    def __init__(self, peer="bob", outgoing=False):
        self.peer = peer
        self.outgoing = outgoing
        self.closed = False
        self.sent = []

    def send(self, frame):
        self.sent.append(frame)


class Transport(StringTransport):
    aborted = False

    def abortConnection(self):
        self.aborted = True
        super().abortConnection()


@pytest.fixture
def world(tmp_path):
    daemon = FakeDaemon(tmp_path)
    manager = make_transfers(daemon, str(tmp_path / "inbox"))
    yield daemon, manager
    for t in list(manager.live.values()):
        t.result.addErrback(lambda f: None)
    daemon.storage.close()


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 64 bytes, so that a file of a few hundred bytes has several (filehash reads it at call time)."""
    monkeypatch.setattr(filehash, "MIN_CHUNK", 64)
    return 64


def digests_of(data):
    return b"".join(filehash.ChunkHasher(len(data)).update(data))


def item(path, data):
    return {"path": path, "size": len(data), "hash": filehash.root_of(digests_of(data))}


def tid_of(n):
    return "%032x" % n


def offer(manager, files, link=None, tid=None):
    """Offer *files* (``[(path, bytes)]``) from bob; the Incoming (policy 'ask': it waits) and its outcome list."""
    link = link or FakeLink()
    tid = tid or tid_of(len(manager.recent) + len(manager.live) + 1)
    frame = {"t": "offer", "tid": tid, "items": [item(p, d) for p, d in files]}
    manager.frame(link, wire.decode(wire.encode(frame)))
    t = manager.live[tid]
    outcome = []
    t.result.addBoth(outcome.append)
    return t, outcome, link


def accept(manager, t):
    """Accept *t*; connect its data session to a StringTransport. ``(keys, conn, transport, sealer, answer)``."""
    assert manager.accept(t.tid) == {"tid": t.tid, "status": "accepted"}
    answer = t.link.sent[-1]
    assert answer["t"] == "accept" and answer["tid"] == t.tid
    keys = datastream.SessionKeys(base64.urlsafe_b64decode(answer["secret"] + "="))
    session = manager.paths.claim(keys.sid)
    assert session is t.session and manager.paths.claim(keys.sid) is None
    conn = FakeStream(session).start()
    transport = conn.transport
    assert transport.value() == b""  # the listening side sends no preamble
    assert t.record["status"] == "active"
    return keys, conn, transport, datastream.Sealer(keys.to_receiver), answer


def file_records(sealer, index, data, pieces=None, digests=None, end=True):
    """The records a sender sends for one file: its hash list, its bytes (cut at *pieces*), its end."""
    digests = digests_of(data) if digests is None else digests
    out = [sealer.json({"t": "file", "i": index, "d": base64.b64encode(digests).decode()})]
    bounds = [0] + list(pieces or []) + [len(data)]
    for a, b in zip(bounds, bounds[1:]):
        if b > a:
            out.append(b"".join(sealer.data(data[a:b])))
    if end:
        out.append(sealer.end(index))
    return b"".join(out)


def deliver(conn, stream, piece=97):
    for i in range(0, len(stream), piece):
        if conn.closed or conn.transport.disconnecting:
            break
        conn.dataReceived(stream[i:i + piece])


def replies(keys, transport):
    return [obj for _, obj in datastream.Opener(keys.to_sender).feed(transport.value())]


def inbox_files(manager):
    """Every path under the inbox except the partial folder, inbox-relative."""
    found = []
    for dirpath, dirnames, files in os.walk(manager.inbox.path):
        if dirpath == manager.inbox.path and PARTIAL_DIR in dirnames:
            dirnames.remove(PARTIAL_DIR)
        rel = os.path.relpath(dirpath, manager.inbox.path)
        found.extend(os.path.normpath(os.path.join(rel, f)) for f in files)
    return sorted(found)


def partials(manager):
    path = os.path.join(manager.inbox.path, PARTIAL_DIR)
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def failed_with(outcome, code):
    assert len(outcome) == 1 and isinstance(outcome[0], Failure), outcome
    assert isinstance(outcome[0].value, TransferError)
    assert outcome[0].value.code == code, outcome[0].value.message
    return outcome[0].value


A = os.urandom(1000)
B = bytes(range(256)) * 12


def receive_one(manager, data, declared=None):
    t, outcome, _ = offer(manager, [("dir/f.bin", declared if declared is not None else data)])
    keys, conn, transport, sealer, _ = accept(manager, t)
    return t, outcome, keys, conn, transport, sealer


def read(path):
    with open(path, "rb") as f:
        return f.read()
