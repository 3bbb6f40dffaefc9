"""The peer daemon's facade: what the control socket (:mod:`p2pd.peer.facade`), the links
(:class:`~p2pd.peer.interfaces.ILinkHost`) and presence (:class:`~p2pd.peer.interfaces.IPresenceHost`) call.

It builds the chat parts of :mod:`p2pd.peer.chat` and routes to them; it holds no chat logic itself. Frames
that are not chat go to the :class:`~p2pd.peer.interfaces.IFrameHandler` that takes their kind (files), added
with :meth:`PeerDaemon.attach`."""

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from p2pd import __version__
from p2pd.core import wire
from p2pd.core.names import canonical_name, canonical_room
from p2pd.errors import LinkFailed, P2PDError
from p2pd.peer.chat.commits import Checkpoints, Commits
from p2pd.peer.chat.dialer import Dialer
from p2pd.peer.chat.directory import Directory
from p2pd.peer.chat.events import Events
from p2pd.peer.chat.outbox import Outbox
from p2pd.peer.chat.pins import Pins
from p2pd.peer.chat.presence_watch import PresenceWatch
from p2pd.peer.chat.receipts import Receipts
from p2pd.peer.chat.receive import Receiver
from p2pd.peer.chat.rooms import Rooms
from p2pd.peer.interfaces import ILinkHost, IPresenceHost
from p2pd.peer.limits import Limits
from p2pd.peer.links.link import PeerLink

log = Logger()

MAILBOX_POLL = 30.0
REFUSALS = frozenset(("blocked", "identity_mismatch", "handshake", "unsupported_version"))  # of a whole link


def conversation_key(storage, name):
    """The conversation *name* stands for: ``#G1`` a room, a peer's name a peer, and ``G1`` the room when we
    have a conversation in that room and none with such a peer."""
    if name.startswith("#"):
        return "#" + canonical_room(name[1:])
    try:
        peer = canonical_name(name)
    except P2PDError:
        return "#" + canonical_room(name)
    known = {c["conversation"] for c in storage.conversations()}
    room = "#" + canonical_room(name) if wire.ROOM_RE.fullmatch(name) else None
    return room if room in known and peer not in known else peer


