"""A link to another peer: TLS (both keys pinned), then the v1 line protocol of :mod:`p2pd.core.wire`.

The protocol is a thin adapter: it decodes lines, checks the handshake, keeps the link alive, and hands
authenticated frames to its host, an :class:`~p2pd.peer.interfaces.ILinkHost` (``link_up``, ``link_frame``,
``link_down``). Identity is checked
twice: the TLS certificate's key must be the key the registry (and our pin) holds for the name the peer claims,
and nothing but ``hello`` is accepted before that check passes.
"""

from twisted.internet import defer
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from zope.interface import implementer

from p2pd import __version__
from p2pd.core import wire
from p2pd.core.ratelimit import Bucket
from p2pd.errors import IdentityMismatch, LinkFailed, P2PDError
from p2pd.peer.interfaces import ILink
from p2pd.peer.limits import Limits
from p2pd.peer.timers import Timer

log = Logger()

PING_AFTER = 10  # seconds without traffic before we probe
DEAD_AFTER = 30  # seconds without any traffic before the link is declared dead
HANDSHAKE_TIMEOUT = 15
MAX_EARLY = 1000  # frames held while the peer's identity is being verified
CLOSE_GRACE = 5  # seconds a link we closed may take to send its last frame before it is cut
BURST = 4  # a link's budget saves up this many seconds of its rate
WRITE_BUFFER = 1 << 20  # bytes of our writes a link's transport holds before we stop reading the peer
WRITE_STALL = 30  # seconds a peer may leave that buffer full before its link is cut


