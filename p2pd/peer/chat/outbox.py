"""What we send: every message is stored (history + outbox) and committed before anybody is told it was sent,
so a crash right after ``p2pctl msg`` returns loses nothing.

The outbox drains in per-recipient ``seq`` order over one authenticated link; a message leaves it only when the
recipient acknowledges it (the recipient acknowledges only after its own commit) or when the registry's mailbox
has accepted it sealed for the recipient (:mod:`.mailbox`). Links that drop put their unacknowledged messages
back in line; the receiving side drops duplicates by id."""

import heapq
import itertools
from collections import OrderedDict, deque

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from p2pd.core import wire
from p2pd.core.clock import now_ms
from p2pd.core.names import canonical_name
from p2pd.errors import BadRequest, LinkFailed, NoSuchPeer, P2PDError, PeerOffline
from p2pd.peer.chat.mailbox import Depositor
from p2pd.peer.interfaces import IOutbox

log = Logger()

RELINK_DELAY = 0.2  # after a link with messages in flight drops, pump again this much later


def check_text(text):
    """BadRequest unless *text* is a non-empty message body within the wire's limit."""
    if not isinstance(text, str) or not text:
        raise BadRequest("the message is empty")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadRequest("the message is not valid Unicode text") from None
    if size > wire.MAX_BODY:
        raise BadRequest("the message is %d bytes; the limit is %d" % (size, wire.MAX_BODY))


def _outcome(outcome, to):
    outcome["to"] = to
    return outcome


class Deadlines:
    """One timer for all the "queued after *wait* seconds" answers: a heap of deadlines, swept when the earliest
    is due. Entries of messages resolved meanwhile stay in the heap until they surface (or a compaction drops
    them). ``waiters`` is the outbox's dict of message id -> callers still waiting; ``due(msg_id)`` answers one."""

    def __init__(self, clock, waiters, due):
        self.clock = clock
        self.waiters = waiters
        self.due = due
        self.heap = []
        self._n = itertools.count()
        self._call = None
        self._at = None

    def add(self, when, msg_id):
        heap = self.heap
        heapq.heappush(heap, (when, next(self._n), msg_id))
        if len(heap) > 1024 and len(heap) > 4 * len(self.waiters):
            waiters = self.waiters
            heap[:] = [entry for entry in heap if entry[2] in waiters]
            heapq.heapify(heap)
        if self._at is None or when < self._at:
            self._arm(when)

    def stop(self):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = self._at = None

    def _arm(self, when):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._at = when
        self._call = self.clock.callLater(max(0.0, when - self.clock.seconds()), self._sweep)

    def _sweep(self):
        self._call = self._at = None
        heap, waiters = self.heap, self.waiters
        now = self.clock.seconds() + 1e-6  # a timer may fire a rounding error before its deadline
        while heap and (heap[0][0] <= now or heap[0][2] not in waiters):
            _, _, msg_id = heapq.heappop(heap)
            if msg_id in waiters:
                self.due(msg_id)
        if heap:
            self._arm(heap[0][0])


class SendFifo:
    """Requested messages, stored strictly in request order per recipient. A loop, not a chain of callbacks: a
    burst of thousands stays flat. Pauses (once per name) while the registry confirms the name exists."""

    def __init__(self, outbox, pins, dialer):
        self.outbox = outbox
        self.pins = pins
        self.dialer = dialer
        self.fifos = {}  # recipient -> deque of (text, wait, Deferred) not stored yet, in request order
        self.draining = set()  # recipients whose fifo is being worked through
        self.known = set()  # names the registry confirmed exist

    def add(self, to, text, wait, result):
        fifo = self.fifos.get(to)
        if fifo is None:
            fifo = self.fifos[to] = deque()
        fifo.append((text, wait, result))
        if to not in self.draining:
            self._drain(to)

    def _drain(self, to):
        self.draining.add(to)
        fifo = self.fifos.get(to)
        while fifo:
            if to not in self.known and self.dialer.link_to(to) is None and self.pins.pinned(to) is None:
                self.pins.lookup(to).addBoth(self._looked_up, to)
                return
            text, wait, result = fifo.popleft()
            try:
                self.outbox.enqueue(to, text, wait, result)
            except Exception as e:
                result.errback(e)
        self.fifos.pop(to, None)
        self.draining.discard(to)

    def _looked_up(self, result, to):
        if isinstance(result, Failure) and result.check(NoSuchPeer):
            for _, _, accepted in self.fifos.pop(to, ()):
                accepted.errback(result.value)
            self.draining.discard(to)
            return
        # known, or queued anyway: an identity mismatch or an unreachable registry keeps it in the outbox
        self.known.add(to)
        self._drain(to)


