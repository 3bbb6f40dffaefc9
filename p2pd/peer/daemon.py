"""The peer daemon's facade: one-to-one chat that never loses a message.

Every outgoing message is stored (history + outbox) and committed before ``send_message`` answers, so a crash
right after ``p2pctl msg`` returns loses nothing. The outbox drains in per-recipient ``seq`` order over one
authenticated link; a message leaves it only when the recipient acknowledges it (the recipient acknowledges
only after its own commit) or when the registry's mailbox has accepted it sealed for the recipient. Links that
drop put their unacknowledged messages back in line; duplicates are dropped by id on the receiving side.

The receiving side keeps per-sender order: a message whose ``seq`` skips ahead (the missing ones may sit in
our mailbox) waits until the mailbox has been fetched.

Identities are pinned on first contact (trust on first use, like SSH): if the registry later hands out another
key for a name we know, links to it are refused and nothing is sealed for it until the user resolves it.
"""

import heapq
import itertools
import json
from collections import deque
from collections import OrderedDict

from twisted.internet import defer, endpoints
from twisted.logger import Logger
from twisted.python.failure import Failure

from p2pd import __version__
from p2pd.core import wire
from p2pd.core.names import GENERAL, canonical_name, canonical_room, room_display
from p2pd.core.clock import now_ms
from p2pd.errors import (BadRequest, IdentityMismatch, LinkFailed, NoSuchPeer, NoSuchRoom, NotFound, NotMember,
                         P2PDError, PeerOffline)
from p2pd.peer.link import PeerLink

log = Logger()

FLUSH_DELAY = 0  # acks and delivered events go out at the end of the reactor turn, after one commit
DIAL_TIMEOUT = 5
RETRY_MIN = 2.0
RETRY_MAX = 60.0
MAILBOX_POLL = 30.0
MAILBOX_PAGE = 50
CHECKPOINT_EVERY = 1.0


def _outcome(outcome, to):
    outcome["to"] = to
    return outcome


ROOM_CACHE_TTL = 10.0  # seconds a room's member list is trusted when checking who posts in it


