"""What we get: messages from peers, stored once (duplicates are dropped by id) and acknowledged only after the
commit that made them durable.

Per-sender order holds: a message whose ``seq`` skips ahead (the missing ones may sit in our mailbox) waits, with
everything behind it on its link, until the mailbox has been fetched. A room message is stored only if its
sender is a member of the room (:meth:`.rooms.Rooms.sender_ok`)."""

from twisted.internet import defer, task
from twisted.logger import Logger

from p2pd.core import wire
from p2pd.core.clock import now_ms
from p2pd.core.names import canonical_room
from p2pd.core.sizes import human_size
from p2pd.peer.chat.mailbox import MailboxFetcher
from p2pd.peer.limits import Limits

log = Logger()

GAP_FETCH_EVERY = 5.0  # seconds between two mailbox fetches that one sender's gaps in seq may cause


class Receiver:
    """*limits* (a :class:`p2pd.peer.limits.Limits`) gives ``stored_per_peer``: the bytes of messages kept from
    one peer, past which its messages are refused (they fail on its side, with the reason)."""

    def __init__(self, name, identity, storage, registry, clock, commits, events, pins, rooms, receipts,
                 limits=None):
        self.name = name
        self.limits = limits or Limits()
        self.storage = storage
        self.clock = clock
        self.commits = commits
        self.events = events
        self.rooms = rooms
        self.mailbox = MailboxFetcher(name, identity, storage, registry, clock, events, pins, self.accept,
                                      rooms.sender_ok, receipts)
        self.gap_fetches = {}  # sender -> when a gap in its seq last made us fetch the mailbox

    def receive(self, link, frame):
        """A ``msg`` frame from an authenticated *link*."""
        if frame["from"] != link.peer:
            link.send(wire.error("bad_frame", "messages on this link must come from %s" % link.peer, frame["id"]))
            return
        room = frame.get("room")
        if room and not self.rooms.in_room(room):
            # We left the room (or never were in it): take the message off the sender's outbox, keep nothing.
            link.send({"t": "ack", "id": frame["id"]})
            return
        if room and not self.rooms.known_member(room, frame["from"]) and link.backlog is None:
            # Check with the registry that the sender is in the room before anything of it is stored; frames
            # that come meanwhile wait behind this one, in order.
            link.backlog = [frame]
            defer.ensureDeferred(self.rooms.sender_ok(frame)).addBoth(lambda _: self._drain(link))
            return
        if link.backlog is not None:
            link.backlog.append(frame)
            return
        last = self.storage.last_seq(frame["from"], frame["from"])
        if frame["seq"] > last + 1 and not self.storage.has_message(frame["id"]):
            # earlier messages may be waiting in our mailbox: fetch it first, then go on in order
            link.backlog = [frame]
            self._gap_fetch(frame["from"]).addBoth(lambda _: self._drain(link))
            return
        self.accept(frame, via="direct", link=link)

    def _gap_fetch(self, sender):
        """Fetch the mailbox because *sender*'s seq skipped ahead: at once, unless a gap of the same sender made
        us fetch less than GAP_FETCH_EVERY seconds ago (then when that time is up). A peer sending nothing but
        gaps must not turn each frame into a signed registry request."""
        now = self.clock.seconds()
        last = self.gap_fetches.get(sender)
        wait = 0.0 if last is None else last + GAP_FETCH_EVERY - now
        if wait <= 0:
            self.gap_fetches[sender] = now
            if len(self.gap_fetches) > 10000:
                self.gap_fetches.pop(next(iter(self.gap_fetches)))
            return self.mailbox.fetch()
        return task.deferLater(self.clock, wait, self._gap_fetch, sender)

    def _drain(self, link):
        frames, link.backlog = link.backlog or [], None
        for frame in frames:
            if frame.get("room") and self.rooms.known_member(frame["room"], frame["from"]) is False:
                log.warn("dropped a message to room {room} from {sender}: it or we are not members",
                         room=frame["room"], sender=frame["from"])
                link.send({"t": "ack", "id": frame["id"]})
                continue
            self.accept(frame, via="direct", link=link)

    def over_quota(self, frame):
        """Whether *frame*'s sender has used up the room its messages may take here (a copy of a message stored
        already is never over)."""
        if self.storage.received_bytes(frame["from"]) < self.limits.stored_per_peer:
            return False
        return not self.storage.has_message(frame["id"])

    def accept(self, frame, via, link=None, after_commit=None):
        """Store *frame* (unless its id is stored already); after the commit, announce it, acknowledge it on
        *link* and call *after_commit*. False, storing nothing, if its sender is over its quota (on *link* the
        sender is told, with an error frame naming the message)."""
        if self.over_quota(frame):
            log.warn("refused a message from {sender}: it has {size} of messages stored here, the limit",
                     sender=frame["from"], size=human_size(self.limits.stored_per_peer))
            if link is not None:
                link.send(wire.error("over_quota", "%s keeps %s of messages from you, its limit; it was not stored"
                                     % (self.name, human_size(self.limits.stored_per_peer)), frame["id"]))
            return False
        msg = {"id": frame["id"], "sender": frame["from"], "recipient": self.name, "seq": frame["seq"],
               "ts": frame["ts"], "body": frame["body"], "room": frame.get("room"), "via": via}
        if self.storage.add_incoming(msg, now_ms(self.clock)):
            conversation = frame["from"] if not frame.get("room") else "#" + canonical_room(frame["room"])
            stored = dict(msg, conversation=conversation, direction="in", via=via)
            self.commits.after_commit(lambda: self.events.emit({"event": "message", "message": stored}))
        if link is not None:
            self.commits.acknowledge(link, frame["id"])
        if after_commit is not None:
            self.commits.after_commit(after_commit)
        self.commits.schedule_flush()
        return True