@implementer(IHandshakeListener, ILink, IPushProducer)
class PeerLink(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = wire.MAX_LINE

    def __init__(self, host, clock, expected=None, limits=None):
        self.host = host  # an ILinkHost
        self.clock = clock
        limits = limits or Limits()
        self.frames = Bucket(limits.frames_per_second, limits.frames_per_second * BURST, clock.seconds())
        self.bytes = Bucket(limits.bytes_per_second, limits.bytes_per_second * BURST, clock.seconds())
        self.throttled = None  # the delayed call that resumes reading a link over its budget
        self.write_blocked = False  # the transport's buffer of our writes is full
        self.reading_paused = False
        self._stall = None
        self.expected = expected  # (name, key) when we dialled; None for an incoming link
        # the authenticated peer name, the key its TLS handshake showed, the port of its UDP streams (its hello)
        self.peer = self.peer_key = self.peer_udp_port = None
        self.ready = self.closed = False
        self.secured = False  # the TLS handshake completed
        self.outgoing = expected is not None
        self.inflight = set()  # message ids sent on this link, not yet acknowledged
        self.backlog = None  # frames held while an earlier one waits (e.g. for a mailbox fetch)
        self.last_rx = self.since = clock.seconds()
        self._timer = Timer(clock, PING_AFTER, self._tick)
        self._ping_n = 0
        self.when_ready = defer.Deferred()
        if not self.outgoing:  # nobody waits for an incoming link: its refusal is logged by fail(), not left over
            self.when_ready.addErrback(lambda failure: None)
        self.early = []  # frames that came after the peer's hello while we were still verifying it

    # connection

    def connectionMade(self):
        self._timer.arm(HANDSHAKE_TIMEOUT)
        tcp = getattr(self.transport, "transport", None)  # under TLS, the TCP transport that buffers our writes
        if tcp is not None and hasattr(tcp, "bufferSize"):
            tcp.bufferSize = WRITE_BUFFER
        self.transport.registerProducer(self, True)

    # backpressure both ways: a link over its budget, or one that does not read what we write, is not read

    def pauseProducing(self):
        """Our writes to the peer fill the transport's buffer (it does not read them): stop reading what it
        sends, so that the replies it asks for cannot pile up; cut it if it stays so for WRITE_STALL seconds."""
        self.write_blocked = True
        self._apply_reading()
        if self._stall is None:
            self._stall = self.clock.callLater(WRITE_STALL, self._stalled)

    def resumeProducing(self):
        self.write_blocked = False
        if self._stall is not None and self._stall.active():
            self._stall.cancel()
        self._stall = None
        self._apply_reading()

    def stopProducing(self):
        pass  # the connection is going: connectionLost follows

    def _stalled(self):
        self._stall = None
        if not self.closed and self.write_blocked:
            log.info("link with {peer}: it has not read what we sent for {s} s; closing", peer=self.peer,
                     s=WRITE_STALL)
            self.transport.abortConnection()

    def _apply_reading(self):
        paused = self.write_blocked or self.throttled is not None
        if paused != self.reading_paused and not self.closed:
            self.reading_paused = paused
            if paused:
                self.transport.pauseProducing()
            else:
                self.transport.resumeProducing()

    def handshakeCompleted(self):
        self.secured = True
        try:
            self.peer_key = self.host.tls_peer_key(self.transport)
            if self.expected is not None and self.peer_key != self.expected[1]:
                raise IdentityMismatch("%s presented a key that is not the one the registry holds for it"
                                            % self.expected[0])
        except P2PDError as e:
            return self.fail(getattr(e, "code", "identity_mismatch"), e.message)
        self.send(wire.hello(self.host.name, "p2pd/" + __version__, getattr(self.host, "udp_port", None)))

    def connectionLost(self, reason):
        self.closed = True
        self._timer.cancel()
        for call in (self.throttled, self._stall):
            if call is not None and call.active():
                call.cancel()
        if not self.when_ready.called:
            self.when_ready.errback(LinkFailed("connection closed before the handshake completed"))
        if self.ready:
            self.host.link_down(self)

    # lines

    def dataReceived(self, data):
        LineOnlyReceiver.dataReceived(self, data)
        if self.ready and not self.closed:
            wait = self.bytes.take(len(data), self.clock.seconds())  # what comes while paused counts too
            if wait and self.throttled is None:
                self._throttle(wait)

    def _throttle(self, wait):
        """The peer sent more than its budget: read nothing from it for *wait* seconds (TCP then slows it down;
        nothing is refused or lost)."""
        self.throttled = self.clock.callLater(wait, self._unthrottle)
        self._apply_reading()

    def _unthrottle(self):
        self.throttled = None
        self._apply_reading()

    def lineReceived(self, line):
        self.last_rx = self.clock.seconds()
        if self.ready:
            wait = self.frames.take(1, self.last_rx)
            if wait and self.throttled is None:
                self._throttle(wait)
        try:
            frame = wire.decode(line)
        except wire.FrameError as e:
            self.send(wire.error(e.code, str(e), e.ref))
            return
        if not self.ready:
            if self.peer is not None and frame["t"] != "error":
                # The peer verified us first and started talking: keep its frames until we have verified it.
                if len(self.early) >= MAX_EARLY:
                    return self.fail("handshake", "too many frames before the handshake completed")
                self.early.append(frame)
                return
            return self._handshake(frame)
        self._frame(frame)

    def _frame(self, frame):
        kind = frame["t"]
        if kind == "ping":
            self.send({"t": "pong", "n": frame["n"]})
        elif kind == "pong":
            pass
        elif kind == "bye":
            self.close()
        elif kind == "hello":
            self.send(wire.error("bad_frame", "hello was already exchanged"))
        else:
            self.host.link_frame(self, frame)

    def lineLengthExceeded(self, line):
        self.fail("line_too_long", "line longer than %d bytes" % self.MAX_LENGTH)

    def _handshake(self, frame):
        if frame["t"] == "error":
            return self.fail(frame["code"], "peer refused the link: " + frame["message"], reply=False)
        if frame["t"] != "hello":
            return self.fail("handshake", "expected hello first")
        if frame["v"] != wire.VERSION:
            return self.fail("unsupported_version", "this peer speaks protocol version %d" % wire.VERSION)
        if self.peer_key is None:
            return self.fail("identity_mismatch", "no verified TLS certificate")
        if self.expected is not None and frame["name"] != self.expected[0]:
            return self.fail("identity_mismatch", "dialled %s but %s answered" % (self.expected[0], frame["name"]))
        if self.peer is not None:
            return
        self.peer = frame["name"]
        self.peer_udp_port = frame.get("udp")
        d = self.host.verify_peer(frame["name"], self.peer_key)
        d.addCallbacks(self._verified, self._refused)

    def _verified(self, _):
        if self.closed or self.when_ready.called:  # failed (and closing) while the lookup ran
            return
        self.ready = True
        self._timer.arm(PING_AFTER)
        self.host.link_up(self)
        self.when_ready.callback(self)
        early, self.early = self.early, []
        for frame in early:
            if self.closed:
                break
            self._frame(frame)

    def _refused(self, failure):
        error = failure.value
        if isinstance(error, P2PDError):
            self.fail(error.code, error.message)
        else:
            log.failure("verifying {peer} failed", failure, peer=self.peer)
            self.fail("internal", "could not verify the peer")

    # sending

    def send(self, frame):
        if not self.closed:
            self.transport.write(wire.encode(frame) + b"\n")

    def peer_address(self):
        return self.transport.getPeer()

    def keying_material(self, label, size):
        """*size* bytes of this link's TLS session (RFC 5705 exporter): the same at both ends, secret to others."""
        return self.transport.getHandle().export_keying_material(label, size)

    def fail(self, code, message, reply=True):
        """Refuse or end the link: tell the peer why (once TLS is up) and close. Before the TLS handshake has
        completed nothing is written and the connection is cut at once: a close would wait for TLS to send what
        it holds, and a peer that never finishes its handshake would keep the connection open for ever."""
        log.info("link {direction} {peer}: {code}: {message}", direction="to" if self.outgoing else "from",
                 peer=self.peer or (self.expected or ("?",))[0], code=code, message=message)
        if reply and self.secured:
            self.send(wire.error(code, message))
        if not self.when_ready.called:
            self.when_ready.errback(LinkFailed(message, code))
        if not self.secured:
            self.transport.abortConnection()
            return
        self.close()

    def close(self):
        """End the link after what is written has gone (at most CLOSE_GRACE seconds, then it is cut). We stop
        being the transport's producer first: TLS does not shut down while a producer is registered."""
        if self.closed:
            return
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        self.clock.callLater(CLOSE_GRACE, self._cut)

    def _cut(self):
        if not self.closed:
            self.transport.abortConnection()

    # keepalive: one timer, re-armed from the time of the last traffic

    def _tick(self):
        if self.closed:
            return
        if not self.ready:
            return self.fail("handshake", "handshake not completed within %d s" % HANDSHAKE_TIMEOUT)
        idle = self.clock.seconds() - self.last_rx
        if idle >= DEAD_AFTER:
            log.info("link with {peer} silent for {idle:.0f} s: closing", peer=self.peer, idle=idle)
            self.transport.abortConnection()
            return
        if idle < PING_AFTER:
            return self._timer.arm(PING_AFTER - idle)
        self._ping_n += 1
        self.send({"t": "ping", "n": self._ping_n})
        self._timer.arm(min(PING_AFTER, DEAD_AFTER - idle))
