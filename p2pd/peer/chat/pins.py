"""Identities pinned on first contact (trust on first use, like SSH).

The key the registry gives for a name is pinned the first time we talk to that name; if the registry later hands
out another key, :meth:`Pins.lookup` refuses it (IdentityMismatch) until the user removes the pin, so no link is
set up and nothing is sealed for an impostor the registry (or whoever runs it) slipped in."""

from twisted.internet import defer

from p2pd.errors import Blocked, IdentityMismatch, NoSuchPeer, NotFound

VERIFY_CACHE_TTL = 10.0  # seconds the registry's answer about a name is reused when checking incoming links
VERIFY_CACHE_SIZE = 4096


class Pins:
    def __init__(self, storage, registry, commits, clock):
        self.storage = storage
        self.registry = registry
        self.commits = commits
        self.clock = clock
        self._verified = {}  # name -> (when, key or None if nobody holds it): recent registry answers

    # the block list: peers whose links, messages, offers and deposits we refuse

    def is_blocked(self, name):
        return bool(self.storage.get("blocked:" + name))

    def block(self, name):
        self.storage.put("blocked:" + name, True)
        self.commits.schedule_flush()

    def unblock(self, name):
        """True if *name* was blocked."""
        if not self.is_blocked(name):
            return False
        self.storage.put("blocked:" + name, False)
        self.commits.schedule_flush()
        return True

    def blocked_names(self):
        return sorted(key[len("blocked:"):] for key, value in self.storage.settings_with_prefix("blocked:") if value)

    def refuse_blocked(self, name):
        """Blocked if *name* is on the block list."""
        if self.is_blocked(name):
            raise Blocked("you blocked %s (p2pctl unblock %s lets it through again)" % (name, name))

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

    def verify_peer(self, name, key):
        """An incoming link claims *name* and showed *key* in TLS: they must match our pin, or (no pin yet) the
        registry, which is asked at most once per name every VERIFY_CACHE_TTL seconds: a stream of handshakes
        claiming names must not turn into a stream of registry lookups. A name on the block list is refused."""
        if self.is_blocked(name):
            return defer.fail(Blocked("%s is blocked here" % name))
        pinned = self.pinned(name)
        if pinned is not None:
            if pinned != key:
                return defer.fail(IdentityMismatch(
                    "%s presented a key other than the one pinned for it at first contact" % name))
            return defer.succeed({"name": name, "key": key})
        return defer.ensureDeferred(self._verify_unpinned(name, key))

    async def _verify_unpinned(self, name, key):
        cached = self._verified.get(name)
        if cached is not None and self.clock.seconds() - cached[0] < VERIFY_CACHE_TTL:
            registered = cached[1]
        else:
            try:
                registered = (await self.record(name))["key"]
            except NoSuchPeer:
                registered = None  # remembered too: nobody holds the name
            if len(self._verified) >= VERIFY_CACHE_SIZE:
                self._verified.pop(next(iter(self._verified)))
            self._verified[name] = (self.clock.seconds(), registered)
        if registered is None:
            raise NoSuchPeer("unknown peer %s: nobody registered that name" % name)
        if registered != key:
            raise IdentityMismatch("%s presented a key that is not the one the registry holds for it" % name)
        self.pin(name, key)
        return {"name": name, "key": key}
