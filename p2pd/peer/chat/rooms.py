"""Rooms. The registry keeps who is in which room; a post is stored once in our history and once per member in
the outbox, then delivered like one-to-one messages (directly, or sealed into the mailbox).

:class:`RoomMembers` is our cached copy of the member lists, for checking who posts in a room;
:class:`Rooms` the rest: creating, joining and leaving, announcing that, and posting."""

from collections import deque

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from p2pd.core import wire
from p2pd.core.clock import now_ms
from p2pd.core.names import GENERAL, canonical_room, room_display
from p2pd.errors import NoSuchRoom, NotFound, NotMember, P2PDError
from p2pd.peer.chat.outbox import check_text
from p2pd.peer.chat.shared import Shared, patiently

log = Logger()

ROOM_CACHE_TTL = 10.0  # seconds a room's member list is trusted when checking who posts in it
POST_VIEW_TTL = 1.0  # seconds the member list fetched for one post serves the posts after it


class RoomMembers:
    """Who is in which room, as the registry said at most ``ttl`` seconds ago. A room message is taken only if
    both its sender and we (*me*) are members: a peer cannot make rooms of its own to post into ours."""

    def __init__(self, me, registry, clock, ttl=ROOM_CACHE_TTL):
        self.me = me
        self.registry = registry
        self.clock = clock
        self.ttl = ttl
        self.lists = {}  # canonical room -> (when fetched, frozenset of members)
        self.refreshing = set()  # rooms whose member list is being fetched again

    def known_member(self, room, sender):
        """True/False if our copy of *room*'s member list has/lacks *sender* and us; None if we have none (or it
        is stale and lacks one of us). A stale list that has both still counts (the list is fetched again in the
        background): a member's messages never wait for the registry."""
        key = canonical_room(room)
        cached = self.lists.get(key)
        if cached is None:
            return None
        both = sender in cached[1] and self.me in cached[1]
        if self.clock.seconds() - cached[0] <= self.ttl:
            return both
        if not both:
            return None
        if key not in self.refreshing:
            self.refreshing.add(key)
            d = defer.ensureDeferred(self._refresh(room))
            d.addBoth(lambda _: self.refreshing.discard(key))
        return True

    def forget(self, room):
        """Our membership of *room* changed: its cached list is out of date."""
        self.lists.pop(canonical_room(room), None)

    async def _refresh(self, room):
        try:
            view = await self.registry.room(room)
        except Exception:
            return
        self.lists[canonical_room(room)] = (self.clock.seconds(), frozenset(view.get("members") or ()))

    async def sender_ok(self, frame):
        """Whether the sender of a room message and we are members of the room, per the registry (asked at most
        every ``ttl`` seconds per room, and again when one is missing). If the registry cannot answer the
        message is kept: losing it would be worse than a message from a peer that left a moment ago."""
        room, sender = frame["room"], frame["from"]
        if self.known_member(room, sender):
            return True
        try:
            view = await self.registry.room(room)
        except NotFound:
            self.lists[canonical_room(room)] = (self.clock.seconds(), frozenset())
            return False
        except Exception as e:
            log.info("could not check the members of {room}: {error}", room=room, error=e)
            return True
        members = frozenset(view.get("members") or ())
        self.lists[canonical_room(room)] = (self.clock.seconds(), members)
        return sender in members and self.me in members


class RoomViews:
    """The member lists that posts are fanned out to: posts to one room share the lookup that is running, and the
    answer for POST_VIEW_TTL seconds after it, so a burst of posts costs the registry one request a second, not
    one each; a lookup the registry answers 429 is made again after its ``Retry-After``.

    General, which every name is in, is fanned out to its members who are online (as IRC does): a post there is
    not a message to every name ever registered, queued and dialled or deposited for each."""

    def __init__(self, registry, clock, ttl=POST_VIEW_TTL):
        self.registry = registry
        self.clock = clock
        self.ttl = ttl
        self.cache = {}  # canonical room -> (when, view)
        self.running = Shared()  # the lookups in progress, by canonical room

    def get(self, display):
        """Deferred[the registry's view of room *display*, with its members]."""
        key = canonical_room(display)
        cached = self.cache.get(key)
        if cached is not None and self.clock.seconds() - cached[0] < self.ttl:
            return defer.succeed(dict(cached[1]))
        lookup = self.registry.room_online if key == canonical_room(GENERAL) else self.registry.room

        def fetch():
            return defer.ensureDeferred(patiently(self.clock, lookup, display)).addCallback(self._keep, key)
        return self.running(key, fetch).addCallback(dict)

    def forget(self, room):
        self.cache.pop(canonical_room(room), None)

    def _keep(self, view, key):
        self.cache[key] = (self.clock.seconds(), view)
        if len(self.cache) > 1000:
            self.cache.pop(next(iter(self.cache)))
        return view


def _room_error(failure, display):
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


