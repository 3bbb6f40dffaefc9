"""The peer link adapter on StringTransport and a Clock: handshake, identity checks, errors, keepalive."""

import json

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from p2pd.core import wire
from p2pd.errors import IdentityMismatch
from p2pd.peer.links.link import DEAD_AFTER, HANDSHAKE_TIMEOUT, PING_AFTER, PeerLink

MSG = {"t": "msg", "id": "a" * 32, "from": "bob", "seq": 1, "ts": 5, "body": "hi"}


class FakeDaemon:
    name = "alice"

    def __init__(self, key="KEY-B", verify_error=None):
        self.key = key
        self.verify_error = verify_error
        self.ups, self.downs, self.frames, self.verified = [], [], [], []

    def tls_peer_key(self, transport):
        return self.key

    def verify_peer(self, name, key):
        self.verified.append((name, key))
        return defer.fail(self.verify_error) if self.verify_error else defer.succeed({"key": key})

    def link_up(self, link):
        self.ups.append(link)

    def link_down(self, link):
        self.downs.append(link)

    def link_frame(self, link, frame):
        self.frames.append(frame)


def lines(transport):
    out = [json.loads(line) for line in transport.value().split(b"\n") if line]
    transport.clear()
    return out


def connect(daemon=None, expected=None):
    daemon = daemon or FakeDaemon()
    clock = Clock()
    link = PeerLink(daemon, clock, expected=expected)
    transport = StringTransport()
    link.makeConnection(transport)
    return daemon, clock, link, transport


def send(link, frame):
    link.dataReceived(wire.encode(frame) + b"\n")


def handshake(daemon=None, expected=None):
    daemon, clock, link, transport = connect(daemon, expected)
    link.handshakeCompleted()
    assert lines(transport)[0]["t"] == "hello"
    send(link, wire.hello("bob", "test"))
    return daemon, clock, link, transport


def test_hello_is_sent_after_tls_and_link_comes_up():
    """After TLS, each side says hello; the claimed name is verified against the TLS key, then the link is up."""
    daemon, _, link, _ = handshake()
    assert daemon.verified == [("bob", "KEY-B")]
    assert daemon.ups == [link] and link.ready and link.peer == "bob"


def test_frames_after_handshake_reach_the_daemon():
    """Authenticated message frames go to the daemon."""
    daemon, _, link, _ = handshake()
    send(link, MSG)
    assert daemon.frames == [MSG]


def test_message_before_hello_is_refused():
    """Anything but hello before the handshake gets an error and the connection is closed."""
    daemon, _, link, transport = connect()
    link.handshakeCompleted()
    lines(transport)
    send(link, MSG)
    assert lines(transport)[0]["code"] == "handshake"
    assert transport.disconnecting and daemon.frames == []


def test_unknown_version_is_refused():
    """A hello with another protocol version is refused with unsupported_version."""
    _, _, link, transport = connect()
    link.handshakeCompleted()
    lines(transport)
    send(link, dict(wire.hello("bob", "x"), v=2))
    assert lines(transport)[0]["code"] == "unsupported_version" and transport.disconnecting


def test_identity_mismatch_on_verification_closes_the_link():
    """If the registry's key for the claimed name differs from the TLS key, the link is refused."""
    daemon = FakeDaemon(verify_error=IdentityMismatch("bob presented another key"))
    _, _, link, transport = handshake(daemon)
    assert lines(transport)[0]["code"] == "identity_mismatch"
    assert transport.disconnecting and daemon.ups == []


def test_dialled_peer_with_another_key_is_refused_before_hello():
    """When we dial bob, a TLS key other than bob's registered key is refused before we say anything."""
    daemon, _, link, transport = connect(FakeDaemon(key="KEY-EVIL"), expected=("bob", "KEY-B"))
    link.handshakeCompleted()
    sent = lines(transport)
    assert [f["t"] for f in sent] == ["error"] and sent[0]["code"] == "identity_mismatch"
    assert transport.disconnecting
    failures = []
    link.when_ready.addErrback(failures.append)
    assert failures and failures[0].value.code == "identity_mismatch"


