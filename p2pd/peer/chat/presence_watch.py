"""Who of the peers we talk to comes online or goes offline, for ``watch`` (as an IRC client shows a friend
joining): while anybody watches, the peers of our most recent one-to-one conversations are looked up on each of
the daemon's rounds (every 30 s), and a change of one's presence is an event ``{"event": "peer", "name": ...,
"state": "online"|"offline"}``. Nobody watching costs nothing; the lookups are few and paced."""

from twisted.internet import defer
from twisted.logger import Logger

from p2pd.errors import NoSuchPeer

log = Logger()

MOST = 20  # peers looked at: those of the most recent conversations


class PresenceWatch:
    def __init__(self, name, storage, pins, events):
        self.name = name
        self.storage = storage
        self.pins = pins
        self.events = events
        self.known = {}  # peer -> True/False: online when last looked at
        self.looking = False

    def peers(self):
        """The peers of our most recent one-to-one conversations."""
        names = [c["conversation"] for c in self.storage.conversations()
                 if not c["conversation"].startswith("#") and c["conversation"] != self.name]
        return names[:MOST]

    def poll(self):
        """Look once (if anybody watches and no look is running); a Deferred that never fails."""
        if not self.events.watched:
            self.known.clear()  # a new watcher is not told of changes from before it came
            return defer.succeed(None)
        if self.looking:
            return defer.succeed(None)
        self.looking = True
        return defer.ensureDeferred(self._poll()).addErrback(
            lambda f: log.info("presence look failed: {error}", error=f.getErrorMessage())).addBoth(
            lambda _: setattr(self, "looking", False))

    async def _poll(self):
        for peer in self.peers():
            try:
                record = await self.pins.record(peer)
            except NoSuchPeer:
                self.known.pop(peer, None)
                continue
            online = bool(record.get("online"))
            before = self.known.get(peer)
            self.known[peer] = online
            if before is not None and before != online:
                self.events.emit({"event": "peer", "name": peer, "state": "online" if online else "offline"})
