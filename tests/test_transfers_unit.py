"""File transfers without a network (p2pd.peer.transfers): offer names, what a sender collects, partial files and
landing in the inbox, a ReceiveSession fed sealed records by hand, and the Demux that tells TLS links from data
connections. A real Transfers runs on a fake daemon (a Clock, a real Storage in tmp_path)."""

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

    def open(self, link, session_id, receiver):
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


# -- check_offer -------------------------------------------------------------------------------------------------

def items_of(*paths):
    return [{"path": p, "size": 1, "hash": "0" * 64} for p in paths]


@pytest.mark.parametrize("path", [
    "../x", "/etc/x", "a/../../x", "C:\\x", "C:x", "x\x00y", "x\\x00y", ".", "..", "", "a/", "/", "a//b",
    "x" * 300, "a/" + "y" * 256, ".ssh/authorized_keys", ".SSH/x", "a/.git/config", "a\u2215b", "a\uff0fb",
    "\u2024\u2024/x", "x\u202etxt.exe", "name.", "name ", "   ", "a\nb", "\ud800",
])
def test_check_offer_refuses_hostile_names(path):
    with pytest.raises(filenames.BadFileName) as info:
        check_offer(items_of("fine.txt", path))
    assert info.value.code == "bad_name"


@pytest.mark.parametrize("paths", [
    ("a.txt", "a.txt"),
    ("A.txt", "a.txt"),
    ("dir/Report.PDF", "DIR/report.pdf"),
    ("a", "a/b"),
    ("a/b", "a"),
    ("A/b", "a"),
    ("x/a", "x/a/b/c"),
    ("con", "_con"),  # both land as "_con"
])
def test_check_offer_refuses_colliding_names(paths):
    """Two items that would land on one path (ignoring case), or a file that is also a folder, are refused."""
    with pytest.raises(filenames.BadFileName):
        check_offer(items_of(*paths))


def test_check_offer_accepts_ordinary_names_and_prefixes_windows_devices():
    landing = check_offer(items_of("doc..pdf", "dir/a.txt", "dir/b.txt", "dir/sub/c", "résumé.pdf",
                                   "con.txt", "a/NUL/b", "COM1", "lpt9.tar.gz", "console", "ab/cd"))
    assert landing == [("doc..pdf",), ("dir", "a.txt"), ("dir", "b.txt"), ("dir", "sub", "c"), ("résumé.pdf",),
                       ("_con.txt",), ("a", "_NUL", "b"), ("_COM1",), ("_lpt9.tar.gz",), ("console",),
                       ("ab", "cd")]


# -- collect ----------------------------------------------------------------------------------------------------

def test_collect_a_regular_file(tmp_path):
    path = tmp_path / "report.pdf"
    path.write_bytes(b"%PDF")
    assert collect([str(path)]) == ([("report.pdf", str(path))], 0)


def test_collect_walks_a_tree_and_skips_hidden_links_and_specials(tmp_path):
    root = tmp_path / "photos"
    (root / "2024" / "may").mkdir(parents=True)
    (root / "a.jpg").write_bytes(b"a")
    (root / "2024" / "b.jpg").write_bytes(b"b")
    (root / "2024" / "may" / "c.jpg").write_bytes(b"c")
    (root / "empty").mkdir()
    skipped = {
        ".hidden": lambda p: p.write_bytes(b"h"),  # hidden file
        ".git": lambda p: (p.mkdir(), (p / "config").write_bytes(b"x")),  # hidden folder (not walked)
        "link.jpg": lambda p: p.symlink_to(root / "a.jpg"),  # link to a file
        "dangling": lambda p: p.symlink_to(tmp_path / "nowhere"),  # dangling link
        "linkdir": lambda p: p.symlink_to(tmp_path),  # link to a folder (not walked)
        "fifo": lambda p: os.mkfifo(p),  # special file
        "trailing.": lambda p: p.write_bytes(b"t"),  # a name the receiver would refuse
    }
    for name, make in skipped.items():
        make(root / "2024" / name)
    entries, count = collect([str(root)])
    assert entries == [("photos/a.jpg", str(root / "a.jpg")),
                       ("photos/2024/b.jpg", str(root / "2024" / "b.jpg")),
                       ("photos/2024/may/c.jpg", str(root / "2024" / "may" / "c.jpg"))]
    assert count == len(skipped)
    check_offer(items_of(*(e[0] for e in entries)))


def test_collect_numbers_arguments_with_the_same_base_name(tmp_path):
    for d in ("one", "two", "three"):
        (tmp_path / d).mkdir()
    (tmp_path / "one" / "x.txt").write_bytes(b"1")
    (tmp_path / "two" / "X.txt").write_bytes(b"2")
    (tmp_path / "three" / "x.txt").mkdir()
    (tmp_path / "three" / "x.txt" / "in").write_bytes(b"3")
    entries, _ = collect([str(tmp_path / "one" / "x.txt"), str(tmp_path / "two" / "X.txt"),
                          str(tmp_path / "three" / "x.txt")])
    assert [e[0] for e in entries] == ["x.txt", "X (1).txt", "x (2).txt/in"]
    check_offer(items_of(*(e[0] for e in entries)))


def test_collect_renames_a_hidden_argument(tmp_path):
    (tmp_path / ".env").write_bytes(b"x")
    assert collect([str(tmp_path / ".env")]) == ([("env", str(tmp_path / ".env"))], 0)


def test_collect_missing_file(tmp_path):
    with pytest.raises(FileProblem) as info:
        collect([str(tmp_path / "nope")])
    assert info.value.code == "file_missing"


@pytest.mark.parametrize("contents", [[], [".hidden"], ["link"]])
def test_collect_nothing_to_send(tmp_path, contents):
    root = tmp_path / "dir"
    root.mkdir()
    for name in contents:
        if name == "link":
            (root / name).symlink_to(tmp_path)
        else:
            (root / name).write_bytes(b"x")
    with pytest.raises(FileProblem) as info:
        collect([str(root)])
    assert info.value.code == "file_missing"
    assert "%d hidden or unsupported" % len(contents) in info.value.message