def test_dialled_name_must_answer():
    """Dialling bob and hearing hello from carol is refused."""
    daemon, _, link, transport = connect(expected=("bob", "KEY-B"))
    link.handshakeCompleted()
    lines(transport)
    send(link, wire.hello("carol", "x"))
    assert lines(transport)[0]["code"] == "identity_mismatch" and transport.disconnecting


def test_malformed_line_gets_an_error_but_keeps_the_link():
    """A line that is not a valid frame gets an error reply; the link stays up."""
    daemon, _, link, transport = handshake()
    lines(transport)
    link.dataReceived(b"garbage\n")
    assert lines(transport)[0]["t"] == "error"
    assert not transport.disconnecting
    send(link, MSG)
    assert daemon.frames == [MSG]


def test_overlong_line_closes_the_link():
    """A line longer than MAX_LENGTH is refused and the connection closed, without buffering it all."""
    _, _, link, transport = handshake()
    lines(transport)
    link.dataReceived(b"x" * (wire.MAX_LINE + 10))
    assert lines(transport)[0]["code"] == "line_too_long" and transport.disconnecting


def test_ping_is_answered():
    """A ping gets a pong with the same number."""
    _, _, link, transport = handshake()
    lines(transport)
    send(link, {"t": "ping", "n": 7})
    assert lines(transport) == [{"t": "pong", "n": 7}]


def test_idle_link_is_probed_then_closed():
    """After PING_AFTER s of silence we ping; after DEAD_AFTER s without any traffic the link is aborted."""
    _, clock, link, transport = handshake()
    lines(transport)
    clock.advance(PING_AFTER)
    assert [f["t"] for f in lines(transport)] == ["ping"]
    assert not transport.disconnecting
    clock.advance(DEAD_AFTER - PING_AFTER)
    assert transport.disconnecting


def test_traffic_keeps_the_link_alive():
    """A link that hears from its peer is never closed for idleness."""
    _, clock, link, transport = handshake()
    for _ in range(10):
        clock.advance(PING_AFTER - 1)
        send(link, {"t": "pong", "n": 1})
    assert not transport.disconnecting


def test_handshake_must_finish_in_time():
    """A connection that never completes the handshake is closed after HANDSHAKE_TIMEOUT s."""
    _, clock, link, transport = connect()
    clock.advance(HANDSHAKE_TIMEOUT)
    assert transport.disconnecting


def test_frames_while_we_still_verify_the_peer_wait_for_the_verification():
    """The peer may verify us first and start talking while our registry lookup of it still runs: its frames
    are held and handed over, in order, once it is verified (they used to fail the link: "expected hello")."""
    pending = defer.Deferred()
    daemon = FakeDaemon()
    daemon.verify_peer = lambda name, key: pending
    daemon, clock, link, transport = connect(daemon)
    link.handshakeCompleted()
    lines(transport)
    send(link, wire.hello("bob", "test"))
    send(link, MSG)
    send(link, {"t": "ping", "n": 1})
    assert daemon.frames == [] and not link.ready and not transport.disconnecting
    pending.callback({"key": "KEY-B"})
    assert link.ready and daemon.frames == [MSG]
    assert lines(transport) == [{"t": "pong", "n": 1}]


def test_a_link_that_failed_during_verification_stays_failed():
    pending = defer.Deferred()
    daemon = FakeDaemon()
    daemon.verify_peer = lambda name, key: pending
    daemon, clock, link, transport = connect(daemon)
    link.handshakeCompleted()
    send(link, wire.hello("bob", "test"))
    link.fail("handshake", "test failure")
    link.when_ready.addErrback(lambda f: None)
    pending.callback({"key": "KEY-B"})  # no AlreadyCalledError, and the link does not come up
    assert not link.ready and daemon.ups == []


def test_the_link_provides_its_interface_and_tells_where_the_peer_is():
    from zope.interface.verify import verifyObject

    from p2pd.peer.interfaces import ILink
    _, _, link, transport = connect()
    assert verifyObject(ILink, link)
    assert link.peer_address() == transport.getPeer()