@implementer(IOutbox)
class Outbox:
    """The queue of undelivered messages per recipient, and the callers waiting for their outcome."""

    def __init__(self, name, identity, storage, registry, clock, commits, events, pins, dialer):
        self.name = name
        self.storage = storage
        self.clock = clock
        self.commits = commits
        self.events = events
        self.dialer = dialer
        self.queues = {}  # peer -> OrderedDict(id -> message): the outbox, in memory, in seq order
        self.waiters = {}  # message id -> [Deferred]
        self.retry_calls = {}  # peer -> the delayed call that pumps it again after a back-off
        self.started = False
        self.deadlines = Deadlines(clock, self.waiters, self._not_yet)
        self.fifo = SendFifo(self, pins, dialer)
        self.depositor = Depositor(self, name, identity, storage, registry, clock, events, pins, dialer)
        for msg in storage.outbox(limit=10**9):
            self.queues.setdefault(msg["recipient"], OrderedDict())[msg["id"]] = msg

    def start(self):
        self.started = True

    def stop(self):
        self.started = False
        self.deadlines.stop()
        for call in self.retry_calls.values():
            if call.active():
                call.cancel()
        self.retry_calls.clear()

    def count(self, peer=None):
        """How many messages wait (for *peer*, or for anybody)."""
        if peer is not None:
            return len(self.queues.get(peer, {}))
        return sum(len(q) for q in self.queues.values())

    def pump_all(self):
        for peer in list(self.queues):
            self.pump(peer)

    # new messages

    def send_message(self, to, text, wait):
        """Deferred of the outcome of sending *text* to *to*; see :meth:`p2pd.peer.facade.DaemonFacade.send_message`."""
        try:
            to = canonical_name(to)
            check_text(text)
            self.fifo.pins.refuse_blocked(to)
        except P2PDError as e:
            return defer.fail(e)
        if to == self.name:
            return defer.fail(BadRequest("you cannot send a message to yourself"))
        result = defer.Deferred().addCallback(_outcome, to)  # first, whatever the caller adds to it later
        self.fifo.add(to, text, wait, result)
        return result

    def enqueue(self, to, text, wait, result):
        """Store one message; it is queued and sent after the commit that ends this reactor turn. *result* (a
        Deferred) gets its outcome: delivered, or queued."""
        msg = self.storage.add_outgoing(to, text, now_ms(self.clock))
        self.waiters[msg["id"]] = [result]
        self.commits.after_commit(lambda: self.dispatch(msg, wait))

    def dispatch(self, msg, wait, announce=True):
        """A committed message: announce it, queue it, send it or get it moving."""
        to = msg["recipient"]
        if announce and self.events.watched:
            self.events.emit({"event": "message", "message": dict(msg, direction="out")})
        queue = self.queues.get(to)
        if queue is None:
            queue = self.queues[to] = OrderedDict()
        queue[msg["id"]] = msg
        if msg["id"] in self.waiters:
            self.deadlines.add(self.clock.seconds() + wait, msg["id"])
        link = self.dialer.link_to(to)
        if link is not None:
            self.send_frame(link, msg)
        else:
            self.pump(to)

    # outcomes

    def resolve(self, msg_id, outcome):
        """Answer the callers waiting for *msg_id*: *outcome* plus the message's ``id`` (and ``to``)."""
        for waiter in self.waiters.pop(msg_id, ()):
            if not waiter.called:
                waiter.callback(dict(outcome, id=msg_id))

    def _not_yet(self, msg_id):
        self.resolve(msg_id, {"status": "queued", "via": "outbox", "reason": "not acknowledged yet"})

    def acked(self, link, msg_id):
        """*link*'s peer acknowledged *msg_id*: one we sent on this link, or the receipt of one it collected from
        its mailbox."""
        via = "direct" if msg_id in link.inflight else "mailbox"
        link.inflight.discard(msg_id)
        self.remove(link.peer, msg_id)
        if self.storage.mark_delivered(msg_id, via, now_ms(self.clock), recipient=link.peer):
            peer = link.peer
            self.commits.after_commit(lambda: self._delivered(msg_id, peer, via))

    def _delivered(self, msg_id, peer, via):
        self.events.emit({"event": "delivered", "id": msg_id, "to": peer, "via": via})
        self.resolve(msg_id, {"status": "delivered", "via": via})

    def refused(self, link, msg_id, reason):
        """*link*'s peer answered *msg_id* with an error: it will not take it."""
        if msg_id in link.inflight:
            link.inflight.discard(msg_id)
            self.fail_message(link.peer, msg_id, "%s refused it: %s" % (link.peer, reason))
            return True
        return False

    def fail_message(self, peer, msg_id, reason):
        self.queues.get(peer, {}).pop(msg_id, None)
        self.storage.mark_failed(msg_id, reason, now_ms(self.clock))
        self.storage.commit()
        self.events.emit({"event": "failed", "id": msg_id, "to": peer, "reason": reason})
        for waiter in self.waiters.pop(msg_id, []):
            if not waiter.called:
                waiter.errback(P2PDError(reason))

    def remove(self, peer, msg_id):
        """*msg_id* left *peer*'s queue (acknowledged, or taken by the mailbox)."""
        queue = self.queues.get(peer)
        if queue is not None:
            queue.pop(msg_id, None)
            if not queue:
                del self.queues[peer]

    # moving

    def frame_of(self, msg):
        frame = {"t": "msg", "id": msg["id"], "from": self.name, "seq": msg["seq"], "ts": msg["ts"],
                 "body": msg["body"]}
        if msg.get("room"):
            frame["room"] = msg["room"]
        return frame

    def send_frame(self, link, msg):
        link.inflight.add(msg["id"])
        link.send(self.frame_of(msg))

    def send_queued(self, link):
        for msg in list(self.queues.get(link.peer, {}).values()):
            if msg["id"] not in link.inflight:
                self.send_frame(link, msg)

    def link_down(self, link):
        """*link*, the one to its peer, dropped: what it had in flight goes again, over a new link or the mailbox."""
        if link.inflight and self.started:
            self.clock.callLater(RELINK_DELAY, self.pump, link.peer)

    def pump(self, peer):
        """Get *peer*'s queued messages moving: over a link, else through the mailbox, else later."""
        if not self.queues.get(peer):
            self.queues.pop(peer, None)
            return
        link = self.dialer.link_to(peer)
        if link is not None:
            return self.send_queued(link)
        if peer in self.dialer.dialing or not self.started:
            return
        wait = self.dialer.wait_before_dialling(peer)
        if wait > 0:
            if self.dialer.offline_seen.get(peer):
                # it was offline or unreachable a moment ago: to the mailbox at once, unless the registry now
                # says it came back (then dial it)
                self.depositor.deposit(peer, self.dialer.last_error.get(peer, "%s is offline" % peer), recheck=True)
            elif peer not in self.retry_calls:  # try again as soon as the back-off allows
                self.retry_calls[peer] = self.clock.callLater(wait, self._retry, peer)
            return
        self.dialer.dial(peer).addErrback(self._undeliverable, peer)

    def _retry(self, peer):
        self.retry_calls.pop(peer, None)
        self.pump(peer)

    def _undeliverable(self, failure, peer):
        error = failure.value
        reason = self.dialer.failed(peer, error)
        if isinstance(error, NoSuchPeer):
            for msg_id in list(self.queues.get(peer, {})):
                self.fail_message(peer, msg_id, reason)
            return
        if isinstance(error, (PeerOffline, LinkFailed)):
            return self.depositor.deposit(peer, reason)
        # identity mismatch, registry unreachable: keep everything queued and try again later
        log.info("messages for {peer} stay queued: {reason}", peer=peer, reason=reason)
        for msg_id in list(self.queues.get(peer, {})):
            self.resolve(msg_id, {"status": "queued", "via": "outbox", "reason": reason})
            self.events.emit({"event": "queued", "id": msg_id, "to": peer, "reason": reason})