def test_collect_refuses_a_special_file_argument(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(FileProblem) as info:
        collect([str(tmp_path / "fifo")])
    assert info.value.code == "file_unreadable"


@pytest.mark.parametrize("paths", [[], "file", [""], [5], None])
def test_collect_refuses_bad_arguments(paths):
    with pytest.raises(BadRequest):
        collect(paths)


def test_collect_too_many_files(tmp_path, monkeypatch):
    monkeypatch.setattr(wire, "MAX_ITEMS", 3)
    root = tmp_path / "many"
    root.mkdir()
    for i in range(3):
        (root / ("f%d" % i)).write_bytes(b"x")
    assert len(collect([str(root)])[0]) == 3
    (root / "f3").write_bytes(b"x")
    with pytest.raises(FileProblem) as info:
        collect([str(root)])
    assert info.value.code == "too_many_files"
    with pytest.raises(FileProblem) as info:
        collect([str(root / ("f%d" % i)) for i in range(4)])
    assert info.value.code == "too_many_files"


# -- fingerprint -------------------------------------------------------------------------------------------------

def test_fingerprint_is_stable_and_order_sensitive():
    a = {"path": "a.txt", "size": 1, "hash": "1" * 64}
    b = {"path": "b.txt", "size": 2, "hash": "2" * 64}
    fp = fingerprint([a, b])
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert fingerprint([dict(b), dict(a)]) != fp
    assert fingerprint([{"hash": a["hash"], "size": 1, "path": "a.txt", "extra": 1}, b]) == fp  # key order, extras
    assert fingerprint([dict(a, size=2), b]) != fp
    assert fingerprint([dict(a, hash="3" * 64), b]) != fp
    assert fingerprint([dict(a, path="A.txt"), b]) != fp
    assert fingerprint([a]) != fp
    assert fp == hashlib.sha256(b'[["a.txt",1,"' + b"1" * 64 + b'"],["b.txt",2,"' + b"2" * 64 + b'"]]').hexdigest()


# -- offers on the link --------------------------------------------------------------------------------------------

def test_an_offer_with_a_bad_name_is_refused_with_the_tid(world):
    daemon, manager = world
    link = FakeLink()
    tid = tid_of(9)
    frame = {"t": "offer", "tid": tid, "items": [item("ok.txt", b"x"), item("../../.bashrc", b"y")]}
    manager.frame(link, wire.decode(wire.encode(frame)))
    assert manager.live == {}
    assert len(link.sent) == 1
    assert (link.sent[0]["t"], link.sent[0]["code"], link.sent[0]["ref"]) == ("error", "bad_name", tid)
    assert daemon.events[-1]["status"] == "refused" and daemon.events[-1]["tid"] == tid


def test_an_offer_waits_for_consent_and_reject_answers_it(world):
    daemon, manager = world
    t, outcome, link = offer(manager, [("a.txt", b"abc")])
    assert t.record["status"] == "offered" and link.sent == [] and outcome == []
    assert manager.reject(t.tid) == {"tid": t.tid, "status": "rejected"}
    assert link.sent[-1]["t"] == "reject" and link.sent[-1]["tid"] == t.tid
    failed_with(outcome, "rejected")
    assert manager.live == {} and inbox_files(manager) == []


# -- ReceiveSession -----------------------------------------------------------------------------------------------

A = os.urandom(1000)
B = bytes(range(256)) * 12


def test_a_correct_stream_lands_every_file_and_answers_complete(world):
    daemon, manager = world
    files = [("pics/a.bin", A), ("pics/empty", b""), ("notes.txt", B)]
    t, outcome, link = offer(manager, files)
    keys, conn, transport, sealer, answer = accept(manager, t)
    assert answer["have"] == [0, 0, 0]
    stream = b"".join(file_records(sealer, i, data, pieces=[100, 700] if data else None)
                      for i, (_, data) in enumerate(files)) + sealer.finish()
    deliver(conn, stream)
    assert inbox_files(manager) == ["notes.txt", "pics/a.bin", "pics/empty"]
    for path, data in files:
        with open(os.path.join(manager.inbox.path, path), "rb") as f:
            assert f.read() == data
    assert partials(manager) == []
    saved = ["pics/a.bin", "pics/empty", "notes.txt"]
    assert replies(keys, transport) == [{"t": "complete", "saved": saved}]
    assert transport.disconnecting and not transport.aborted
    assert len(outcome) == 1 and outcome[0]["saved"] == saved and outcome[0]["done"] == len(A) + len(B)
    assert t.record["status"] == "done" and t.have == [len(A), 0, len(B)]
    assert daemon.storage.get_transfer(t.tid)["status"] == "done"
    assert manager.live == {} and manager.paths.waiting == {}
    assert_quiet(daemon.clock)


def test_files_land_beside_existing_names_without_replacing_them(world):
    daemon, manager = world
    os.makedirs(os.path.join(manager.inbox.path, "pics"))
    with open(os.path.join(manager.inbox.path, "notes.txt"), "wb") as f:
        f.write(b"mine")
    t, outcome, _ = offer(manager, [("pics/a.bin", A), ("notes.txt", B)])
    keys, conn, transport, sealer, _ = accept(manager, t)
    assert t.record["tops"] == {"pics": "pics (1)", "notes.txt": "notes (1).txt"}
    deliver(conn, file_records(sealer, 0, A) + file_records(sealer, 1, B) + sealer.finish())
    assert replies(keys, transport) == [{"t": "complete", "saved": ["pics (1)/a.bin", "notes (1).txt"]}]
    with open(os.path.join(manager.inbox.path, "notes.txt"), "rb") as f:
        assert f.read() == b"mine"
    assert os.listdir(os.path.join(manager.inbox.path, "pics")) == []


def assert_quiet(clock):
    """Nothing is left scheduled but the limit on a graceful close of the data connection (cancelled when the
    connection is gone; these tests' transport never says it is)."""
    assert [call.func.__self__.action.__name__ for call in clock.getDelayedCalls()] in ([], ["_close_timed_out"])


def test_a_graceful_close_that_never_completes_is_aborted(world):
    """A receiver closes after 'complete'; if the sender never lets the connection go (it stops reading, so
    what is queued is never sent), the connection is aborted after DATA_TIMEOUT. Once it is gone, nothing is
    left scheduled."""
    daemon, manager = world
    t, outcome, keys, conn, transport, sealer = receive_one(manager, A)
    deliver(conn, file_records(sealer, 0, A, digests=digests_of(A)) + sealer.finish())
    assert transport.disconnecting and not transport.aborted
    daemon.clock.advance(DATA_TIMEOUT)
    assert transport.aborted
    conn.connectionLost(Failure(Exception("aborted")))
    assert daemon.clock.getDelayedCalls() == []


def test_a_closed_connection_cancels_the_close_limit(world):
    daemon, manager = world
    t, outcome, keys, conn, transport, sealer = receive_one(manager, A)
    deliver(conn, file_records(sealer, 0, A, digests=digests_of(A)) + sealer.finish())
    conn.connectionLost(Failure(Exception("closed")))
    assert daemon.clock.getDelayedCalls() == [] and not transport.aborted


def receive_one(manager, data, declared=None):
    t, outcome, _ = offer(manager, [("dir/f.bin", declared if declared is not None else data)])
    keys, conn, transport, sealer, _ = accept(manager, t)
    return t, outcome, keys, conn, transport, sealer


def assert_failed_cleanly(manager, t, outcome, keys, transport, code, status="failed"):
    """The transfer failed with *code*: the sender was told, the connection closed, no partial file is left and
    nothing landed."""
    failed_with(outcome, code)
    fail = replies(keys, transport)
    assert len(fail) == 1 and fail[0]["t"] == "fail" and fail[0]["code"] == code
    assert transport.disconnecting
    assert t.record["status"] == status and t.record["error"]["code"] == code
    assert inbox_files(manager) == []
    assert manager.live == {}
    assert_quiet(t.manager.clock)
    assert_buffers_back(manager)


def assert_buffers_back(manager):
    """Every decrypted-data buffer the daemon-wide pool made is back in it (a record dropped on a failure too)."""
    assert manager.buffers._free.qsize() == manager.buffers.made


@pytest.mark.parametrize("pieces", [[], [1000], [600], [999]])
def test_more_bytes_than_declared_is_a_size_mismatch(world, pieces):
    """Declared 1000 bytes, sent 1001 (in one record or after the declared ones): nothing is kept."""
    daemon, manager = world
    t, outcome, keys, conn, transport, sealer = receive_one(manager, A)
    deliver(conn, file_records(sealer, 0, A + b"!", pieces=pieces, digests=digests_of(A)) + sealer.finish())
    assert_failed_cleanly(manager, t, outcome, keys, transport, "size_mismatch")
    assert partials(manager) == []
    assert t.have == [0]


def test_a_flipped_byte_is_a_hash_mismatch(world):
    daemon, manager = world
    t, outcome, keys, conn, transport, sealer = receive_one(manager, A)
    bad = bytearray(A)
    bad[500] ^= 0x01
    deliver(conn, file_records(sealer, 0, bytes(bad), digests=digests_of(A)) + sealer.finish())
    assert_failed_cleanly(manager, t, outcome, keys, transport, "hash_mismatch")
    assert partials(manager) == []


def test_a_bad_chunk_is_caught_when_it_completes(world, small_chunks):
    """With several chunks, the lie is caught as soon as the bad chunk is whole, before the rest arrives."""
    daemon, manager = world
    t, outcome, keys, conn, transport, sealer = receive_one(manager, A)
    bad = bytearray(A)
    bad[3 * 64 + 10] ^= 0xFF
    stream = file_records(sealer, 0, bytes(bad), pieces=list(range(32, 1000, 32)), digests=digests_of(A))
    head = len(file_records(datastream.Sealer(keys.to_receiver), 0, A[:4 * 64], pieces=list(range(32, 256, 32)),
                            digests=digests_of(A), end=False))
    conn.dataReceived(stream[:head - 1])
    assert outcome == [] and t.have == [3 * 64]  # three chunks verified, the fourth not yet whole
    conn.dataReceived(stream[head - 1:head])
    assert_failed_cleanly(manager, t, outcome, keys, transport, "hash_mismatch")
    assert partials(manager) == []


@pytest.mark.parametrize("digests", [
    digests_of(B),  # another file's list
    digests_of(A) + b"\0" * 32,  # one digest too many
    b"",
])
def test_a_hash_list_that_does_not_match_the_offer_is_a_hash_mismatch(world, digests):
    daemon, manager = world
    t, outcome, keys, conn, transport, sealer = receive_one(manager, A)
    deliver(conn, file_records(sealer, 0, A, digests=digests) + sealer.finish())
    assert_failed_cleanly(manager, t, outcome, keys, transport, "hash_mismatch")
    assert partials(manager) == []


def test_end_before_every_byte_is_a_size_mismatch(world):
    daemon, manager = world
    t, outcome, keys, conn, transport, sealer = receive_one(manager, A)
    deliver(conn, file_records(sealer, 0, A[:500], digests=digests_of(A)) + sealer.finish())
    assert_failed_cleanly(manager, t, outcome, keys, transport, "size_mismatch")
    assert partials(manager) == []


def test_finish_before_every_file_is_an_error(world):
    daemon, manager = world
    t, outcome, _ = offer(manager, [("a.bin", A), ("b.bin", B)])
    keys, conn, transport, sealer, _ = accept(manager, t)
    deliver(conn, file_records(sealer, 0, A) + sealer.finish())
    failed_with(outcome, "size_mismatch")
    assert replies(keys, transport)[-1]["t"] == "fail" and transport.disconnecting
    assert t.record["status"] in ("failed", "interrupted") and t.record["error"]["code"] == "size_mismatch"
    assert inbox_files(manager) == ["a.bin"] and partials(manager) == []
    assert manager.live == {}
    assert_quiet(daemon.clock)


def test_finish_in_the_middle_of_a_file_is_an_error(world):
    daemon, manager = world
    t, outcome, keys, conn, transport, sealer = receive_one(manager, A)
    deliver(conn, file_records(sealer, 0, A[:10], digests=digests_of(A), end=False) + sealer.finish())
    failed_with(outcome, "size_mismatch")
    assert replies(keys, transport)[-1]["t"] == "fail" and transport.disconnecting
    assert t.record["status"] in ("failed", "interrupted") and t.record["error"]["code"] == "size_mismatch"
    assert inbox_files(manager) == [] and manager.live == {}
    assert_quiet(daemon.clock)
    if t.record["status"] == "failed":  # not resumable: nothing may stay behind
        assert partials(manager) == []


def test_files_out_of_order_are_a_stream_error(world):
    """File 1's records before file 0's: refused before anything is written (resumable: it was the stream)."""
    daemon, manager = world
    t, outcome, _ = offer(manager, [("a.bin", A), ("b.bin", B)])
    keys, conn, transport, sealer, _ = accept(manager, t)
    deliver(conn, file_records(sealer, 1, B) + file_records(sealer, 0, A) + sealer.finish())
    assert_failed_cleanly(manager, t, outcome, keys, transport, "bad_stream", status="interrupted")
    assert partials(manager) == []


@pytest.mark.parametrize("make", [
    lambda s: s.seal(datastream.DATA, b"x"),  # data before any file
    lambda s: s.end(0),  # the end of a file never started
    lambda s: s.json({"t": "file", "i": 0, "d": "!!"}),  # a hash list that is not base64
    lambda s: s.json({"t": "file", "i": "0", "d": ""}),
    lambda s: s.json({"t": "file", "i": 5, "d": ""}),
    lambda s: s.json({"t": "hello"}),
    lambda s: s.finish() + s.finish(),
    lambda s: b"\0\0\0\x20Dgarbage that does not authenticate!",
])
def test_malformed_streams_fail_without_landing(world, make):
    daemon, manager = world
    t, outcome, keys, conn, transport, sealer = receive_one(manager, A)
    deliver(conn, make(sealer))
    assert len(outcome) == 1 and isinstance(outcome[0], Failure)
    assert outcome[0].value.code in ("bad_stream", "bad_record", "size_mismatch")
    assert inbox_files(manager) == [] and partials(manager) == []
    assert replies(keys, transport)[-1]["t"] == "fail"
    assert_buffers_back(manager)


def test_a_file_started_twice_is_a_stream_error(world):
    daemon, manager = world
    t, outcome, keys, conn, transport, sealer = receive_one(manager, A)
    deliver(conn, file_records(sealer, 0, A[:10], digests=digests_of(A), end=False)
            + file_records(sealer, 0, A, digests=digests_of(A)))
    failed_with(outcome, "bad_stream")
    assert inbox_files(manager) == []


def test_the_sender_can_stop_the_transfer(world):
    daemon, manager = world
    t, outcome, keys, conn, transport, sealer = receive_one(manager, A)
    deliver(conn, file_records(sealer, 0, A[:10], digests=digests_of(A), end=False)
            + sealer.json({"t": "fail", "code": "file_changed", "message": "it changed"}))
    error = failed_with(outcome, "file_changed")
    assert "it changed" in error.message
    assert partials(manager) == [] and inbox_files(manager) == []


def test_silence_on_the_data_connection_interrupts_and_keeps_the_verified_part(world, small_chunks):
    daemon, manager = world
    t, outcome, keys, conn, transport, sealer = receive_one(manager, A)
    conn.dataReceived(file_records(sealer, 0, A[:200], digests=digests_of(A), end=False))
    assert t.have == [192]
    daemon.clock.advance(DATA_TIMEOUT - 1)
    assert outcome == []
    daemon.clock.advance(1)
    failed_with(outcome, "interrupted")
    assert transport.aborted and t.record["status"] == "interrupted"
    assert partials(manager) == [t.part_name(0)]
    assert daemon.storage.get_transfer(t.tid)["have"] == [192]


def test_no_data_connection_in_time_interrupts(world):
    daemon, manager = world
    t, outcome, _ = offer(manager, [("a.bin", A)])
    manager.accept(t.tid)
    assert len(manager.paths.waiting) == 1
    daemon.clock.advance(DATA_TIMEOUT)
    failed_with(outcome, "interrupted")
    assert manager.paths.waiting == {} and manager.live == {}


def test_an_interrupted_transfer_resumes_from_the_verified_length(world, small_chunks):
    """The same offer again (another tid) is accepted by itself, with the verified length as ``have``; the
    sender sends only the rest, and the file lands whole."""
    daemon, manager = world
    t = interrupted_after(manager, A, 300)
    assert t.have == [256] and partials(manager) == [t.part_name(0)]
    assert daemon.storage.get_transfer(t.tid)["have"] == [256]

    again, outcome, keys, conn, transport, sealer, answer = offer_again(manager, A, tid_of(77))
    assert answer["have"] == [256]
    assert again.record["key"] == t.record["key"]
    records = [sealer.json({"t": "file", "i": 0, "d": base64.b64encode(digests_of(A)).decode()}),
               b"".join(sealer.data(A[256:])), sealer.end(0), sealer.finish()]
    conn.dataReceived(b"".join(records))
    assert replies(keys, transport) == [{"t": "complete", "saved": ["dir/f.bin"]}]
    assert outcome[0]["resumed_from"] == 256
    with open(os.path.join(manager.inbox.path, "dir", "f.bin"), "rb") as f:
        assert f.read() == A
    assert partials(manager) == []
    assert daemon.storage.get_transfer(t.tid)["status"] == "replaced"


def interrupted_after(manager, data, received):
    """Receive the first *received* bytes of *data* as dir/f.bin, then lose the connection: the Incoming."""
    t, outcome, keys, conn, transport, sealer = receive_one(manager, data)
    conn.dataReceived(file_records(sealer, 0, data[:received], digests=digests_of(data), end=False))
    conn.connectionLost(Failure(Exception("gone")))
    failed_with(outcome, "interrupted")
    return t


def offer_again(manager, data, tid):
    """The same offer under a new tid (accepted by itself, as a resume): ``(t, keys, conn, transport, sealer,
    answer)``."""
    link = FakeLink()
    manager.frame(link, wire.decode(wire.encode({"t": "offer", "tid": tid, "items": [item("dir/f.bin", data)]})))
    answer = link.sent[-1]
    assert answer["t"] == "accept" and answer["tid"] == tid
    t = manager.live[tid]
    outcome = []  # after accept, which swallows failures of offers nobody waits on: a failure shows as None
    t.result.addCallback(outcome.append)
    keys = datastream.SessionKeys(base64.urlsafe_b64decode(answer["secret"] + "="))
    conn = FakeStream(manager.paths.claim(keys.sid)).start()
    transport = conn.transport
    return t, outcome, keys, conn, transport, datastream.Sealer(keys.to_receiver), answer


def test_a_bad_hash_list_on_resume_removes_the_partial_file(world, small_chunks):
    """The second session of a transfer gets a hash list that does not match the offer: the transfer fails
    (hash_mismatch, not resumable) and its partial file, now useless, is removed."""
    daemon, manager = world
    first = interrupted_after(manager, A, 300)
    assert partials(manager) == [first.part_name(0)]
    t, outcome, keys, conn, transport, sealer, answer = offer_again(manager, A, tid_of(78))
    assert answer["have"] == [256]
    conn.dataReceived(file_records(sealer, 0, A, digests=digests_of(B)))
    assert outcome == [None] and manager.live == {}
    assert t.record["status"] == "failed" and t.record["error"]["code"] == "hash_mismatch"
    assert partials(manager) == []


# -- partial files ------------------------------------------------------------------------------------------------

def test_open_part_creates_a_private_preallocated_file(world):
    daemon, manager = world
    t, _, _ = offer(manager, [("a.bin", A)])
    fd, have = t.open_part(0)
    try:
        assert have == 0 and os.lseek(fd, 0, os.SEEK_CUR) == 0
        st = os.fstat(fd)
        assert st.st_size == len(A) and stat.S_IMODE(st.st_mode) == 0o600
    finally:
        os.close(fd)
    part_dir = os.path.join(manager.inbox.path, PARTIAL_DIR)
    assert stat.S_IMODE(os.stat(part_dir).st_mode) == 0o700
    assert os.listdir(part_dir) == [t.part_name(0)] and t.part_name(0).endswith(".0.part")


def write_part(manager, t, data, index=0):
    part_dir = os.path.join(manager.inbox.path, PARTIAL_DIR)
    os.makedirs(part_dir, exist_ok=True)
    with open(os.path.join(part_dir, t.part_name(index)), "wb") as f:
        f.write(data)
    return os.path.join(part_dir, t.part_name(index))


def test_open_part_resumes_at_the_journaled_length(world, small_chunks):
    daemon, manager = world
    t, _, _ = offer(manager, [("a.bin", A)])
    path = write_part(manager, t, A[:300] + b"\0" * 700)
    t.have[0] = 256
    fd, have = t.open_part(0)
    try:
        assert have == 256 and os.lseek(fd, 0, os.SEEK_CUR) == 256
    finally:
        os.close(fd)
    with open(path, "rb") as f:
        assert f.read(300) == A[:300]
    assert os.path.getsize(path) == 1000


@pytest.mark.parametrize("length, journaled, expected", [
    (150, 256, 128),  # shorter than the journal: back to the last whole chunk in the file
    (63, 256, 0),
    (0, 64, 0),
    (400, 256, 256),  # shorter than the file but longer than the journal: the journal holds
    (1500, 256, 256),  # longer than the file: cut to its size
])
def test_open_part_of_a_short_part_falls_back_to_whole_chunks(world, small_chunks, length, journaled, expected):
    daemon, manager = world
    t, _, _ = offer(manager, [("a.bin", A)])
    content = (A * 2)[:length]
    path = write_part(manager, t, content)
    t.have[0] = journaled
    fd, have = t.open_part(0)
    try:
        assert have == expected and os.lseek(fd, 0, os.SEEK_CUR) == expected
    finally:
        os.close(fd)
    assert os.path.getsize(path) == 1000
    with open(path, "rb") as f:
        assert f.read(min(length, 1000)) == content[:1000]


def test_open_part_without_a_part_starts_over(world, small_chunks):
    daemon, manager = world
    t, _, _ = offer(manager, [("a.bin", A)])
    t.have[0] = 256
    fd, have = t.open_part(0)
    os.close(fd)
    assert have == 0


def test_a_symlinked_partial_folder_is_refused(world, tmp_path):
    daemon, manager = world
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, os.path.join(manager.inbox.path, PARTIAL_DIR))
    t, _, _ = offer(manager, [("a.bin", A)])
    with pytest.raises(TransferError) as info:
        t.open_part(0)
    assert info.value.code == "write_failed"
    assert os.listdir(elsewhere) == []


