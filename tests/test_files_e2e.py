"""Files between peers end to end: real ``twistd -n p2pd --role=peer`` daemons, a real registry, real sockets.

What is checked comes from the issue (files of every size arrive identical, consent, clear failures, resume,
pull from a share, disk space, memory) and from ``RELIABILITY.md`` rows 30-35 (hostile names, lying senders,
planted symbolic links, many senders at once). The tests drive the daemons the way users and scripts do (the
control socket, ``p2pctl`` as a subprocess) and, for the attacks, speak the protocol themselves: a TLS client
with a registered peer's key on the receiver's port (offers), and a data connection of our own that streams
AES-GCM records (:mod:`p2pd.core.datastream`) with the secret the receiver's ``accept`` carried.

One registry serves the whole module; every test starts its own peers (names are numbered so that no two
tests claim one name with different keys). Everything binds 127.0.0.1 on free ports and is stopped by pid.
"""

import base64
import hashlib
import itertools
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

from p2pd.cli import exits
from p2pd.core import datastream, filehash, wire
from p2pd.peer import identity as identity_mod
from p2pd.peer.files import sessions as tmod
from p2pd.peer.files.diskwriter import DiskWriter
from tests.peer_process import ControlError, PeerProcess
from tests.registry_process import RegistryProcess
from tests.tls_client import TLSClient, peer_port
from tests.twistd_process import rss_kb

pytestmark = pytest.mark.slow

P2PCTL = os.path.join(os.path.dirname(sys.executable), "p2pctl")
MB = 1 << 20
BIG = 250 * MB + 4099  # the one big file: several hash chunks, the last one short
RSS_LIMIT_KB = 150 * 1024
PARTIAL = ".p2pd-partial"


# ---------------------------------------------------------------------------------------------------------------
# helpers: files


def random_file(path, size, block=4 * MB):
    """Write *size* random bytes to *path* in blocks (never the whole file in memory); its sha256 hex."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            data = os.urandom(min(block, left))
            f.write(data)
            h.update(data)
            left -= len(data)
    return h.hexdigest()


def sha256_file(path, block=4 * MB):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            data = f.read(block)
            if not data:
                return h.hexdigest()
            h.update(data)


def inbox(peer):
    return os.path.join(peer.data_dir, "inbox")


def listing(root):
    """Every entry under *root* (files, folders, links), as sorted relative paths; links are not followed."""
    out = []
    for dirpath, dirnames, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames + files:
            out.append(os.path.normpath(os.path.join(rel, name)))
    return sorted(out)


def landed(peer, root=None):
    """{inbox-relative path: sha256} of the regular files in *peer*'s inbox, partial files left out."""
    root = root or inbox(peer)
    out = {}
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != PARTIAL]
        for name in files:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            out[rel] = sha256_file(full) if stat.S_ISREG(st.st_mode) else "(not a regular file)"
    return out


def partials(peer, root=None):
    """The names in the inbox's partial-file folder ([] if it does not exist)."""
    path = os.path.join(root or inbox(peer), PARTIAL)
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def state_names(peer):
    """Every path under *peer*'s data dir except the files the daemon rewrites as it runs."""
    return [p for p in listing(peer.data_dir)
            if not p.startswith(("p2pd.sqlite3", "twistd.log", "peer.json", "control.sock"))]


def digests_of(data):
    """(root, chunk digests) of *data*, computed the way :mod:`p2pd.core.filehash` hashes a file."""
    digests = b"".join(filehash.ChunkHasher(len(data)).update(data))
    return filehash.root_of(digests), digests


# ---------------------------------------------------------------------------------------------------------------
# helpers: control socket, p2pctl, events


