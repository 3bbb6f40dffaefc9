"""Who and what is out there, as the registry lists it: peers, one peer's record with how we reach it, rooms."""

from twisted.internet import defer

from p2pd.core.names import canonical_name

MOST = 10000  # entries a listing collects at most (the registry pages by 200)


@defer.inlineCallbacks
def _all_pages(fetch, key, keep=lambda entry: True):
    found, after = [], None
    while True:
        page = yield fetch(after=after, limit=200)
        found.extend(entry for entry in page[key] if keep(entry))
        after = page.get("next")
        if not after or len(found) > MOST:
            return found


class Directory:
    def __init__(self, name, registry, pins, dialer, outbox):
        self.name = name
        self.registry = registry
        self.pins = pins
        self.dialer = dialer
        self.outbox = outbox

    def peers(self):
        """Deferred[the registry's peer records, without ourselves]."""
        return _all_pages(self.registry.peers, "peers", lambda p: p["name"] != self.name)

    def rooms(self):
        """Deferred[every room, with its member count and whether we are in it]."""
        return _all_pages(self.registry.rooms, "rooms")

    @defer.inlineCallbacks
    def whois(self, name):
        """The registry record of *name* (not refused if it contradicts our pin: it says so) and how we reach it."""
        name = canonical_name(name)
        record = yield self.pins.record(name)
        pinned = self.pins.pinned(name)
        connected = self.dialer.link_to(name) is not None
        record["reachability"] = {
            "link": "connected" if connected else "none",
            "direct": connected,
            "pinned": pinned is not None, "pin_matches": pinned is None or pinned == record["key"],
            "last_error": self.dialer.last_error.get(name),
            "queued": self.outbox.count(name),
        }
        return record