def test_a_stream_into_a_symlinked_partial_folder_writes_nothing_through_it(world, tmp_path):
    daemon, manager = world
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, os.path.join(manager.inbox.path, PARTIAL_DIR))
    t, outcome, keys, conn, transport, sealer = receive_one(manager, A)
    try:
        deliver(conn, file_records(sealer, 0, A) + sealer.finish())
    except TransferError:
        pass  # see the next test
    assert os.listdir(elsewhere) == [] and inbox_files(manager) == []
    assert os.path.islink(os.path.join(manager.inbox.path, PARTIAL_DIR))


def test_a_stream_into_a_symlinked_partial_folder_fails_the_transfer(world, tmp_path):
    """A local failure to open the partial file (here: .p2pd-partial is a symlink) fails the transfer with
    write_failed, tells the sender, and does not raise out of dataReceived."""
    daemon, manager = world
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, os.path.join(manager.inbox.path, PARTIAL_DIR))
    t, outcome, keys, conn, transport, sealer = receive_one(manager, A)
    conn.dataReceived(file_records(sealer, 0, A) + sealer.finish())
    failed_with(outcome, "write_failed")
    assert replies(keys, transport)[-1]["code"] == "write_failed"
    assert manager.live == {} and t.record["status"] in ("failed", "interrupted")


