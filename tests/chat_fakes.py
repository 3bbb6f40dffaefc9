"""Fakes for the chat parts' unit tests (tests/test_chat_*.py): a registry answering from dicts (each answer a
Deferred the test may hold back), links that record what was sent, TLS endpoints that connect to whoever the test
says is reachable, and :class:`ChatWorld`, which builds one peer's real parts (real SQLite storage and keys) over
them on a Clock."""

import itertools

from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from zope.interface import implementer

from p2pd.errors import NotFound
from p2pd.peer.chat.commits import Commits
from p2pd.peer.chat.dialer import Dialer
from p2pd.peer.chat.directory import Directory
from p2pd.peer.chat.events import Events
from p2pd.peer.chat.outbox import Outbox
from p2pd.peer.chat.pins import Pins
from p2pd.peer.chat.receipts import Receipts
from p2pd.peer.chat.receive import Receiver
from p2pd.peer.chat.rooms import Rooms
from p2pd.peer.identity import load_or_create
from p2pd.peer.interfaces import ILink
from p2pd.peer.storage import Storage


class FakeTransport:
    def __init__(self):
        self.lost = self.aborted = False

    def loseConnection(self):
        self.lost = True

    def abortConnection(self):
        self.aborted = True


@implementer(ILink)
class FakeLink:
    """An authenticated link to *peer* that records the frames sent on it."""

    def __init__(self, peer, clock=None, outgoing=True):
        self.peer = peer
        self.outgoing = outgoing
        self.closed = False
        self.since = clock.seconds() if clock is not None else 0.0
        self.inflight = set()
        self.backlog = None
        self.sent = []
        self.transport = FakeTransport()
        self.when_ready = defer.Deferred()
        self.peer_udp_port = None  # takes no UDP streams

    def send(self, frame):
        if not self.closed:
            self.sent.append(frame)

    def keying_material(self, label, size):
        return (label + b"|" + self.peer.encode()).ljust(size, b"\0")[:size]

    def close(self):
        self.closed = True
        self.transport.loseConnection()

    def peer_address(self):
        from twisted.internet.address import IPv4Address
        return IPv4Address("TCP", "127.0.0.1", 1)

    def take(self):
        sent, self.sent = self.sent, []
        return sent


class FakeRegistry:
    """The registry's answers, from plain dicts. ``hold = True`` keeps each answer back until the test fires it
    (``held`` lists ``(method, args, Deferred)``); otherwise answers are immediate."""

    base = "http://registry.test"

    def __init__(self):
        self.records = {}  # name -> record
        self.room_views = {}  # display name -> {"name", "members"}
        self.deposits = []  # (recipient, token)
        self.mailbox = []  # items {"id", "from", "payload"} fetch() returns
        self.acked = []
        self.calls = []
        self.hold = False
        self.held = []
        self.fail_with = {}  # method -> exception to fail with
        self.lookup_fails = {}  # name -> exception its lookup fails with
        self.fail_once = {}  # method -> [exceptions to fail with, one per call, before it answers again]
        self._ids = itertools.count(1)

    def _answer(self, method, args, compute):
        self.calls.append((method,) + args)
        if self.fail_once.get(method):
            return defer.fail(self.fail_once[method].pop(0))
        if method in self.fail_with:
            return defer.fail(self.fail_with[method])
        if self.hold:
            d = defer.Deferred()
            self.held.append((method, args, d, compute))
            return d
        return defer.maybeDeferred(compute)

    def release(self, index=0):
        """Answer the *index*-th held call now."""
        method, args, d, compute = self.held.pop(index)
        defer.maybeDeferred(compute).chainDeferred(d)

    def add_peer(self, name, identity=None, online=True, tcp=("127.0.0.1:1",)):
        record = {"name": name, "key": identity.public_text if identity else "KEY-" + name,
                  "box": identity.box_public_text if identity else None, "online": online, "tcp": list(tcp)}
        self.records[name] = record
        return record

    def lookup(self, name):
        def compute():
            if name in self.lookup_fails:
                raise self.lookup_fails[name]
            if name not in self.records:
                raise NotFound("no peer %s" % name)
            return dict(self.records[name])
        return self._answer("lookup", (name,), compute)

    def peers(self, after=None, limit=50):
        return self._answer("peers", (after,), lambda: {"peers": [dict(r) for r in self.records.values()]})

    def rooms(self, after=None, limit=50):
        return self._answer("rooms", (after,), lambda: {"rooms": [{"name": n, "members": len(v["members"])}
                                                                   for n, v in self.room_views.items()]})

    def _view(self, room):
        for name, view in self.room_views.items():
            if name.lower() == room.lower():
                return view
        raise NotFound("no room %s" % room)

    def room(self, room):
        return self._answer("room", (room,), lambda: dict(self._view(room)))

    def room_online(self, room):
        def compute():
            view = dict(self._view(room))
            view["members"] = [m for m in view["members"] if self.records.get(m, {}).get("online")]
            return view
        return self._answer("room_online", (room,), compute)

    def create_room(self, room, join=True):
        def compute():
            self.room_views[room] = {"name": room, "members": []}
            return dict(self.room_views[room])
        return self._answer("create_room", (room,), compute)

    def join(self, room):
        def compute():
            view = self._view(room)
            view["members"] = sorted(set(view["members"]) | {self.me})
            return dict(view)
        return self._answer("join", (room,), compute)

    def leave(self, room):
        def compute():
            view = self._view(room)
            view["members"] = [m for m in view["members"] if m != self.me]
            return dict(view)
        return self._answer("leave", (room,), compute)

    def deposit(self, recipient, token):
        def compute():
            self.deposits.append((recipient, token))
            return {"id": "m%d" % next(self._ids)}
        return self._answer("deposit", (recipient,), compute)

    def fetch(self, limit=50):
        return self._answer("fetch", (), lambda: {"messages": self.mailbox[:limit]})

    def ack_many(self, ids):
        def compute():
            self.acked.extend(ids)
            before = len(self.mailbox)
            self.mailbox = [m for m in self.mailbox if not (isinstance(m, dict) and m.get("id") in ids)]
            return {"deleted": before - len(self.mailbox)}
        return self._answer("ack_many", (tuple(ids),), compute)

    def ack(self, msg_id):
        def compute():
            self.acked.append(msg_id)
            self.mailbox = [m for m in self.mailbox if not (isinstance(m, dict) and m.get("id") == msg_id)]
            return {}
        return self._answer("ack", (msg_id,), compute)