def test_a_refused_incoming_link_leaves_no_unhandled_error_behind():
    """Nobody waits for an incoming link to be ready: when it is refused its failure is not left to be logged as
    an "Unhandled error in Deferred" (every impostor that knocked would add one to the daemon's log)."""
    import gc

    from twisted.logger import globalLogPublisher

    seen = []
    observer = seen.append

    def refuse():
        daemon = FakeDaemon(verify_error=IdentityMismatch("bob presented another key"))
        _, clock, link, transport = handshake(daemon)
        assert link.when_ready.called and transport.disconnecting
        link.connectionLost(None)

    gc.collect()  # what earlier tests left to be collected is not this test's
    globalLogPublisher.addObserver(observer)
    try:
        refuse()
        gc.collect()
    finally:
        globalLogPublisher.removeObserver(observer)
    assert [e for e in seen if "Unhandled error" in str(e.get("log_format"))] == []


def test_a_connection_that_never_finishes_tls_is_cut_without_a_word():
    """Issue 12, finding 2: before the TLS handshake completes, the handshake timeout writes nothing (TLS would
    hold it, and Twisted would keep an unfinished handshake open until it was sent) and aborts."""
    _, clock, link, transport = connect(expected=("bob", "KEY-B"))
    clock.advance(HANDSHAKE_TIMEOUT)
    assert transport.value() == b"" and transport.disconnected
    failures = []
    link.when_ready.addErrback(failures.append)
    assert failures[0].value.code == "handshake"


def test_a_refused_link_that_does_not_take_its_last_frame_is_cut_after_a_grace():
    from p2pd.peer.links.link import CLOSE_GRACE
    _, clock, link, transport = connect()
    link.handshakeCompleted()
    lines(transport)
    send(link, MSG)  # before hello: refused, with an error frame (TLS is up)
    assert lines(transport)[0]["code"] == "handshake" and transport.disconnecting and not transport.disconnected
    clock.advance(CLOSE_GRACE)
    assert transport.disconnected  # the peer never read it: cut


def budget_link(**limits):
    from p2pd.peer.limits import Limits
    daemon, clock = FakeDaemon(), Clock()
    link = PeerLink(daemon, clock, limits=Limits(**limits))
    transport = StringTransport()
    link.makeConnection(transport)
    link.handshakeCompleted()
    send(link, wire.hello("bob", "test"))
    return daemon, clock, link, transport


def test_a_link_over_its_budget_is_read_more_slowly_not_cut():
    """Issue 12, finding 5: a link that brings more frames (or bytes) than its budget is not read for a while:
    TCP slows its sender down and nothing is refused or lost."""
    daemon, clock, link, transport = budget_link(frames_per_second=10, bytes_per_second=1 << 20)
    for i in range(40):  # a burst of 40 is saved up
        send(link, dict(MSG, id="%032x" % i))
    assert transport.producerState == "producing"
    send(link, dict(MSG, id="%032x" % 40))
    assert transport.producerState == "paused"  # (a real transport now delivers nothing until resumed)
    clock.advance(0.1)
    assert transport.producerState == "producing" and len(daemon.frames) == 41
    send(link, dict(MSG, id="%032x" % 41))
    assert transport.producerState == "paused"
    assert not transport.disconnecting


def test_a_link_bringing_too_many_bytes_is_paused_too():
    daemon, clock, link, transport = budget_link(frames_per_second=1000, bytes_per_second=1000)
    send(link, dict(MSG, body="x" * 5000))
    assert transport.producerState == "paused"
    clock.advance(1.5)
    assert transport.producerState == "producing"


def test_a_peer_that_does_not_read_what_we_write_is_not_read_and_then_cut():
    """Issue 12, finding 6: replies piled up in the write buffer of a peer that never read them. When the
    transport's buffer of our writes is full it pauses us (we are its producer): we stop reading the peer, and
    cut it if that lasts WRITE_STALL seconds. A budget throttle and the write pause combine."""
    from p2pd.peer.links.link import WRITE_STALL
    daemon, clock, link, transport = budget_link(frames_per_second=10, bytes_per_second=1 << 20)
    assert transport.producer is link and transport.streaming
    link.pauseProducing()  # what the transport does when its buffer is full
    assert transport.producerState == "paused"
    link.resumeProducing()
    assert transport.producerState == "producing"
    for i in range(41):  # over the budget too
        send(link, dict(MSG, id="%032x" % i))
    link.pauseProducing()
    clock.advance(0.2)  # the budget would let it go on, the full buffer does not
    assert transport.producerState == "paused"
    clock.advance(WRITE_STALL)
    assert transport.disconnected