@pytest.mark.parametrize("target", ["file", "dangling"])
def test_a_symlink_at_the_part_name_is_not_followed(world, tmp_path, target):
    daemon, manager = world
    t, _, _ = offer(manager, [("a.bin", A)])
    outside = tmp_path / "outside"
    if target == "file":
        outside.write_bytes(b"precious")
    part_dir = os.path.join(manager.inbox.path, PARTIAL_DIR)
    os.makedirs(part_dir)
    os.symlink(outside, os.path.join(part_dir, t.part_name(0)))
    with pytest.raises(OSError):
        os.close(t.open_part(0)[0])
    if target == "file":
        assert outside.read_bytes() == b"precious"
    else:
        assert not outside.exists()


def test_a_symlink_at_the_part_name_fails_the_transfer_cleanly(world, tmp_path):
    """An OSError while opening the partial file (a symlink at its name: ELOOP) fails the transfer with
    write_failed and tells the sender; it does not raise out of dataReceived, and nothing is written outside."""
    daemon, manager = world
    t, outcome, keys, conn, transport, sealer = receive_one(manager, A)
    part_dir = os.path.join(manager.inbox.path, PARTIAL_DIR)
    os.makedirs(part_dir)
    os.symlink(tmp_path / "outside", os.path.join(part_dir, t.part_name(0)))
    try:
        conn.dataReceived(file_records(sealer, 0, A) + sealer.finish())
    finally:
        assert not (tmp_path / "outside").exists()
    failed_with(outcome, "write_failed")
    assert replies(keys, transport)[-1]["code"] == "write_failed"
    assert manager.live == {}