class FakeEndpoint:
    def __init__(self, tls, host, port):
        self.tls, self.host, self.port = tls, host, port

    def connect(self, factory):
        self.tls.attempts.append((self.host, self.port))
        if (self.host, self.port) not in self.tls.reachable:
            return defer.fail(ConnectionRefusedError())
        link = factory.buildProtocol(None)
        link.transport = FakeTransport()
        self.tls.connected.append(link)
        if self.tls.handshake_error is not None:
            link.when_ready.errback(self.tls.handshake_error)
        elif self.tls.handshake_ok:  # as PeerLink does once the peer is verified: link_up, then ready
            self.tls.on_up(link)
            link.when_ready.callback(link)
        return defer.succeed(link)


class FakeTLS:
    """Connects to the ``(host, port)`` in ``reachable``; the link's handshake completes at once (calling
    ``on_up(link)``), fails with ``handshake_error``, or (``handshake_ok = False``) never completes."""

    def __init__(self):
        self.reachable = set()
        self.attempts = []
        self.connected = []
        self.handshake_ok = True
        self.handshake_error = None
        self.on_up = lambda link: None

    def client_endpoint(self, reactor, host, port, timeout):
        return FakeEndpoint(self, host, port)

    def peer_key(self, transport):
        return None


class ChatWorld:
    """One peer, *name*, built from the real chat parts over the fakes above."""

    def __init__(self, tmp_path, name="alice", limits=None):
        self.tmp = tmp_path
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.name = name
        self.identity = self.keys(name)
        self.storage = Storage(str(tmp_path / name / "p2pd.sqlite3"), name=name)
        self.registry = FakeRegistry()
        self.registry.me = name
        self.registry.add_peer(name, self.identity)
        self.tls = FakeTLS()
        self.events = Events()
        self.seen = []
        self.events.subscribe(self.seen.append)
        self.commits = Commits(self.storage, self.clock)
        self.pins = Pins(self.storage, self.registry, self.commits, self.clock)
        self.dialer = Dialer(self.pins, self.tls, self.clock,
                             lambda expected: FakeLink(expected[0], self.clock))
        self.outbox = Outbox(name, self.identity, self.storage, self.registry, self.clock, self.commits,
                             self.events, self.pins, self.dialer)
        self.directory = Directory(name, self.registry, self.pins, self.dialer, self.outbox)
        self.rooms = Rooms(name, self.storage, self.registry, self.clock, self.commits, self.events, self.dialer,
                           self.outbox, self.directory.peers)
        self.receipts = Receipts(name, self.storage, self.clock, self.commits, self.events, self.pins,
                                 self.dialer, self.outbox.depositor.deposit_frame)
        self.receiver = Receiver(name, self.identity, self.storage, self.registry, self.clock, self.commits,
                                 self.events, self.pins, self.rooms, self.receipts, limits)
        self.tls.on_up = self.link_up
        self.outbox.start()

    def keys(self, name):
        return load_or_create(str(self.tmp / name), name)

    def peer(self, name, port, reachable=True, online=True):
        """Register *name* (with real keys) at 127.0.0.1:*port*; reachable over our fake TLS if *reachable*."""
        identity = self.keys(name)
        self.registry.add_peer(name, identity, online=online, tcp=["127.0.0.1:%d" % port])
        if reachable:
            self.tls.reachable.add(("127.0.0.1", port))
        return identity

    def link_up(self, link):
        """What the daemon does when a link is up: it is the link to its peer, and the queue goes out on it."""
        self.dialer.up(link)
        self.outbox.send_queued(link)
        self.receipts.link_up(link)

    def link(self, peer):
        """An authenticated link from *peer*, up."""
        link = FakeLink(peer, self.clock, outgoing=False)
        self.link_up(link)
        return link

    def drop(self, link):
        """*link* closed, as the daemon handles it."""
        link.closed = True
        if self.dialer.down(link):
            self.outbox.link_down(link)

    def run(self, seconds=0.0):
        self.clock.advance(0)
        if seconds:
            self.clock.advance(seconds)
        self.clock.advance(0)

    def kinds(self, kind):
        return [e for e in self.seen if e["event"] == kind]


def result(d):
    """The result of a Deferred that has fired (raises its failure)."""
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if isinstance(out[0], defer.Failure):
        out[0].raiseException()
    return out[0]


def failure(d):
    out = []
    d.addBoth(out.append)
    assert out and isinstance(out[0], defer.Failure), "expected a failed Deferred, got %r" % (out,)
    return out[0].value