def p2pctl(peer, *args, timeout=60):
    return subprocess.run([P2PCTL, "--data-dir", peer.data_dir] + list(args), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def p2pctl_start(peer, *args):
    return subprocess.Popen([P2PCTL, "--data-dir", peer.data_dir] + list(args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def one_clear_line(stderr):
    """The single line *stderr* holds (AssertionError if it holds none, several, or a traceback)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, "expected one line on stderr, got %r" % stderr
    assert lines[0].startswith("p2pctl: "), lines
    return lines[0]


def transfers(peer, direction=None):
    return [t for t in peer.ctl("transfers", limit=1000) if direction is None or t["direction"] == direction]


def transfer(peer, tid):
    found = [t for t in peer.ctl("transfers", limit=1000) if t["tid"] == tid]
    assert found, "%s has no transfer %s" % (peer.name, tid)
    return found[0]


def wait_until(predicate, timeout, what, interval=0.05):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # a daemon restarting: try again
            last = e
        time.sleep(interval)
    raise AssertionError("timed out after %ss waiting for %s (last error: %r)" % (timeout, what, last))


def ctl_error(peer, cmd, timeout=60, **args):
    """The ControlError a request ends with (AssertionError if it succeeds)."""
    with pytest.raises(ControlError) as info:
        peer.ctl(cmd, timeout=timeout, **args)
    return info.value


class Watch:
    """A ``watch`` connection to a daemon's control socket; events are collected by a thread."""

    def __init__(self, peer):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(peer.control_path)
        self.sock.sendall(json.dumps({"id": 1, "cmd": "watch"}).encode() + b"\n")
        self.events = []
        self.replies = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        wait_until(lambda: self.replies, 10, "the watch reply")

    def _read(self):
        buf = b""
        while True:
            try:
                chunk = self.sock.recv(1 << 16)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            *lines, buf = buf.split(b"\n")
            with self.lock:
                for line in lines:
                    obj = json.loads(line)
                    (self.events if "event" in obj else self.replies).append(obj)

    def wait(self, predicate, timeout=15, what="an event"):
        def found():
            with self.lock:
                return next((e for e in self.events if predicate(e)), None)

        return wait_until(found, timeout, what)

    def close(self):
        self.sock.close()


class Background:
    """Run *call* in a thread; ``result()`` returns what it returned or raises what it raised."""

    def __init__(self, call, *args, **kwargs):
        self.value = self.error = None
        self.thread = threading.Thread(target=self._run, args=(call, args, kwargs), daemon=True)
        self.thread.start()

    def _run(self, call, args, kwargs):
        try:
            self.value = call(*args, **kwargs)
        except BaseException as e:
            self.error = e

    def done(self):
        return not self.thread.is_alive()

    def result(self, timeout=120):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "still running after %ss" % timeout
        if self.error is not None:
            raise self.error
        return self.value


class RSSSampler:
    """Samples the resident memory of some pids every 20 ms until stopped; ``peak`` is in KiB."""

    def __init__(self, *pids):
        self.pids = pids
        self.peak = {pid: 0 for pid in pids}
        self.samples = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping.is_set():
            for pid in self.pids:
                try:
                    self.peak[pid] = max(self.peak[pid], rss_kb(pid))
                except (OSError, AssertionError):
                    pass
            self.samples += 1
            time.sleep(0.02)

    def stop(self):
        self.stopping.set()
        self.thread.join(5)
        return self.peak


# ---------------------------------------------------------------------------------------------------------------
# helpers: a hostile sender that speaks the protocol itself


class Link(TLSClient):
    """A TLS link to *peer*'s port showing *ident*'s certificate, speaking the line protocol by hand."""

    def __init__(self, peer, ident, name, timeout=10):
        self.port = peer_port(peer)
        super().__init__(self.port, ident, timeout)
        self.frames = []
        self.send_frames(wire.hello(name, "p2pd/0.1.0"))
        hello = self.wait(lambda f: f["t"] in ("hello", "error"), what="the peer's hello")
        assert hello["t"] == "hello", hello

    def send_frames(self, frame_or_frames, timeout=10):
        """Send one frame, or several in one write (the peer then handles them in one reactor turn)."""
        frames = frame_or_frames if isinstance(frame_or_frames, list) else [frame_or_frames]
        if not self.send(b"".join(wire.encode(f) + b"\n" for f in frames), timeout):
            raise ConnectionError("the peer closed the link before the frames went out")

    def _pump(self, timeout):
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            if not self.receive():
                continue
            *lines, self.buf = self.buf.split(b"\n")
            for line in lines:
                frame = json.loads(line)
                if frame.get("t") == "ping":
                    self.send_frames({"t": "pong", "n": frame["n"]})
                self.frames.append(frame)
            return

    def wait(self, predicate, timeout=10, what="a frame"):
        """The first frame (received so far or later) that *predicate* accepts."""
        deadline = time.monotonic() + timeout
        while True:
            for frame in self.frames:
                if predicate(frame):
                    return frame
            if self.closed or time.monotonic() > deadline:
                raise AssertionError("no %s within %ss; frames: %r" % (what, timeout, self.frames))
            self._pump(0.1)

    def answer(self, tid, timeout=10):
        """The accept, reject or error frame that answers offer *tid*."""
        return self.wait(lambda f: f.get("tid") == tid and f["t"] in ("accept", "reject")
                         or f["t"] == "error" and f.get("ref") == tid, timeout, "an answer to offer %s" % tid)

    def offer(self, items, tid=None):
        tid = tid or os.urandom(16).hex()
        self.send_frames({"t": "offer", "tid": tid, "items": items})
        return tid


class DataSession:
    """The sender's end of a data connection for an accepted offer: we dialled the link, so we dial this too."""

    def __init__(self, port, accept_frame):
        secret = base64.urlsafe_b64decode(accept_frame["secret"] + "=")
        self.keys = datastream.SessionKeys(secret)
        self.sealer = datastream.Sealer(self.keys.to_receiver)
        self.opener = datastream.Opener(self.keys.to_sender)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(self.keys.preamble)
        self.records = []
        self.eof = False
        self.broken = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while True:
            try:
                chunk = self.sock.recv(1 << 16)
            except OSError:
                break
            if not chunk:
                break
            try:
                self.records.extend(self.opener.feed(chunk))
            except datastream.StreamError as e:
                self.records.append(("error", str(e)))
                break
        self.eof = True

    def write(self, data):
        if self.broken:
            return False
        try:
            self.sock.sendall(data)
        except OSError:
            self.broken = True
        return not self.broken

    def file(self, index, digests):
        return self.write(self.sealer.json({"t": "file", "i": index, "d": base64.b64encode(digests).decode()}))

    def data(self, payload, record=datastream.CHUNK):
        for offset in range(0, len(payload), record):
            if not self.write(b"".join(self.sealer.data(payload[offset:offset + record]))):
                return False
        return True

    def end(self, index):
        return self.write(self.sealer.end(index))

    def finish(self):
        return self.write(self.sealer.finish())

    def send_file(self, index, data, digests=None):
        self.file(index, digests if digests is not None else digests_of(data)[1])
        self.data(data)
        self.end(index)

    def reply(self, timeout=15):
        """The receiver's JSON record (complete or fail), waiting up to *timeout* s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for kind, obj in self.records:
                if kind == datastream.JSON:
                    return obj
                if kind == "error":
                    raise AssertionError("the receiver's stream is corrupt: %s" % obj)
            if self.eof:
                break
            time.sleep(0.02)
        raise AssertionError("no record from the receiver within %ss (eof=%s)" % (timeout, self.eof))

    def close(self):
        """Close now: shutdown() first, since close() alone waits for the reader thread's recv() to return."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)


# ---------------------------------------------------------------------------------------------------------------
# fixtures: one registry for the module, peers per test, all stopped by pid


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    reg = RegistryProcess(tmp_path_factory.mktemp("registry"))  # its claim quota per address lifted, as every test's
    with reg:
        yield reg


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """(path, sha256) of one ~250 MB random file, shared by the tests that need a long transfer."""
    path = tmp_path_factory.mktemp("big") / "big.bin"
    return str(path), random_file(path, BIG)


_serial = itertools.count(1)


@pytest.fixture
def spawn(tmp_path, registry):
    """spawn(role, args=(), start=True) -> a PeerProcess named ROLE-N (unique in the module), stopped by pid."""
    started = []

    def make(role, args=(), start=True):
        name = "%s-%d" % (role, next(_serial))
        peer = PeerProcess(tmp_path / name, name, registry.http, args=list(args))
        started.append(peer)
        if start:
            peer.start()
        return peer

    def many(role, n, args=()):
        peers = [make(role, args, start=False) for _ in range(n)]
        starts = [Background(p.start, timeout=60) for p in peers]
        for s in starts:
            s.result(90)
        return peers

    make.many = many
    yield make
    for peer in reversed(started):
        peer.stop()


@pytest.fixture
def mallory(spawn):
    """A registered peer whose key the test uses to speak the protocol itself: (peer, identity)."""
    peer = spawn("mallory")
    return peer, identity_mod.load_or_create(peer.data_dir, peer.name)


# ---------------------------------------------------------------------------------------------------------------
# 1, 10: every size arrives identical; a tree arrives with its tree; memory stays flat


def test_files_of_every_size_arrive_identical_with_flat_memory(tmp_path, spawn, big):
    """0 bytes, 1 byte, an odd ~5 MB and a ~250 MB file each arrive byte for byte (sha256) under their own name,
    `saved` says where; during the big one neither daemon's RSS goes over 150 MB, and chat messages between the
    two are delivered meanwhile (each within a second)."""
    alice, bob = spawn("alice"), spawn("bob", ["--accept", "auto"])
    src = tmp_path / "src"
    src.mkdir()
    sizes = {"empty.txt": 0, "one.bin": 1, "odd.dat": 5 * MB + 12345}
    expected = {}
    for name, size in sizes.items():
        expected[name] = random_file(src / name, size)
        result = alice.ctl("send", to=bob.name, paths=[str(src / name)], timeout=60)
        assert result["status"] == "done", result
        assert result["saved"] == [name], result
        assert result["bytes"] == size and result["sent"] == size and result["resumed_from"] == 0, result
    assert landed(bob) == expected

    sampler = RSSSampler(alice.pid, bob.pid)
    chat = []  # (latency, whether the big send was still running when the message was delivered)
    try:
        sending = Background(alice.ctl, "send", to=bob.name, paths=[big[0]], timeout=120)
        while not sending.done():
            started = time.monotonic()
            reply = bob.ctl("msg", to=alice.name, text="while the big file moves", wait=10)
            assert reply["status"] == "delivered", reply
            chat.append((time.monotonic() - started, not sending.done()))
        result = sending.result(120)
    finally:
        peak = sampler.stop()
    assert result["status"] == "done" and result["saved"] == ["big.bin"], result
    assert result["sent"] == BIG, result
    expected["big.bin"] = big[1]
    assert landed(bob) == expected
    assert partials(bob) == [], "partial files left behind"
    assert sampler.samples >= 5, "the transfer was too quick to sample memory"
    for who, pid in (("alice", alice.pid), ("bob", bob.pid)):
        assert peak[pid] < RSS_LIMIT_KB, "%s's RSS reached %d MB during a %d MB transfer" % (
            who, peak[pid] // 1024, BIG // MB)
    during = [latency for latency, running in chat if running]
    assert during, "no chat message was delivered while the big file moved: %r" % chat
    assert max(during) < 1.0, "chat took %.2f s while the big file moved" % max(during)
    print("peak RSS: alice %d MB, bob %d MB; %.0f MB/s; %d chat messages during it, slowest %.0f ms" % (
        peak[alice.pid] // 1024, peak[bob.pid] // 1024, BIG / MB / max(result["seconds"], 1e-3), len(during),
        max(during) * 1000))


def test_directory_arrives_with_its_tree_and_skips_hidden_and_links(tmp_path, spawn):
    """A folder with nested folders arrives with its tree; a hidden file, a hidden folder, a link to a file and
    a link to a folder inside it are not sent and are counted in `skipped` (p2pctl says so); sent again, the
    tree lands beside the first as `project (1)`."""
    alice, bob = spawn("alice"), spawn("bob", ["--accept", "auto"])
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("not for bob")
    tree = tmp_path / "project"
    (tree / "sub" / "deeper").mkdir(parents=True)
    (tree / ".hidden-dir").mkdir()
    expected = {}
    for rel, size in (("a.txt", 10), ("sub/b.bin", 300000), ("sub/deeper/c.txt", 0), ("sub/deeper/d e.txt", 7)):
        expected["project/" + rel] = random_file(tree / rel, size)
    (tree / ".hidden").write_text("hidden")
    (tree / ".hidden-dir" / "inside").write_text("hidden too")
    os.symlink(str(outside / "secret"), str(tree / "sub" / "link-to-file"))
    os.symlink(str(outside), str(tree / "link-to-dir"))

    out = p2pctl(alice, "--json", "send", bob.name, str(tree))
    assert out.returncode == 0, (out.stdout, out.stderr)
    result = json.loads(out.stdout)
    assert result["skipped"] == 4, result
    assert sorted(result["saved"]) == sorted(expected), result
    assert landed(bob) == expected
    assert listing(inbox(bob)) == sorted(["project", "project/a.txt", "project/sub", "project/sub/b.bin",
                                          "project/sub/deeper", "project/sub/deeper/c.txt",
                                          "project/sub/deeper/d e.txt", PARTIAL])

    out = p2pctl(alice, "send", bob.name, str(tree))  # again, as people run it: the tree lands beside the first
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert "skipped 4 hidden, linked or special entries" in one_clear_line(out.stderr)
    again = {rel.replace("project/", "project (1)/", 1): digest for rel, digest in expected.items()}
    assert landed(bob) == dict(expected, **again)


def test_a_dash_name_lands_with_a_prefix_and_a_hidden_one_is_said_to_be_renamed(tmp_path, spawn):
    """Issue 13, bug 9: `-rf` landed as `-rf` (an option to the next `rm *` in the inbox) and `.bashrc` became
    `bashrc` with no word to either side."""
    alice, bob = spawn("alice"), spawn("bob", ["--accept", "auto"])
    dash, hidden = tmp_path / "-rf", tmp_path / ".bashrc"
    dash.write_text("not an option")
    hidden.write_text("alias ll='ls -l'")
    out = p2pctl(alice, "send", bob.name, str(dash), str(hidden))
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert ".bashrc was sent as bashrc" in out.stderr
    assert listing(inbox(bob)) == sorted(["_-rf", "bashrc", PARTIAL])


# ---------------------------------------------------------------------------------------------------------------
# 2: consent


def test_accept_without_an_id_asks_on_the_terminal_like_wormhole_receive(tmp_path, spawn):
    """Issue 13: `p2pctl accept` with no ID waits for the next offer, shows its names and sizes and asks
    `Accept ... from alice into INBOX? [y/N]`; y accepts (the file lands), anything else rejects it."""
    from tests.pty_session import Pty
    alice, bob = spawn("alice"), spawn("bob")
    first, second = tmp_path / "report.pdf", tmp_path / "other.bin"
    digest = random_file(first, 5000)
    random_file(second, 10)
    shell = Pty([P2PCTL, "--data-dir", bob.data_dir, "accept"])
    try:
        shell.expect("waiting for an offer")
        sending = p2pctl_start(alice, "send", bob.name, str(first))
        shell.expect("%s offers report.pdf (4.9 KiB, application/pdf)" % alice.name)
        shell.expect("Accept report.pdf (4.9 KiB) from %s into %s? [y/N] " % (alice.name, inbox(bob)))
        shell.type("y")
        shell.expect("saving into %s" % inbox(bob))
        assert shell.proc.wait(10) == 0
        assert sending.wait(30) == 0 and landed(bob) == {"report.pdf": digest}
    finally:
        shell.close()
    sending = p2pctl_start(alice, "send", bob.name, str(second))
    wait_until(lambda: [t for t in transfers(bob, "in") if t["status"] == "offered"], 15, "the second offer")
    shell = Pty([P2PCTL, "--data-dir", bob.data_dir, "accept"])  # an offer waits already: no waiting
    try:
        shell.expect("[y/N] ")
        shell.type("")
        shell.expect("rejected")
        assert shell.proc.wait(10) == 0
        assert sending.wait(30) == 5 and "other.bin" not in os.listdir(inbox(bob))
    finally:
        shell.close()
    out = p2pctl(bob, "accept")  # no terminal, no ID: says what to do instead
    assert out.returncode == exits.USAGE and "give the offer's ID" in out.stderr


def test_ask_offer_waits_for_accept_or_reject(tmp_path, spawn):
    """--accept ask: the offer shows in the receiver's watch stream and `p2pctl transfers`; `p2pctl accept ID`
    (a prefix) lets the sender's `send` finish; `p2pctl reject ID` makes it fail with `rejected`, exit 5 and
    one line on stderr, and nothing of it lands."""
    alice, bob = spawn("alice"), spawn("bob", ["--accept", "ask"])
    first = tmp_path / "first.bin"
    digest = random_file(first, 123457)
    second = tmp_path / "second.bin"
    random_file(second, 2000)
    watch = Watch(bob)
    try:
        proc = p2pctl_start(alice, "--json", "send", bob.name, str(first))
        offered = watch.wait(lambda e: e["event"] == "transfer" and e["status"] == "offered"
                             and e["direction"] == "in", what="the offer event")
        tid = offered["tid"]
        assert offered["peer"] == alice.name and offered["names"] == ["first.bin"], offered
        assert offered["sizes"] == [123457], offered
        time.sleep(0.5)
        assert proc.poll() is None, "the sender finished before the receiver answered"
        assert landed(bob) == {}
        shown = p2pctl(bob, "transfers")
        assert shown.returncode == 0, shown.stderr
        assert "p2pctl accept %s" % tid[:8] in shown.stdout and "waiting for an answer" in shown.stdout, shown.stdout
        assert "first.bin (120.6 KiB, application/octet-stream)" in shown.stdout, shown.stdout  # what, not "1 file"
        answer = p2pctl(bob, "accept", tid[:8])
        assert answer.returncode == 0 and answer.stdout.strip() == "accepted %s: first.bin (120.6 KiB) from %s, " \
            "saving into %s" % (tid[:8], alice.name, inbox(bob)), (answer.stdout, answer.stderr)
        stdout, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0, (stdout, stderr)
        assert json.loads(stdout)["saved"] == ["first.bin"]
        assert landed(bob) == {"first.bin": digest}
        shown = p2pctl(bob, "transfers")
        assert "saved as %s" % os.path.join(inbox(bob), "first.bin") in shown.stdout, shown.stdout
        shown = p2pctl(bob, "history", alice.name)  # files are part of the conversation
        assert "%s sent you first.bin (120.6 KiB), saved as %s" % (
            alice.name, os.path.join(inbox(bob), "first.bin")) in shown.stdout, shown.stdout
        shown = p2pctl(alice, "history", bob.name)
        assert "you sent %s first.bin (120.6 KiB)" % bob.name in shown.stdout, shown.stdout

        proc = p2pctl_start(alice, "send", bob.name, str(second))
        offered = watch.wait(lambda e: e["event"] == "transfer" and e["status"] == "offered"
                             and e["direction"] == "in" and e["tid"] != tid, what="the second offer")
        answer = p2pctl(bob, "reject", offered["tid"])
        assert answer.returncode == 0, answer.stderr
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        watch.close()
    assert proc.returncode == 5, (proc.returncode, stdout, stderr)
    line = one_clear_line(stderr)
    assert line == "p2pctl: %s rejected the files" % bob.name, line  # not "bob refused the files: bob rejected ..."
    out_record = [t for t in transfers(alice, "out") if t["names"] == ["second.bin"]]
    assert out_record and out_record[0]["error"]["code"] == "rejected", out_record
    assert transfer(bob, offered["tid"])["status"] == "rejected"
    assert landed(bob) == {"first.bin": digest}, "a rejected file landed"
    assert partials(bob) == []


def test_deny_and_auto_limits(tmp_path, spawn):
    """--accept deny refuses (`denied`, exit 5); --accept auto --accept-max 1M --accept-from alice takes 100 KB
    from alice, refuses 2 MB from her (`offer_too_large`) and anything from carol (`denied`)."""
    alice, carol = spawn("alice"), spawn("carol")
    dave = spawn("dave", ["--accept", "deny"])
    erin = spawn("erin", ["--accept", "auto", "--accept-max", "1M", "--accept-from", alice.name])
    small = tmp_path / "small.bin"
    small_digest = random_file(small, 100 * 1000)
    large = tmp_path / "large.bin"
    random_file(large, 2 * MB)

    def refused(sender, receiver, path, code):
        out = p2pctl(sender, "--json", "send", receiver.name, str(path))
        assert out.returncode == 5, (receiver.name, code, out.returncode, out.stdout, out.stderr)
        one_clear_line(out.stderr)
        assert json.loads(out.stdout)["error"] == code, out.stdout

    refused(alice, dave, small, "denied")
    refused(alice, erin, large, "offer_too_large")
    refused(carol, erin, small, "denied")
    out = p2pctl(alice, "send", erin.name, str(small))
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert landed(erin) == {"small.bin": small_digest}
    assert landed(dave) == {} and partials(dave) == [] and partials(erin) == []


# ---------------------------------------------------------------------------------------------------------------
# 3: clear failures


def test_send_failures_are_clear_and_leave_nothing(tmp_path, spawn):
    """Unknown peer: exit 4; missing file: exit 66 (daemon: file_missing); a FIFO (and, when not root, a
    chmod 000 file): exit 66 (daemon: file_unreadable); receiver stopped: exit 75. Each says it in one line on
    stderr, and nothing reaches the receiver's inbox."""
    alice, bob = spawn("alice"), spawn("bob", ["--accept", "auto"])
    good = tmp_path / "good.txt"
    good.write_text("fine")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    out = p2pctl(alice, "send", "nobody-here", str(good))
    assert out.returncode == 4, (out.returncode, out.stderr)
    assert "nobody-here" in one_clear_line(out.stderr)

    missing = str(tmp_path / "no-such-file")
    out = p2pctl(alice, "send", bob.name, missing)
    assert out.returncode == 66, (out.returncode, out.stderr)
    assert "no-such-file" in one_clear_line(out.stderr)
    assert ctl_error(alice, "send", to=bob.name, paths=[missing]).code == "file_missing"

    unreadable = [str(fifo)]
    if os.geteuid() != 0:
        locked = tmp_path / "locked.txt"
        locked.write_text("secret")
        os.chmod(locked, 0)
        unreadable.append(str(locked))
    for path in unreadable:
        out = p2pctl(alice, "send", bob.name, path)
        assert out.returncode == 66, (path, out.returncode, out.stderr)
        assert os.path.basename(path) in one_clear_line(out.stderr)
        assert ctl_error(alice, "send", to=bob.name, paths=[path]).code == "file_unreadable"

    assert listing(inbox(bob)) == [], "a failed send left something in the inbox"
    bob.stop()
    out = p2pctl(alice, "send", bob.name, str(good))
    assert out.returncode == 75, (out.returncode, out.stderr)
    assert "offline" in one_clear_line(out.stderr)
    assert listing(inbox(bob)) == []


def test_send_to_a_crashed_peer_exits_75(tmp_path, spawn):
    """A receiver that was SIGKILLed is still listed online until its lease runs out, but cannot be reached:
    `p2pctl send` should say so and exit 75 (try again later), like for a peer that is known to be offline."""
    alice, bob = spawn("alice"), spawn("bob", ["--accept", "auto"])
    good = tmp_path / "good.txt"
    good.write_text("fine")
    bob.kill()
    out = p2pctl(alice, "--json", "send", bob.name, str(good))
    assert "cannot reach %s" % bob.name in one_clear_line(out.stderr)
    assert listing(inbox(bob)) == []
    assert out.returncode == 75, (out.returncode, out.stdout, out.stderr)


# ---------------------------------------------------------------------------------------------------------------
# 4: resume after SIGKILL


def _running_in(receiver, send, fraction, total):
    """Poll *receiver* until its incoming transfer has verified more than *fraction* of *total* bytes."""
    deadline = time.monotonic() + 60
    seen = []
    while time.monotonic() < deadline:
        if send.done():
            raise AssertionError("the send ended before it could be interrupted: %r %r; seen %r"
                                 % (send.value, send.error, seen[-5:]))
        found = transfers(receiver, "in")
        seen.append([(t["status"], t["done"]) for t in found])
        for t in found:
            if t["status"] == "active" and t["done"] > fraction * total:
                return t
        time.sleep(0.002)
    raise AssertionError("the transfer did not pass %d%%: %r" % (fraction * 100, seen[-5:]))


def _interrupted_state(receiver, tid):
    t = wait_until(lambda: [t for t in transfers(receiver, "in") if t["tid"] == tid
                            and t["status"] == "interrupted"], 15, "the receiver to mark it interrupted")[0]
    assert landed(receiver) == {}, "something landed under a final name before the file was complete"
    parts = partials(receiver)
    assert len(parts) == 1 and parts[0].endswith(".part"), parts
    return t


def _kill_holding(victim, held, look=None):
    """SIGKILL *victim* while *held* is stopped, so the kill lands where the test looked whatever the speed;
    returns what *look()*, called while *held* is stopped and before the kill, says."""
    os.kill(held.pid, signal.SIGSTOP)
    try:
        seen = look() if look is not None else None
        victim.kill()
    finally:
        os.kill(held.pid, signal.SIGCONT)
    return seen


def _send_again(alice, bob, big):
    """The same send once more: it ends done, what it resumed from and what it sent make the whole file, the
    file lands identical and no partial file is left. Its result."""
    result = alice.ctl("send", to=bob.name, paths=[big[0]], timeout=120)
    assert result["status"] == "done", result
    assert result["resumed_from"] + result["sent"] == BIG, result
    assert landed(bob) == {"big.bin": big[1]}
    assert partials(bob) == []
    return result


def test_resume_after_the_sender_is_killed(spawn, big):
    """The sender is SIGKILLed past 20%: the receiver keeps only the .part (nothing under the final name);
    the same send after a restart resumes (resumed_from > 0, sent < total) and the file arrives identical."""
    alice, bob = spawn("alice"), spawn("bob", ["--accept", "auto"])
    first = Background(alice.ctl, "send", to=bob.name, paths=[big[0]], timeout=120)
    t = _running_in(bob, first, 0.2, BIG)
    _kill_holding(alice, bob)
    with pytest.raises(OSError):
        first.result(30)
    _interrupted_state(bob, t["tid"])
    alice.start()
    result = _send_again(alice, bob, big)
    assert result["resumed_from"] > 0 and result["sent"] < BIG, result


def test_resume_after_the_receiver_is_killed(spawn, big):
    """The receiver is SIGKILLed past 20%: the sender's send fails `interrupted`; only the .part exists; after
    the receiver restarts the same send resumes from what it had verified and the file arrives identical."""
    alice, bob = spawn("alice"), spawn("bob", ["--accept", "auto"])
    first = Background(alice.ctl, "send", to=bob.name, paths=[big[0]], timeout=120)
    t = _running_in(bob, first, 0.2, BIG)
    _kill_holding(bob, alice)
    with pytest.raises(ControlError) as info:
        first.result(60)
    assert info.value.code == "interrupted", info.value.reply
    bob.start()
    _interrupted_state(bob, t["tid"])
    result = _send_again(alice, bob, big)
    assert result["resumed_from"] > 0 and result["sent"] < BIG, result


def test_a_receivers_cancel_is_a_refusal_until_it_accepts_again(spawn, big):
    """Issue 13, bug 5: after the receiver cancelled, the same send resumed and finished without asking it again,
    and the sender read only that the data connection closed. Now the sender is told who stopped it, the same
    send again waits for the receiver's `accept` (even with --accept auto), and then resumes."""
    alice, bob = spawn("alice"), spawn("bob", ["--accept", "auto"])
    first = Background(alice.ctl, "send", to=bob.name, paths=[big[0]], timeout=120)
    t = _running_in(bob, first, 0.2, BIG)
    os.kill(alice.pid, signal.SIGSTOP)  # the transfer cannot finish before bob's cancel lands
    try:
        assert bob.ctl("cancel", tid=t["tid"])["status"] == "cancelled"
    finally:
        os.kill(alice.pid, signal.SIGCONT)
    with pytest.raises(ControlError) as info:
        first.result(60)
    assert info.value.code == "cancelled", info.value.reply
    assert info.value.reply["message"] == "%s cancelled the transfer: sending again asks them to accept it again" \
        % bob.name
    again = Background(alice.ctl, "send", to=bob.name, paths=[big[0]], timeout=120)
    offered = wait_until(lambda: [o for o in transfers(bob, "in") if o["status"] == "offered"], 15,
                         "the offer to wait for bob's answer")[0]
    time.sleep(0.5)
    assert not again.done() and landed(bob) == {}, "it went on without bob's consent"
    assert bob.ctl("accept", tid=offered["tid"])["status"] == "accepted"
    result = again.result(120)
    assert result["status"] == "done" and result["resumed_from"] > 0, result
    assert landed(bob) == {"big.bin": big[1]}


def test_the_senders_progress_says_hashing_then_waiting_then_shows_the_bytes(spawn, big):
    """Issue 13: the bar sat at 0% through hashing and consent, and its rate counted from the offer. On a
    terminal the sender now reads `hashing big.bin (1 of 1)`, then `waiting for bob to accept big.bin`, and only
    once bob accepted a bar of bytes, whose rate starts at the first byte."""
    from tests.pty_session import Pty
    alice, bob = spawn("alice"), spawn("bob")
    sending = Pty([P2PCTL, "--data-dir", alice.data_dir, "send", bob.name, big[0]])
    try:
        sending.expect("hashing big.bin (1 of 1)", timeout=60)
        sending.expect("waiting for %s to accept big.bin" % bob.name)
        offer = wait_until(lambda: [o for o in transfers(bob, "in") if o["status"] == "offered"], 30,
                           "bob to see the offer")[0]
        assert b"B/s" not in sending.seen.split(b"waiting for")[-1], "a bar before bob accepted"
        bob.ctl("accept", tid=offer["tid"])
        tail = sending.expect("verified by " + bob.name).split(b"waiting for")[-1]
        assert sending.proc.wait(30) == 0
        assert b"%|" in tail and b"B/s" in tail, tail[-500:]  # tqdm's bar, from the first byte
    finally:
        sending.close()


def test_receiver_killed_at_random_offsets_resumes_every_time(spawn, big):
    """RELIABILITY row 35: the receiver is SIGKILLed at a random point of the transfer, 20 times, restarted, and
    the same send run again. Every time: nothing under the final name before the end, the send resumes from what
    the receiver had journaled (never more than one hash chunk, the journal interval and the writer's queue behind
    what it had received when we looked), and the file arrives identical."""
    import random

    rng = random.Random(35)
    window = filehash.chunk_size(BIG) + tmod.JOURNAL_EVERY + DiskWriter.HIGH
    alice, bob = spawn("alice"), spawn("bob", ["--accept", "auto"])
    resumed = []
    for trial in range(20):
        first = Background(alice.ctl, "send", to=bob.name, paths=[big[0]], timeout=120)
        t = _running_in(bob, first, rng.uniform(0.05, 0.9), BIG)
        seen = _kill_holding(bob, alice, look=lambda: transfer(bob, t["tid"])["done"])
        with pytest.raises(ControlError):
            first.result(60)
        bob.start()
        _interrupted_state(bob, t["tid"])
        result = _send_again(alice, bob, big)
        assert result["resumed_from"] >= seen - window, (trial, seen, result)
        os.unlink(os.path.join(inbox(bob), "big.bin"))  # the next trial lands under the same name
        resumed.append(result["resumed_from"])
    assert sum(1 for r in resumed if r > 0) >= 10, resumed  # most kills come after the first journal entry


# ---------------------------------------------------------------------------------------------------------------
# 5: a hostile sender speaking the protocol itself

HOSTILE_NAMES = ["../x", "/etc/x", "a/../../x", "C:\\x", "x\u0000y", ".", "..", "a" * 300,
                 ".ssh/authorized_keys", ".SSH/x", "a\u2215b", "C:x", "x/", "a//b", "\u202eexe.txt",
                 "CON/../x", "sub/.hidden"]


def test_hostile_names_are_refused_and_nothing_is_written(spawn, mallory):
    """Offers with hostile names (or two names that collide, or one bad name among good ones) each get an
    `error` frame with code bad_name and ref = the offer's id, and nothing is written in the inbox, its parent,
    or where the name points; `doc..pdf` is accepted and lands."""
    bob = spawn("bob", ["--accept", "auto"])
    peer, ident = mallory
    before = state_names(bob)
    link = Link(bob, ident, peer.name)
    wrong = {}
    try:
        for name in HOSTILE_NAMES:
            tid = link.offer([{"path": name, "size": 10, "hash": "0" * 64}])
            frame = link.answer(tid)
            if not (frame["t"] == "error" and frame["code"] == "bad_name"):
                wrong[name] = frame
        for paths in (["A.txt", "a.txt"], ["a", "a/b"], ["ok.txt", "../x"]):  # collisions; one bad name of two
            tid = link.offer([{"path": p, "size": 10, "hash": "0" * 64} for p in paths])
            frame = link.answer(tid)
            if not (frame["t"] == "error" and frame["code"] == "bad_name"):
                wrong[tuple(paths)] = frame
        assert not wrong, "offers not refused with bad_name: %r" % wrong
        after = state_names(bob)
        assert after == before, "refused offers changed the data dir: %r" % sorted(set(after) ^ set(before))
        assert not os.path.lexists("/etc/x")
        assert not os.path.lexists(os.path.join(os.path.dirname(bob.data_dir), "x"))
        assert not [t for t in transfers(bob, "in") if t["status"] in ("offered", "active")]

        data = os.urandom(5000)
        root, digests = digests_of(data)
        tid = link.offer([{"path": "doc..pdf", "size": len(data), "hash": root}])
        accept = link.answer(tid)
        assert accept["t"] == "accept" and accept["have"] == [0], accept
        session = DataSession(link.port, accept)
        session.send_file(0, data, digests)
        session.finish()
        assert session.reply() == {"t": "complete", "saved": ["doc..pdf"]}
        session.close()
    finally:
        link.close()
    assert landed(bob) == {"doc..pdf": hashlib.sha256(data).hexdigest()}


def test_empty_name_is_refused_with_bad_name_for_that_offer(spawn, mallory):
    bob = spawn("bob", ["--accept", "auto"])
    peer, ident = mallory
    link = Link(bob, ident, peer.name)
    try:
        tid = link.offer([{"path": "", "size": 10, "hash": "0" * 64}])
        frame = link.wait(lambda f: f["t"] in ("error", "accept", "reject"), what="an answer")
    finally:
        link.close()
    assert listing(inbox(bob)) == []
    assert frame["t"] == "error" and frame.get("ref") == tid and frame["code"] == "bad_name", frame


def _fails_with(receiver, session, tid, code):
    """The receiver answers the data *session* with a ``fail`` record of *code*, and its transfer *tid* ends
    ``failed`` with that code."""
    reply = session.reply()
    session.close()
    assert reply["t"] == "fail" and reply["code"] == code, reply
    record = wait_until(lambda: [t for t in transfers(receiver, "in") if t["tid"] == tid
                                 and t["status"] == "failed"], 10, "the %s to fail the transfer" % code)[0]
    assert record["error"]["code"] == code, record


def _accepted(link, data, name):
    root, digests = digests_of(data)
    tid = link.offer([{"path": name, "size": len(data), "hash": root}])
    accept = link.answer(tid)
    assert accept["t"] == "accept", accept
    return tid, accept, digests


def _opened(link, data, name):
    """An accepted offer of *data* under *name*, and a data session that has started its file (the chunk
    digests sent, no bytes yet): ``(tid, session)``."""
    tid, accept, digests = _accepted(link, data, name)
    session = DataSession(link.port, accept)
    session.file(0, digests)
    return tid, session


def test_lying_senders_never_get_a_file_landed(spawn, mallory):
    """(b) more bytes than declared: size_mismatch, nothing kept; (c) 100 KB of 1 MB then the connection
    closes: interrupted, the partial kept and the same offer resumes and completes; (d) one byte flipped:
    hash_mismatch at the chunk, the partial removed; (e) a chunk-hash list that does not match the offer's
    root: hash_mismatch before a byte is taken. The final name appears only for the honest run."""
    bob = spawn("bob", ["--accept", "auto"])
    peer, ident = mallory
    link = Link(bob, ident, peer.name)
    try:
        # (b) size lie: 1 MB declared, 1.25 MB streamed (the last record straddles the declared end)
        data = os.urandom(MB)
        tid, session = _opened(link, data, "size-lie.bin")
        session.data(data[:512 * 1024])
        session.data(data[512 * 1024:] + os.urandom(256 * 1024), record=768 * 1024)
        session.end(0)
        session.finish()
        _fails_with(bob, session, tid, "size_mismatch")
        assert landed(bob) == {} and partials(bob) == [], (landed(bob), partials(bob))

        # (c) 100 KB of 1 MB, then the connection closes: interrupted, resumable
        data = os.urandom(MB)
        tid, session = _opened(link, data, "cut.bin")
        session.data(data[:100 * 1000])
        time.sleep(0.3)
        session.close()
        record = wait_until(lambda: [t for t in transfers(bob, "in") if t["tid"] == tid
                                     and t["status"] == "interrupted"], 10, "the cut transfer to be interrupted")[0]
        assert record["error"]["code"] == "interrupted", record
        assert landed(bob) == {}
        assert len(partials(bob)) == 1, partials(bob)
        tid2, accept, digests = _accepted(link, data, "cut.bin")
        assert accept["have"] == [0], accept  # nothing verified yet: a 1 MB file is one 4 MiB chunk
        session = DataSession(link.port, accept)
        session.send_file(0, data, digests)
        session.finish()
        assert session.reply() == {"t": "complete", "saved": ["cut.bin"]}
        session.close()
        honest = {"cut.bin": hashlib.sha256(data).hexdigest()}
        assert landed(bob) == honest and partials(bob) == []

        # (d) hash lie: right size, one byte flipped in the second 4 MiB chunk
        data = os.urandom(9 * MB)
        tid, session = _opened(link, data, "flipped.bin")
        bad = bytearray(data)
        bad[5 * MB + 77] ^= 0x01
        session.data(bytes(bad))
        session.end(0)
        session.finish()
        _fails_with(bob, session, tid, "hash_mismatch")
        assert landed(bob) == honest and partials(bob) == [], (landed(bob), partials(bob))

        # (e) the chunk digests do not add up to the offered root
        data = os.urandom(6 * MB)
        tid, accept, digests = _accepted(link, data, "list-lie.bin")
        session = DataSession(link.port, accept)
        session.send_file(0, data, digests[:32] + hashlib.sha256(b"other").digest())
        session.finish()
        reply = session.reply()
        session.close()
        assert reply["t"] == "fail" and reply["code"] == "hash_mismatch", reply
        assert landed(bob) == honest and partials(bob) == [], (landed(bob), partials(bob))
    finally:
        link.close()
    assert bob.ctl("ping")["pong"] is True


# ---------------------------------------------------------------------------------------------------------------
# 6: links planted in the inbox


def test_planted_links_in_the_inbox_are_never_followed(tmp_path, spawn):
    """In bob's inbox: `x` exists, `x.part` links to an outside file, `y` is a dangling link to an outside path,
    `z (1)` links to the outside file next to a real `z`, `docs` links to an outside folder. Files named x, y, z
    and a folder named docs land as `x (1)`, `y (1)`, `z (2)`, `docs (1)/...`; nothing outside changes."""
    alice, bob = spawn("alice"), spawn("bob", ["--accept", "auto"])
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    bashrc = outside / "bashrc"
    bashrc.write_text("export PATH=/usr/bin\n")
    bashrc_hash = sha256_file(bashrc)
    box = inbox(bob)
    with open(os.path.join(box, "x"), "w") as f:
        f.write("bob's own x")
    with open(os.path.join(box, "z"), "w") as f:
        f.write("bob's own z")
    os.symlink(str(bashrc), os.path.join(box, "x.part"))
    os.symlink(str(outside / "created-by-y"), os.path.join(box, "y"))
    os.symlink(str(bashrc), os.path.join(box, "z (1)"))
    os.symlink(str(outside / "dir"), os.path.join(box, "docs"))
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    sent = {}
    for name in ("x", "y", "z", "docs/readme.txt"):
        sent[name] = random_file(src / name, 3000)
    results = {name: alice.ctl("send", to=bob.name, paths=[str(src / name)], timeout=60)["saved"]
               for name in ("x", "y", "z", "docs")}
    assert results == {"x": ["x (1)"], "y": ["y (1)"], "z": ["z (2)"], "docs": ["docs (1)/readme.txt"]}
    assert sha256_file(bashrc) == bashrc_hash
    assert sorted(os.listdir(outside)) == ["bashrc", "dir"] and os.listdir(outside / "dir") == []
    assert open(os.path.join(box, "x")).read() == "bob's own x"
    assert open(os.path.join(box, "z")).read() == "bob's own z"
    for link in ("x.part", "y", "z (1)", "docs"):
        assert os.path.islink(os.path.join(box, link)), link
    got = landed(bob)
    assert got["x (1)"] == sent["x"] and got["y (1)"] == sent["y"] and got["z (2)"] == sent["z"]
    assert got["docs (1)/readme.txt"] == sent["docs/readme.txt"]


def test_planted_partial_folder_link_is_not_followed(tmp_path, spawn):
    """The inbox's `.p2pd-partial` is a link to another folder: the transfer fails (nothing written there,
    nothing landed), the receiver reports it as failed rather than running forever, and stays up."""
    alice, bob = spawn("alice"), spawn("bob", ["--accept", "auto"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(str(elsewhere), os.path.join(inbox(bob), PARTIAL))
    src = tmp_path / "w.bin"
    random_file(src, 50000)
    error = ctl_error(alice, "send", to=bob.name, paths=[str(src)])
    assert error.code == "write_failed", error.reply
    assert os.listdir(elsewhere) == []
    assert listing(inbox(bob)) == [PARTIAL]
    assert bob.ctl("ping")["pong"] is True
    wait_until(lambda: all(t["status"] not in ("active", "offered") for t in transfers(bob, "in")), 5,
               "bob's side of the transfer to end (it stays %r)" % [t["status"] for t in transfers(bob, "in")])


# ---------------------------------------------------------------------------------------------------------------
# 7: many senders at once, and chat meanwhile


def test_ten_senders_at_once_and_chat_keeps_flowing(tmp_path, spawn):
    """Ten daemons each send a 2-5 MB file to one receiver at the same time: all ten land identical; chat
    messages from the receiver to one sender, sent meanwhile, are delivered within 2 s each."""
    bob = spawn("bob", ["--accept", "auto"])
    senders = spawn.many("sender", 10)
    expected, paths = {}, []
    for i, sender in enumerate(senders):
        path = tmp_path / ("from-%d.bin" % i)
        expected[path.name] = random_file(path, 2 * MB + i * 333333 + 17)
        paths.append(path)
    linked = bob.ctl("msg", to=senders[0].name, text="before", wait=10)
    assert linked["status"] == "delivered", linked
    sends = [Background(s.ctl, "send", to=bob.name, paths=[str(p)], timeout=120) for s, p in zip(senders, paths)]
    latencies = []
    n = 0
    while n < 3 or not all(s.done() for s in sends):
        n += 1
        started = time.monotonic()
        reply = bob.ctl("msg", to=senders[0].name, text="during #%d" % n, wait=10)
        latencies.append(time.monotonic() - started)
        assert reply["status"] == "delivered", reply
        if n > 500:
            break
    results = [s.result(120) for s in sends]
    assert [r["status"] for r in results] == ["done"] * 10, results
    assert landed(bob) == expected
    assert max(latencies) < 2.0, "a chat message took %.2f s while files were moving" % max(latencies)
    print("%d chat messages while 10 files moved, slowest %.0f ms" % (n, max(latencies) * 1000))
    bodies = [m["body"] for m in senders[0].ctl("history", conversation=bob.name, limit=1000)
              if m["direction"] == "in"]
    assert bodies == ["before"] + ["during #%d" % i for i in range(1, n + 1)]


# ---------------------------------------------------------------------------------------------------------------
# 8: pull from a share


def test_pull_from_a_share(tmp_path, spawn):
    """bob shares a folder: `p2pctl ls` lists files and folders but no link or hidden file; `get` of a file and
    of a folder lands identical in alice's inbox (links inside skipped); `get` of `../x`, `/etc/passwd`, a
    link pointing outside, a path through a linked folder, or a hidden file fails clearly and fetches nothing;
    a peer without --share answers `no_share`."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("not shared")
    share = tmp_path / "share"
    (share / "sub" / "deeper").mkdir(parents=True)
    digests = {"top.txt": random_file(share / "top.txt", 1234),
               "sub/file.bin": random_file(share / "sub" / "file.bin", 3 * MB + 5),
               "sub/deeper/z.txt": random_file(share / "sub" / "deeper" / "z.txt", 10)}
    (share / ".hidden").write_text("hidden")
    os.symlink(str(outside / "secret"), str(share / "link-to-outside"))
    os.symlink(str(outside), str(share / "linkdir"))
    os.symlink(str(outside / "secret"), str(share / "sub" / "inner-link"))
    alice, carol = spawn("alice"), spawn("carol")
    bob = spawn("bob", ["--share", str(share)])

    out = p2pctl(alice, "--json", "ls", bob.name)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["items"] == [{"name": "sub", "type": "dir"},
                                               {"name": "top.txt", "type": "file", "size": 1234}]
    out = p2pctl(alice, "--json", "ls", bob.name, "sub")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["items"] == [{"name": "deeper", "type": "dir"},
                                               {"name": "file.bin", "type": "file", "size": 3 * MB + 5}]

    out = p2pctl(alice, "get", bob.name, "sub/file.bin")
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert landed(alice) == {"file.bin": digests["sub/file.bin"]}
    out = p2pctl(alice, "--json", "get", bob.name, "sub")
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert sorted(json.loads(out.stdout)["saved"]) == ["sub/deeper/z.txt", "sub/file.bin"]
    assert landed(alice) == {"file.bin": digests["sub/file.bin"], "sub/file.bin": digests["sub/file.bin"],
                             "sub/deeper/z.txt": digests["sub/deeper/z.txt"]}
    before = listing(inbox(alice))

    for path in ("../x", "/etc/passwd", "link-to-outside", "linkdir/secret", ".hidden", "sub/inner-link",
                 "nothing-here"):
        out = p2pctl(alice, "get", bob.name, path)
        assert out.returncode not in (0, 5, 75), (path, out.returncode, out.stderr)
        line = one_clear_line(out.stderr)
        assert "not in %s's share" % bob.name in line, (path, line)
    assert listing(inbox(alice)) == before, "a refused get fetched something"

    for args in (("ls", carol.name), ("get", carol.name, "x")):
        out = p2pctl(alice, "--json", *args)
        assert out.returncode != 0, (args, out.stdout)
        assert json.loads(out.stdout)["error"] == "no_share", out.stdout
        one_clear_line(out.stderr)


# ---------------------------------------------------------------------------------------------------------------
# 9: disk space


@pytest.fixture
def tmpfs(tmp_path):
    """A 50 MB tmpfs (skipped if it cannot be mounted); unmounted at the end."""
    path = tmp_path / "small-disk"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=50m", "tmpfs", str(path)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs: %s" % mounted.stderr.strip())
    yield path
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _free(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_no_space_is_refused_before_a_byte_is_written(tmpfs, tmp_path, spawn, mallory):
    """A 50 MB inbox: a 60 MB offer is refused `no_space` (exit 5) and nothing is written; of two 30 MB sends
    started together one lands and the other is refused `no_space`; of two 30 MB offers that arrive in one
    write (one reactor turn) one is accepted and the other refused `no_space`; the daemon stays up."""
    box = str(tmpfs / "inbox")
    alice = spawn("alice")
    bob = spawn("bob", ["--accept", "auto", "--inbox", box])
    free = _free(box)
    huge = tmp_path / "huge.bin"
    random_file(huge, 60 * MB)
    out = p2pctl(alice, "--json", "send", bob.name, str(huge))
    assert out.returncode == 5, (out.returncode, out.stdout, out.stderr)
    assert json.loads(out.stdout)["error"] == "no_space", out.stdout
    assert "space" in one_clear_line(out.stderr)
    assert listing(box) == [] and _free(box) == free

    halves = []
    for i in range(2):
        path = tmp_path / ("real-half-%d.bin" % i)
        halves.append((path, random_file(path, 30 * MB)))
    procs = [p2pctl_start(alice, "--json", "send", bob.name, str(path)) for path, _ in halves]
    outs = [p.communicate(timeout=60) + (p.returncode,) for p in procs]
    assert sorted(rc for _, _, rc in outs) == [0, 5], outs
    refused = [json.loads(stdout) for stdout, _, rc in outs if rc == 5][0]
    assert refused["error"] == "no_space", refused
    done = [i for i, (_, _, rc) in enumerate(outs) if rc == 0][0]
    assert landed(bob, box) == {"real-half-%d.bin" % done: halves[done][1]}
    os.unlink(os.path.join(box, "real-half-%d.bin" % done))

    peer, ident = mallory
    link = Link(bob, ident, peer.name)
    try:
        data = [os.urandom(30 * MB), os.urandom(30 * MB)]
        roots = [digests_of(d) for d in data]
        tids = [os.urandom(16).hex() for _ in data]
        link.send_frames([{"t": "offer", "tid": tid, "items": [{"path": "half-%d.bin" % i, "size": 30 * MB,
                                                          "hash": roots[i][0]}]}
                   for i, tid in enumerate(tids)])
        answers = [link.answer(tid) for tid in tids]
        kinds = sorted((a["t"], a.get("code")) for a in answers)
        assert kinds == [("accept", None), ("reject", "no_space")], answers
        i = [a["t"] for a in answers].index("accept")
        session = DataSession(link.port, answers[i])
        session.send_file(0, data[i], roots[i][1])
        session.finish()
        assert session.reply(30) == {"t": "complete", "saved": ["half-%d.bin" % i]}
        session.close()
    finally:
        link.close()
    assert bob.ctl("ping")["pong"] is True
    assert landed(bob, box) == {"half-%d.bin" % i: hashlib.sha256(data[i]).hexdigest()}


def test_space_taken_by_a_running_transfer_is_not_counted_twice(tmpfs, tmp_path, spawn, mallory):
    """A 50 MB inbox with a 20 MB transfer running (the first of its file's space claimed): what it still
    lacks and a 5 MB offer fit beyond the 16 MB margin, so the offer must be accepted and land."""
    box = str(tmpfs / "inbox")
    alice = spawn("alice")
    bob = spawn("bob", ["--accept", "auto", "--inbox", box])
    peer, ident = mallory
    link = Link(bob, ident, peer.name)
    try:
        data = os.urandom(20 * MB)
        tid, session = _opened(link, data, "running.bin")
        session.data(data[:MB])
        wait_until(lambda: transfer(bob, tid)["status"] == "active" and _free(box) < 45 * MB, 10,
                   "the running transfer to claim space for its file")
        small = tmp_path / "small.bin"
        digest = random_file(small, 5 * MB)
        out = p2pctl(alice, "--json", "send", bob.name, str(small))
        session.close()
    finally:
        link.close()
    assert out.returncode == 0, (out.returncode, out.stdout, out.stderr)
    assert landed(bob, box) == {"small.bin": digest}


def test_interrupted_transfer_resumes_on_a_nearly_full_inbox(tmpfs, spawn, mallory):
    """A 50 MB inbox: a 30 MB transfer is accepted and cut after 2 MB; the same offer again must resume (it needs
    only what it still lacks: its partial file keeps its verified bytes), not be refused no_space."""
    box = str(tmpfs / "inbox")
    bob = spawn("bob", ["--accept", "auto", "--inbox", box])
    peer, ident = mallory
    link = Link(bob, ident, peer.name)
    try:
        data = os.urandom(30 * MB)
        tid, session = _opened(link, data, "resumable.bin")
        session.data(data[:2 * MB])
        wait_until(lambda: _free(box) < 45 * MB, 10, "the partial file to claim space")
        session.close()
        wait_until(lambda: transfer(bob, tid)["status"] == "interrupted", 10, "the transfer to be interrupted")
        assert len(partials(bob, box)) == 1
        root, digests = digests_of(data)
        tid2 = link.offer([{"path": "resumable.bin", "size": len(data), "hash": root}])
        answer = link.answer(tid2)
        assert answer["t"] == "accept", answer
        session = DataSession(link.port, answer)
        session.send_file(0, data, digests)
        session.finish()
        assert session.reply(30) == {"t": "complete", "saved": ["resumable.bin"]}
        session.close()
    finally:
        link.close()
    assert landed(bob, box) == {"resumable.bin": hashlib.sha256(data).hexdigest()}


def test_an_offer_that_hangs_up_after_its_first_header_leaves_no_space_taken(tmpfs, tmp_path, spawn, mallory):
    """Issue 12, finding 3: with --accept auto, an offer of 600 MB followed by just the first file header and a
    hang-up left 583 MB preallocated, also after a restart, and an honest 5 MB send was then refused no_space.
    Here: a 30 MB offer on a 50 MB inbox, its header, a hang-up; the partial file holds nothing, and alice's
    5 MB send is accepted and lands."""
    box = str(tmpfs / "inbox")
    alice = spawn("alice")
    bob = spawn("bob", ["--accept", "auto", "--inbox", box])
    peer, ident = mallory
    link = Link(bob, ident, peer.name)
    free_before = _free(tmpfs)
    try:
        tid, session = _opened(link, os.urandom(30 * MB), "huge.bin")
        time.sleep(0.5)
        session.close()
        wait_until(lambda: transfer(bob, tid)["status"] == "interrupted", 10, "the transfer to be interrupted")
    finally:
        link.close()
    assert free_before - _free(tmpfs) < MB, "the hang-up left %d bytes taken" % (free_before - _free(tmpfs))
    small = tmp_path / "small.bin"
    digest = random_file(small, 5 * MB)
    out = p2pctl(alice, "--json", "send", bob.name, str(small))
    assert out.returncode == 0, (out.returncode, out.stdout, out.stderr)
    assert landed(bob, box)["small.bin"] == digest