def test_discard_part_removes_the_part_and_forgets_the_length(world):
    daemon, manager = world
    t, _, _ = offer(manager, [("a.bin", A)])
    write_part(manager, t, A)
    t.have[0] = 1000
    t.discard_part(0)
    assert t.have == [0] and partials(manager) == []
    t.discard_part(0)  # already gone: harmless


# -- landing ----------------------------------------------------------------------------------------------------

def make_part(manager, data=b"new", name="k.0.part"):
    part_dir = os.path.join(manager.inbox.path, PARTIAL_DIR)
    os.makedirs(part_dir, exist_ok=True)
    with open(os.path.join(part_dir, name), "wb") as f:
        f.write(data)
    return name


def read(path):
    with open(path, "rb") as f:
        return f.read()


def test_land_never_replaces_an_existing_file(world):
    daemon, manager = world
    for name in ("x.txt", "x (1).txt"):
        with open(os.path.join(manager.inbox.path, name), "wb") as f:
            f.write(name.encode())
    assert manager.inbox.land(make_part(manager), "x.txt", {}) == "x (2).txt"
    assert read(os.path.join(manager.inbox.path, "x (2).txt")) == b"new"
    assert read(os.path.join(manager.inbox.path, "x.txt")) == b"x.txt"
    assert read(os.path.join(manager.inbox.path, "x (1).txt")) == b"x (1).txt"
    assert partials(manager) == []