@implementer(ILinkHost, IPresenceHost)
class PeerDaemon:
    """Chat, links and the outbox of one peer. *tls* has ``client_endpoint(reactor, host, port, timeout)`` and
    ``peer_key(transport)``; *threads* (an IThreads) runs the WAL checkpoints."""

    # set by the service: our UDP socket's port (told to peers in hello), what our UDP streams dropped and did
    udp_port, udp_counters = None, dict

    def __init__(self, name, identity, storage, registry, reactor, tls, data_dir, threads, discover=None,
                 limits=None):
        self.name = name
        self.identity = identity
        self.storage = storage
        self.registry = registry
        self.clock = reactor
        self.tls = tls
        self.data_dir = data_dir
        self.limits = limits or Limits()
        self.discover = discover  # optional: Deferred-returning callable that fills addresses["public"]
        self.addresses = {"tcp": [], "udp": [], "public": None}  # what register() publishes; set by the service
        self.registry_state = {"state": "starting", "message": "not registered yet"}
        self.started = False
        self.handlers = {}  # frame kind -> IFrameHandler
        self.transfers = None  # the files part, when there is one (the control socket's file commands use it)
        self.events = Events()
        self.commits = Commits(storage, reactor)
        self.checkpoints = Checkpoints(storage, reactor, threads)
        self.pins = Pins(storage, registry, self.commits, reactor)
        self.dialer = Dialer(self.pins, tls, reactor, lambda expected: self.new_link(expected), limits=self.limits)
        self.outbox = Outbox(name, identity, storage, registry, reactor, self.commits, self.events, self.pins,
                             self.dialer)
        self.directory = Directory(name, registry, self.pins, self.dialer, self.outbox)
        self.rooms_part = Rooms(name, storage, registry, reactor, self.commits, self.events, self.dialer,
                                self.outbox, self.directory.peers)
        self.receipts = Receipts(name, storage, reactor, self.commits, self.events, self.pins, self.dialer,
                                 self.outbox.depositor.deposit_frame)
        self.receiver = Receiver(name, identity, storage, registry, reactor, self.commits, self.events, self.pins,
                                 self.rooms_part, self.receipts, self.limits)
        self.presence_watch = PresenceWatch(name, storage, self.pins, self.events)
        self._poll = None

    def new_link(self, expected=None):
        """An unconnected link to (*expected*: ``(name, key)``, dialling) or from another peer."""
        return PeerLink(self, self.clock, expected=expected, limits=self.limits)

    def attach(self, handler):
        """Hand link frames of ``handler.kinds`` to *handler* (an IFrameHandler), and its ``link_error`` and
        ``link_down`` calls, and stop it when the daemon stops; the files part is also what the control socket's
        file commands use."""
        for kind in handler.kinds:
            self.handlers[kind] = handler
        self.transfers = handler

    # lifecycle

    def start(self):
        self.started = True
        for part in (self.outbox, self.receipts, self.checkpoints):
            part.start()
        self._poll = self.clock.callLater(MAILBOX_POLL, self._periodic)

    def stop(self):
        self.started = False
        for handler in set(self.handlers.values()):
            handler.stop()
        for part in (self.outbox, self.receipts, self.checkpoints):
            part.stop()
        if self._poll is not None and self._poll.active():
            self._poll.cancel()
        for link in list(self.dialer.links.values()):
            link.send({"t": "bye"})
            link.close()
        self.commits.flush()

    def _periodic(self):
        if not self.started:
            return
        self._poll = self.clock.callLater(MAILBOX_POLL, self._periodic)
        if self.registry_state["state"] == "online":
            for look in (self.receiver.mailbox.fetch, self.receipts.send_all, self.presence_watch.poll):
                look()
        self.outbox.pump_all()

    # IPresenceHost

    async def _register(self):
        if self.discover is not None and self.addresses.get("public") is None:
            try:
                await self.discover()
            except Exception as e:
                log.info("could not learn our public address: {error}", error=e)
        record = await self.registry.register(tcp=self.addresses["tcp"], udp=self.addresses["udp"],
                                              fingerprint=self.identity.fingerprint,
                                              box=self.identity.box_public_text, version="p2pd/" + __version__)
        self.dialer.own_observed = record.get("observed")
        return record

    def register(self):
        return defer.ensureDeferred(self._register())

    def heartbeat_interval(self, record) -> float:
        lease = record.get("lease_expires")
        if lease:
            return max(2.0, (lease / 1000.0 - self.clock.seconds()) / 3.0)
        return 20.0

    def registry_changed(self, state, message):
        previous = self.registry_state["state"]
        self.registry_state = {"state": state, "message": message}
        if state != previous:
            self.events.emit({"event": "registry", "state": state, "message": message})
        if state == "online" and previous != "online":
            if not self.storage.get("announced:general"):
                self.rooms_part.announce_general()
            self.receiver.mailbox.fetch()
            self.receipts.send_all()
            for peer in list(self.outbox.queues):
                self.dialer.forget_backoff(peer)
                self.outbox.pump(peer)

    # ILinkHost

    def tls_peer_key(self, transport):
        return self.tls.peer_key(transport)

    def verify_peer(self, name, key):
        return self.pins.verify_peer(name, key)

    def link_up(self, link):
        log.info("link with {peer} up ({direction})", peer=link.peer, direction="out" if link.outgoing else "in")
        if self.dialer.up(link):
            self.events.emit({"event": "peer", "name": link.peer, "state": "connected"})
        self.outbox.send_queued(link)
        self.receipts.link_up(link)

    def link_down(self, link):
        for handler in set(self.handlers.values()):
            handler.link_down(link)
        if self.dialer.down(link):
            self.events.emit({"event": "peer", "name": link.peer, "state": "disconnected"})
            self.outbox.link_down(link)

    def link_frame(self, link, frame):
        kind = frame["t"]
        if kind == "msg":
            self.receiver.receive(link, frame)
        elif kind == "ack":
            for msg_id in wire.ack_ids(frame):
                self.outbox.acked(link, msg_id)
        elif kind == "room":
            self.rooms_part.room_event(link, frame)
        elif kind in self.handlers:
            self.handlers[kind].frame(link, frame)
        elif kind in wire.FILE_FRAMES:  # and no files part attached
            link.send(wire.error("unsupported", "this peer takes no files", frame.get("tid") or frame.get("rid")))
        elif kind == "error":
            log.info("{peer} reported {code}: {message}", peer=link.peer, code=frame["code"],
                     message=frame["message"])
            ref = frame.get("ref")
            if not ref and frame["code"] in REFUSALS:
                # The peer refuses the link after we had verified it (it checks us after its hello): a dial
                # failure, so that the back-off applies instead of a new link every RELINK_DELAY.
                self.dialer.failed(link.peer, LinkFailed("%s refused the link: %s" % (link.peer, frame["message"]),
                                                         frame["code"]))
            if not ref or any(h.link_error(link, frame) for h in set(self.handlers.values())):
                return
            self.outbox.refused(link, ref, frame["message"])

    # the facade for the control socket (p2pd.peer.facade)

    def emit(self, event):
        self.events.emit(event)

    def subscribe(self, callback):
        self.events.subscribe(callback)

    def unsubscribe(self, callback):
        self.events.unsubscribe(callback)

    def status(self):
        return {
            "name": self.name, "key": self.identity.public_text, "fingerprint": self.identity.fingerprint,
            "data_dir": self.data_dir, "addresses": self.addresses, "version": __version__,
            "registry": dict(self.registry_state, url=self.registry.base),
            "outbox": self.outbox.count(), "in_mailbox": self.storage.in_mailbox_count(),
            "quarantined": self.storage.quarantine_count(), "udp_streams": self.udp_counters(),
            "links": [{"peer": p, "direction": "out" if l.outgoing else "in", "since": int(l.since * 1000)}
                      for p, l in sorted(self.dialer.links.items())],
        }

    def peers(self):
        return self.directory.peers()

    def whois(self, name):
        return self.directory.whois(name)

    def rooms(self):
        return self.directory.rooms()

    def send_message(self, to, text, wait=10.0):
        return self.outbox.send_message(to, text, wait)

    def create_room(self, room):
        return self.rooms_part.create_room(room)

    def join_room(self, room):
        return self.rooms_part.join_room(room)

    def leave_room(self, room):
        return self.rooms_part.leave_room(room)

    def delete_room(self, room):
        return self.rooms_part.delete_room(room)

    def post_room(self, room, text):
        return self.rooms_part.post_room(room, text)

    def block(self, name):
        """Refuse *name*'s links, messages, offers and deposits from now on; its link, if up, is closed."""
        name = canonical_name(name)
        self.pins.block(name)
        link = self.dialer.link_to(name)
        if link is not None:
            link.send(wire.error("blocked", "%s does not take links from you" % self.name))
            link.close()
        log.info("blocked {peer}", peer=name)
        return {"name": name, "blocked": True}

    def unblock(self, name):
        name = canonical_name(name)
        return {"name": name, "blocked": False, "was_blocked": self.pins.unblock(name)}

    def blocked(self):
        return self.pins.blocked_names()

    def quarantined(self, limit=100):
        return self.storage.quarantined(limit)

    def history(self, conversation=None, limit=100):
        """The conversation with a peer, or with a room (``#G1``, or ``G1`` when no peer chat of that name
        exists)."""
        if conversation is not None:
            conversation = self.conversation_key(conversation)
        return self.storage.history(conversation, limit=limit)

    def conversation_key(self, name):
        return conversation_key(self.storage, name)

    def room_members(self, room):
        """Deferred[the other members of *room*] (General: those online), whom ``send ROOM`` offers files to."""
        return self.rooms_part.members_to_reach(room)
