"""The chat core of the peer daemon, in process: real storage and keys, the registry API over StubTreq with an
in-memory store, and links between daemons over in-memory transports (no TLS bytes; each side is told the
other's key as TLS would), all driven by one Clock. Losing a receipt or a link is just not delivering bytes."""

import random

import pytest
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.test import iosim

from p2pd.errors import StoreUnavailable
from p2pd.peer.daemon import PeerDaemon
from p2pd.peer.identity import load_or_create
from p2pd.peer.links.link import PeerLink
from p2pd.peer.registry_client import RegistryClient
from p2pd.peer.storage import Storage
from p2pd.peer.threads import InlineThreads
from p2pd.registry.api import RegistryAPI
from p2pd.registry.store import MemoryStore

BASE = "http://registry.test"


class Net:
    """Daemons, the registry and the wires between them."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store = MemoryStore()
        self.http = StubTreq(RegistryAPI(self.store, self.clock, read_rate=0, write_rate=0).resource())
        self.by_port = {}
        self.up = set()
        self.pumps = []
        self.daemons = {}

    def daemon(self, name, port, home=None):
        """A daemon *name* on *port*, its data in *home* (default: a directory named after it)."""
        data_dir = str(self.tmp / (home or name))
        identity = load_or_create(data_dir, name)
        storage = Storage(str(self.tmp / (home or name) / "p2pd.sqlite3"), name=name)
        registry = RegistryClient(BASE, self.clock, self.http, identity.signing, name)
        d = PeerDaemon(name, identity, storage, registry, self.clock, FakeTLS(self, identity), data_dir,
                       InlineThreads())
        d.addresses = {"tcp": ["127.0.0.1:%d" % port], "udp": [], "public": None}
        self.by_port[port] = d
        self.daemons[name] = d
        return d

    def online(self, daemon):
        """Start *daemon*, register it and mark it reachable."""
        self.up.add(daemon)
        daemon.start()
        self.result(daemon.register())
        daemon.registry_changed("online", "registered")
        self.run()

    def offline(self, daemon):
        """Stop *daemon*: it says goodbye to the registry and its links drop."""
        self.result(daemon.registry.go_offline())
        self.up.discard(daemon)
        daemon.stop()
        daemon.registry_state = {"state": "stopped", "message": "stopped"}  # as a restarted daemon starts
        self.run()

    def run(self, seconds=0.0):
        """Move every byte and run everything due, then let *seconds* pass in small steps."""
        steps = max(1, int(seconds / 0.5))
        for i in range(steps):
            quiet = 0
            for _ in range(500):
                moved = False
                for pump in list(self.pumps):
                    moved = pump.flush(advanceClock=False) or moved
                due = any(c.getTime() <= self.clock.seconds() for c in self.clock.getDelayedCalls())
                self.clock.advance(0)
                self.http.flush()
                quiet = 0 if (moved or due) else quiet + 1
                if quiet >= 2:
                    break
            if seconds:
                self.clock.advance(0.5)

    def result(self, d):
        out = []
        d.addBoth(out.append)
        self.run()
        assert out, "did not finish"
        if isinstance(out[0], defer.Failure):
            out[0].raiseException()
        return out[0]


class FakeTLS:
    def __init__(self, net, identity):
        self.net = net
        self.identity = identity

    def peer_key(self, transport):
        return transport.peer_key

    def client_endpoint(self, reactor, host, port, timeout):
        return FakeEndpoint(self.net, self.identity, port)


class FakeEndpoint:
    def __init__(self, net, identity, port):
        self.net, self.identity, self.port = net, identity, port

    def connect(self, factory):
        server = self.net.by_port.get(self.port)
        if server is None or server not in self.net.up:
            return defer.fail(ConnectionRefusedError())
        client_proto = factory.buildProtocol(None)
        server_proto = PeerLink(server, self.net.clock)
        client_io = iosim.FakeTransport(client_proto, isServer=False)
        server_io = iosim.FakeTransport(server_proto, isServer=True)
        client_io.peer_key = server.identity.public_text
        server_io.peer_key = self.identity.public_text
        pump = iosim.connect(server_proto, server_io, client_proto, client_io, greet=False, clock=self.net.clock)
        self.net.pumps.append(pump)
        server_proto.handshakeCompleted()
        client_proto.handshakeCompleted()
        return defer.succeed(client_proto)


@pytest.fixture
def net(tmp_path):
    return Net(tmp_path)


def bodies(daemon, peer, direction="in"):
    return [m["body"] for m in daemon.history(peer, limit=10000) if m["direction"] == direction]


def test_message_is_delivered_and_acknowledged(net):
    """A message to an online peer is stored on both sides and reported delivered (direct)."""
    alice, bob = net.daemon("alice", 1), net.daemon("bob", 2)
    net.online(alice)
    net.online(bob)
    outcome = net.result(alice.send_message("bob", "سلام 👋"))
    assert (outcome["status"], outcome["via"]) == ("delivered", "direct")
    assert bodies(bob, "alice") == ["سلام 👋"]
    assert [m["via"] for m in bob.history("alice")] == ["direct"]
    assert alice.storage.outbox_count() == 0


def test_both_directions_at_once_keep_order(net):
    """200 messages each way at once arrive complete, in order, without duplicates."""
    alice, bob = net.daemon("alice", 1), net.daemon("bob", 2)
    net.online(alice)
    net.online(bob)
    sends = []
    for i in range(200):
        sends.append(alice.send_message("bob", "a%d" % i))
        sends.append(bob.send_message("alice", "b%d" % i))
    net.run(1)
    assert all(d.called for d in sends)
    assert bodies(bob, "alice") == ["a%d" % i for i in range(200)]
    assert bodies(alice, "bob") == ["b%d" % i for i in range(200)]


def test_lost_receipts_never_duplicate(net):
    """Half of bob's receipts are lost and the link breaks; alice resends what was not acknowledged and bob
    shows each message exactly once, in order (RELIABILITY row 20)."""
    alice, bob = net.daemon("alice", 1), net.daemon("bob", 2)
    net.online(alice)
    net.online(bob)
    shown = []
    bob.subscribe(lambda e: shown.append(e["message"]["body"]) if e["event"] == "message" else None)
    rng = random.Random(7)
    real_send = PeerLink.send

    dropped = []

    def lossy_send(link, frame):
        if link.host is bob and frame["t"] == "ack" and rng.random() < 0.5:
            dropped.append(frame)
            return
        real_send(link, frame)

    PeerLink.send = lossy_send
    try:
        sends = [alice.send_message("bob", "m%d" % i, wait=1) for i in range(100)]
        net.run(2)
    finally:
        PeerLink.send = real_send
    assert dropped, "the test lost no receipt"
    for pump in net.pumps:  # the link dies; alice's unacknowledged messages go out again on a new one
        pump.clientIO.loseConnection()
    net.run(5)
    assert all(d.called for d in sends)
    assert shown == ["m%d" % i for i in range(100)]
    assert bodies(bob, "alice") == ["m%d" % i for i in range(100)]
    assert alice.storage.outbox_count() == 0


def test_offline_peer_gets_it_through_the_mailbox(net):
    """To an offline peer the message is sealed into the registry mailbox; bob collects it when back."""
    alice, bob = net.daemon("alice", 1), net.daemon("bob", 2)
    net.online(bob)
    net.offline(bob)
    net.online(alice)
    outcome = net.result(alice.send_message("bob", "while you were away"))
    assert (outcome["status"], outcome["via"]) == ("queued", "mailbox")
    assert net.store.mailboxes["bob"]
    net.online(bob)
    assert bodies(bob, "alice") == ["while you were away"]
    assert [m["via"] for m in bob.history("alice") if m["direction"] == "in"] == ["mailbox"]
    assert not net.store.mailboxes["bob"], "bob acknowledged and deleted it"


def test_mailbox_then_direct_keeps_order(net):
    """m1 went to the mailbox, m2 arrives directly before bob fetched: bob still shows m1 before m2."""
    alice, bob = net.daemon("alice", 1), net.daemon("bob", 2)
    net.online(bob)
    net.offline(bob)
    net.online(alice)
    net.result(alice.send_message("bob", "m1"))
    net.up.add(bob)  # bob is reachable again but has not fetched his mailbox yet
    bob.start()
    net.result(bob.register())
    d = alice.send_message("bob", "m2")
    net.run(5)
    assert d.called
    assert bodies(bob, "alice") == ["m1", "m2"]


def test_unknown_peer_is_refused(net):
    """Sending to a name nobody registered fails with unknown_peer and stores nothing."""
    alice = net.daemon("alice", 1)
    net.online(alice)
    d = alice.send_message("nobody", "hi")
    net.run()
    failures = []
    d.addErrback(failures.append)
    assert failures and failures[0].value.code == "unknown_peer"
    assert alice.storage.outbox_count() == 0


def test_changed_key_is_refused_and_message_stays_queued(net):
    """If bob's registered key changes after first contact, alice refuses to talk to the new key and does
    not seal anything for it; the message stays queued (RELIABILITY rows 16-17)."""
    alice, bob = net.daemon("alice", 1), net.daemon("bob", 2)
    net.online(alice)
    net.online(bob)
    net.result(alice.send_message("bob", "first"))
    net.offline(bob)
    net.result(bob.registry.release())
    mallory = net.daemon("bob", 3, home="mallory")  # another key under bob's name
    net.online(mallory)
    outcome = net.result(alice.send_message("bob", "secret"))
    assert outcome["status"] == "queued" and outcome["via"] == "outbox"
    assert bodies(mallory, "alice") == []
    assert not net.store.mailboxes.get("bob")
    assert alice.storage.outbox_count() == 1


def test_invalid_messages_are_refused(net):
    """Empty, oversized or self-addressed messages are refused with a clear error."""
    alice = net.daemon("alice", 1)
    net.online(alice)
    for to, text in [("bob", ""), ("bob", "x" * 20000), ("alice", "hi"), ("Bad Name", "hi")]:
        failures = []
        alice.send_message(to, text).addErrback(failures.append)
        net.run()
        assert failures and failures[0].value.code in ("bad_request", "invalid_name")


def test_the_daemon_provides_the_interfaces_its_links_and_presence_use(net):
    from zope.interface.verify import verifyObject

    from p2pd.peer.interfaces import ILinkHost, IPresenceHost
    alice = net.daemon("alice", 1)
    assert verifyObject(ILinkHost, alice) and verifyObject(IPresenceHost, alice)


def test_the_daemon_offers_everything_the_control_socket_calls(net):
    from p2pd.peer.facade import DaemonFacade
    alice = net.daemon("alice", 1)
    assert isinstance(alice, DaemonFacade)


def test_a_deposit_signed_by_a_reinstalled_peer_does_not_hold_up_the_mailbox(net):
    """Issue 12, finding 1, through the real registry API: bob reinstalls (a new key under his name) and leaves
    alice a message while she is away; carol then leaves her 20. Alice, who pinned bob's old key, quarantines
    bob's and gets all of carol's (before: the fetch stopped at bob's every time, for the 7 days it lived)."""
    alice, bob, carol = net.daemon("alice", 1), net.daemon("bob", 2), net.daemon("carol", 3)
    for d in (alice, bob, carol):
        net.online(d)
    net.result(bob.send_message("alice", "hello from my first install"))
    net.offline(alice)
    net.offline(bob)
    net.result(bob.registry.release())
    new_bob = net.daemon("bob", 4, home="bob-reinstalled")  # a fresh data dir: a new key
    net.online(new_bob)
    assert net.result(new_bob.send_message("alice", "my new key"))["via"] == "mailbox"
    for i in range(20):
        assert net.result(carol.send_message("alice", "c%d" % i))["via"] == "mailbox"
    net.online(alice)
    assert bodies(alice, "carol") == ["c%d" % i for i in range(20)]
    assert bodies(alice, "bob") == ["hello from my first install"]
    (kept,) = alice.storage.quarantined()
    assert kept["from"] == "bob" and "pinned" in kept["reason"]
    assert not net.store.mailboxes["alice"]


def test_stopping_the_daemon_stops_the_part_attached_to_it(net):
    from zope.interface import implementer

    from p2pd.peer.interfaces import IFrameHandler

    @implementer(IFrameHandler)
    class Files:
        kinds = frozenset({"offer"})
        stopped = False

        def frame(self, link, frame):
            pass

        def link_error(self, link, frame):
            return False

        def link_down(self, link):
            pass

        def stop(self):
            self.stopped = True

    alice, files = net.daemon("alice", 1), Files()
    alice.attach(files)
    net.online(alice)
    alice.stop()
    assert files.stopped


def test_blocking_a_peer_closes_its_link_and_refuses_what_it_sends(net):
    """alice blocks bob: his link closes, his next message cannot reach her directly and what he seals into
    her mailbox is dropped; unblocked, he gets through again."""
    alice, bob = net.daemon("alice", 1), net.daemon("bob", 2)
    net.online(alice)
    net.online(bob)
    assert net.result(bob.send_message("alice", "before"))["status"] == "delivered"
    assert alice.block("Bob") == {"name": "bob", "blocked": True}
    net.run(1)
    assert "bob" not in {l["peer"] for l in alice.status()["links"]}
    outcome = net.result(bob.send_message("alice", "after"))
    assert outcome["status"] == "queued"
    net.run(31)  # alice's mailbox poll
    assert bodies(alice, "bob") == ["before"] and alice.blocked() == ["bob"]
    assert alice.unblock("bob")["was_blocked"] is True
    assert net.result(bob.send_message("alice", "again"))["status"] == "delivered"
    assert bodies(alice, "bob")[-1] == "again"


def test_a_peer_that_refuses_our_link_after_its_hello_is_dialled_with_back_off(net):
    """The refusing side checks us after its hello, so our side had the link up for a moment: we used to dial
    it again every 0.2 s for as long as messages waited (bug not named by an issue). A refusal of the whole link
    is a failed dial: the back-off applies and the messages go to the mailbox."""
    alice, bob = net.daemon("alice", 1), net.daemon("bob", 2)
    net.online(alice)
    net.online(bob)
    alice.block("bob")
    before = len(net.pumps)
    outcome = net.result(bob.send_message("alice", "are you there?"))
    net.run(30)
    assert len(net.pumps) - before <= 6, "bob dialled alice %d times in 30 s" % (len(net.pumps) - before)
    assert outcome["status"] == "queued"


def delivered_events(daemon):
    seen = []
    daemon.subscribe(lambda e: seen.append(e) if e["event"] in ("delivered", "failed") else None)
    return seen


def test_a_message_collected_from_the_mailbox_comes_back_delivered(net):
    """Issue 12, finding 14 (and issue 13, bug 6): bob collects alice's message from his mailbox while she is
    away; his receipt is sealed into her mailbox, and when she is back her history and status say delivered (it
    said "queued" for ever)."""
    alice, bob = net.daemon("alice", 1), net.daemon("bob", 2)
    net.online(bob)
    net.offline(bob)
    net.online(alice)
    msg_id = net.result(alice.send_message("bob", "while you were away"))["id"]
    assert alice.status()["in_mailbox"] == 1
    net.offline(alice)
    net.online(bob)
    assert bodies(bob, "alice") == ["while you were away"]
    assert bob.storage.owed_receipts("alice") == [], "the receipt went out"
    assert len(net.store.mailboxes["alice"]) == 1, "sealed into alice's mailbox"
    seen = delivered_events(alice)
    net.online(alice)
    out = [m for m in alice.history("bob") if m["direction"] == "out"]
    assert [(m["status"], m["via"]) for m in out] == [("delivered", "mailbox")]
    assert seen == [{"event": "delivered", "id": msg_id, "to": "bob", "via": "mailbox"}]
    assert alice.status()["in_mailbox"] == 0 and not net.store.mailboxes["alice"]


def test_the_receipt_goes_over_the_link_when_there_is_one(net):
    """Linked when bob collects an old deposit: the receipt is an ack on the link, nothing is deposited, and
    alice sees it delivered at once."""
    alice, bob = net.daemon("alice", 1), net.daemon("bob", 2)
    net.online(bob)
    net.offline(bob)
    net.online(alice)
    net.result(alice.send_message("bob", "m1"))
    net.up.add(bob)  # bob is reachable again, links with alice, and only then fetches
    bob.start()
    net.result(bob.register())
    seen = delivered_events(alice)
    net.result(alice.send_message("bob", "m2"))  # its seq gap makes bob fetch his mailbox
    bob.registry_changed("online", "registered")
    net.run(1)
    assert bodies(bob, "alice") == ["m1", "m2"]
    assert [(m["status"], m["via"]) for m in alice.history("bob") if m["direction"] == "out"] == \
        [("delivered", "mailbox"), ("delivered", "direct")]
    assert sorted(e["via"] for e in seen) == ["direct", "mailbox"] and not net.store.mailboxes.get("alice")


def bob_collects_while_the_registry_refuses_receipts_for(net, bob, sender):
    """Start *bob*, who collects his mailbox, while the registry fails every deposit for *sender* (so the
    receipts bob owes it stay owed)."""
    original = net.store.deposit

    def refused(recipient, *args):
        if recipient == sender:
            return defer.fail(StoreUnavailable("the registry's store is unavailable"))
        return original(recipient, *args)
    net.store.deposit = refused
    try:
        net.online(bob)
    finally:
        net.store.deposit = original


def test_a_receipt_owed_survives_a_restart(net):
    """The receipt is owed in the commit that stored the message: if the registry cannot take it, bob keeps it
    and sends it on a later round, also after a restart."""
    alice, bob = net.daemon("alice", 1), net.daemon("bob", 2)
    net.online(bob)
    net.offline(bob)
    net.online(alice)
    net.result(alice.send_message("bob", "hi"))
    net.offline(alice)
    bob_collects_while_the_registry_refuses_receipts_for(net, bob, "alice")
    assert bodies(bob, "alice") == ["hi"] and len(bob.storage.owed_receipts("alice")) == 1
    bob.stop()
    bob2 = net.daemon("bob", 2)  # the same data dir, a new process
    net.online(bob2)
    net.run(31)
    assert bob2.storage.owed_receipts("alice") == [] and len(net.store.mailboxes["alice"]) == 1


def test_a_deposit_nobody_collects_is_reported_expired(net):
    """Issue 12, finding 14 (RELIABILITY row 22): bob never comes back; a week and an hour after the deposit
    alice's message is failed with the reason, and a failed event says so."""
    from p2pd.peer.chat.receipts import DEPOSIT_TTL, EXPIRY_GRACE
    from p2pd.registry.schema import MAILBOX_TTL
    assert DEPOSIT_TTL == MAILBOX_TTL
    alice, bob = net.daemon("alice", 1), net.daemon("bob", 2)
    net.online(bob)
    net.offline(bob)
    net.online(alice)
    msg_id = net.result(alice.send_message("bob", "are you there?"))["id"]
    seen = delivered_events(alice)
    net.clock.advance(DEPOSIT_TTL - 3600)
    net.run(1)
    net.clock.advance(3600 + EXPIRY_GRACE + 3600)
    net.run(1)
    (out,) = [m for m in alice.history("bob") if m["direction"] == "out"]
    assert out["status"] == "failed" and "7 days" in out["reason"]
    assert seen == [{"event": "failed", "id": msg_id, "to": "bob", "reason": out["reason"]}]
    assert alice.status()["in_mailbox"] == 0


def test_watch_shows_a_peer_we_talk_to_going_offline_and_coming_back(net):
    """Issue 13: `watch` showed links opening and closing, not presence. The peers of our conversations are
    looked at on each round while somebody watches."""
    alice, bob = net.daemon("alice", 1), net.daemon("bob", 2)
    net.online(alice)
    net.online(bob)
    net.result(alice.send_message("bob", "hi"))
    seen = []
    alice.subscribe(lambda e: seen.append((e["name"], e["state"])) if e["event"] == "peer" else None)
    net.run(31)  # the first look learns who is online: nothing to tell yet
    net.offline(bob)
    net.run(31)
    bob.start()
    net.result(bob.register())
    net.up.add(bob)
    net.run(31)
    presence = [s for s in seen if s[1] in ("online", "offline")]
    assert presence == [("bob", "offline"), ("bob", "online")], seen


def test_a_receipt_for_a_name_nobody_holds_any_more_is_dropped(net):
    """A sender that released its name gets no receipt (nobody to give it to), and none is retried for ever."""
    alice, bob = net.daemon("alice", 1), net.daemon("bob", 2)
    net.online(bob)
    net.offline(bob)
    net.online(alice)
    net.result(alice.send_message("bob", "goodbye"))
    net.offline(alice)
    bob_collects_while_the_registry_refuses_receipts_for(net, bob, "alice")  # the receipt cannot go at once ...
    assert bodies(bob, "alice") == ["goodbye"] and bob.storage.owed_receipts("alice")
    net.result(alice.registry.release())  # ... and then nobody holds the name
    net.run(31)
    assert bob.storage.owed_receipts("alice") == [] and bob.storage.receipt_senders() == []


def test_a_nearly_full_registry_is_an_error_that_says_when_to_come_back():
    from p2pd.errors import RegistryFull
    from p2pd.peer.registry_client import error_for
    err = error_for(507, {"error": "registry_full", "message": "the registry is nearly full", "retry_after": 60})
    assert isinstance(err, RegistryFull) and err.retry_after == 60 and err.code == "registry_full"