def test_land_uses_the_chosen_top_and_creates_folders(world):
    daemon, manager = world
    assert manager.inbox.land(make_part(manager), "pics/2024/a.jpg", {"pics": "pics (3)"}) == "pics (3)/2024/a.jpg"
    assert read(os.path.join(manager.inbox.path, "pics (3)", "2024", "a.jpg")) == b"new"


@pytest.mark.parametrize("dangling", [False, True])
def test_land_does_not_follow_a_symlink_at_the_target_name(world, tmp_path, dangling):
    daemon, manager = world
    outside = tmp_path / "outside.txt"
    if not dangling:
        outside.write_bytes(b"precious")
    os.symlink(outside, os.path.join(manager.inbox.path, "x.txt"))
    assert manager.inbox.land(make_part(manager), "x.txt", {}) == "x (1).txt"
    assert read(os.path.join(manager.inbox.path, "x (1).txt")) == b"new"
    assert os.path.islink(os.path.join(manager.inbox.path, "x.txt"))
    if dangling:
        assert not outside.exists()
    else:
        assert outside.read_bytes() == b"precious"


@pytest.mark.parametrize("landing, link_at", [("top/a.txt", "top"), ("top/sub/a.txt", "top/sub")])
def test_land_does_not_write_through_a_symlinked_folder(world, tmp_path, landing, link_at):
    daemon, manager = world
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.makedirs(os.path.join(manager.inbox.path, os.path.dirname(link_at)), exist_ok=True)
    os.symlink(elsewhere, os.path.join(manager.inbox.path, link_at))
    part = make_part(manager)
    with pytest.raises(TransferError) as info:
        manager.inbox.land(part, landing, {"top": "top"})
    assert info.value.code == "write_failed"
    assert os.listdir(elsewhere) == []
    assert partials(manager) == [part]  # kept: nothing was lost


def test_choose_tops_avoids_a_symlinked_folder_in_the_inbox(world, tmp_path):
    daemon, manager = world
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, os.path.join(manager.inbox.path, "top"))
    t, _, _ = offer(manager, [("top/a.txt", b"abc")])
    assert manager.intake.choose_tops(t) == {"top": "top (1)"}
    keys, conn, transport, sealer, _ = accept(manager, t)
    deliver(conn, file_records(sealer, 0, b"abc") + sealer.finish())
    assert replies(keys, transport) == [{"t": "complete", "saved": ["top (1)/a.txt"]}]
    assert os.listdir(elsewhere) == []


def test_choose_tops_avoids_inbox_names_and_other_live_transfers(world):
    daemon, manager = world
    os.mkdir(os.path.join(manager.inbox.path, "d"))
    os.symlink("nowhere", os.path.join(manager.inbox.path, "d (1)"))
    first, _, _ = offer(manager, [("e.txt", b"1"), ("f", b"2")])
    first.record["tops"] = {"e.txt": "e.txt", "f": "D (2)"}
    gone, _, _ = offer(manager, [("g", b"3")])
    gone.record["tops"] = {"g": "g"}
    manager.live.pop(gone.tid)  # finished: its names are free again (nothing landed)
    t, _, _ = offer(manager, [("d/a", b"a"), ("d/b", b"b"), ("e.txt", b"e"), ("g", b"g"), ("h", b"h")])
    assert manager.intake.choose_tops(t) == {"d": "d (3)", "e.txt": "e (1).txt", "g": "g", "h": "h"}


