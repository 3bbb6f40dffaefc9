"""Identities pinned on first contact (trust on first use, like SSH).

The key the registry gives for a name is pinned the first time we talk to that name; if the registry later hands
out another key, :meth:`Pins.lookup` refuses it (IdentityMismatch) until the user removes the pin, so no link is
set up and nothing is sealed for an impostor the registry (or whoever runs it) slipped in."""

from twisted.internet import defer

from p2pd.errors import IdentityMismatch, NoSuchPeer, NotFound


class Pins:
    def __init__(self, storage, registry, commits):
        self.storage = storage
        self.registry = registry
        self.commits = commits

    def pinned(self, name):
        """The key pinned for *name*, or None."""
        return self.storage.get("pin:" + name)

    def pin(self, name, key):
        if self.pinned(name) is None:
            self.storage.put("pin:" + name, key)
            self.commits.schedule_flush()

    @defer.inlineCallbacks
    def record(self, name):
        """The registry record of *name*, unchecked; NoSuchPeer if nobody registered it."""
        try:
            record = yield self.registry.lookup(name)
        except NotFound:
            raise NoSuchPeer("unknown peer %s: nobody registered that name" % name) from None
        return record

    def lookup(self, name):
        """The registry record of *name*, checked against our pin for it."""
        return self.record(name).addCallback(self._check, name)

    def _check(self, record, name):
        pinned = self.pinned(name)
        if pinned is not None and pinned != record["key"]:
            raise IdentityMismatch(
                "the registry now gives %s another key than the one we pinned at first contact; "
                "refusing to talk to it (if %s really changed keys, remove the pin)" % (name, name))
        return record

    @defer.inlineCallbacks
    def verify_peer(self, name, key):
        """An incoming link claims *name* and showed *key* in TLS: they must match the registry and our pin."""
        record = yield self.lookup(name)
        if record["key"] != key:
            raise IdentityMismatch("%s presented a key that is not the one the registry holds for it" % name)
        self.pin(name, key)
        return record