class PeerDaemon:
    """Chat, links and the outbox of one peer; see :mod:`p2pd.peer.facade` for the control-side contract."""

    def __init__(self, name, identity, storage, registry, reactor, tls, data_dir, advertise=None):
        self.name = name
        self.identity = identity
        self.storage = storage
        self.registry = registry
        self.clock = reactor
        self.reactor = reactor
        self.tls = tls  # object with client_endpoint(reactor, host, port) and peer_key(transport)
        self.data_dir = data_dir
        self.addresses = {"tcp": [], "udp": [], "public": None}
        self.links = {}  # peer -> ready PeerLink (the newest)
        self.queues = {}  # peer -> OrderedDict(id -> message): the outbox, in memory, in seq order
        self.waiters = {}  # message id -> [Deferred]
        self.dialing = {}  # peer -> Deferred of a dial in progress
        self.retry_at = {}  # peer -> (next attempt time, backoff)
        self.last_error = {}  # peer -> why the last dial failed
        self.subscribers = []
        self.send_fifo = {}  # recipient -> deque of (text, wait, Deferred) not stored yet, in request order
        self.draining = set()  # recipients whose send_fifo is being worked through
        self.known = set()  # names the registry confirmed exist
        self.depositing = set()  # peers whose queue is being sealed into the mailbox
        self.retry_calls = {}  # peer -> the delayed call that pumps it again after a back-off
        self.offline_seen = {}  # peer -> True while its last dial found it offline or unreachable
        self.discover = None  # optional: Deferred-returning callable that fills addresses["public"]
        self.registry_state = {"state": "starting", "message": "not registered yet"}
        self._flush_call = None
        self._acks = {}  # link -> [message id] to acknowledge after the next commit
        self._deadlines = []  # heap of (time, n, message id): answer "queued" then if still unresolved
        self._deadline_n = itertools.count()
        self._sweep_call = None  # the one timer that resolves due deadlines
        self._sweep_at = None
        self._after_commit = []  # callables to run after the next commit
        self._fetching = None
        self.started = False
        self.transfers = None  # a p2pd.peer.transfers.Transfers, when files are enabled
        self.room_member = {}  # canonical room -> whether we are in it (rooms joined/left through this daemon)
        self.room_members = {}  # canonical room -> (when fetched, frozenset of members): who may post there
        self.room_refreshing = set()  # rooms whose member list is being fetched again
        self.post_fifo = deque()  # [room, text, result, lookup outcome, came back] of room posts, in order
        for key, member in storage.settings_with_prefix("rooms:"):
            self.room_member[key[len("rooms:"):]] = member
        for msg in storage.outbox(limit=10**9):
            self.queues.setdefault(msg["recipient"], OrderedDict())[msg["id"]] = msg

    # lifecycle

    def start(self):
        self.started = True
        self._poll = self.clock.callLater(MAILBOX_POLL, self._periodic)
        self._checkpoints = self.clock.callLater(CHECKPOINT_EVERY, self._checkpoint)

    def _checkpoint(self):
        """Fold the storage's WAL back into its database from a worker thread, off the reactor's path."""
        if not self.started:
            return
        from twisted.internet.threads import deferToThreadPool

        pool = getattr(self.reactor, "getThreadPool", None)
        if pool is None:  # a fake reactor in tests: do it inline
            self.storage.checkpoint()
            self._checkpoints = self.clock.callLater(CHECKPOINT_EVERY, self._checkpoint)
            return
        d = deferToThreadPool(self.reactor, pool(), self.storage.checkpoint)
        d.addErrback(lambda f: log.warn("WAL checkpoint failed: {error}", error=f.getErrorMessage()))
        d.addBoth(lambda _: setattr(self, "_checkpoints", self.clock.callLater(CHECKPOINT_EVERY, self._checkpoint))
                  if self.started else None)

    def stop(self):
        self.started = False
        if self.transfers is not None:
            self.transfers.stop()
        if self._sweep_call is not None and self._sweep_call.active():
            self._sweep_call.cancel()
        self._sweep_call = self._sweep_at = None
        for call in (self._poll, self._checkpoints):
            if call.active():
                call.cancel()
        for call in self.retry_calls.values():
            if call.active():
                call.cancel()
        self.retry_calls.clear()
        for link in list(self.links.values()):
            link.send({"t": "bye"})
            link.transport.loseConnection()
        self.flush()

    def _periodic(self):
        if not self.started:
            return
        self._poll = self.clock.callLater(MAILBOX_POLL, self._periodic)
        if self.registry_state["state"] == "online":
            self.fetch_mailbox()
        for peer in list(self.queues):
            self.pump(peer)

    # registry and presence hooks

    @defer.inlineCallbacks
    def register(self):
        if self.discover is not None and self.addresses.get("public") is None:
            try:
                yield self.discover()
            except Exception as e:
                log.info("could not learn our public address: {error}", error=e)
        record = yield self.registry.register(tcp=self.addresses["tcp"], udp=self.addresses["udp"],
                                      fingerprint=self.identity.fingerprint, box=self.identity.box_public_text,
                                      version="p2pd/" + __version__)
        return record

    def heartbeat_interval(self, record) -> float:
        lease = record.get("lease_expires")
        if lease:
            return max(2.0, (lease / 1000.0 - self.clock.seconds()) / 3.0)
        return 20.0

    def registry_changed(self, state, message):
        previous = self.registry_state["state"]
        self.registry_state = {"state": state, "message": message}
        if state != previous:
            self.emit({"event": "registry", "state": state, "message": message})
        if state == "online" and previous != "online":
            if not self.storage.get("announced:general"):
                self.announce_general()
            self.fetch_mailbox()
            for peer in list(self.queues):
                self.retry_at.pop(peer, None)
                self.pump(peer)

    @defer.inlineCallbacks
    def lookup(self, name):
        """The registry record of *name*, checked against our pin for it (trust on first use)."""
        try:
            record = yield self.registry.lookup(name)
        except NotFound:
            raise NoSuchPeer("unknown peer %s: nobody registered that name" % name) from None
        pinned = self.storage.get("pin:" + name)
        if pinned is not None and pinned != record["key"]:
            raise IdentityMismatch(
                "the registry now gives %s another key than the one we pinned at first contact; "
                "refusing to talk to it (if %s really changed keys, remove the pin)" % (name, name))
        return record

    def pin(self, name, key):
        if self.storage.get("pin:" + name) is None:
            self.storage.put("pin:" + name, key)
            self.schedule_flush()

    # links

    def tls_peer_key(self, transport):
        return self.tls.peer_key(transport)

    @defer.inlineCallbacks
    def verify_peer(self, name, key):
        """An incoming link claims *name* and showed *key* in TLS: they must match the registry and our pin."""
        record = yield self.lookup(name)
        if record["key"] != key:
            raise IdentityMismatch("%s presented a key that is not the one the registry holds for it" % name)
        self.pin(name, key)
        return record

    def link_up(self, link):
        old = self.links.get(link.peer)
        self.links[link.peer] = link
        self.retry_at.pop(link.peer, None)
        self.last_error.pop(link.peer, None)
        self.offline_seen.pop(link.peer, None)
        log.info("link with {peer} up ({direction})", peer=link.peer, direction="out" if link.outgoing else "in")
        if old is None:
            self.emit({"event": "peer", "name": link.peer, "state": "connected"})
        self.send_queued(link)

    def link_down(self, link):
        if self.transfers is not None:
            self.transfers.link_down(link)
        if self.links.get(link.peer) is link:
            del self.links[link.peer]
            self.emit({"event": "peer", "name": link.peer, "state": "disconnected"})
            if link.inflight and self.started:
                self.clock.callLater(0.2, self.pump, link.peer)

    def dial(self, peer):
        """Deferred[PeerLink]: an authenticated link to *peer*, reusing one that is up or being set up."""
        if peer in self.links:
            return defer.succeed(self.links[peer])
        waiter = defer.Deferred()
        if peer in self.dialing:
            self.dialing[peer].append(waiter)
        else:
            self.dialing[peer] = [waiter]
            defer.ensureDeferred(self._dial(peer)).addBoth(self._dialled, peer)
        return waiter

    def _dialled(self, result, peer):
        for waiter in self.dialing.pop(peer, []):
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    async def _dial(self, peer):
        record = await self.lookup(peer)
        if not record.get("online"):
            raise PeerOffline("%s is offline" % peer)
        errors = []
        for address in record.get("tcp") or []:
            host, _, port = address.rpartition(":")
            host = host.strip("[]")
            link = PeerLink(self, self.clock, expected=(peer, record["key"]))
            try:
                endpoint = self.tls.client_endpoint(self.reactor, host, int(port), timeout=DIAL_TIMEOUT)
                await endpoints.connectProtocol(endpoint, link)
                await link.when_ready.addTimeout(DIAL_TIMEOUT * 2, self.clock)
                self.pin(peer, record["key"])
                return link
            except IdentityMismatch:
                raise
            except LinkFailed as e:
                if e.code == "identity_mismatch":
                    raise IdentityMismatch(e.message) from None
                errors.append("%s: %s" % (address, e.message))
            except Exception as e:
                errors.append("%s: %s" % (address, getattr(e, "message", None) or e.__class__.__name__))
                if link.transport is not None:
                    link.transport.abortConnection()
        raise LinkFailed("cannot reach %s (%s)" % (peer, "; ".join(errors) or "no address registered"))

    TRANSFER_FRAMES = frozenset(("offer", "accept", "reject", "cancel", "ls", "listing", "get"))

    def link_frame(self, link, frame):
        kind = frame["t"]
        if kind == "room":
            self.room_event(link, frame)
        elif kind in self.TRANSFER_FRAMES:
            if self.transfers is None:
                link.send(wire.error("unsupported", "this peer takes no files", frame.get("tid") or frame.get("rid")))
            else:
                self.transfers.frame(link, frame)
        elif kind == "msg":
            self.receive(link, frame)
        elif kind == "ack":
            for msg_id in wire.ack_ids(frame):
                self.acked(link, msg_id)
        elif kind == "error":
            log.info("{peer} reported {code}: {message}", peer=link.peer, code=frame["code"],
                     message=frame["message"])
            ref = frame.get("ref")
            if ref and self.transfers is not None and self.transfers.link_error(link, frame):
                return
            if ref and ref in link.inflight:
                link.inflight.discard(ref)
                self.fail_message(link.peer, ref, "%s refused it: %s" % (link.peer, frame["message"]))

    # receiving

    def receive(self, link, frame):
        if frame["from"] != link.peer:
            link.send(wire.error("bad_frame", "messages on this link must come from %s" % link.peer, frame["id"]))
            return
        if frame.get("room") and not self.in_room(frame["room"]):
            # We left the room (or never were in it): take the message off the sender's outbox, keep nothing.
            link.send({"t": "ack", "id": frame["id"]})
            return
        if frame.get("room") and not self.room_known_member(frame["room"], frame["from"]) \
                and link.backlog is None:
            # Check with the registry that the sender is in the room before anything of it is stored; frames
            # that come meanwhile wait behind this one, in order.
            link.backlog = [frame]
            defer.ensureDeferred(self.room_sender_ok(frame)).addBoth(lambda _: self._drain(link))
            return
        if link.backlog is not None:
            link.backlog.append(frame)
            return
        last = self.storage.last_seq(frame["from"], frame["from"])
        if frame["seq"] > last + 1 and not self.storage.has_message(frame["id"]):
            # earlier messages may be waiting in our mailbox: fetch it first, then go on in order
            link.backlog = [frame]
            self.fetch_mailbox().addBoth(lambda _: self._drain(link))
            return
        self.accept(frame, via="direct", link=link)

    def _drain(self, link):
        frames, link.backlog = link.backlog or [], None
        for frame in frames:
            if frame.get("room") and self.room_known_member(frame["room"], frame["from"]) is False:
                log.warn("dropped a message to room {room} from {sender}, who is not a member",
                         room=frame["room"], sender=frame["from"])
                link.send({"t": "ack", "id": frame["id"]})
                continue
            self.accept(frame, via="direct", link=link)

    def accept(self, frame, via, link=None, after_commit=None):
        msg = {"id": frame["id"], "sender": frame["from"], "recipient": self.name, "seq": frame["seq"],
               "ts": frame["ts"], "body": frame["body"], "room": frame.get("room"), "via": via}
        if self.storage.add_incoming(msg, now_ms(self.clock)):
            conversation = frame["from"] if not frame.get("room") else "#" + canonical_room(frame["room"])
            stored = dict(msg, conversation=conversation, direction="in", via=via)
            self._after_commit.append(lambda: self.emit({"event": "message", "message": stored}))
        if link is not None:
            ids = self._acks.get(link)
            if ids is None:
                self._acks[link] = [frame["id"]]
            else:
                ids.append(frame["id"])
        if after_commit is not None:
            self._after_commit.append(after_commit)
        self.schedule_flush()

    def schedule_flush(self):
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(FLUSH_DELAY, self.flush)

    def flush(self):
        """One commit for everything this reactor turn stored, then the acks and events it allows."""
        self._flush_call = None
        self.storage.commit()
        acks, self._acks = self._acks, {}
        for link, ids in acks.items():
            for frame in wire.acks(ids):
                link.send(frame)
        after, self._after_commit = self._after_commit, []
        for action in after:
            try:
                action()
            except Exception:
                log.failure("after-commit action failed")

    # sending

    @staticmethod
    def _check_text(text):
        if not isinstance(text, str) or not text:
            raise BadRequest("the message is empty")
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            raise BadRequest("the message is not valid Unicode text") from None
        if size > wire.MAX_BODY:
            raise BadRequest("the message is %d bytes; the limit is %d" % (size, wire.MAX_BODY))

    def send_message(self, to, text, wait=10.0):
        try:
            to = canonical_name(to)
        except P2PDError as e:
            return defer.fail(e)
        try:
            self._check_text(text)
        except P2PDError as e:
            return defer.fail(e)
        if to == self.name:
            return defer.fail(BadRequest("you cannot send a message to yourself"))
        result = defer.Deferred().addCallback(_outcome, to)  # first, whatever the caller adds to it later
        fifo = self.send_fifo.get(to)
        if fifo is None:
            fifo = self.send_fifo[to] = deque()
        fifo.append((text, wait, result))
        if to not in self.draining:
            self._drain_sends(to)
        return result

    def _drain_sends(self, to):
        """Store and queue *to*'s requested messages strictly in request order. A loop, not a chain of callbacks:
        a burst of thousands stays flat. Pauses (once per name) while the registry confirms the name exists."""
        self.draining.add(to)
        fifo = self.send_fifo.get(to)
        while fifo:
            if to not in self.known and to not in self.links and self.storage.get("pin:" + to) is None:
                self.lookup(to).addBoth(self._looked_up, to)
                return
            text, wait, result = fifo.popleft()
            try:
                self._enqueue(to, text, wait, result)
            except Exception as e:
                result.errback(e)
        self.send_fifo.pop(to, None)
        self.draining.discard(to)

    def _looked_up(self, result, to):
        if isinstance(result, Failure) and result.check(NoSuchPeer):
            for _, _, accepted in self.send_fifo.pop(to, ()):
                accepted.errback(result.value)
            self.draining.discard(to)
            return
        # known, or queued anyway: an identity mismatch or an unreachable registry keeps it in the outbox
        self.known.add(to)
        self._drain_sends(to)

    def _enqueue(self, to, text, wait, result):
        """Store one message; it is queued and sent after the commit that ends this reactor turn. *result* (a
        Deferred) gets its outcome: delivered, or queued."""
        msg = self.storage.add_outgoing(to, text, now_ms(self.clock))
        msg_id = msg["id"]
        self.waiters[msg_id] = [result]
        self._after_commit.append(lambda: self._dispatch(msg, wait))
        self.schedule_flush()

    def _dispatch(self, msg, wait, announce=True):
        """A committed message: announce it, queue it, send it or get it moving."""
        to = msg["recipient"]
        if self.subscribers and announce:
            self.emit({"event": "message", "message": dict(msg, direction="out")})
        queue = self.queues.get(to)
        if queue is None:
            queue = self.queues[to] = OrderedDict()
        queue[msg["id"]] = msg
        if msg["id"] in self.waiters:
            self._add_deadline(self.clock.seconds() + wait, msg["id"])
        link = self.links.get(to)
        if link is not None:
            self.send_frame(link, msg)
        else:
            self.pump(to)

    # One timer for all the "queued after wait seconds" answers: a heap of deadlines, swept when the earliest is
    # due. Entries of messages resolved meanwhile stay in the heap until they surface (or a compaction drops them).

    def _add_deadline(self, when, msg_id):
        heap = self._deadlines
        heapq.heappush(heap, (when, next(self._deadline_n), msg_id))
        if len(heap) > 1024 and len(heap) > 4 * len(self.waiters):
            waiters = self.waiters
            heap[:] = [entry for entry in heap if entry[2] in waiters]
            heapq.heapify(heap)
        if self._sweep_at is None or when < self._sweep_at:
            self._arm_sweep(when)

    def _arm_sweep(self, when):
        if self._sweep_call is not None and self._sweep_call.active():
            self._sweep_call.cancel()
        self._sweep_at = when
        self._sweep_call = self.clock.callLater(max(0.0, when - self.clock.seconds()), self._sweep)

    def _sweep(self):
        self._sweep_call = self._sweep_at = None
        heap, waiters = self._deadlines, self.waiters
        now = self.clock.seconds() + 1e-6  # a timer may fire a rounding error before its deadline
        while heap and (heap[0][0] <= now or heap[0][2] not in waiters):
            _, _, msg_id = heapq.heappop(heap)
            if msg_id in waiters:
                self._resolve(msg_id, {"status": "queued", "via": "outbox", "reason": "not acknowledged yet"})
        if heap:
            self._arm_sweep(heap[0][0])

    def _resolve(self, msg_id, outcome):
        """Answer the callers waiting for *msg_id*: *outcome* plus the message's ``id`` (and ``to``)."""
        for waiter in self.waiters.pop(msg_id, ()):
            if not waiter.called:
                waiter.callback(dict(outcome, id=msg_id))

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

    def acked(self, link, msg_id):
        link.inflight.discard(msg_id)
        queue = self.queues.get(link.peer)
        if queue is not None:
            queue.pop(msg_id, None)
            if not queue:
                del self.queues[link.peer]
        if self.storage.mark_delivered(msg_id, "direct", now_ms(self.clock)):
            peer = link.peer
            self._after_commit.append(lambda: self._delivered(msg_id, peer, "direct"))
            self.schedule_flush()

    def _delivered(self, msg_id, peer, via):
        self.emit({"event": "delivered", "id": msg_id, "to": peer, "via": via})
        self._resolve(msg_id, {"status": "delivered", "via": via})

    def fail_message(self, peer, msg_id, reason):
        queue = self.queues.get(peer, {})
        queue.pop(msg_id, None)
        self.storage.mark_failed(msg_id, reason, now_ms(self.clock))
        self.storage.commit()
        self.emit({"event": "failed", "id": msg_id, "to": peer, "reason": reason})
        for waiter in self.waiters.pop(msg_id, []):
            if not waiter.called:
                waiter.errback(P2PDError(reason))

    def pump(self, peer):
        """Get *peer*'s queued messages moving: over a link, else through the mailbox, else later."""
        if not self.queues.get(peer):
            self.queues.pop(peer, None)
            return
        link = self.links.get(peer)
        if link is not None:
            return self.send_queued(link)
        if peer in self.dialing or not self.started:
            return
        when, _ = self.retry_at.get(peer, (0, RETRY_MIN))
        if when > self.clock.seconds():
            if self.offline_seen.get(peer):
                # it was offline or unreachable a moment ago: to the mailbox at once, unless the registry now
                # says it came back (then dial it)
                self.deposit(peer, self.last_error.get(peer, "%s is offline" % peer), recheck=True)
            elif peer not in self.retry_calls:  # try again as soon as the back-off allows
                self.retry_calls[peer] = self.clock.callLater(when - self.clock.seconds(), self._retry, peer)
            return
        self.dial(peer).addErrback(self._undeliverable, peer)

    def _retry(self, peer):
        self.retry_calls.pop(peer, None)
        self.pump(peer)

    def _undeliverable(self, failure, peer):
        error = failure.value
        reason = getattr(error, "message", None) or str(error)
        self.last_error[peer] = reason
        self.offline_seen[peer] = "offline" if isinstance(error, PeerOffline) else \
            "unreachable" if isinstance(error, LinkFailed) else None
        _, backoff = self.retry_at.get(peer, (0, RETRY_MIN))
        self.retry_at[peer] = (self.clock.seconds() + backoff, min(backoff * 2, RETRY_MAX))
        if isinstance(error, NoSuchPeer):
            for msg_id in list(self.queues.get(peer, {})):
                self.fail_message(peer, msg_id, reason)
            return
        if isinstance(error, (PeerOffline, LinkFailed)):
            return self.deposit(peer, reason)
        # identity mismatch, registry unreachable: keep everything queued and try again later
        log.info("messages for {peer} stay queued: {reason}", peer=peer, reason=reason)
        for msg_id in list(self.queues.get(peer, {})):
            self._resolve(msg_id, {"status": "queued", "via": "outbox", "reason": reason})
            self.emit({"event": "queued", "id": msg_id, "to": peer, "reason": reason})

    def deposit(self, peer, reason, recheck=False):
        """Seal *peer*'s queued messages into the registry mailbox, in order; stop at the first failure.
        With *recheck*, a peer that the registry now lists online as it was not before is dialled instead."""
        if peer in self.depositing:
            return defer.succeed(None)
        self.depositing.add(peer)
        return self._deposit(peer, reason, recheck).addBoth(lambda r: self.depositing.discard(peer) or r)

    @defer.inlineCallbacks
    def _deposit(self, peer, reason, recheck):
        from p2pd.core.sealed import seal

        try:
            record = yield self.lookup(peer)
        except Exception as e:
            log.info("cannot deposit for {peer}: {error}", peer=peer, error=e)
            return
        if recheck and record.get("online") and self.offline_seen.get(peer) == "offline":
            self.offline_seen.pop(peer, None)
            self.retry_at.pop(peer, None)
            self.depositing.discard(peer)
            self.pump(peer)
            return
        box = record.get("box")
        if not box:
            log.info("{peer} has no mailbox key; messages stay queued", peer=peer)
            return
        for msg in list(self.queues.get(peer, {}).values()):
            if peer in self.links:
                return self.send_queued(self.links[peer])
            frame = self.frame_of(msg)
            token = seal(self.identity.signing, self.name, peer, box,
                         json.dumps(frame, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
            try:
                deposited = yield self.registry.deposit(peer, token)
            except Exception as e:
                log.info("mailbox deposit for {peer} failed: {error}", peer=peer, error=e)
                return
            self.queues.get(peer, {}).pop(msg["id"], None)
            self.storage.mark_deposited(msg["id"], deposited["id"], now_ms(self.clock))
            self.storage.commit()
            self.emit({"event": "queued", "id": msg["id"], "to": peer,
                       "reason": "%s; in the registry mailbox until %s is back" % (reason, peer)})
            self._resolve(msg["id"], {"status": "queued", "via": "mailbox", "reason": reason})
        if not self.queues.get(peer):
            self.queues.pop(peer, None)

    # the mailbox

    def fetch_mailbox(self):
        """Deferred (never failing): collect, verify, store and acknowledge what waits in our mailbox. Calls
        made while a fetch runs share it."""
        waiter = defer.Deferred()
        if self._fetching is not None:
            self._fetching.append(waiter)
            return waiter
        self._fetching = [waiter]

        def done(result):
            waiters, self._fetching = self._fetching, None
            if isinstance(result, Failure):
                log.info("mailbox fetch failed: {error}", error=result.getErrorMessage())
            for w in waiters:
                w.callback(None)

        defer.ensureDeferred(self._fetch()).addBoth(done)
        return waiter

    async def _fetch(self):
        from p2pd.core.sealed import SealedError, open_sealed

        while True:
            reply = await self.registry.fetch(limit=MAILBOX_PAGE)
            messages = reply.get("messages", [])
            for item in messages:
                try:
                    sealed = open_sealed(item["payload"], self.identity.box_private, self.name)
                    record = await self.lookup(sealed.sender_name)
                    sealed.verify(record["key"])
                    frame = wire.decode(sealed.payload)
                    if frame["t"] != "msg" or frame["from"] != sealed.sender_name:
                        raise SealedError("sealed content is not a message from its sender")
                except (SealedError, wire.FrameError, NoSuchPeer) as e:
                    log.warn("dropping an unreadable mailbox message {id} from {sender}: {error}",
                             id=item.get("id"), sender=item.get("from"), error=e)
                    await self.registry.ack(item["id"])
                    continue
                if frame.get("room") and not await self.room_sender_ok(frame):
                    await self.registry.ack(item["id"])
                    continue
                done = defer.Deferred()
                self.accept(frame, via="mailbox", after_commit=lambda d=done: d.callback(None))
                await done  # committed: now the registry may forget it
                await self.registry.ack(item["id"])
            if len(messages) < MAILBOX_PAGE:
                return

    # facade for the control socket

    def emit(self, event):
        for callback in list(self.subscribers):
            try:
                callback(event)
            except Exception:
                log.failure("event subscriber failed")

    def subscribe(self, callback):
        self.subscribers.append(callback)

    def unsubscribe(self, callback):
        if callback in self.subscribers:
            self.subscribers.remove(callback)

    def status(self):
        return {
            "name": self.name, "key": self.identity.public_text, "fingerprint": self.identity.fingerprint,
            "data_dir": self.data_dir, "addresses": self.addresses, "version": __version__,
            "registry": dict(self.registry_state, url=self.registry.base),
            "outbox": sum(len(q) for q in self.queues.values()),
            "links": [{"peer": p, "direction": "out" if l.outgoing else "in", "since": int(l.since * 1000)}
                      for p, l in sorted(self.links.items())],
        }

    @defer.inlineCallbacks
    def peers(self):
        found, after = [], None
        while True:
            page = yield self.registry.peers(after=after, limit=200)
            found.extend(p for p in page["peers"] if p["name"] != self.name)
            after = page.get("next")
            if not after or len(found) > 10000:
                return found

    @defer.inlineCallbacks
    def whois(self, name):
        name = canonical_name(name)
        try:
            record = yield self.registry.lookup(name)
        except NotFound:
            raise NoSuchPeer("unknown peer %s: nobody registered that name" % name) from None
        pinned = self.storage.get("pin:" + name)
        record["reachability"] = {
            "link": "connected" if name in self.links else "none",
            "direct": name in self.links,
            "pinned": pinned is not None, "pin_matches": pinned is None or pinned == record["key"],
            "last_error": self.last_error.get(name),
            "queued": len(self.queues.get(name, {})),
        }
        return record

    # rooms (the registry keeps who is in which room)

    def in_room(self, room):
        """Whether we are a member of *room*, as far as we know (rooms we joined or left through this daemon;
        every peer is in General). Unknown rooms count as joined: a message is never dropped on a guess."""
        return self.room_member.get(canonical_room(room), True)

    def _membership(self, room_view, member):
        self.room_member[canonical_room(room_view["name"])] = member
        self.storage.put("rooms:" + canonical_room(room_view["name"]), member)
        self.schedule_flush()
        self.announce_room(room_view, "joined" if member else "left")
        return room_view

    def _room_error(self, failure, display):
        """The registry's answer in the user's words: "you are ...", and the room as it was typed."""
        error = failure.value
        if isinstance(error, P2PDError):
            words = {"unknown_room": "room %s does not exist" % display,
                     "already_member": "you are already a member of %s" % display,
                     "not_member": "you are not a member of %s" % display}
            if error.code in words:
                error.message = words[error.code]
                error.args = (error.message,)
        return failure

    def create_room(self, room):
        """Create *room* (as the seed's chatroom does, creating does not join it: ``join`` does);
        RoomExists if a room of that name, ignoring case, exists."""
        display = room_display(room)
        return self.registry.create_room(display, join=False).addErrback(self._room_error, display)

    def join_room(self, room):
        display = room_display(room)
        return self.registry.join(display).addCallbacks(self._membership, self._room_error,
                                                        callbackArgs=(True,), errbackArgs=(display,))

    def leave_room(self, room):
        display = room_display(room)
        return self.registry.leave(display).addCallbacks(self._membership, self._room_error,
                                                         callbackArgs=(False,), errbackArgs=(display,))

    def announce_room(self, room_view, change):
        """Tell the room's other members that we joined or left it, on links that are up or can be set up now
        (an announcement is not queued: members who are away see the member list when they look)."""
        frame = {"t": "room", "room": room_view["name"], "from": self.name, "change": change}
        for member in room_view.get("members") or []:
            if member == self.name:
                continue
            d = self.dial(member)
            d.addCallback(lambda link: link.send(frame))
            d.addErrback(lambda f: None)

    def room_known_member(self, room, sender):
        """True/False if our copy of *room*'s member list has/lacks *sender*; None if we have none (or it is
        stale and lacks the sender). A stale list that has the sender still counts (the list is fetched again in
        the background): a member's messages never wait for the registry."""
        key = canonical_room(room)
        cached = self.room_members.get(key)
        if cached is None:
            return None
        if self.clock.seconds() - cached[0] <= ROOM_CACHE_TTL:
            return sender in cached[1]
        if sender not in cached[1]:
            return None
        if key not in self.room_refreshing:
            self.room_refreshing.add(key)
            d = defer.ensureDeferred(self._refresh_room(room))
            d.addBoth(lambda _: self.room_refreshing.discard(key))
        return True

    async def _refresh_room(self, room):
        try:
            view = await self.registry.room(room)
        except Exception:
            return
        self.room_members[canonical_room(room)] = (self.clock.seconds(), frozenset(view.get("members") or ()))

    async def room_sender_ok(self, frame):
        """Whether the sender of a room message is a member of the room, per the registry (asked at most every
        ROOM_CACHE_TTL seconds per room, and again when the sender is missing). If the registry cannot answer the
        message is kept: losing it would be worse than a message from a peer that left a moment ago."""
        room, sender = frame["room"], frame["from"]
        if self.room_known_member(room, sender):
            return True
        try:
            view = await self.registry.room(room)
        except NotFound:
            self.room_members[canonical_room(room)] = (self.clock.seconds(), frozenset())
            return False
        except Exception as e:
            log.info("could not check the members of {room}: {error}", room=room, error=e)
            return True
        members = frozenset(view.get("members") or ())
        self.room_members[canonical_room(room)] = (self.clock.seconds(), members)
        return sender in members

    @defer.inlineCallbacks
    def announce_general(self, most=200):
        """On our very first start, tell the peers online that we joined General (everyone is in it)."""
        self.storage.put("announced:general", True)
        self.schedule_flush()
        try:
            peers = yield self.peers()
        except Exception as e:
            log.info("could not announce joining General: {error}", error=e)
            return
        names = [p["name"] for p in peers if p.get("online", True)][:most]
        self.announce_room({"name": GENERAL, "members": names}, "joined")

    def room_event(self, link, frame):
        if frame["from"] != link.peer:
            return link.send(wire.error("bad_frame", "room events on this link must come from %s" % link.peer))
        self.emit({"event": "room", "room": frame["room"], "name": link.peer, "change": frame["change"]})

    def post_room(self, room, text):
        """Send *text* to every member of *room*: stored once in our history and once per member in the outbox
        (committed before the answer), then delivered to each directly, or sealed into the mailbox for those we
        cannot reach. NotFound if the room does not exist, NotMember if we are not in it.

        Posts are stored in the order they were requested, whatever order the registry answers their member
        lookups in (those run concurrently): a FIFO, like one-to-one messages."""
        try:
            self._check_text(text)
            display = room_display(room)
        except P2PDError as e:
            return defer.fail(e)
        result = defer.Deferred()
        entry = [display, text, result, None, False]  # ..., the lookup's outcome, whether it came back
        self.post_fifo.append(entry)

        def looked_up(outcome):
            entry[3], entry[4] = outcome, True
            self._posts_ready()

        self.registry.room(display).addBoth(looked_up)
        return result

    def _posts_ready(self):
        """Store the posts at the head of the FIFO whose member lookups have come back, in order."""
        while self.post_fifo and self.post_fifo[0][4]:
            display, text, result, outcome, _ = self.post_fifo.popleft()
            if isinstance(outcome, Failure):
                if outcome.check(NotFound):
                    result.errback(NoSuchRoom("room %s does not exist" % display))
                else:
                    result.errback(outcome)
                continue
            try:
                stored = self._store_post(outcome, text)
            except Exception:
                result.errback(Failure())
            else:
                stored.chainDeferred(result)

    def _store_post(self, view, text):
        if self.name not in view.get("members", []):
            raise NotMember("you are not a member of %s: p2pctl join %s" % (view["name"], view["name"]))
        recipients = [m for m in view["members"] if m != self.name]
        post, copies = self.storage.add_room_post(view["name"], text, recipients, now_ms(self.clock))
        committed = defer.Deferred()

        def dispatch():
            self.emit({"event": "message", "message": post})
            for msg in copies:
                self._dispatch(msg, 0, announce=False)
            committed.callback({"id": post["id"], "room": view["name"], "recipients": recipients,
                                "status": "sent"})

        self._after_commit.append(dispatch)
        self.schedule_flush()
        return committed

    @defer.inlineCallbacks
    def rooms(self):
        """Every room, with its member count and whether we are in it."""
        found, after = [], None
        while True:
            page = yield self.registry.rooms(after=after, limit=200)
            found.extend(page["rooms"])
            after = page.get("next")
            if not after or len(found) > 10000:
                break
        return found

    def history(self, conversation=None, limit=100):
        """The conversation with a peer, or with a room (``#G1``, or ``G1`` when no peer chat of that name
        exists)."""
        if conversation is not None:
            conversation = self.conversation_key(conversation)
        return self.storage.history(conversation, limit=limit)

    def conversation_key(self, name):
        if name.startswith("#"):
            return "#" + canonical_room(name[1:])
        try:
            peer = canonical_name(name)
        except P2PDError:
            return "#" + canonical_room(name)
        known = {c["conversation"] for c in self.storage.conversations()}
        room = "#" + canonical_room(name) if wire.ROOM_RE.fullmatch(name) else None
        return room if room in known and peer not in known else peer