def test_two_live_offers_with_the_same_top_land_apart(world):
    daemon, manager = world
    one, outcome1, _ = offer(manager, [("pics/a.jpg", b"1")])
    two, outcome2, _ = offer(manager, [("pics/a.jpg", b"2")])
    keys1, conn1, transport1, sealer1, _ = accept(manager, one)
    keys2, conn2, transport2, sealer2, _ = accept(manager, two)
    assert one.record["tops"] == {"pics": "pics"} and two.record["tops"] == {"pics": "pics (1)"}
    deliver(conn2, file_records(sealer2, 0, b"2") + sealer2.finish())
    deliver(conn1, file_records(sealer1, 0, b"1") + sealer1.finish())
    assert read(os.path.join(manager.inbox.path, "pics", "a.jpg")) == b"1"
    assert read(os.path.join(manager.inbox.path, "pics (1)", "a.jpg")) == b"2"


# -- share paths -------------------------------------------------------------------------------------------------

def test_share_path_stays_inside_the_share_and_follows_no_link(world, tmp_path):
    daemon, manager = world
    share = tmp_path / "share"
    (share / "docs").mkdir(parents=True)
    (share / "docs" / "a.txt").write_bytes(b"a")
    (tmp_path / "secret.txt").write_bytes(b"s")
    os.symlink(tmp_path / "secret.txt", share / "link.txt")
    os.symlink(tmp_path, share / "up")
    manager.share.path = str(share)
    for path in ("", "docs", "docs/a.txt"):
        os.close(manager.share.open(path))
    for path in ("link.txt", "up/secret.txt", "up", "../secret.txt", "/etc/passwd", "docs/../../secret.txt",
                 "missing", ".hidden"):
        with pytest.raises(NotFound):
            manager.share.open(path)
    manager.share.path = None
    with pytest.raises(TransferError) as info:
        manager.share.open("docs")
    assert info.value.code == "no_share"


def test_an_accepted_session_waits_on_the_data_paths_once(world):
    daemon, manager = world
    t, outcome, _ = offer(manager, [("a.bin", A)])
    manager.accept(t.tid)
    (sid, session), = manager.paths.waiting.items()
    assert manager.paths.claim(b"x" * 16) is None
    assert manager.paths.claim(sid) is session and manager.paths.claim(sid) is None
    assert session.timer.active  # the session's own timer bounds the wait (and starts again with the stream)
    assert isinstance(t, Incoming)


# -- stopping a receive session --------------------------------------------------------------------------------------

def fds_open_to(path):
    """The file descriptors of this process open on *path* (Linux /proc)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink("/proc/self/fd/" + fd) == path:
                found.append(int(fd))
        except OSError:
            pass
    return found


def half_received(manager):
    t, outcome, keys, conn, transport, sealer = receive_one(manager, A)
    conn.dataReceived(file_records(sealer, 0, A[:300], digests=digests_of(A), end=False))
    part = os.path.join(manager.inbox.path, PARTIAL_DIR, t.part_name(0))
    assert len(fds_open_to(part)) == 1
    return t, outcome, conn, part


def receiver_cancels(manager, t):
    manager.cancel(t.tid)


def sender_cancels(manager, t):
    manager.frame(t.link, {"t": "cancel", "tid": t.tid, "code": "cancelled", "message": "stop"})


def daemon_stops(manager, t):
    manager.stop()


@pytest.mark.parametrize("stop", [receiver_cancels, sender_cancels, daemon_stops])
def test_stopping_a_receive_session_closes_the_partial_file(world, stop):
    """However a running receive ends (cancel on either side, daemon stop), the partial file is closed once the
    connection is gone, and the transfer is over."""
    daemon, manager = world
    t, outcome, conn, part = half_received(manager)
    stop(manager, t)
    assert conn.transport.aborted
    conn.connectionLost(Failure(Exception("aborted")))
    assert len(outcome) == 1 and isinstance(outcome[0], Failure)
    assert manager.live == {}
    assert fds_open_to(part) == []


def test_a_lost_connection_closes_the_partial_file(world):
    daemon, manager = world
    t, outcome, conn, part = half_received(manager)
    conn.connectionLost(Failure(Exception("gone")))
    failed_with(outcome, "interrupted")
    assert fds_open_to(part) == []


def test_a_finished_session_lets_go_of_its_buffers(world):
    """Finished transfers stay in the listing, and a session's receive buffer (two records) goes with the
    connection: 200 listed transfers must not keep 200 of them."""
    daemon, manager = world
    t, outcome, conn, part = half_received(manager)
    assert len(conn.session.opener._buf) >= datastream.STANDARD
    conn.connectionLost(Failure(Exception("gone")))
    assert len(conn.session.opener._buf) == 0


class ThreadedClock(Clock):
    """A Clock with the two methods that make a DiskWriter use its thread; callFromThread queues the call for
    :meth:`pump` to run in the test's thread (the reactor thread)."""

    def __init__(self):
        super().__init__()
        import queue

        self.from_thread = queue.SimpleQueue()

    def callFromThread(self, f, *args):
        self.from_thread.put((f, args))

    def getThreadPool(self):
        raise AssertionError("not used by receiving")

    def pump(self, until, timeout=10.0):
        import queue
        import time

        deadline = time.monotonic() + timeout
        while not until():
            try:
                f, args = self.from_thread.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError("timed out waiting for the writer thread") from None
            f(*args)


@pytest.fixture
def threaded(tmp_path):
    daemon = FakeDaemon(tmp_path)
    daemon.clock = ThreadedClock()
    manager = make_transfers(daemon, str(tmp_path / "inbox"), threads=ReactorThreads(daemon.clock))
    yield daemon, manager
    daemon.storage.close()