class Rooms:
    """*outbox* delivers the copies of posts, *dialer* carries announcements, ``peers()`` (a Deferred of the
    registry's peer records) names who to tell that we joined General."""

    def __init__(self, name, storage, registry, clock, commits, events, dialer, outbox, peers):
        self.name = name
        self.storage = storage
        self.registry = registry
        self.clock = clock
        self.commits = commits
        self.events = events
        self.dialer = dialer
        self.outbox = outbox
        self.peers = peers
        self.members = RoomMembers(name, registry, clock)
        self.views = RoomViews(registry, clock)
        self.known_member = self.members.known_member
        self.sender_ok = self.members.sender_ok
        self.member = {}  # canonical room -> whether we are in it (rooms joined/left through this daemon)
        self.post_fifo = deque()  # [room, text, result, lookup outcome, came back] of room posts, in order
        for key, member in storage.settings_with_prefix("rooms:"):
            self.member[key[len("rooms:"):]] = member

    def in_room(self, room):
        """Whether we are a member of *room*, as far as we know (rooms we joined or left through this daemon;
        every peer is in General). Unknown rooms count as joined: a message is never dropped on a guess."""
        return self.member.get(canonical_room(room), True)

    # membership

    def create_room(self, room):
        """Create *room* (as the seed's chatroom does, creating does not join it: ``join`` does);
        RoomExists if a room of that name, ignoring case, exists."""
        display = room_display(room)
        return self.registry.create_room(display, join=False).addErrback(_room_error, display)

    def join_room(self, room):
        display = room_display(room)
        return self.registry.join(display).addCallbacks(self._membership, _room_error,
                                                        callbackArgs=(True,), errbackArgs=(display,))

    def leave_room(self, room):
        display = room_display(room)
        return self.registry.leave(display).addCallbacks(self._membership, _room_error,
                                                         callbackArgs=(False,), errbackArgs=(display,))

    def delete_room(self, room):
        """Delete *room*, which we created (the registry checks); its members learn it at their next lookup."""
        display = room_display(room)

        def deleted(result):
            self.members.forget(display)
            self.views.forget(display)
            return result
        return self.registry.delete_room(display).addCallbacks(deleted, _room_error, errbackArgs=(display,))

    def _membership(self, room_view, member):
        self.members.forget(room_view["name"])
        self.views.forget(room_view["name"])
        self.member[canonical_room(room_view["name"])] = member
        self.storage.put("rooms:" + canonical_room(room_view["name"]), member)
        self.commits.schedule_flush()
        self.announce(room_view, "joined" if member else "left")
        return room_view

    def announce(self, room_view, change):
        """Tell the room's other members that we joined or left it, on links that are up or can be set up now
        (an announcement is not queued: members who are away see the member list when they look)."""
        frame = {"t": "room", "room": room_view["name"], "from": self.name, "change": change}
        for member in room_view.get("members") or []:
            if member == self.name:
                continue
            d = self.dialer.dial(member)
            d.addCallback(lambda link: link.send(frame))
            d.addErrback(lambda f: None)

    @defer.inlineCallbacks
    def announce_general(self, most=200):
        """On our very first start, tell the peers online that we joined General (everyone is in it)."""
        self.storage.put("announced:general", True)
        self.commits.schedule_flush()
        try:
            peers = yield self.peers()
        except Exception as e:
            log.info("could not announce joining General: {error}", error=e)
            return
        names = [p["name"] for p in peers if p.get("online", True)][:most]
        self.announce({"name": GENERAL, "members": names}, "joined")

    def room_event(self, link, frame):
        """A ``room`` frame: *link*'s peer joined or left a room."""
        if frame["from"] != link.peer:
            return link.send(wire.error("bad_frame", "room events on this link must come from %s" % link.peer))
        self.views.forget(frame["room"])  # the next post goes to the members as they are now
        self.events.emit({"event": "room", "room": frame["room"], "name": link.peer, "change": frame["change"]})

    # posting

    def post_room(self, room, text):
        """Send *text* to every member of *room*: stored once in our history and once per member in the outbox
        (committed before the answer), then delivered to each directly, or sealed into the mailbox for those we
        cannot reach. NotFound if the room does not exist, NotMember if we are not in it.

        Posts are stored in the order they were requested, whatever order the registry answers their member
        lookups in (those run concurrently): a FIFO, like one-to-one messages."""
        try:
            check_text(text)
            display = room_display(room)
        except P2PDError as e:
            return defer.fail(e)
        result = defer.Deferred()
        entry = [display, text, result, None, False]  # ..., the lookup's outcome, whether it came back
        self.post_fifo.append(entry)

        def looked_up(outcome):
            entry[3], entry[4] = outcome, True
            self._posts_ready()

        self.views.get(display).addBoth(looked_up)
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

    def members_to_reach(self, room):
        """Deferred[the members of *room* other than us, as a post would reach them] (NotMember if we are not in
        it; NoSuchRoom if it does not exist): whom ``send ROOM FILE`` offers the files to."""
        display = room_display(room)

        def missing(failure):
            failure.trap(NotFound)
            raise NoSuchRoom("room %s does not exist" % display)
        return self.views.get(display).addCallbacks(lambda view: sorted(self._others(view)), missing)

    def _others(self, view):
        """The members of *view* a post reaches: all but us and those we block. NotMember unless we are in it
        (everyone is in General, whose view lists only the members online)."""
        if self.name not in view.get("members", []) and canonical_room(view["name"]) != canonical_room(GENERAL):
            raise NotMember("you are not a member of %s: p2pctl join %s" % (view["name"], view["name"]))
        return [m for m in view["members"] if m != self.name and not self.dialer.pins.is_blocked(m)]

    def _store_post(self, view, text):
        recipients = self._others(view)
        post, copies = self.storage.add_room_post(view["name"], text, recipients, now_ms(self.clock))
        committed = defer.Deferred()

        def dispatch():
            self.events.emit({"event": "message", "message": post})
            for msg in copies:
                self.outbox.dispatch(msg, 0, announce=False)
            committed.callback({"id": post["id"], "room": view["name"], "recipients": recipients,
                                "status": "sent"})

        self.commits.after_commit(dispatch)
        return committed