def test_the_threaded_writer_lands_files_and_applies_back_pressure(threaded, small_chunks, monkeypatch):
    """With a reactor that has threads, the writer thread writes and verifies; past HIGH queued bytes the
    transport is paused, and resumed once the writer is below LOW. The files land as with the inline writer."""
    daemon, manager = threaded
    monkeypatch.setattr(dmod.DiskWriter, "HIGH", 200)
    monkeypatch.setattr(dmod.DiskWriter, "LOW", 100)
    data = os.urandom(5000)
    t, outcome, _ = offer(manager, [("big.bin", data), ("b.bin", B)])
    keys, conn, transport, sealer, _ = accept(manager, t)
    states = []
    real_pause, real_resume = transport.pauseReceiving, transport.resumeReceiving
    monkeypatch.setattr(transport, "pauseReceiving", lambda: (states.append("pause"), real_pause()))
    monkeypatch.setattr(transport, "resumeReceiving", lambda: (states.append("resume"), real_resume()))
    gate = threading.Event()  # holds the writer until everything is queued: the pause is then certain
    real_data = dmod.DiskWriter._data
    monkeypatch.setattr(dmod.DiskWriter, "_data", lambda self, chunk: (gate.wait(10), real_data(self, chunk)))
    conn.dataReceived(file_records(sealer, 0, data, pieces=list(range(100, 5000, 100)))
                      + file_records(sealer, 1, B) + sealer.finish())
    assert states == ["pause"] and outcome == []
    gate.set()
    daemon.clock.pump(lambda: outcome)
    assert not isinstance(outcome[0], Failure), outcome[0]
    assert outcome[0]["saved"] == ["big.bin", "b.bin"]
    assert read(os.path.join(manager.inbox.path, "big.bin")) == data
    assert read(os.path.join(manager.inbox.path, "b.bin")) == B
    assert replies(keys, transport) == [{"t": "complete", "saved": ["big.bin", "b.bin"]}]
    assert states == ["pause", "resume"]
    session = t.session
    session.writer.thread.join(5)
    assert not session.writer.thread.is_alive()


def test_the_threaded_writer_reports_a_bad_chunk(threaded, small_chunks):
    daemon, manager = threaded
    t, outcome, keys, conn, transport, sealer = receive_one(manager, A)
    bad = bytearray(A)
    bad[700] ^= 0x10
    conn.dataReceived(file_records(sealer, 0, bytes(bad), pieces=[300, 600], digests=digests_of(A))
                      + sealer.finish())
    daemon.clock.pump(lambda: outcome)
    failed_with(outcome, "hash_mismatch")
    assert replies(keys, transport)[-1]["code"] == "hash_mismatch"
    assert partials(manager) == [] and inbox_files(manager) == []
    t.session.writer.thread.join(5)
    assert not t.session.writer.thread.is_alive()


# -- the seams -----------------------------------------------------------------------------------------------------

def test_transfers_is_a_frame_handler_and_its_sessions_are_stream_receivers(world):
    daemon, manager = world
    assert verifyObject(IFrameHandler, manager)
    assert manager.kinds == {"offer", "accept", "reject", "cancel", "ls", "listing", "get"}
    t, outcome, _ = offer(manager, [("a.bin", A)])
    keys, conn, transport, sealer, _ = accept(manager, t)
    assert verifyObject(IStreamReceiver, t.session) and verifyObject(IByteStream, conn)


def test_building_transfers_touches_no_file_and_start_makes_the_inbox(tmp_path):
    daemon = FakeDaemon(tmp_path)
    daemon.storage.put_transfer({"tid": "t1", "direction": "in", "peer": "bob", "status": "active",
                                 "fingerprint": "f", "items": [], "total": 0, "created": 1}, 1)
    manager = Transfers(daemon.name, daemon.storage, daemon.clock, InlineThreads(), daemon, daemon, daemon,
                        FakePaths(), str(tmp_path / "inbox"))
    assert not os.path.exists(tmp_path / "inbox")
    assert daemon.storage.get_transfer("t1")["status"] == "active"
    manager.start()
    assert os.path.isdir(tmp_path / "inbox")
    assert daemon.storage.get_transfer("t1")["status"] == "interrupted"
    daemon.storage.close()


def test_an_impossible_status_change_raises(world):
    """Every status change goes through the transfer's state machine: completing an offer nobody accepted
    is a BadTransition a test can see, and the status stays what it was."""
    daemon, manager = world
    t, outcome, _ = offer(manager, [("a.bin", A)])
    with pytest.raises(BadTransition):
        t.move("complete")
    assert t.record["status"] == "offered"


def test_cancelling_the_deferred_of_a_send_cancels_the_transfer(world, tmp_path):
    """What the control socket does when its client goes away: the Deferred of ``send`` cancels the transfer
    (the peer is told, the outcome is 'cancelled')."""
    daemon, manager = world
    path = tmp_path / "f.txt"
    path.write_bytes(b"hello")
    link = FakeLink(outgoing=True)
    d = manager.send("bob", [str(path)], link=link)
    (t,) = manager.live.values()
    failures = []
    d.addErrback(failures.append)
    d.cancel()
    assert len(failures) == 1 and failures[0].value.code == "cancelled"  # the transfer's own outcome
    assert link.sent[-1]["t"] == "cancel" and link.sent[-1]["tid"] == t.tid
    # (status 'failed', not 'cancelled': the refused answer ends the offer first, as before the reshape)
    assert t.record["status"] == "failed" and t.record["error"]["code"] == "cancelled" and manager.live == {}


def test_cancelling_the_deferred_of_a_get_cancels_the_offered_transfer(world):
    daemon, manager = world
    link = FakeLink()
    daemon.dial = lambda peer: defer.succeed(link)
    d = manager.get("bob", "a.bin")
    ask = link.sent[-1]
    assert ask["t"] == "get"
    frame = {"t": "offer", "tid": tid_of(5), "rid": ask["rid"], "items": [item("a.bin", A)]}
    manager.frame(link, wire.decode(wire.encode(frame)))
    t = manager.live[tid_of(5)]
    d.addErrback(lambda f: None)
    d.cancel()
    assert t.record["status"] == "interrupted" and t.record["error"]["code"] == "cancelled"
    assert link.sent[-1]["t"] == "cancel"
